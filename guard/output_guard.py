"""Output screening in the serving path (issue #14): every answer the guard sends is screened as it
streams, whichever path produced it (a forwarded vLLM answer, the local engine, a method).

``guard.output_screen`` screens one answer's text (``AnswerScreen``: feed deltas, get back what is
safe to send, or a hit). This module applies it to the two kinds of stream the service produces:

* ``screened_chunks``: an engine/intervention ``GenerationChunk`` stream (one screen per choice);
* ``screened_events``: a forwarded upstream's SSE events, as raw bytes (``guard.output_wire`` reads
  the text of each event), so an unflagged answer reaches the client byte-identical, only delayed
  by the hold-back window.

On a hit the producing stream is closed at once (vLLM's request is aborted when its connection
closes; a local generation is cancelled), ``OutputGuard.on_hit`` audits and counts it, and the
choices that had not finished continue with ``OutputGuard.reanswer(hit)``: the target's method
answering the request from the start (itself screened: a method answer that leaks again is
replaced by the refusal) or the refusal. What the client already received was screened; nothing of
the window that matched is ever sent.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, NamedTuple, Sequence

from guard.answer_stream import aclose_quietly
from guard.engines.base import GenerationChunk
from guard.output_screen import AnswerScreen, OutputHit, OutputScreener, ScreenStep


CUT_SEPARATOR = "\n\n"
"""Put between the text a client already received of a choice and the replacement answer that
continues it, so the cut prefix and the new answer do not run together ("The leaderI'm sorry")."""


@dataclass
class Released:
    """What the client has received of each choice so far: the choices that finished and those
    with some text, so a replacement answer skips the first and separates itself from the second."""

    finished: set[int] = field(default_factory=set)
    spoke: set[int] = field(default_factory=set)

    def note(self, parts: Iterable[ChoicePart]) -> None:
        for part in parts:
            if part.text:
                self.spoke.add(part.index)
            if part.finished:
                self.finished.add(part.index)


class ChoicePart(NamedTuple):   # a tuple: one is made per streamed event
    """The text one stream item adds to choice ``index`` (``finished``: the item ends that choice)."""

    index: int
    text: str
    tokens: int = 1
    finished: bool = False


class ChoiceScreens:
    """One ``AnswerScreen`` per choice over one ordered stream of items.

    An item (an SSE event, a chunk) may carry text of several choices, or none (a usage chunk,
    ``[DONE]``); it is released once every choice it carries has released it, and never before an
    earlier item, so the client gets the items in their order.

    ``hold_all``: a choice's items are released only when that choice is finished and screened
    whole (structured answers: a JSON prefix followed by a replacement would parse as neither)."""

    def __init__(self, screener: OutputScreener, hold_all: bool = False) -> None:
        self._screener = screener
        self._hold_all = hold_all
        self._deferred: dict[int, list[int]] = {}
        self._screens: dict[int, AnswerScreen] = {}
        self._order: deque[list[Any]] = deque()   # [seq, item, choices still holding it]
        self._by_seq: dict[int, list[Any]] = {}
        self._seq = 0
        self.finished: set[int] = set()           # choices whose last item was fed
        self.hit: OutputHit | None = None

    def feed(self, item: Any, parts: Sequence[ChoicePart]) -> ScreenStep:
        return self.feed_many([(item, parts)])

    def feed_many(self, items: Sequence[tuple[Any, Sequence[ChoicePart]]]) -> ScreenStep:
        """Items that arrived together (one network read): each choice screens its deltas of the
        batch in one step (``AnswerScreen.feed_many``), a choice that finishes is screened whole."""
        if self.hit is not None:
            return ScreenStep(hit=self.hit)
        batch: dict[int, list[tuple[str, int, int]]] = {}
        for item, parts in items:
            seq, self._seq = self._seq, self._seq + 1
            entry = [seq, item, len(parts)]
            self._order.append(entry)
            self._by_seq[seq] = entry
            for part in parts:
                batch.setdefault(part.index, []).append((part.text, part.tokens, seq))
                if part.finished and not self._screen_batch(part.index, batch.pop(part.index), finished=True):
                    return ScreenStep(hit=self.hit)
        for index, deltas in batch.items():
            if not self._screen_batch(index, deltas, finished=False):
                return ScreenStep(hit=self.hit)
        return ScreenStep(release=self._releasable())

    def _screen_batch(self, index: int, deltas: list[tuple[str, int, int]], finished: bool) -> bool:
        """Choice ``index``'s deltas of one batch (the last one ending it when ``finished``); False: a hit."""
        screen = self._screens.get(index)
        if screen is None:
            screen = self._screens[index] = self._screener.start()
        step = screen.feed_many(deltas)
        if step.hit is None and finished:
            self.finished.add(index)
            done = screen.finish()
            step = ScreenStep(step.release + done.release, done.hit)
        if step.hit is not None:
            self._stop(step.hit)
            return False
        self._mark_choice(index, step.release, finished)
        return True

    def finish(self) -> ScreenStep:
        """The stream ended: screen and release every choice's held tail (or the hit)."""
        if self.hit is not None:
            return ScreenStep(hit=self.hit)
        for index, screen in self._screens.items():
            step = screen.finish()
            if step.hit is not None:
                return self._stop(step.hit)
            self._mark_choice(index, step.release, True)
            self.finished.add(index)
        return ScreenStep(release=self._releasable())

    def _mark_choice(self, index: int, seqs: list[int], finished: bool) -> None:
        if self._hold_all:
            deferred = self._deferred.setdefault(index, [])
            deferred += seqs
            if not finished:
                return
            seqs = self._deferred.pop(index)
        self._mark(seqs)

    def _mark(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            entry = self._by_seq.get(seq)
            if entry is not None:
                entry[2] -= 1

    def _releasable(self) -> list[Any]:
        out = []
        while self._order and self._order[0][2] <= 0:
            seq, item, _ = self._order.popleft()
            del self._by_seq[seq]
            out.append(item)
        return out

    def _stop(self, hit: OutputHit) -> ScreenStep:
        self.hit = hit
        self._order.clear()
        self._by_seq.clear()
        return ScreenStep(hit=hit)


@dataclass(frozen=True)
class OutputGuard:
    """What one request's answer is screened with and what a hit does.

    ``reanswer(hit)``: the replacement answer's chunks (the method's, or the refusal's);
    ``on_hit(hit)``: the audit line and the metrics. ``off_loop``: the screen calls the detector
    (``output.semantic``), so each step runs in a worker thread instead of on the event loop."""

    screener: OutputScreener
    reanswer: Callable[[OutputHit], Awaitable[AsyncIterator[GenerationChunk]]]
    on_hit: Callable[[OutputHit], None]
    hold_all: bool = False   # structured answers (response_format, forced tools): released whole

    def screens(self) -> ChoiceScreens:
        return ChoiceScreens(self.screener, self.hold_all)

    @property
    def off_loop(self) -> bool:
        return self.screener.semantic is not None

    async def step(self, screens: ChoiceScreens, item: Any, parts: Sequence[ChoicePart]) -> ScreenStep:
        return await self.step_many(screens, [(item, parts)])

    async def step_many(self, screens: ChoiceScreens, items: Sequence[tuple[Any, Sequence[ChoicePart]]]) -> ScreenStep:
        if self.off_loop:
            return await asyncio.to_thread(screens.feed_many, items)
        return screens.feed_many(items)

    async def end(self, screens: ChoiceScreens) -> ScreenStep:
        if self.off_loop:
            return await asyncio.to_thread(screens.finish)
        return screens.finish()


def chunk_parts(chunk: GenerationChunk) -> list[ChoicePart]:
    """The text of an engine chunk as the client will read it: its text and, on a choice's last
    chunk, the tool calls' names and arguments."""
    text = chunk.text
    if chunk.tool_calls:
        text += "".join(f" {call.name} {call.arguments}" for call in chunk.tool_calls)
    return [ChoicePart(chunk.index, text, len(chunk.token_ids) or (1 if text else 0), chunk.finish_reason is not None)]


async def screened_chunks(chunks: AsyncIterator[GenerationChunk], guard: OutputGuard | None
                          ) -> AsyncIterator[GenerationChunk]:
    """``chunks`` released as they pass the screen (held back by the window); on a hit, closed and
    continued with the replacement for the choices that had not finished."""
    if guard is None or not guard.screener.active:
        async for chunk in chunks:
            yield chunk
        return
    screens = guard.screens()
    released = Released()
    hit: OutputHit | None = None
    try:
        async for chunk in chunks:
            step = await guard.step(screens, chunk, chunk_parts(chunk))
            for item in step.release:
                released.note(chunk_parts(item))
                yield item
            if step.hit is not None:
                hit = step.hit
                break
        else:
            step = await guard.end(screens)
            for item in step.release:
                yield item
            hit = step.hit
    finally:
        await aclose_quietly(chunks)  # aborts the upstream request / cancels the local generation
    if hit is None:
        return
    guard.on_hit(hit)
    async for chunk in continuation(await guard.reanswer(hit), released):
        yield chunk


async def continuation(chunks: AsyncIterator[GenerationChunk], released: Released) -> AsyncIterator[GenerationChunk]:
    """A replacement answer as the rest of what the client received: without the choices it already
    saw finish, and with ``CUT_SEPARATOR`` before the first text of a choice it saw begin (closed
    when done)."""
    separate = set(released.spoke - released.finished)
    try:
        async for chunk in chunks:
            if chunk.index in released.finished:
                continue
            if chunk.index in separate and (chunk.text or chunk.finish_reason is not None):
                separate.discard(chunk.index)
                chunk = replace(chunk, text=CUT_SEPARATOR + chunk.text)
            yield chunk
    finally:
        await aclose_quietly(chunks)
