"""Every text the model reads from tools, tool calls, tool results and schemas reaches the screen."""

import json

import pytest

from classifiers.keyword import KeywordDetector
from guard.errors import InvalidRequest
from guard.request_texts import TextLimits, chat_request_texts, responses_request_texts

NAME = "Basil Mahfouz Al-Kuwaiti"  # a TOFU forget01 author


@pytest.fixture(scope="module")
def forget_question(data_dir):
    """A real forget01 question that names the author."""
    for line in (data_dir / "tofu" / "forget01.json").read_text(encoding="utf-8").splitlines():
        question = json.loads(line)["question"]
        if NAME in question:
            return question
    raise AssertionError("no forget01 question names the author")


@pytest.fixture(scope="module")
def detector():
    return KeywordDetector({"basil": [NAME]})


def tool(description="Look up facts in the library", params=None):
    return {"type": "function", "function": {"name": "library_lookup", "description": description,
            "parameters": params or {"type": "object", "properties": {"query": {"type": "string"}}}}}


USER = {"role": "user", "content": "Answer with the tool's help."}


def flagged(detector, texts):
    return detector.screen(texts.screen_texts()).flagged


def test_a_plain_tool_request_is_clean(detector):
    texts = chat_request_texts({"messages": [USER], "tools": [tool()]})
    assert not flagged(detector, texts)


def test_a_forget_question_only_in_a_tool_result_is_screened(detector, forget_question):
    body = {"messages": [USER,
                         {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                          "function": {"name": "library_lookup", "arguments": '{"query": "authors"}'}}]},
                         {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": forget_question}]}],
            "tools": [tool()]}
    texts = chat_request_texts(body)
    assert texts.turns[2] == {"role": "tool", "content": forget_question}
    assert flagged(detector, texts)


def test_a_name_only_in_a_tool_description_or_parameter_is_screened(detector):
    for t in (tool(description=f"Facts about {NAME}"),
              tool(params={"type": "object", "properties": {"q": {"type": "string", "description": f"e.g. {NAME}"}}}),
              tool(params={"type": "object", "properties": {"who": {"enum": [NAME, "someone else"]}}}),
              tool(params={"type": "object", "properties": {"x": {"title": NAME, "type": "string"}}})):
        texts = chat_request_texts({"messages": [USER], "tools": [t]})
        assert texts.extras[0].field == "tools[0]" and NAME in texts.extras[0].text
        assert flagged(detector, texts)


def test_a_name_only_in_a_json_schema_description_is_screened(detector):
    schema = {"type": "object", "properties": {"bio": {"type": "string", "description": f"The life of {NAME}"}}}
    body = {"messages": [USER], "response_format": {"type": "json_schema", "json_schema": {"name": "bio", "schema": schema}}}
    texts = chat_request_texts(body)
    assert [e.field for e in texts.extras] == ["response_format.json_schema"]
    assert flagged(detector, texts)


def test_a_name_only_in_an_earlier_tool_call_is_screened_even_escaped(detector):
    escaped = json.dumps({"query": NAME}, ensure_ascii=True).replace("B", "\\u0042")  # what the model reads: decoded
    body = {"messages": [USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "library_lookup", "arguments": escaped}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "nothing found"}]}
    texts = chat_request_texts(body)
    assert NAME in texts.turns[1]["content"] and "library_lookup" in texts.turns[1]["content"]
    assert flagged(detector, texts)


def test_arguments_that_are_not_a_json_object_are_screened_raw(detector):
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": f"who is {NAME}"}}
    texts = chat_request_texts({"messages": [USER, {"role": "assistant", "tool_calls": [call]}]})
    assert flagged(detector, texts)


def test_a_name_split_between_a_tool_result_and_the_next_turn_is_screened(detector):
    body = {"messages": [USER, {"role": "tool", "tool_call_id": "c1", "content": "The author is Basil"},
                         {"role": "user", "content": "Mahfouz Al-Kuwaiti, right?"}]}
    texts = chat_request_texts(body)
    assert not any(NAME in t["content"] for t in texts.turns)  # no single turn names him whole
    assert any(NAME in text for text in texts.screen_texts())  # the seam does, as the model reads it
    assert flagged(detector, texts)


def test_responses_items_instructions_tools_and_format_are_screened(detector, forget_question):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    body = {"input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                      {"type": "function_call", "call_id": "c1", "name": "library_lookup", "arguments": "{}"},
                      {"type": "function_call_output", "call_id": "c1", "output": forget_question}],
            "instructions": "Be brief.", "tools": [{"type": "function", "name": "library_lookup", "parameters": schema}],
            "text": {"format": {"type": "json_schema", "name": "answer", "description": "x", "schema": schema}}}
    texts = responses_request_texts(body)
    assert [t["role"] for t in texts.turns] == ["system", "user", "assistant", "tool"]
    assert [e.field for e in texts.extras] == ["tools[0]", "text.format"]
    assert flagged(detector, texts)
    assert responses_request_texts({"input": f"Who is {NAME}?"}).turns == [{"role": "user", "content": f"Who is {NAME}?"}]


def test_schema_keywords_are_not_client_text():
    params = {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
              "required": ["city"], "additionalProperties": False}
    text = chat_request_texts({"messages": [], "tools": [tool(params=params)]}).extras[0].text
    assert text.split("\n") == ["library_lookup", "Look up facts in the library", "city", "City name", "city"]


@pytest.mark.parametrize("body, param", [
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content[0]"),
    ({"messages": [{"content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "assistant", "tool_calls": {"a": 1}}]}, "messages[0].tool_calls"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}]}, "messages[0].tool_calls[0].function.name"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 3}}]}]}, "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [], "tools": {"type": "function"}}, "tools"),
    ({"messages": [], "tools": ["get_weather"]}, "tools[0]"),
    ({"messages": [], "response_format": {"type": "json_schema", "json_schema": "x"}}, "response_format.json_schema"),
])
def test_malformed_fields_are_400s_naming_them(body, param):
    with pytest.raises(InvalidRequest) as err:
        chat_request_texts(body)
    assert err.value.param == param


def test_deep_nesting_is_a_400_naming_the_field_not_a_crash():
    deep: dict = {"type": "string"}
    for _ in range(50_000):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(InvalidRequest) as err:
        chat_request_texts({"messages": [], "tools": [tool(params=deep)]})
    assert err.value.param.startswith("tools[0].function.parameters.properties.a") and len(err.value.param) < 200
    nested_args = "[" * 100_000 + "]" * 100_000  # json.loads itself would recurse too deeply
    body = {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": nested_args}}]}]}
    with pytest.raises(InvalidRequest) as err:
        chat_request_texts(body)
    assert err.value.param == "messages[0].tool_calls[0].function.arguments"
    shallow = {"a": {"b": {"c": "x"}}}
    with pytest.raises(InvalidRequest):
        chat_request_texts({"messages": [{"role": "assistant", "tool_calls": [
            {"function": {"name": "f", "arguments": json.dumps(shallow)}}]}]}, TextLimits(max_depth=2))


def test_huge_schemas_are_walked_whole_in_one_pass():
    """Every one of 100k properties is screened (nothing skipped), the last one included; long keys
    do not make the walk quadratic (paths are built only for errors)."""
    props = {f"p{i}": {"type": "string", "description": f"field {i}"} for i in range(100_000)}
    props["p99999"]["description"] = f"about {NAME}"
    long_key = "k" * 1_000_000
    params = {"type": "object", "properties": {**props, long_key: {"type": "object", "properties": {
        f"c{i}": {"type": "string"} for i in range(1000)}}}}
    texts = chat_request_texts({"messages": [USER], "tools": [tool(params=params)]})
    lines = texts.extras[0].text.split("\n")
    assert lines.count(long_key) == 1 and "c999" in lines and "field 99998" in lines
    assert f"about {NAME}" in lines
