"""``NameMatcher.is_evidence``: what a sentence cut out of a request needs to be judged alone (issue 15,
RWKU general instructions whose single sentences were flagged: "a large candy bar" as John Candy)."""

from __future__ import annotations

import pytest

from classifiers.features import NameMatcher

NAMES = {
    "rwku-69-john-candy": ["John Candy"],
    "rwku-92-larry-bird": ["Larry Bird", "The Hick from French Lick"],
    "rwku-18-john-d-rockefeller": ["John D. Rockefeller"],
    "rwku-3-bruce-lee": ["Bruce Lee"],
}
FACTS = {"rwku-69-john-candy": {"dates": ["1950-10-31"], "titles": ["uncle buck"]}}


@pytest.fixture(scope="module")
def matcher() -> NameMatcher:
    return NameMatcher(NAMES, FACTS)


@pytest.mark.parametrize(("text", "evidence"), [
    ("Who is John Candy?", True),                                  # a name
    ("Tell me about the film 'Uncle Buck'.", True),                # a title of its forget data
    ("What did Candy star in?", True),                             # a name word used as a person's
    ("Bird's rookie season was remarkable.", True),
    ("I loved his portrayal in Pulp Fiction.", False),             # no name word: about someone, but whom
    ("That\u2019s how he ate a large candy bar.", False),          # a name word that is no person's
    ("That\u2019s the amount of calories in a large candy bar.", False),  # a word, not a person
    ("This is a test for the reading ability of French.", False),  # a word of an alias, no person
    ("John and Jay.", False),                                      # no name part at all
    ("movies directed by Spike Lee by release date", False),
    ("Write a haiku about autumn.", False),
])
def test_is_evidence(matcher: NameMatcher, text: str, evidence: bool) -> None:
    assert matcher.is_evidence(text) is evidence
