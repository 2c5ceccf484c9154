"""Which segments of a long input can hold a name or fact of a target, found in one pass over the text.

Name/fact matching (``features.NameMatcher``) is the costliest per-word part of the static stage,
and a long input's segments overlap (every word sits in about three of them), so matching each
segment would read the text three times, mostly to find nothing. Matches are local: one that lies
inside a segment lies inside the text it was cut from (whitespace runs made single spaces, as
segments have them). So the text is matched once, in chunks of ``chunk_words`` words that reach
``reach_words`` further (a match of up to that many words that starts in a chunk is inside its
reach), and only the segments that overlap a chunk with a match are matched on their own. A benign
document is read once; one with a question in it adds the few segments around the question.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from classifiers.base import Deadline

MAX_RESCANS = 8   # per text: segments searched again from its start (its first sentence, after its windows)


def _word_starts(text: str) -> np.ndarray:
    """Character offsets of the words of a single-spaced text (plus its length, as an end marker)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    starts = np.flatnonzero((codes == 32) | (codes == 10)) + 1
    return np.concatenate([[0], starts, [len(text)]]).astype(np.int64)


def _locate(flats: Sequence[str], offsets: Sequence[int], segments: Sequence[str], sources: Sequence[int],
            deadline: Deadline | None = None) -> np.ndarray:
    """[S, 2] character span of each segment in the joined text (-1, -1 where it was not found).

    ``sources[i]``: the text segment ``i`` was cut from (-1: several). A text's segments come in
    order (its windows, then its sentences), so each is searched from the previous one's start,
    and from the start of its text a bounded number of times; any occurrence will do, since a
    segment's matches are its own wherever it sits. Linear in the texts' length."""
    spans = np.full((len(segments), 2), -1, np.int64)
    hints = [0] * len(flats)
    rescans = [0] * len(flats)
    for i, (seg, src) in enumerate(zip(segments, sources)):
        if deadline is not None and i % 512 == 0:
            deadline.check("name matching")
        if src < 0:
            continue
        flat = flats[src]
        pos = flat.find(seg, hints[src])
        if pos < 0 and rescans[src] < MAX_RESCANS:
            rescans[src] += 1
            pos = flat.find(seg)
        if pos >= 0:
            spans[i] = (offsets[src] + pos, offsets[src] + pos + len(seg))
            hints[src] = pos
    return spans


def segments_to_match(texts: Sequence[str], segments: Sequence[str], sources: Sequence[int], has_match: Callable[[str], bool], *,
                      chunk_words: int = 512, reach_words: int = 64, deadline: Deadline | None = None) -> np.ndarray:
    """[S] bool: the segments that must be matched on their own (all others have no match).

    ``sources[i]``: the index in ``texts`` of the text segment ``i`` was cut from (-1: several);
    ``texts`` may overlap (the blocks of ``classifiers.segments``): each is read once."""
    flats = [" ".join(t.split()) if isinstance(t, str) else "" for t in texts]
    offsets = np.concatenate([[0], np.cumsum([len(f) + 1 for f in flats])]).tolist()
    flat = "\n".join(flats)
    starts = _word_starts(flat)
    n_words = len(starts) - 1
    hit_ranges: list[tuple[int, int]] = []
    for w in range(0, max(n_words, 1), chunk_words):
        if deadline is not None:
            deadline.check("name matching")
        a, b = int(starts[w]), int(starts[min(n_words, w + chunk_words + reach_words)])
        if has_match(flat[a:b]):
            hit_ranges.append((a, b))
    need = np.asarray(sources, np.int64) < 0   # segments made of several texts are matched on their own
    if not hit_ranges:
        return need
    spans = _locate(flats, offsets, segments, sources, deadline)
    for a, b in hit_ranges:
        # every match of the chunk lies in [a, b): the segments overlapping it may hold one
        need |= (spans[:, 0] < b) & (spans[:, 1] > a)
    return need | (spans[:, 0] < 0)
