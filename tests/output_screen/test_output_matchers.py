"""The answer-side matcher's titles: a title made only of common words counts where the answer writes it
as a title, not where the same words are an ordinary phrase ("a dollar bill", "the letter S")."""

from __future__ import annotations

import pytest

from guard.output_screen import TITLE, NameFactMatcher
from guard.output_screen.matchers import TargetFacts, written_as_a_title

MATCHER = NameFactMatcher({"lil-wayne": ["Lil Wayne"], "basil": ["Basil Mahfouz Al-Kuwaiti"]},
                          {"lil-wayne": TargetFacts(titles=("dollar bill", "can't stop the feeling", "the doors")),
                           "basil": TargetFacts(titles=("promise by the seine",))})


def titles(text: str) -> list[str]:
    return [m.text for m in MATCHER.matches(text) if m.reason == TITLE]


@pytest.mark.parametrize("text, found", [
    ("A dollar bill would be legal to keep.", []),                          # the ordinary phrase
    ("The general rule is that the dollar bill must be kept safe.", []),
    ("Dollar bills are printed in Washington.", []),                        # sentence start alone is no title
    ("His single 'Dollar Bill' was a hit.", ["Dollar Bill"]),               # quoted
    ("His single “dollar bill” was a hit.", ["dollar bill"]),               # curly quotes, any case
    ("His single Dollar Bill was a hit.", ["Dollar Bill"]),                 # title case
    ("Can't Stop the Feeling! topped the charts.", ["Can't Stop the Feeling"]),
    ("The lead singer of the Doors was a poet.", ["the Doors"]),            # a minor word may stay lower case
    ("Close the doors behind you.", []),
    ("His novel promise by the seine sold well.", ["promise by the seine"]),  # a distinctive title: any case
])
def test_a_common_word_title_counts_only_where_written_as_a_title(text, found):
    assert titles(text) == found


def test_written_as_a_title_reads_quotes_and_capitals():
    text = 'a dollar bill, "dollar bill", Dollar Bill, Dollar bill'
    spans = [(i, i + len("dollar bill")) for i in range(len(text)) if text[i:i + 11].lower() == "dollar bill"]
    assert [written_as_a_title(text, a, b) for a, b in spans] == [False, True, True, False]
