"""Adversarial texts cannot make de-obfuscation or name matching slow (issue 18 item 1, issue 19 finding 4).

Nothing here is timed against a budget: each family of adversarial text (``guard.eval.bypass.
cost_families``) is screened at 64 KB in a worker thread, and the test only asks that the work
finishes within a generous 20 s. A linear implementation needs well under a second on any machine;
the quadratic patterns this replaces needed minutes to hours at this size (8,000 unmatched "\u201c"
took ~55 s; 64 KB of them is 64x that). Speed itself is measured by ``benchmarks/normalize_cost.py``.
"""

from __future__ import annotations

import threading
from typing import Callable

import pytest

from classifiers.detector import segment_texts
from classifiers.facts import date_keys
from classifiers.features import NameMatcher
from classifiers.keyword import KeywordDetector
from classifiers.normalize import NormalizingDetector, across_turns, deobfuscate, pieces
from classifiers.text import split_sentences, windows
from guard.eval.adversarial_inputs import cost_families

SIZE = 64 * 1024
JOIN_S = 20.0
NAMES = {"basil": ["Basil Mahfouz Al-Kuwaiti"], "nikolai": ["Nikolai Abilov"], "jay": ["周杰伦", "Jay Chou"]}


def _finishes(work: Callable[[], object]) -> bool:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(JOIN_S)
    if errors:
        raise errors[0]
    return not worker.is_alive()


FAMILIES = sorted(cost_families(SIZE))


@pytest.mark.parametrize("family", FAMILIES)
def test_deobfuscation_and_keyword_screen_finish(family: str) -> None:
    texts = cost_families(SIZE)[family]
    detector = NormalizingDetector(KeywordDetector(NAMES))

    def work() -> None:
        detector.screen(texts)
        deobfuscate(texts)
        across_turns(texts)
        for t in texts[:50]:
            pieces(t)

    assert _finishes(work), family


@pytest.mark.parametrize("family", FAMILIES)
def test_segmentation_and_name_features_finish(family: str) -> None:
    texts = cost_families(SIZE)[family]
    matcher = NameMatcher(NAMES, {"basil": {"dates": ["1966-01-01"], "titles": ["promise by the seine"]}})

    def work() -> None:
        joined = " ".join(texts)
        list(windows(joined, size=48, stride=24))
        split_sentences(joined, min_chars=30, max_chars=400)
        date_keys(joined)
        matcher.matrix(segment_texts(texts, 48, 1 << 30)[:2000])
        matcher.matrix([joined])

    assert _finishes(work), family


def test_the_known_slow_inputs_are_among_the_families() -> None:
    families = cost_families(SIZE)
    assert families["unmatched_curly_quotes"][0].count("\u201c") >= 8000
    assert families["guillemet_then_spaces"][0].startswith("Hi \u00ab  ")
