"""Screening an answer while it streams: release what is screened, hold back the rest, stop on a hit.

The stream path feeds each delta the model produces (its text, how many tokens it is, and an opaque
``item``: the chunk as it would be sent) to an ``AnswerScreen``; each ``feed`` returns the items
that may be sent now and, on a hit, an ``OutputHit`` (after which nothing more is released). Items
are released whole and in order, so an unflagged stream reaches the client byte-identical, only
delayed.

Why a hold-back: a name or date is several tokens ("Basil" "Mah" "fouz" "Al" "-K" "uwaiti"); the
first ones say nothing until the last arrives. The last ``holdback_tokens`` tokens are never
released, and text is only judged up to its last complete word (a partial word at the end may
still become a longer one), so any match of up to ``holdback_tokens - 1`` tokens is seen whole
while its first token is still held. With ``semantic`` screening the release point also waits for
the end of the sentence (capped at ``sentence_words`` words) the detector has judged.

Work per step is bounded: each screening matches names/dates/titles in the text since the last
screened word boundary plus ``context_chars`` of text before it (so a match that straddles the
boundary is seen), and the semantic stage judges each sentence once. Without the semantic stage a
stream is screened every ``scan_stride`` tokens (``holdback_tokens // 4``), not every token, and
released in those steps: a chunk goes out only once a screening saw ``holdback_tokens`` tokens after
it, so the guarantee above holds, at a quarter of the matching and of the writes (the first item is
released as soon as the hold-back allows: time to first token is unchanged). Total work is linear in the answer's
length; memory holds the unreleased text plus the context. Deltas that arrive together (one network
read of several events) are fed with ``feed_many`` and screened in one step: what it releases had
the whole batch behind it when screened, so it is screened at least as far ahead as feeding them one
by one would have, and the matcher's fixed cost per step is paid once per batch.
"""

from __future__ import annotations

import bisect
import re
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from classifiers.base import Deadline, Detector
from guard.output_screen.matchers import SEMANTIC, NameFactMatcher

UNSCREENED = "unscreened"      # the semantic stage failed or ran out of time and the policy fails closed
DEFAULT_SENTENCE_WORDS = 48    # a semantic unit without a sentence end is cut here (the detector's window)
NAME_CONTEXT_CHARS = 60        # ``NameFinder.someone_else`` looks this far around a match
SCAN_STRIDE_DIVISOR = 4        # a stream is screened and released every holdback_tokens / 4 tokens (_scan_due)
_NON_WORD = re.compile(r"[\W_]")
_SENTENCE_END = re.compile(r"(?:[.!?\u2026\u3002\uff01\uff1f][\"'\u2019\u201d)\]]*(?=\s)|\n)")


@dataclass(frozen=True)
class OutputHit:
    """Where an answer reveals a forget target, and what the policy does about it.

    ``char_offset``/``token_offset``: where the matched text starts in the answer (characters, and
    tokens before the delta holding it); ``leaked_chars``: how many characters of the match had
    already been released (0 when the hold-back caught it whole); ``action``: the target's
    ``output.action`` (``refuse`` or ``method``); ``text``: the matched text, for the audit log only."""

    target_id: str | None
    reason: str
    char_offset: int
    token_offset: int
    leaked_chars: int
    action: str
    text: str = ""


@dataclass
class ScreenStep:
    """What one ``feed``/``finish`` allows: ``release`` (items, in order) and ``hit`` (None: no hit)."""

    release: list[Any] = field(default_factory=list)
    hit: OutputHit | None = None


class _Chunk(NamedTuple):   # a tuple: one is made per delta
    start: int
    end: int
    tokens: int
    token_end: int         # tokens fed up to and including this chunk
    item: Any


class OutputScreener:
    """The per-policy part (immutable, shared by all answers): what to match and how much to hold.

    ``matcher``: names/dates/titles of the screened targets; ``actions``: target id -> ``refuse`` or
    ``method`` for every screened target (hits on other targets are ignored); ``semantic``: a
    detector whose ``screen([sentence])`` judges each sentence of the answer (None: off);
    ``fail_closed``: a sentence the semantic stage could not judge (an error or ``budget_ms`` out)
    stops the answer (``reason = "unscreened"``) instead of being released unjudged; ``scan_stride``:
    screen (and release) every this many tokens (default ``holdback_tokens // 4``; 1: every token)."""

    def __init__(self, matcher: NameFactMatcher, actions: Mapping[str, str], *, holdback_tokens: int,
                 semantic: Detector | None = None, sentence_words: int = DEFAULT_SENTENCE_WORDS,
                 fail_closed: bool = True, budget_ms: float | None = None, scan_stride: int | None = None) -> None:
        if holdback_tokens < 0:
            raise ValueError("holdback_tokens must be >= 0")
        if scan_stride is not None and scan_stride < 1:
            raise ValueError("scan_stride must be >= 1")
        self.matcher = matcher
        self.actions = dict(actions)
        self.holdback_tokens = holdback_tokens
        self.semantic = semantic
        self.sentence_words = sentence_words
        self.fail_closed = fail_closed
        self.budget_ms = budget_ms
        self.context_chars = matcher.longest_match_chars + NAME_CONTEXT_CHARS
        self.scan_stride = scan_stride or max(1, holdback_tokens // SCAN_STRIDE_DIVISOR)

    @property
    def active(self) -> bool:
        """Whether there is anything to screen (no screened target: answers pass untouched, no lag)."""
        return bool(self.actions)

    def start(self) -> AnswerScreen:
        """The screen of one answer (one choice of one request)."""
        return AnswerScreen(self)

    def screen_text(self, text: str) -> OutputHit | None:
        """A whole answer (non-streamed): the same screening as a stream fed ``text`` at once."""
        answer = self.start()
        step = answer.feed(text, tokens=0)
        return step.hit or answer.finish().hit


class AnswerScreen:
    """The incremental screen of one answer; not thread-safe (one per stream)."""

    def __init__(self, screener: OutputScreener) -> None:
        self._s = screener
        self._pending: deque[_Chunk] = deque()
        self._pending_tokens = 0
        self._tail = ""            # answer text from ``_tail_start`` to the end
        self._tail_start = 0
        self._end = 0              # characters fed
        self._tokens = 0           # tokens fed
        self._released_end = 0
        self._scanned_end = 0      # names/facts judged up to here (a word boundary)
        self._screened_tokens = 0  # tokens fed when the answer was last screened
        self._unit_start = 0       # semantic: judged up to here (a sentence end)
        self._chunk_starts: list[int] = []   # start offset and tokens before each chunk (token offsets of hits)
        self._chunk_tokens: list[int] = []
        self.hit: OutputHit | None = None
        self.unscreened_sentences = 0        # fail-open only: sentences the semantic stage could not judge

    # ------------------------------------------------------------------ public

    @property
    def released_chars(self) -> int:
        return self._released_end

    @property
    def held_tokens(self) -> int:
        return self._pending_tokens

    def feed(self, text: str, tokens: int = 1, item: Any = None) -> ScreenStep:
        """One delta of the answer (``tokens``: how many model tokens it is; ``item``: what to send for
        it, default the text itself; a chunk without text, e.g. the role or the finish reason, is fed
        with ``text=""`` and keeps its place). Returns the items now safe to send, or the hit."""
        if self.hit is not None:
            return ScreenStep(hit=self.hit)
        self._add(text, tokens, item)
        return self._step(final=False)

    def feed_many(self, deltas: Iterable[tuple[str, int, Any]]) -> ScreenStep:
        """Several deltas (``(text, tokens, item)``, as for ``feed``) that arrived together, screened in
        one step: the same release and hit ``feed`` gives for the last of them, once."""
        if self.hit is not None:
            return ScreenStep(hit=self.hit)
        for text, tokens, item in deltas:
            self._add(text, tokens, item)
        return self._step(final=False)

    def _add(self, text: str, tokens: int, item: Any) -> None:
        if text or tokens or item is not None:
            end = self._end + len(text)
            self._chunk_starts.append(self._end)
            self._chunk_tokens.append(self._tokens)
            self._tokens += tokens
            self._pending.append(_Chunk(self._end, end, tokens, self._tokens, text if item is None else item))
            self._pending_tokens += tokens
            self._tail += text
            self._end = end

    def finish(self) -> ScreenStep:
        """The answer is complete: screen the held tail and release it, or the hit."""
        if self.hit is not None:
            return ScreenStep(hit=self.hit)
        return self._step(final=True)

    # ------------------------------------------------------------------ steps

    def _step(self, final: bool) -> ScreenStep:
        s = self._s
        if not s.active:
            self._screened_tokens = self._tokens
            return ScreenStep(release=self._release(self._end, 0))
        if final or s.semantic is not None or self._scan_due():
            scan_end = self._end if final else self._word_boundary()
            if scan_end > self._scanned_end:
                hit = self._match_names(scan_end)
                if hit is not None:
                    return self._stop(hit)
                self._scanned_end = scan_end
            self._screened_tokens = self._tokens
        safe_end = self._scanned_end
        if s.semantic is not None:
            hit = self._judge_sentences(scan_end, final)
            if hit is not None:
                return self._stop(hit)
            safe_end = min(safe_end, self._unit_start)
        out = self._release(safe_end, 0 if final else s.holdback_tokens)
        self._trim()
        return ScreenStep(release=out)

    def _scan_due(self) -> bool:
        """Whether this step screens: ``scan_stride`` tokens came in since the last screening, or the
        answer's first item could be released (so the first token is not delayed). A chunk is only
        released once a screening saw ``holdback_tokens`` tokens after it, so between screenings
        nothing more is released: the stream is released in steps of ``scan_stride`` tokens, one
        match and one write per step instead of per token, and a hit is seen at most
        ``scan_stride`` tokens after its last token arrived."""
        if self._tokens - self._screened_tokens >= self._s.scan_stride:
            return True
        return self._released_end == 0 and bool(self._pending) and (
            self._tokens - self._pending[0].token_end >= self._s.holdback_tokens)

    def _word_boundary(self) -> int:
        """End of the last complete word fed (the offset after the last non-word character), or the
        end itself when the last word is longer than ``context_chars`` (text without spaces: names in
        it match inside running text, and the next window re-reads the end with its context). It
        depends only on the text fed, not on how it was fed: a batch of deltas is screened to where
        the last of them fed one by one would have been screened."""
        reach = self._s.context_chars
        tail, base = self._tail, self._tail_start
        stop = max(0, len(tail) - reach - 1)
        for i in range(len(tail) - 1, stop - 1, -1):
            if _NON_WORD.match(tail, i):
                return max(self._scanned_end, base + i + 1)
        at_start = base + stop == 0   # searched back to the answer's start, which is a boundary
        return max(self._scanned_end, 0 if at_start and self._end <= reach else self._end)

    def _match_names(self, scan_end: int) -> OutputHit | None:
        """Names/dates/titles in the text since the last boundary plus ``context_chars`` before it."""
        start = max(self._tail_start, self._scanned_end - self._s.context_chars)
        if start > self._tail_start:   # begin at a word start: a cut word is no word
            m = re.search(r"\s", self._tail[start - self._tail_start:scan_end - self._tail_start])
            start = start + m.end() if m is not None else start
        window = self._tail[start - self._tail_start:scan_end - self._tail_start]
        if not self._s.matcher:
            return None
        for m in self._s.matcher.matches(window):
            if m.target_id in self._s.actions:
                return self._hit(m.target_id, m.reason, start + m.start, m.text)
        return None

    def _judge_sentences(self, scan_end: int, final: bool) -> OutputHit | None:
        """Each completed sentence (or ``sentence_words`` words) since ``_unit_start``, once."""
        s = self._s
        assert s.semantic is not None
        while True:
            unit_end = self._next_unit_end(scan_end, final)
            if unit_end is None:
                return None
            unit = self._tail[self._unit_start - self._tail_start:unit_end - self._tail_start]
            if unit.strip():
                try:
                    deadline = Deadline.after_ms(s.budget_ms) if s.budget_ms else None
                    verdict = s.semantic.screen([unit], deadline)
                except Exception:  # noqa: BLE001 - a sentence not judged goes to the fail mode, never silently out
                    if s.fail_closed:
                        return self._hit(None, UNSCREENED, self._unit_start, "", action="refuse")
                    self.unscreened_sentences += 1
                else:
                    if verdict.flagged and verdict.target_id in s.actions:
                        return self._hit(verdict.target_id, SEMANTIC, self._unit_start, unit.strip()[:200])
            self._unit_start = unit_end

    def _next_unit_end(self, scan_end: int, final: bool) -> int | None:
        base = self._tail_start
        segment = self._tail[self._unit_start - base:scan_end - base]
        m = _SENTENCE_END.search(segment)
        words = list(re.finditer(r"\S+", segment[:m.end()] if m else segment))
        if len(words) > self._s.sentence_words:
            return self._unit_start + words[self._s.sentence_words - 1].end()
        if m is not None:
            return self._unit_start + m.end()
        if final and scan_end > self._unit_start:
            return scan_end
        return None

    # ------------------------------------------------------------------ bookkeeping

    def _hit(self, target_id: str | None, reason: str, offset: int, text: str, action: str | None = None) -> OutputHit:
        k = max(0, bisect.bisect_right(self._chunk_starts, offset) - 1)
        tokens = self._chunk_tokens[k] if self._chunk_tokens else 0
        return OutputHit(target_id, reason, offset, tokens, max(0, self._released_end - offset),
                         action or self._s.actions.get(target_id or "", "refuse"), text)

    def _stop(self, hit: OutputHit) -> ScreenStep:
        self.hit = hit
        self._pending.clear()
        self._pending_tokens = 0
        return ScreenStep(hit=hit)

    def _release(self, safe_end: int, keep_tokens: int) -> list[Any]:
        out: list[Any] = []
        while self._pending:
            chunk = self._pending[0]
            if chunk.end > safe_end or self._screened_tokens - chunk.token_end < keep_tokens:
                break
            self._pending.popleft()
            self._pending_tokens -= chunk.tokens
            self._released_end = chunk.end
            out.append(chunk.item)
        return out

    def _trim(self) -> None:
        """Drop text nothing will read again (keeps the window bounded)."""
        keep_from = min(self._scanned_end - self._s.context_chars - 1, self._unit_start,
                        self._pending[0].start if self._pending else self._end)
        if keep_from > self._tail_start + 4096:
            self._tail = self._tail[keep_from - self._tail_start:]
            self._tail_start = keep_from
