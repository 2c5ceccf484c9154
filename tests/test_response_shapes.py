"""The guard's own answers against answers a real vLLM 0.32 server wrote (tests/fixtures/vllm_answers.json):
the same keys in the same order at every level, the same chunks in a stream, the same serialisation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from guard.engines.base import GenerationChunk
from guard.engines.sse import encode_json
from guard.response_shapes import CHAT, COMPLETION, ResponseMeta, StreamShaper, full_response
from tests.support.json_shape import chunk_shapes, parse_compact

RECORDED = json.loads((Path(__file__).parent / "fixtures" / "vllm_answers.json").read_text())
FINGERPRINT = "vllm-0.32.0-17caa75a"
SHAPES = {"chat": CHAT, "completion": COMPLETION}  # the recorded answers are named by endpoint


def _recorded(name: str) -> list[dict[str, Any]]:
    return [parse_compact(event) for event in RECORDED[name]["events"]]


def _guard_stream(kind: str, texts: list[str], finish_reason: str, include_usage: bool) -> list[dict[str, Any]]:
    shaper = StreamShaper(ResponseMeta(shape=SHAPES[kind], model="m", system_fingerprint=FINGERPRINT), include_usage)
    out = shaper.start()
    for text in texts:
        out += shaper.feed(GenerationChunk(text=text))
    out += shaper.feed(GenerationChunk(finish_reason=finish_reason, prompt_tokens=5, completion_tokens=len(texts)))
    out += shaper.end()
    return [parse_compact(encode_json(chunk)) for chunk in out]


def _text(chunk: dict[str, Any]) -> str:
    choice = chunk["choices"][0] if chunk["choices"] else {}
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_a_whole_answer_has_vllms_keys_order_and_nulls(kind):
    guard = parse_compact(encode_json(full_response(ResponseMeta(shape=SHAPES[kind], model="m", system_fingerprint=FINGERPRINT),
                                                    "Hello", "length", 5, 4)))
    assert chunk_shapes([guard]) == chunk_shapes(_recorded(kind))


@pytest.mark.parametrize("kind", ["chat", "completion"])
@pytest.mark.parametrize(("case", "finish_reason", "include_usage"),
                         [("stream_usage_length", "length", True), ("stream_stop", "stop", False)])
def test_a_stream_has_vllms_chunks(kind, case, finish_reason, include_usage):
    """Role chunk (chat), text chunks, then the finish chunk: with the last text when the answer ran out
    of tokens, empty when it stopped; the fingerprint on the last chunk; the usage chunk when asked."""
    recorded = _recorded(f"{kind}_{case}")
    guard = _guard_stream(kind, ["Hel", "lo", "!"], finish_reason, include_usage)
    assert chunk_shapes(guard) == chunk_shapes(recorded)
    finish = [c for c in guard if c["choices"] and c["choices"][0]["finish_reason"]]
    recorded_finish = [c for c in recorded if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish) == len(recorded_finish) == 1
    assert (_text(finish[0]) == "") is (_text(recorded_finish[0]) == "")
    assert "".join(_text(c) for c in guard) == "Hello!"
    assert [bool(c.get("system_fingerprint")) for c in guard][-1] is True


def test_a_stream_that_ends_at_once_still_has_a_finish_chunk():
    guard = _guard_stream("chat", [], "stop", True)
    assert [c["choices"][0]["delta"] if c["choices"] else "usage" for c in guard] == [
        {"role": "assistant", "content": ""}, {"content": ""}, "usage"]


def test_non_ascii_is_written_as_utf8_like_vllm():
    body = encode_json(full_response(ResponseMeta(shape=CHAT, model="m"), "Ünïcode — 名前", "stop", 1, 1))
    assert "Ünïcode — 名前".encode() in body and b"\\u" not in body


def test_interleaved_choices_tool_calls_refusals_and_logprobs_are_shaped_per_choice():
    """Issue #13: n choices interleave (each gets its role chunk first and its own finish), a tool
    call is one ``tool_calls`` delta before its finish, a refusal is a ``refusal`` delta when the
    client asked for a structured answer, and log-probs ride on the delta that carries their text."""
    from guard.engines.base import TokenLogprob, TopLogprob
    from guard.engines.tool_calls import ToolCall

    meta = ResponseMeta(shape=CHAT, model="m", n=2, logprobs=True, refusal_field=True)
    shaper = StreamShaper(meta, include_usage=True)
    lp = [TokenLogprob(1, "Hi", -0.5, (TopLogprob(1, "Hi", -0.5), TopLogprob(2, "Yo", -1.5)))]
    events = shaper.start()
    for chunk in (GenerationChunk(text="Hi", index=0, logprobs=lp), GenerationChunk(text="No.", index=1, refusal=True),
                  GenerationChunk(index=0, finish_reason="tool_calls", prompt_tokens=5, completion_tokens=3,
                                  tool_calls=(ToolCall("f", '{"a": 1}'),)),
                  GenerationChunk(index=1, finish_reason="stop", prompt_tokens=5, completion_tokens=2, refusal=True)):
        events += shaper.feed(chunk)
    events += shaper.end()
    choices = [(e["choices"][0]["index"], e["choices"][0]["delta"], e["choices"][0]["finish_reason"])
               for e in events if e["choices"]]
    assert choices == [(0, {"role": "assistant", "content": ""}, None), (1, {"role": "assistant", "content": ""}, None),
                       (0, {"content": "Hi"}, None),
                       (0, {"tool_calls": [{"index": 0, "id": choices[3][1]["tool_calls"][0]["id"], "type": "function",
                                            "function": {"name": "f", "arguments": '{"a": 1}'}}]}, None),
                       (0, {"content": ""}, "tool_calls"), (1, {"refusal": "No."}, None), (1, {"content": ""}, "stop")]
    assert events[2]["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1] == {"token": "Yo", "logprob": -1.5,
                                                                                    "bytes": [89, 111]}
    assert events[-1]["usage"] == {"prompt_tokens": 5, "total_tokens": 10, "completion_tokens": 5}


def test_a_whole_refusal_goes_into_message_refusal_only_for_structured_answers():
    from guard.response_shapes import AnswerCollector

    for structured in (True, False):
        collector = AnswerCollector(ResponseMeta(shape=CHAT, model="m", n=2, refusal_field=structured))
        for i in (0, 1):
            collector.feed(GenerationChunk(text="No.", index=i, refusal=True))
            collector.feed(GenerationChunk(index=i, finish_reason="stop", prompt_tokens=4, completion_tokens=2, refusal=True))
        answer = collector.answer()
        messages = [c["message"] for c in answer["choices"]]
        expected = {"content": None, "refusal": "No."} if structured else {"content": "No.", "refusal": None}
        assert all({k: m[k] for k in ("content", "refusal")} == expected for m in messages) and len(messages) == 2
        assert answer["usage"]["completion_tokens"] == 4 and answer["usage"]["prompt_tokens"] == 4
