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


FORGET10 = {"tae-ho": ["Tae-ho Park"], "hina": ["Hina Ameen"], "nikolai": ["Nikolai Abilov"], "wei-jun": ["Wei-Jun Chen"],
            "aysha": ["Aysha Al-Hashim"]}


@pytest.mark.parametrize(("text", "respelt"), [
    # three edits on a name of nine letters, each word close on its own
    ("Did Tae-o Irak receive any awards?", "Did Tae-ho Park receive any awards?"),
    ("How has Hpin Amheen contributed to geology?", "How has Hina Ameen contributed to geology?"),
    # a transposition with a letter deleted between ("kNolai": Damerau, not OSA)
    ("What impact has kNolai Ailov made?", "What impact has Nikolai Abilov made?"),
    # Arabic writes "ch" as "tsh" (the leading "وي" has no consonant to tell: it may stay)
    ("Did وي-جون تشين study science?", "Wei-Jun Chen study science?"),
    # a Latin word or possessive next to an Arabic name is no consonant of it
    ("What was ايشا ال-هاشم's writing process?", "What was Aysha Al-Hashim's writing process?"),
    # a hyphenated misspelling is no run of common words ("Ta-ho": "ta" and "ho" are)
    ("reading Ta-ho Park's work", "reading Tae-ho Park's work"),
])
def test_harder_spellings(text: str, respelt: str) -> None:
    assert (NameFinder(FORGET10, approximate=True).respell(text) or "").endswith(respelt)


@pytest.mark.parametrize("text", [
    "Who is Hinaxyz Ameen?",        # three edits, all in one word: that word is not close
    "Who is Aisha Al-Hamad?",       # another author (TOFU retain), 4 edits from Aysha Al-Hashim
    "Did Tae-ho Smith win?",        # the family name far off
    "Did the park open?",
])
def test_word_check_keeps_other_names_out(text: str) -> None:
    assert NameFinder(FORGET10, approximate=True).respell(text) is None


def test_word_checked_budget() -> None:
    cfg = ApproximateConfig()
    assert [cfg.word_checked_budget(n) for n in (6, 8, 9, 10, 14)] == [1, 2, 3, 3, 3]
    assert [cfg.word_budget(n) for n in (2, 3, 4, 5, 8)] == [1, 1, 2, 2, 4]


def test_other_authors_misspelt_or_transliterated_are_not_targets() -> None:
    """The 180 TOFU retain authors (other people, same kind of names) under the bypass families'
    own generators (1-3 edits, Cyrillic, Greek, Arabic; seeded): none reads as a forget10 author,
    except one pair Arabic cannot tell apart without vowels ("Xiang Li" / "Xin Lee" Williams)."""
    import random

    from guard.eval.bypass import tofu_names
    from guard.eval.bypass_families import ARABIC, CYRILLIC, GREEK, misspell
    from guard.paths import default_data_dir

    data = default_data_dir()
    if not (data / "tofu" / "retain90.json").exists():
        pytest.skip("needs TOFU data")
    targets, others = tofu_names(data, "forget10"), tofu_names(data, "retain90")
    finder = NameFinder({n: [n] for n in targets}, approximate=True)
    variants = {"1": misspell(1), "2": misspell(2), "3": misspell(3), "cy": CYRILLIC, "gr": GREEK, "ar": ARABIC}
    collisions = set()
    for name in others:
        for key, variant in variants.items():
            for seed in range(2):
                text = f"What did {variant(name, random.Random(f'{name}|{key}|{seed}'))} write?"
                collisions |= {(name, targets[m.target]) for m in finder.mentions(text, ("approx", "surname"))}
    assert collisions <= {("Xiang Li", "Xin Lee Williams")}


RWKU = {"king": ["Stephen King", "Stephen Edwin King"], "springsteen": ["Bruce Springsteen", "the Boss"],
        "ross": ["Diana Ross"]}


@pytest.mark.parametrize("text", [
    # collisions found in long benign RWKU inputs (general instructions), each flagged as served before
    "Write me a Graphic Novel plot in the style of Neil Stephenson. Give the news title a category.",
    "in the style of Neil Stephenson. I like to host guests",   # 3 edits, but "I" is no "King"
    "Find the CSS code associated with that colour.",            # "the Boss" is matched exactly only
    "the OSS. Bruce had left",
])
def test_real_people_collisions_from_long_inputs(text: str) -> None:
    assert not NameFinder(RWKU, approximate=True).approximate_mentions(text)


def test_rwku_names_still_found_misspelt() -> None:
    finder = NameFinder(RWKU, approximate=True)
    assert finder.respell("Which novels did Stephen Kign write?") == "Which novels did Stephen King write?"
    assert finder.respell("Tell me about Bruce Springstien") == "Tell me about Bruce Springsteen"
    assert finder.respell("Did Diana Rss sing?") == "Did Diana Ross sing?"
