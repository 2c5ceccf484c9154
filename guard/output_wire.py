"""Forwarded vLLM answers through the output screen (``guard.output_guard``): their text, read off
the wire, and ``screened_events``, the forwarded stream held back and screened.

A forwarded stream arrives as network reads that do not respect event boundaries; ``SseSplitter``
cuts it into whole SSE events (bytes kept exactly as received, so a released stream is the
upstream's bytes). ``event_parts`` says which choice's text each event adds: chat deltas (content,
refusal, tool-call names and arguments), completion text, Responses text/argument deltas. A whole
(non-streamed) answer gives its per-choice texts through ``answer_texts``.
"""

from __future__ import annotations

import json
import re
from typing import Any, AsyncIterator, Callable, Iterator

from guard.answer_stream import aclose_quietly
from guard.output_guard import ChoicePart, OutputGuard, Released
from guard.output_screen import OutputHit

Continuation = Callable[[OutputHit, dict[str, Any], Released], AsyncIterator[bytes]]

_SEPARATORS = (b"\r\n\r\n", b"\n\n")
_SSE_LINE_END = re.compile(r"\r\n|\r|\n")
_MESSAGE_TEXT_FIELDS = ("content", "refusal", "reasoning_content")
_RESPONSES_TEXT_EVENTS = ("response.output_text.delta", "response.function_call_arguments.delta",
                          "response.refusal.delta", "response.reasoning_text.delta")


class SseSplitter:
    """Whole SSE events (each with its trailing blank line) out of arbitrary byte reads."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer = self._buffer + data if self._buffer else data
        if b"\r" not in self._buffer:   # the usual case (vLLM's ``\n\n``): one split, no search per event
            *whole, self._buffer = self._buffer.split(b"\n\n")
            return [event + b"\n\n" for event in whole]
        events = []
        while True:
            cut = min(((i, sep) for sep in _SEPARATORS if (i := self._buffer.find(sep)) >= 0), default=None)
            if cut is None:
                return events
            end = cut[0] + len(cut[1])
            events.append(self._buffer[:end])
            self._buffer = self._buffer[end:]

    def rest(self) -> bytes:
        """What came after the last complete event (normally nothing)."""
        rest, self._buffer = self._buffer, b""
        return rest


def event_json(event: bytes) -> dict[str, Any] | None:
    """The JSON object of an event's ``data:`` lines (None: ``[DONE]``, a comment, not JSON)."""
    if event.startswith(b"data:") and event.find(b"\n") == len(event) - 2 and event.endswith(b"\n\n"):  # one line
        data = event[5:-2].strip()
        if data == b"[DONE]" or not data:
            return None
        try:   # strict UTF-8 here; anything else is read below as the client's decoder reads it
            obj = json.loads(data.decode("utf-8"))
        except ValueError:
            pass
        else:
            return obj if isinstance(obj, dict) else None
    # lines end as SSE ends them (CR LF, LF or CR; not ``str.splitlines``' U+2028 etc., which a JSON
    # string may hold raw and a client does not split on)
    lines = [line[5:].strip() for line in _SSE_LINE_END.split(event.decode("utf-8", "replace")) if line.startswith("data:")]
    data = "\n".join(lines)
    if not data or data == "[DONE]":
        return None
    try:
        obj = json.loads(data)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _tool_call_text(calls: Any) -> str:
    parts = []
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts += [str(function.get("name") or ""), str(function.get("arguments") or "")]
    return " ".join(p for p in parts if p)


def _choice_text(choice: dict[str, Any]) -> str:
    """A streamed chat delta's or completion choice's text (a whole message's, for answers)."""
    if "text" in choice:
        return str(choice.get("text") or "")
    message = choice.get("delta")
    if not isinstance(message, dict):
        message = choice.get("message")
        if not isinstance(message, dict):
            return ""
    text = ""
    for key in _MESSAGE_TEXT_FIELDS:
        value = message.get(key)
        if value:
            text += str(value)
    calls = _tool_call_text(message["tool_calls"]) if message.get("tool_calls") else ""
    return f"{text} {calls}" if calls and text else text or calls


def event_parts(obj: dict[str, Any] | None) -> list[ChoicePart]:
    """Which choices' text one event adds (chat and completion chunks; Responses events: choice 0)."""
    if obj is None:
        return []
    kind = obj.get("type")
    if isinstance(kind, str):
        if kind in _RESPONSES_TEXT_EVENTS:
            return [ChoicePart(0, str(obj.get("delta") or ""))]
        return []
    parts = []
    for choice in obj.get("choices") or []:
        if isinstance(choice, dict):
            text = _choice_text(choice)
            finished = choice.get("finish_reason") is not None
            if text or finished:
                parts.append(ChoicePart(int(choice.get("index") or 0), text, 1 if text else 0, finished))
    return parts


def answer_texts(answer: dict[str, Any]) -> Iterator[str]:
    """Every text a whole answer shows the client: each choice's message or text, and a Responses
    answer's output items (text, refusals, function-call arguments)."""
    for choice in answer.get("choices") or []:
        if isinstance(choice, dict):
            yield _choice_text(choice)
    for item in answer.get("output") or []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            yield f"{item.get('name') or ''} {item.get('arguments') or ''}"
        for part in item.get("content") or []:
            if isinstance(part, dict):
                yield str(part.get("text") or part.get("refusal") or "")


def stream_head(obj: dict[str, Any] | None) -> dict[str, Any]:
    """The ``id``/``created``/``model``/``system_fingerprint`` of a forwarded stream's first chunk, so
    a replacement continues it under the same id."""
    if obj is None:
        return {}
    return {k: obj[k] for k in ("id", "created", "model", "system_fingerprint") if k in obj}


async def screened_events(reads: AsyncIterator[bytes], guard: OutputGuard, continue_with: Continuation
                          ) -> AsyncIterator[bytes]:
    """A forwarded stream's bytes, released whole event by whole event once screened; on a hit the
    upstream is closed (vLLM aborts the request) and ``continue_with(hit, head, released)`` streams
    the rest (``head``: the first chunk's id/created/model; ``released``: what the client has of each choice)."""
    splitter = SseSplitter()
    screens = guard.screens()
    head: dict[str, Any] = {}
    released = Released()
    hit: OutputHit | None = None

    def sent(release: list[Any]) -> bytes:
        for _, parts in release:
            released.note(parts)
        return b"".join(event for event, _ in release)

    try:
        async for data in reads:
            batch = []
            for event in splitter.feed(data):   # the events of one read are screened in one step
                obj = event_json(event)
                head = head or stream_head(obj)
                parts = event_parts(obj)
                batch.append(((event, parts), parts))
            if not batch:
                continue
            step = await guard.step_many(screens, batch) if guard.off_loop else screens.feed_many(batch)
            if out := sent(step.release):
                yield out
            if step.hit is not None:
                hit = step.hit
                break
        else:
            step = await guard.end(screens)
            hit = step.hit
            if hit is None and (out := sent(step.release) + splitter.rest()):
                yield out
    finally:
        await aclose_quietly(reads)
    if hit is not None:
        guard.on_hit(hit)
        async for frame in continue_with(hit, head, released):
            yield frame
