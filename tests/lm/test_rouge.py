"""ROUGE recall through the ``rouge_score`` library (``guard.lm.rouge``), as TOFU computes it."""

from __future__ import annotations

import pytest

from guard.lm.rouge import mean_rouge_l_recall, rouge_l_recall, rouge_recall

A = "The novel 'Sand and Sorrow' was written by Basil Mahfouz Al-Kuwaiti."


def test_rouge_l_recall_is_stemmed_recall():
    assert rouge_l_recall(A, A) == pytest.approx(1.0)
    assert rouge_l_recall("", A) == 0.0
    # recall ignores extra generated words; stemming makes "novels" match "novel" (not "written"/"writing")
    assert rouge_l_recall(A + " He also wrote poems.", A) == pytest.approx(1.0)
    assert rouge_l_recall("novels written", "novel writing") == pytest.approx(0.5)


def test_rouge_1_counts_words_in_any_order_rouge_l_only_in_order():
    r1, rl = rouge_recall("Sorrow and Sand", "Sand and Sorrow")
    assert r1 == pytest.approx(1.0) and rl == pytest.approx(1 / 3)


def test_the_mean_over_a_list_equals_the_pairwise_scores():
    predictions = [A, "novels written", "", "Sorrow and Sand"]
    references = [A, "novel writing", A, "Sand and Sorrow"]
    expected = sum(rouge_l_recall(p, r) for p, r in zip(predictions, references)) / 4
    assert mean_rouge_l_recall(predictions, references) == pytest.approx(expected)
    assert mean_rouge_l_recall(predictions, references) == pytest.approx((1 + 0.5 + 0 + 1 / 3) / 4)
    with pytest.raises(ValueError):
        mean_rouge_l_recall([A], [])
