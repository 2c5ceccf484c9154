"""ROUGE recall as TOFU and open-unlearning compute it: the ``rouge_score`` package,
``RougeScorer(['rouge1', 'rougeL'], use_stemmer=True).score(reference, prediction)``; recall =
overlap / number of reference tokens (lower-cased, punctuation dropped, Porter-stemmed).

A scorer costs a few microseconds to build, so each call builds its own: no shared state."""

from __future__ import annotations


def rouge_recall(prediction: str, reference: str) -> tuple[float, float]:
    """(ROUGE-1 recall, ROUGE-L recall) of ``prediction`` against ``reference``."""
    from rouge_score import rouge_scorer

    scores = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True).score(reference, prediction)
    return float(scores["rouge1"].recall), float(scores["rougeL"].recall)


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall of ``prediction`` against ``reference`` (stemmed)."""
    return rouge_recall(prediction, reference)[1]
