"""How much of a request the guard screens, and what happens to the rest: ``detector.max_screen_tokens``.

Screening is linear in the input's length, so a length limit is a time limit known before any work:
a request over it is decided by the policy at once (its fail mode, or covering windows) instead of
being screened until the budget runs out. The unit, a *screen token*, is the whitespace-separated
word (the unit of ``detector.window_words``), a run of more than ``MAX_WORD_CHARS`` characters
without a space counting as one per ``MAX_WORD_CHARS``: text without spaces (4 MiB of quotes, one
base64 blob, a script written without spaces) is screened in pieces of that size, so it is neither
one unbounded segment nor free of the length limit.
"""

from __future__ import annotations

import re
from typing import Iterator, Sequence

from classifiers.base import Deadline, ScreeningIncomplete

LENGTH_PARAM = "detector.max_screen_tokens"
MAX_WORD_CHARS = 32   # longer than any word of ordinary text (so prose is unchanged)
_LONG_RUN = re.compile(r"(\S{%d})(?=\S)" % MAX_WORD_CHARS)


SLICE_CHARS = 1 << 16  # long texts are worked through in slices: no single C call holds the GIL for long


def slices(text: str) -> Iterator[str]:
    """Consecutive pieces of ``text`` of about ``SLICE_CHARS`` characters, cut at a space where there
    is one (a run without spaces is cut anywhere: it is cut into ``MAX_WORD_CHARS`` pieces anyway)."""
    start = 0
    while len(text) - start > SLICE_CHARS:
        end = text.rfind(" ", start + SLICE_CHARS // 2, start + SLICE_CHARS)
        end = start + SLICE_CHARS if end < 0 else end
        yield text[start:end]
        start = end
    yield text[start:]


def wrap_long_words(text: str, deadline: Deadline | None = None) -> str:
    """``text`` with a space after every ``MAX_WORD_CHARS`` characters of a longer run (linear-time;
    a ``deadline`` check between slices)."""
    if len(text) <= SLICE_CHARS:
        return _LONG_RUN.sub(r"\1 ", text)
    return " ".join(_wrap_slice(part, deadline) for part in slices(text))


def _wrap_slice(part: str, deadline: Deadline | None) -> str:
    if deadline is not None:
        deadline.check("counting")
    return _LONG_RUN.sub(r"\1 ", part)


def count_words(texts: Sequence[str], deadline: Deadline | None = None) -> int:
    """Screen tokens of all ``texts``: their words, long runs counted per ``MAX_WORD_CHARS`` (a
    ``deadline`` check every ``SLICE_CHARS`` characters, however they are split into texts)."""
    words = chars = 0
    for text in texts:
        if not isinstance(text, str):
            continue
        for part in slices(text):
            chars += len(part)
            if deadline is not None and chars >= SLICE_CHARS:
                deadline.check("counting")
                chars = 0
            words += len(_LONG_RUN.sub(r"\1 ", part).split())
    return words


def check_length(texts: Sequence[str], max_words: int, deadline: Deadline | None = None) -> None:
    """Raise ``ScreeningIncomplete`` (param ``detector.max_screen_tokens``) for more than ``max_words``."""
    words = count_words(texts, deadline)
    if words > max_words:
        raise ScreeningIncomplete(f"the input has {words:,} words, more than this guard screens ({LENGTH_PARAM} = {max_words:,}); "
                                  "send a shorter input", param=LENGTH_PARAM)
