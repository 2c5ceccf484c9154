"""Tokenizer-side helpers shared by both engines: chat rendering with spans, incremental decoding,
and stop-string matching that never leaks a partial stop string into a stream."""

from __future__ import annotations

import bisect
from typing import Any, Sequence

from guard.engines.base import MessageSpan, RenderedPrompt


def render_chat(tokenizer: Any, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> RenderedPrompt:
    """Render with the model's chat template and locate each message's content in tokens.

    Contents are found verbatim in the rendered text, in order; templates that rewrite content
    (rare) leave that message without a span rather than with a wrong one.
    """
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    starts = [o[0] for o in offsets]
    spans: list[MessageSpan] = []
    cursor = 0
    for message in messages:
        content = message.get("content") or ""
        if not content:
            continue
        pos = text.find(content, cursor)
        if pos < 0:
            continue
        end = pos + len(content)
        cursor = end
        tok_start = max(bisect.bisect_right(starts, pos) - 1, 0)
        if offsets[tok_start][1] <= pos:
            tok_start += 1
        while tok_start > 0 and offsets[tok_start - 1][1] > pos:  # byte tokens of one multi-byte first char
            tok_start -= 1
        tok_end = bisect.bisect_left(starts, end)
        spans.append(MessageSpan(message["role"], tok_start, tok_end, pos, end))
    return RenderedPrompt(text=text, token_ids=ids, spans=tuple(spans), offsets=tuple(offsets))


def render_text_prompt(tokenizer: Any, prompt: str) -> RenderedPrompt:
    """A text-completion prompt as a ``RenderedPrompt``: no template, the whole prompt is one
    user-content span, tokenised with the tokenizer's default special tokens (as the engines
    generate from it)."""
    enc = tokenizer(prompt, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = tuple(tuple(o) for o in enc["offset_mapping"])
    content = [i for i, (s, e) in enumerate(offsets) if e > s]
    start, end = (content[0], content[-1] + 1) if content else (0, 0)
    spans = (MessageSpan("user", start, end, 0, len(prompt)),) if content else ()
    return RenderedPrompt(text=prompt, token_ids=ids, spans=spans, offsets=offsets)


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas, holding back incomplete UTF-8."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._emitted = 0

    def push(self, token_ids: Sequence[int]) -> str:
        self._ids.extend(token_ids)
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        delta = text[self._emitted:]
        self._emitted = len(text)
        return delta


class StopMatcher:
    """Feeds text deltas; returns what may be emitted and whether a stop string was reached.

    The stop string itself is not emitted (OpenAI semantics). Text that could still become a stop
    string is held back until it cannot.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return delta
        buf = self._pending + delta
        hits = [(buf.find(s), s) for s in self._stops if s in buf]
        if hits:
            self.stopped = True
            self._pending = ""
            return buf[: min(h[0] for h in hits)]
        hold = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        self._pending = buf[len(buf) - hold:] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return "" if self.stopped else out
