"""Screen tokens (``detector.max_screen_tokens``): words, with long runs without spaces counted in pieces."""

from __future__ import annotations

import pytest

from classifiers.base import ScreeningIncomplete
from classifiers.limits import MAX_WORD_CHARS, SLICE_CHARS, check_length, count_words, slices, wrap_long_words


def test_words_and_long_runs() -> None:
    assert count_words(["Who wrote  it?\n\nTell me.", ""]) == 5
    run = "x" * (3 * MAX_WORD_CHARS + 1)
    assert count_words([run]) == 4 and wrap_long_words(run).split() == ["x" * MAX_WORD_CHARS] * 3 + ["x"]
    assert wrap_long_words("ordinary words stay as they are") == "ordinary words stay as they are"


def test_long_texts_are_counted_in_slices_exactly() -> None:
    text = "alpha beta gamma " * (SLICE_CHARS // 5)
    assert "".join(slices(text)) == text and max(len(p) for p in slices(text)) <= SLICE_CHARS
    assert count_words([text]) == len(text.split())
    no_spaces = "“" * (5 * SLICE_CHARS)
    assert abs(count_words([no_spaces]) - len(no_spaces) / MAX_WORD_CHARS) <= 5  # one piece per slice boundary at most


def test_check_length_names_the_policy_field() -> None:
    check_length(["a b c"], 3)
    with pytest.raises(ScreeningIncomplete) as err:
        check_length(["a b c", "d"], 3)
    assert err.value.param == "detector.max_screen_tokens" and "4 words" in err.value.message
