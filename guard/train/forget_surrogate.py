"""The forget-quality surrogate a trainer chooses a method's strength with, without the retain twin.

TOFU's forget quality is the KS test between the forget answers' truth ratios under the method and
under a model that never saw the target (the retain twin). A deployer has no such twin, but has the
served model itself on questions about people it never saw, with TOFU's paraphrased and perturbed
answers (``retain_perturbed`` rows 360:400 for the mini preset: authors outside both twins' data).
The level to reach is the *clean* model's truth ratios there: a model that never learned the target
is indifferent between the true answer and its perturbations, not anti-correlated, so a method can
over-forget (truth ratio past 1) as well as under-forget.

* ``TruthRatioItem`` / ``truth_ratio_items``: a question with its gold, paraphrased and perturbed
  answers, read from ``tofu_qa`` rows that carry them;
* ``Level``: the clean model's truth ratios and gold NLL on the never-seen QA;
* ``surrogate``: KS statistic and |difference of mean log truth ratio| between the method's forget
  truth ratios and the level, and their sum ``J``;
* ``lexicographic_choice``: among feasible settings, the smallest KS statistic, ties to the smallest
  strength (the least intervention). J's smooth term breaks KS ties toward over-forgetting when the
  never-seen level sits above the twin's (measured on tofu-micro), so the rule does not use it.

The truth ratio and KS test are ``guard.eval.tofu_metrics``'s, the numbers forget quality is made of.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from classifiers.sources import QARecord
from guard.errors import ConfigError
from guard.eval.tofu_metrics import ks_test, truth_ratios


@dataclass(frozen=True)
class TruthRatioItem:
    """One QA pair with TOFU's paraphrased answer and perturbed (wrong) answers."""

    question: str
    answer: str
    paraphrased: str
    perturbed: tuple[str, ...]
    source: str
    row: int

    @property
    def answers(self) -> tuple[str, ...]:
        """Gold, paraphrased, then each perturbed answer (the order every score list follows)."""
        return (self.answer, self.paraphrased, *self.perturbed)


def truth_ratio_items(records: Sequence[QARecord], param: str) -> list[TruthRatioItem]:
    """The records as truth-ratio items; a row without ``paraphrased_answer`` or a non-empty
    ``perturbed_answer`` list is an error naming ``param`` (use TOFU's ``*_perturbed`` files)."""
    out = []
    for rec in records:
        para, pert = rec.extra.get("paraphrased_answer"), rec.extra.get("perturbed_answer")
        if not isinstance(para, str) or not para.strip() or not isinstance(pert, list) or not pert \
                or not all(isinstance(p, str) and p.strip() for p in pert):
            raise ConfigError(f"{rec.source} row {rec.row} has no paraphrased_answer / perturbed_answer list: the truth "
                              "ratio needs them (use TOFU's *_perturbed.json files)", param=param)
        out.append(TruthRatioItem(rec.question, rec.answer, para, tuple(pert), rec.source, rec.row))
    return out


def item_truth_ratios(losses: Sequence[Sequence[float]]) -> np.ndarray:
    """Per item ``exp(paraphrased NLL - mean perturbed NLL)`` from its losses in ``answers`` order."""
    return truth_ratios([x[1] for x in losses], [list(x[2:]) for x in losses])


@dataclass(frozen=True)
class Level:
    """The clean model on never-seen QA: the truth ratios a never-trained model gives, and its gold NLL."""

    truth_ratios: np.ndarray
    gold_nll: float

    @classmethod
    def from_losses(cls, losses: Sequence[Sequence[float]]) -> "Level":
        return cls(item_truth_ratios(losses), float(np.mean([x[0] for x in losses])))

    def describe(self) -> dict[str, Any]:
        tr = self.truth_ratios
        return {"n": int(len(tr)), "truth_ratio_mean": float(np.mean(tr)), "mean_log_truth_ratio": float(np.mean(np.log(tr))),
                "gold_nll": self.gold_nll, "prob": float(np.exp(-self.gold_nll))}


def surrogate(forget_truth_ratios: np.ndarray, level: Level) -> dict[str, float]:
    """``ks_d``/``ks_p``: KS test of the forget truth ratios vs the level's (forget quality's own test,
    never-seen QA in place of the twin); ``dlogtr``: |difference of mean log truth ratio|; ``J``: their sum."""
    p, d = ks_test(forget_truth_ratios, level.truth_ratios)
    with np.errstate(divide="ignore"):
        dlog = abs(float(np.mean(np.log(forget_truth_ratios))) - float(np.mean(np.log(level.truth_ratios))))
    return {"ks_d": d, "ks_p": p, "dlogtr": dlog, "J": d + dlog}


def check_forget_every(every: int) -> None:
    """A search reads every ``every``-th forget item: at least 2, so a share stays out of the choice."""
    if every < 2:
        raise ConfigError("--search-forget-every must be >= 2 (one share of the forget items stays out of the choice)",
                          param="search_forget_every")


def split_halves(forget: Sequence[Any], every: int) -> tuple[list[Any], list[Any]]:
    """Every ``every``-th forget item (tuned: the search reads them) and the rest (held out: reported,
    never used to choose); fewer than ``every`` items is an error naming ``forget_data``."""
    if len(forget) < every:
        raise ConfigError(f"{len(forget)} forget item(s): the search needs at least {every} (one tuned, the rest held out)",
                          param="forget_data")
    return list(forget[::every]), [x for i, x in enumerate(forget) if i % every]


def never_seen_holdout(ref: Any, forget_questions: set[str], purpose: str) -> list[TruthRatioItem]:
    """The ``--holdout`` QA (``ref``: a ``SourceRef``) as truth-ratio items; a row that is one of the
    policy's forget questions is an error naming ``holdout`` (the reference must be about other people)."""
    from classifiers.sources import read_qa

    holdout = truth_ratio_items(read_qa(ref.source, ref.param, purpose=purpose), ref.param)
    overlap = [h.row for h in holdout if h.question in forget_questions]
    if overlap:
        raise ConfigError(f"--holdout rows {overlap[:5]} are forget questions of the policy: the never-seen reference "
                          "must be QA about other people", param="holdout")
    return holdout


def lexicographic_choice(rows: Sequence[dict[str, Any]], strength: str,
                         feasible: Callable[[dict[str, Any]], bool] = lambda r: bool(r.get("feasible", True))) -> dict[str, Any]:
    """The feasible row with the smallest ``ks_d`` (to 1e-9), ties to the smallest ``strength``;
    every row when none is feasible."""
    pool = [r for r in rows if feasible(r)] or list(rows)
    if not pool:
        raise ValueError("no setting to choose from")
    return min(pool, key=lambda r: (round(float(r["ks_d"]), 9), float(r[strength])))
