"""The shipped tool-call template on the real default model's tokenizer (transformers'
``apply_chat_template``, the same renderer vLLM uses for this model)."""

import json

import pytest

from guard.engines.tool_calls import ToolCall, parse_hermes_tool_calls
from guard.templates import SMOLLM2_TOOL_CHAT_TEMPLATE, read_template, template_path

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]}}}


def render(tokenizer, messages, **kwargs):
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         chat_template=read_template(), **kwargs)


def test_template_is_package_data():
    path = template_path()
    assert path.name == SMOLLM2_TOOL_CHAT_TEMPLATE and path.parent.name == "templates"
    with pytest.raises(FileNotFoundError):
        template_path("no_such_template.jinja")


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "Where was Basil born?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Où est née Beyoncé ? 東京"}],
])
def test_without_tools_it_renders_the_models_own_template(local_engine, messages):
    tok = local_engine.tokenizer
    own = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render(tok, messages) == own
    assert render(tok, messages, tools=[]) == own


def test_tools_go_into_the_system_turn_in_hermes_style(local_engine):
    tok = local_engine.tokenizer
    for messages in ([{"role": "user", "content": "Weather in Paris?"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]):
        text = render(tok, messages, tools=[WEATHER])
        system = text.split("<|im_end|>")[0]
        assert system.startswith("<|im_start|>system\n" + (messages[0]["content"] if len(messages) > 1 else "You are a helpful AI assistant named SmolLM"))
        tools_block = system.split("<tools>\n")[1].split("\n</tools>")[0]
        assert json.loads(tools_block) == WEATHER
        assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' in system
        assert text.endswith("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n")


def test_assistant_tool_calls_and_tool_results_round_trip(local_engine):
    """What the template writes for an assistant's calls is what the hermes parser reads back, with
    arguments given as a JSON string (OpenAI) or as an object (vLLM parses them before rendering);
    consecutive tool results share one user turn; content as text parts is joined."""
    tok = local_engine.tokenizer
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris"}, {"type": "text", "text": "and Lyon?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny, 21 C"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "Rain"}]},
    ]
    text = render(tok, messages, tools=[WEATHER])
    assert "<|im_start|>user\nWeather in Paris\nand Lyon?<|im_end|>" in text
    assistant = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    parsed = parse_hermes_tool_calls(assistant)
    assert parsed.content is None
    assert parsed.tool_calls == (ToolCall("get_weather", '{"city": "Paris"}'), ToolCall("get_weather", '{"city": "Lyon"}'))
    assert ("<|im_start|>user\n<tool_response>\nSunny, 21 C\n</tool_response>\n<tool_response>\nRain\n"
            "</tool_response><|im_end|>\n<|im_start|>assistant\n") in text
    assert text.count("<|im_start|>user") == 2


def test_assistant_content_before_a_tool_call_is_kept(local_engine):
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "Hot"}]
    text = render(local_engine.tokenizer, messages, tools=[WEATHER])
    assert '<|im_start|>assistant\nLet me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>' in text
