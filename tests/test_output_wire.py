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

    async def never(hit, head, released):
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

    async def continue_with(hit, head, released):
        seen.update(head=head, finished=released.finished, spoke=released.spoke)
        yield b"data: {\"replacement\": true}\n\ndata: [DONE]\n\n"

    out = b"".join([b async for b in screened_events(_reads(events, closed), _guard(hits), continue_with)])
    assert b"Basil" not in out and out.endswith(b"data: [DONE]\n\n") and out.count(b"[DONE]") == 1
    assert closed == [True] and len(hits) == 1 and hits[0].leaked_chars == 0
    assert seen == {"head": {"id": "chatcmpl-up", "created": 7, "model": "m"}, "finished": set(), "spoke": set()}


async def test_a_continuation_knows_which_choices_the_client_saw_begin():
    """What was released before the cut (a choice's first words) is what the continuation must
    separate itself from (``Released.spoke``)."""
    words = "Here is a short summary of what I know about the writer you asked me about . The author is".split()
    words += ["Basil", "Mahfouz", "Al-Kuwaiti", "."]
    events = [chat_event(0, "", role="assistant")] + [chat_event(0, w + " ") for w in words]
    events += [chat_event(0, "", finish="stop"), b"data: [DONE]\n\n"]
    seen = {}

    async def continue_with(hit, head, released):
        seen.update(finished=released.finished, spoke=released.spoke)
        yield b"data: [DONE]\n\n"

    out = b"".join([b async for b in screened_events(_reads(events, []), _guard([]), continue_with)])
    assert b"Here " in out and b"Basil" not in out and seen == {"finished": set(), "spoke": {0}}


async def test_events_coalesced_into_one_read_are_screened_together_and_released_unchanged():
    """Under load one read carries several events: they are screened in one step, and an unflagged
    stream still comes out byte for byte, whatever the reads' boundaries."""
    text = "The sea covers most of the planet and holds most of its water, salt and life. " * 6
    events = [chat_event(0, "", role="assistant")] + [chat_event(0, w + " ") for w in text.split()]
    events += [chat_event(0, "", finish="stop"), b"data: [DONE]\n\n"]
    stream = b"".join(events)

    async def never(hit, head, released):
        raise AssertionError("no hit expected")
        yield b""

    for per_read in (1, 3, 16, len(events)):
        reads = [b"".join(events[i:i + per_read]) for i in range(0, len(events), per_read)]
        closed, hits = [], []
        out = b"".join([b async for b in screened_events(_reads(reads, closed), _guard(hits), never)])
        assert out == stream and closed == [True] and not hits
    rng = random.Random(5)
    cuts = sorted(rng.sample(range(1, len(stream)), 40))
    reads = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    out = b"".join([b async for b in screened_events(_reads(reads, []), _guard([]), never)])
    assert out == stream


async def test_a_name_spread_over_the_events_of_one_read_is_cut_before_any_of_it_is_sent():
    words = ["Sure", ", ", "the ", "author ", "is ", "B", "as", "il ", "Mah", "fo", "uz ", "Al", "-K", "uw", "ait", "i", "."]
    events = [chat_event(0, w) for w in words] + [chat_event(0, "", finish="stop"), b"data: [DONE]\n\n"]
    reads = [b"".join(events[:5]), b"".join(events[5:])]   # the name arrives whole in one read

    async def continue_with(hit, head, finished):
        yield b"data: [DONE]\n\n"

    hits: list = []
    out = b"".join([b async for b in screened_events(_reads(reads, []), _guard(hits), continue_with)])
    assert b'"B"' not in out and b"Mah" not in out and len(hits) == 1 and hits[0].leaked_chars == 0


async def test_a_line_separator_inside_an_events_json_does_not_hide_its_text():
    """U+2028, U+0085 and the like are not SSE line ends (a JSON string may hold them raw, as vLLM
    writes non-ASCII): the event's text is read and screened like any other."""
    for separator in ("\u2028", "\u0085", "\x1c"):
        obj = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 7, "model": "m",
               "choices": [{"index": 0, "delta": {"content": f"It is{separator}{NAME}."}, "finish_reason": None}]}
        event = b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
        assert event_parts(event_json(event)) == [ChoicePart(0, f"It is{separator}{NAME}.")]
        crlf = b"event: message\r\n" + event[:-2] + b"\r\n\r\n"   # the general path reads it too
        assert event_parts(event_json(crlf)) == [ChoicePart(0, f"It is{separator}{NAME}.")]

        async def continue_with(hit, head, finished):
            yield b"data: [DONE]\n\n"

        hits: list = []
        out = b"".join([b async for b in screened_events(_reads([event, b"data: [DONE]\n\n"], []), _guard(hits),
                                                         continue_with)])
        assert NAME.encode() not in out and len(hits) == 1


def test_event_json_reads_single_and_multi_line_data_alike():
    obj = {"choices": [{"index": 0, "text": "caf\u00e9"}]}
    one = b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"
    assert event_json(one) == obj
    assert event_json(b'data: {"choices":\ndata: [{"index": 0, "text": "caf\xc3\xa9"}]}\n\n') == obj
    assert event_json(b": keep-alive\n\n") is None and event_json(b"data: [DONE]\n\n") is None
    assert event_json(b"data: [1, 2]\n\n") is None and event_json(b"data: {not json\n\n") is None
    assert event_json(b'data: {"t": "\xff"}\n\n') == {"t": "\ufffd"}   # not UTF-8: read as a client's decoder reads it
