"""What of a request is scored: segments covering every word of every text, however long.

Each text is a segment on its own when it is short; a longer one is cut into overlapping word
windows and into its sentences (``classifiers.text.windows``: a question buried after thousands of
words of filler is still scored on its own); with several turns, the last ones joined are one more
segment (a question split across turns). There is no cap that drops part of a text: the cost is
linear in the length, and what the guard will not screen in full is decided before segmentation
(``classifiers.limits``, ``detector.max_screen_tokens``).

A very long text is segmented in *blocks* of ``BLOCK_WORDS`` words that overlap by a window, so no
single regex or join runs over megabytes at once (each such C call holds the GIL, and the server's
event loop shares it); windows fall where they would without blocks, and a sentence crossing a
block boundary is still inside a window. Segments are single-spaced substrings of their *units*
(the short texts and the blocks), which lets ``classifiers.mention_scan`` find them again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from classifiers.base import Deadline
from classifiers.text import windows

BLOCK_WORDS = 2048


@dataclass(frozen=True)
class Segmentation:
    segments: list[str]
    sources: list[int]   # per segment, the index in ``units`` it was cut from (-1: several texts, or a covering window)
    units: list[str]     # single-spaced stretches of the input (short texts, blocks of long ones)


def segment(texts: Sequence[str], window_words: int, max_windows: int | None = None, *,
            block_words: int = BLOCK_WORDS, deadline: Deadline | None = None) -> Segmentation:
    """The segments of ``texts``. ``max_windows``: if there would be more segments than that, the
    texts are screened as one in about ``max_windows`` wide windows instead (``cover_segments``: no
    sentences on their own, so a short question inside a wide window is diluted); the detector asks
    for that only where a policy chose it above ``max_screen_tokens``."""
    segs: list[str] = []
    sources: list[int] = []
    units: list[str] = []
    seen: set[str] = set()

    def add(s: str, source: int) -> None:
        s = s.strip()
        if s and s not in seen:
            seen.add(s)
            segs.append(s)
            sources.append(source)

    clean = [t for t in texts if isinstance(t, str) and t.strip()]
    stride = max(1, window_words // 2)
    block = stride * max(1, block_words // stride)  # blocks start on window positions
    since_check = 0
    for text in clean:
        words = text.split()
        for start in range(0, len(words), block):
            since_check += min(block, len(words) - start)
            if deadline is not None and since_check >= block:  # per block of words, however split into texts
                deadline.check("segmentation")
                since_check = 0
            units.append(" ".join(words[start:start + block + window_words]))
            for w in windows(units[-1], size=window_words, stride=stride):
                add(w, len(units) - 1)
                if max_windows is not None and len(segs) > max_windows:
                    return _covered(clean, window_words, max_windows)
            if start + block + window_words >= len(words):
                break
    if len(clean) > 1:
        joined = [w for t in clean[-4:] for w in t.split()]
        if len(joined) <= window_words:
            add(" ".join(joined), -1)
    if max_windows is not None and len(segs) > max_windows:
        return _covered(clean, window_words, max_windows)
    return Segmentation(segs, sources, units)


def segment_texts(texts: Sequence[str], window_words: int, max_windows: int | None = None) -> list[str]:
    """The segments screened for ``texts`` (see ``segment``)."""
    return segment(texts, window_words, max_windows).segments


def _covered(clean: Sequence[str], window_words: int, max_windows: int) -> Segmentation:
    segs = cover_segments(clean, window_words, max_windows)
    return Segmentation(segs, [-1] * len(segs), [])


def cover_segments(texts: Sequence[str], window_words: int, max_windows: int) -> list[str]:
    """About ``max_windows`` half-overlapping word windows covering every word of ``texts``."""
    toks = [w for t in texts for w in t.split()]
    if not toks:
        return []
    size = max(window_words, -(-2 * len(toks) // max(1, max_windows)))
    stride = max(1, size // 2)
    return [" ".join(toks[i:i + size]) for i in range(0, max(1, len(toks) - size + stride), stride)]
