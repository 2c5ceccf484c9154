"""Long benign text made of runs of short texts: the one builder behind the detector's long-input
calibration (``classifiers.train_calibration``) and the detector evaluation's long filler and long
negative sets (``guard.eval.detector``). Deterministic given the pool's order and the ``rng``."""

from __future__ import annotations

import random
from typing import Sequence


def filler_text(pool: Sequence[str], words: int, rng: random.Random) -> str:
    """Texts drawn from ``pool`` (with replacement) and joined by spaces until there are at least
    ``words`` words. ``pool`` must not be empty."""
    parts: list[str] = []
    count = 0
    while count < words:
        parts.append(rng.choice(pool))
        count += len(parts[-1].split())
    return " ".join(parts)


def long_benign_texts(pool: Sequence[str], n: int, words: int, rng: random.Random) -> list[str]:
    """``n`` texts of about ``words`` words each from ``pool`` (none when the pool is empty)."""
    return [filler_text(pool, words, rng) for _ in range(n)] if pool else []
