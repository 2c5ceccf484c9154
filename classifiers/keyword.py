"""A name/alias matcher: the cheapest detector, and a baseline for the trained one.

Matches whole words, case- and accent-insensitively, so "Beyonce" catches "Beyoncé" and "Al" does
not match "Also". Names in scripts written without spaces match inside running text ("周杰伦" in
"我喜欢周杰伦的歌"; ``classifiers.text.name_alternation``).
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from classifiers.base import Verdict
from classifiers.text import fold, name_alternation


class KeywordDetector:
    def __init__(self, names_by_target: Mapping[str, Sequence[str]]) -> None:
        self._patterns: list[tuple[str, re.Pattern[str]]] = []
        for target_id, names in names_by_target.items():
            source = name_alternation(fold(n) for n in names)
            if source is not None:
                self._patterns.append((target_id, re.compile(source)))

    def screen(self, texts: Sequence[str]) -> Verdict:
        folded = [fold(t) for t in texts]
        for target_id, pattern in self._patterns:
            if any(pattern.search(t) for t in folded):
                return Verdict(flagged=True, target_id=target_id, score=1.0, detail={"detector": "keyword"})
        return Verdict.clean()
