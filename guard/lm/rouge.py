"""ROUGE recall as TOFU and open-unlearning compute it: the ``rouge_score`` package,
``RougeScorer(['rouge1', 'rougeL'], use_stemmer=True).score(reference, prediction)``; recall =
overlap / number of reference tokens (lower-cased, punctuation dropped, Porter-stemmed).

A scorer costs a few microseconds to build, so each call builds its own: no shared state (and
``mean_rouge_l_recall`` one per list, which keeps ``rouge_score``'s "Using default tokenizer" log line to one)."""

from __future__ import annotations

from typing import Sequence


def rouge_recall(prediction: str, reference: str) -> tuple[float, float]:
    """(ROUGE-1 recall, ROUGE-L recall) of ``prediction`` against ``reference``."""
    from rouge_score import rouge_scorer

    scores = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True).score(reference, prediction)
    return float(scores["rouge1"].recall), float(scores["rougeL"].recall)


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall of ``prediction`` against ``reference`` (stemmed)."""
    return rouge_recall(prediction, reference)[1]


def mean_rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L recall of ``predictions`` against ``references`` (pairwise, stemmed), one scorer."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not predictions:
        raise ValueError("mean_rouge_l_recall needs as many predictions as references, at least one")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return sum(float(scorer.score(r, p)["rougeL"].recall) for p, r in zip(predictions, references)) / len(predictions)
