import json

import pytest

from guard.engines.tool_calls import (ForcedToolChoice, ToolCall, forced_tool_calls, forced_tool_choice,
                                      parse_hermes_tool_calls)

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}  # no parameters: any object


def test_hermes_blocks_are_parsed_like_vllms_parser():
    text = 'Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    parsed = parse_hermes_tool_calls(text)
    assert parsed.content == "Sure."
    assert parsed.tool_calls == (ToolCall("get_weather", '{"city": "Paris"}'), ToolCall("get_time", "{}"))


def test_plain_text_and_broken_blocks_stay_content():
    assert parse_hermes_tool_calls("Paris is sunny.").tool_calls == ()
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": '  # cut by max_tokens
    assert parse_hermes_tool_calls(broken).content == broken and parse_hermes_tool_calls(broken).tool_calls == ()
    nameless = '<tool_call>{"arguments": {}}</tool_call>'
    assert parse_hermes_tool_calls(nameless).content == nameless


def test_an_unclosed_last_block_that_parses_is_a_call():
    parsed = parse_hermes_tool_calls('<tool_call>{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}')
    assert parsed.tool_calls == (ToolCall("get_time", '{"tz": "Europe/Paris"}'),)


def test_forced_choices_build_vllms_schemas():
    assert forced_tool_choice([WEATHER], "auto") is None and forced_tool_choice([WEATHER], "none") is None
    assert forced_tool_choice(None, "required") is None
    named = forced_tool_choice([WEATHER, TIME], {"type": "function", "function": {"name": "get_weather"}})
    assert named == ForcedToolChoice("named", WEATHER["function"]["parameters"], "get_weather")
    flat = forced_tool_choice([{"type": "function", "name": "get_time"}], {"type": "function", "name": "get_time"})
    assert flat.schema == {"type": "object", "properties": {}}
    required = forced_tool_choice([WEATHER, TIME], "required", parallel_tool_calls=False)
    assert required.kind == "required" and required.schema["maxItems"] == 1 and required.schema["minItems"] == 1
    assert [s["properties"]["name"]["enum"] for s in required.schema["items"]["anyOf"]] == [["get_weather"], ["get_time"]]
    assert "maxItems" not in forced_tool_choice([WEATHER], "required").schema
    with pytest.raises(KeyError):
        forced_tool_choice([WEATHER], {"type": "function", "function": {"name": "nope"}})


def test_forced_answers_become_calls():
    named = forced_tool_choice([WEATHER], {"type": "function", "function": {"name": "get_weather"}})
    assert forced_tool_calls(named, '{"city": "Paris"}') == (ToolCall("get_weather", '{"city": "Paris"}'),)
    assert forced_tool_calls(named, '{\n  "city":"Paris"\n}') == (ToolCall("get_weather", '{"city": "Paris"}'),)  # as vLLM writes it
    assert forced_tool_calls(named, '{"city": "Pa') == ()
    required = forced_tool_choice([WEATHER, TIME], "required")
    text = json.dumps([{"name": "get_time", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "Rome"}}])
    assert forced_tool_calls(required, text) == (ToolCall("get_time", "{}"), ToolCall("get_weather", '{"city": "Rome"}'))
    assert forced_tool_calls(required, '{"name": "get_time"}') == ()
