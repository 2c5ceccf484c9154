"""One approximate-name pass per request (issue 18's cost bound after issue 15's matching): the texts
of a request are matched joined, with the same results as one by one, and no name is read across
two texts."""

from __future__ import annotations

import pytest

from classifiers.approximate_names import ApproximateNames
from classifiers.keyword import KeywordDetector
from classifiers.names import NameFinder
from classifiers.normalize import Respelling, deobfuscate

NAMES = {"rajeev": ["Rajeev Majumdar"], "hsiao": ["Hsiao Yun-Hwa"], "nikolai": ["Nikolai Abilov"],
         "basil": ["Basil Mahfouz Al-Kuwaiti"], "carmen": ["Carmen Montenegro"], "park": ["Tae-ho Park"]}

TEXTS = [
    "who is Rajeev Majumdaar?",
    "Какие темы исследует Николай Абилов?",
    "What books did B. M. Al-Kuwaiti write?",
    "the basil mahfuz recipe",             # lower case in a text without capitals: still the name
    "The basil mahfouz recipe is from Lebanon.",  # ... but not in a text that uses capitals
    "Carmen Montenergo Smith wrote it",
    "Taylor Swiftie fan club",
    "",
    "Rajiv",
    "Majumdar",
    "Hsiao Yunhwa, Hsiao Yunhwa and Rajiv Majumdar",
]


@pytest.fixture(scope="module")
def finder() -> NameFinder:
    return NameFinder(NAMES, approximate=True)


def test_respelling_texts_together_is_respelling_each(finder: NameFinder) -> None:
    together = finder.respell_texts(TEXTS)
    assert together == [finder.respell(t) for t in TEXTS]
    assert together[0] == "who is Rajeev Majumdar?"
    assert together[3] == "the Basil Mahfouz Al-Kuwaiti recipe"
    assert together[4] is None


def test_mentions_by_text_are_each_texts_mentions(finder: NameFinder) -> None:
    kinds = ("full", "given", "initials", "approx")
    assert finder.mentions_by_text(TEXTS, kinds) == [finder.mentions(t, kinds) for t in TEXTS]


def test_no_name_is_read_across_two_texts(finder: NameFinder) -> None:
    assert finder.respell_texts(["Tell me about Rajiv", "Majumdaar please"]) == [None, None]
    assert not KeywordDetector(NAMES).screen(["Tell me about Rajiv", "Majumdaar please"]).flagged
    assert KeywordDetector(NAMES).screen(["Tell me about Rajiv Majumdaar", "please"]).flagged


def test_a_text_holding_the_joint_character_is_still_respelt(finder: NameFinder) -> None:
    assert finder.respell_texts(["who is Rajeev Majumdaar?\x00", "Rajiv Majumdar"]) == [
        "who is Rajeev Majumdar?\x00", "Rajeev Majumdar"]


def test_many_turns_cost_a_fixed_number_of_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The approximate pass runs a bounded number of times per request, not once per turn."""
    respelling = Respelling.for_names(NAMES)
    calls = []
    original = ApproximateNames.find

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ApproximateNames, "find", counting)
    # (a NUL in a turn, the character that joins them, does not make it one pass per turn)
    turns = ["Part 2: hello\x00 there."] * 200 + ["Tell me about Rajiv Majumdaar", "Части: Николай Абилов"]
    out = deobfuscate(turns, respelling)
    assert out is not None
    assert out[200] == "Tell me about Rajeev Majumdar"
    assert out[201].endswith(": Nikolai Abilov")
    assert len(calls) <= 4
