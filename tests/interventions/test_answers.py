"""Tool calls read out of a method's text (``guard.interventions.answers``): streamed chunks split
at awkward places, per choice, hermes (auto) and forced choices, and text that is not a call."""

from __future__ import annotations

from guard.engines.base import GenerationChunk
from guard.engines.tool_calls import forced_tool_choice
from guard.interventions.answers import ToolCallReader

WEATHER = {"type": "function", "function": {"name": "get_weather",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def feed(reader: ToolCallReader, pieces: list[str], index: int = 0, finish: str = "stop") -> list[GenerationChunk]:
    chunks = [GenerationChunk(text=p, index=index) for p in pieces] + [GenerationChunk(finish_reason=finish, index=index)]
    return [reader.feed(c) for c in chunks]


def test_hermes_call_is_held_back_and_parsed_across_split_chunks():
    reader = ToolCallReader(None, hermes=True)
    out = feed(reader, ["Let me check.", "<tool", '_call>\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}\n</tool_call>'])
    assert "".join(c.text for c in out) == "Let me check."
    last = out[-1]
    assert last.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in last.tool_calls] == [("get_weather", '{"city": "Paris"}')]


def test_hermes_text_that_only_looks_like_a_call_is_released():
    reader = ToolCallReader(None, hermes=True)
    out = feed(reader, ["a <to", "ol but not a call"])
    assert "".join(c.text for c in out) == "a <tool but not a call" and out[-1].tool_calls == ()
    broken = feed(ToolCallReader(None, hermes=True), ["<tool_call>{not json"], finish="length")
    assert "".join(c.text for c in broken) == "<tool_call>{not json" and broken[-1].finish_reason == "length"


def test_forced_named_and_required_calls_per_choice():
    named = forced_tool_choice([WEATHER], {"type": "function", "function": {"name": "get_weather"}})
    reader = ToolCallReader(named, hermes=True)
    first = feed(reader, ['{"city": ', '"Paris"}'], index=0)
    second = feed(reader, ['{"city": "Ro'], index=1, finish="length")  # cut by max_tokens: stays content
    assert all(c.text == "" for c in first) and first[-1].finish_reason == "stop"
    assert [(c.name, c.arguments) for c in first[-1].tool_calls] == [("get_weather", '{"city": "Paris"}')]
    assert "".join(c.text for c in second) == '{"city": "Ro' and second[-1].tool_calls == ()
    required = ToolCallReader(forced_tool_choice([WEATHER], "required"), hermes=False)
    out = feed(required, ['[{"name": "get_weather", "parameters": {"city": "Oslo"}}]'])
    assert out[-1].finish_reason == "tool_calls" and out[-1].tool_calls[0].arguments == '{"city": "Oslo"}'


def test_without_tools_and_for_refusals_chunks_pass_unchanged():
    plain = ToolCallReader(None, hermes=False)
    assert [c.text for c in feed(plain, ["<tool_call>{}"])] == ["<tool_call>{}", ""]
    reader = ToolCallReader(None, hermes=True)
    refusal = GenerationChunk(text="<tool_call> I can't help", refusal=True)
    assert reader.feed(refusal) is refusal
