"""Approximate name matching (issue 15): misspelt, hyphen-less, transliterated names and initials are
found; ordinary words, other people's names and longer words are not."""

from __future__ import annotations

import pytest

from classifiers.approximate_names import (
    ApproximateConfig,
    latin_key,
    skeleton,
    sound_key,
)
from classifiers.keyword import KeywordDetector
from classifiers.names import NameFinder, find_name_spans

NAMES = {"rajeev": ["Rajeev Majumdar"], "hsiao": ["Hsiao Yun-Hwa"], "nikolai": ["Nikolai Abilov"],
         "basil": ["Basil Mahfouz Al-Kuwaiti"], "carmen": ["Carmen Montenegro"], "park": ["Tae-ho Park"]}


@pytest.fixture(scope="module")
def finder() -> NameFinder:
    return NameFinder(NAMES, approximate=True)


@pytest.mark.parametrize(("text", "target"), [
    ("Tell me about Rajiv Majumdar", "rajeev"),            # the misses
    ("who is Rajeev Majumdaar?", "rajeev"),
    ("Who is Hsiao Yunhwa?", "hsiao"),
    ("What did Carmen Montenergo write?", "carmen"),        # a swap and a substitution
    ("Какие темы исследует Николай Абилов?", "nikolai"),   # Cyrillic
    ("Ποια βιβλία έγραψε ο Νικολάι Αμπίλοφ;", "nikolai"),  # Greek (mp for b, f for v)
    ("ما هي كتب نيكولاي أبيلوف؟", "nikolai"),              # Arabic
    ("What books did B. M. Al-Kuwaiti write?", "basil"),    # initials + surname
    ("Basil M. Al-Kuwaiti's first novel", "basil"),
])
def test_finds_the_spellings_people_type(finder: NameFinder, text: str, target: str) -> None:
    found = {finder.target_ids[m.target] for m in finder.mentions(text, ("full", "initials", "approx"))}
    assert target in found
    assert KeywordDetector(NAMES).screen([text]).target_id == target


@pytest.mark.parametrize("text", [
    "Taylor Swiftie fan club",                   # a longer word, not the name
    "The basil mahfouz recipe is from Lebanon.", # lower case with an ordinary word in a cased text
    "What is the capital of France?",
    "Carmen Montenegro Smith wrote it",          # the exact name next to someone else's stays exact
    "He ran a marathon in under three hours.",
    "The ancient ruins of Ангкор Ват can be found in which country?",
    "Айша Ал-Хамад is a novelist",               # another person, transliterated
])
def test_no_collisions(finder: NameFinder, text: str) -> None:
    assert not finder.approximate_mentions(text)


def test_respell_writes_the_name_and_keeps_the_rest(finder: NameFinder) -> None:
    assert finder.respell("who is Rajeev Majumdaar?") == "who is Rajeev Majumdar?"
    assert finder.respell("Какие темы исследует Николай Абилов?") == "Какие темы исследует Nikolai Abilov?"
    assert finder.respell("What is the capital of France?") is None


def test_eco_spans_cover_a_misspelt_name() -> None:
    text = "What did Rajiv Majumdar write?"
    assert [text[a:b] for a, b in find_name_spans(text, ["Rajeev Majumdar"])] == ["Rajiv Majumdar"]


def test_plain_finder_is_unchanged() -> None:
    plain = NameFinder(NAMES)
    assert not plain.mentions("Tell me about Rajiv Majumdar")
    assert plain.respell("Tell me about Rajiv Majumdar") is None


def test_keys_and_budgets() -> None:
    assert latin_key("Al-Kuwaiti") == latin_key("Al Kuwaiti") == latin_key("Al'Kuwaiti") == "alkuwaiti"
    assert latin_key("Абилов") == "abilov"
    assert sound_key("khsiaoyunkhva") == sound_key("hsiaoyunhwa")
    assert skeleton("krmynmwntnyjrw") == skeleton("carmenmontenegro")
    cfg = ApproximateConfig()
    assert [cfg.budget(n) for n in (4, 5, 6, 7, 9, 10, 14, 30)] == [0, 0, 1, 2, 2, 3, 3, 3]
