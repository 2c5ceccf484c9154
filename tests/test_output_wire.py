"""``guard.output_wire``: forwarded answers read off the wire and screened event by event."""

from __future__ import annotations

import json
import random

from guard.output_guard import ChoicePart, OutputGuard
from guard.output_screen import NameFactMatcher, OutputScreener
from guard.output_wire import SseSplitter, answer_texts, event_json, event_parts, screened_events

NAME = "Basil Mahfouz Al-Kuwaiti"


def chat_event(index: int, content: str | None = None, finish: str | None = None, **delta) -> bytes:
    d = {"content": content, **delta} if content is not None else delta
    obj = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 7, "model": "m",
           "choices": [{"index": index, "delta": d, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_splitter_returns_whole_events_whatever_the_reads():
    events = [chat_event(0, "Hello"), chat_event(0, " world"), b"event: response.created\r\ndata: {}\r\n\r\n",
              b"data: [DONE]\n\n"]
    stream = b"".join(events)
    rng = random.Random(3)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(stream)), 6))
        splitter, got = SseSplitter(), []
        for a, b in zip([0, *cuts], [*cuts, len(stream)]):
            got += splitter.feed(stream[a:b])
        assert got == events and splitter.rest() == b""


def test_event_parts_read_every_text_a_client_sees():
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"who": "Basil"}'}}
    assert event_parts(event_json(chat_event(1, "Hi"))) == [ChoicePart(1, "Hi")]
    assert event_parts(event_json(chat_event(0, tool_calls=[call]))) == [ChoicePart(0, 'lookup {"who": "Basil"}')]
    assert event_parts(event_json(chat_event(0, "", finish="stop"))) == [ChoicePart(0, "", 0, True)]
    completion = {"choices": [{"index": 0, "text": "Paris", "finish_reason": None}]}
    assert event_parts(completion) == [ChoicePart(0, "Paris")]
    assert event_parts({"type": "response.output_text.delta", "delta": "Bas"}) == [ChoicePart(0, "Bas")]
    assert event_parts({"type": "response.created", "response": {}}) == []
    assert event_parts(event_json(b"data: [DONE]\n\n")) == []
    assert event_parts({"choices": [], "usage": {"prompt_tokens": 3}}) == []


def test_answer_texts_of_whole_answers():
    chat = {"choices": [{"index": 0, "message": {"content": "A", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}, {"index": 1, "message": {"content": "B"}}]}
    assert list(answer_texts(chat)) == ["A f {}", "B"]
    responses = {"output": [{"type": "message", "content": [{"type": "output_text", "text": "C"}]},
                            {"type": "function_call", "name": "g", "arguments": "{\"x\": 1}"}]}
    assert list(answer_texts(responses)) == ["C", "g {\"x\": 1}"]


async def _reads(chunks: list[bytes], closed: list[bool]):
    try:
        for chunk in chunks:
            yield chunk
    finally:
        closed.append(True)


def _guard(hits: list) -> OutputGuard:
    screener = OutputScreener(NameFactMatcher({"basil": [NAME]}, {}), {"basil": "refuse"}, holdback_tokens=8)

    async def reanswer(hit):
        raise AssertionError("the continuation is the caller's")

    return OutputGuard(screener, reanswer, hits.append)


async def test_an_unflagged_stream_is_byte_identical():
    events = [chat_event(0, "", role="assistant")] + [chat_event(0, w) for w in ["The ", "sky ", "is ", "blue", "."]]
    events += [chat_event(0, "", finish="stop"), b"data: [DONE]\n\n"]
    stream = b"".join(events)
    closed, hits = [], []

    async def never(hit, head, finished):
        raise AssertionError("no hit expected")
        yield b""

    reads = [stream[i:i + 37] for i in range(0, len(stream), 37)]
    out = b"".join([b async for b in screened_events(_reads(reads, closed), _guard(hits), never)])
    assert out == stream and closed == [True] and not hits


async def test_a_leaking_stream_is_cut_and_continued_under_the_upstreams_id():
    words = ["The ", "author ", "is ", "Basil ", "Mahfouz ", "Al-Kuwaiti", ", ", "born ", "in ", "Kuwait ", "City", "."]
    events = [chat_event(0, "", role="assistant")] + [chat_event(0, w) for w in words] + [chat_event(0, "", finish="stop"),
                                                                                       b"data: [DONE]\n\n"]
    closed, hits, seen = [], [], {}

    async def continue_with(hit, head, finished):
        seen.update(head=head, finished=finished)
        yield b"data: {\"replacement\": true}\n\ndata: [DONE]\n\n"

    out = b"".join([b async for b in screened_events(_reads(events, closed), _guard(hits), continue_with)])
    assert b"Basil" not in out and out.endswith(b"data: [DONE]\n\n") and out.count(b"[DONE]") == 1
    assert closed == [True] and len(hits) == 1 and hits[0].leaked_chars == 0
    assert seen == {"head": {"id": "chatcmpl-up", "created": 7, "model": "m"}, "finished": set()}
