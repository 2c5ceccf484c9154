"""TOFU metrics, as TOFU (legacy ``aggregate_eval_stat.py``) and open-unlearning define them.

All inputs are *per-token average* negative log-likelihoods of an answer given its question
(``avg_gt_loss``, ``avg_paraphrased_loss``, ``average_perturb_loss`` in the official logs), so a
probability is ``exp(-avg_loss)``, the geometric mean of the answer's token probabilities.

- **Probability** (forget, retain): mean over items of ``exp(-gt_loss)``.
- **Probability with options** (real authors, world facts): mean over items of
  ``p(gt) / (p(gt) + sum_j p(perturbed_j))``.
- **ROUGE** : mean ROUGE-L recall of the greedy answer against the ground truth (``rouge_score``).
- **Truth ratio**, per item: ``R = exp(paraphrased_loss - mean_j perturbed_loss_j)``, i.e. the
  geometric-mean probability of the perturbed (wrong) answers over the probability of the
  paraphrased (right) one. This is the ``truth_ratio`` the official logs store per item.
  Aggregated as ``mean(max(0, 1 - R))`` ("true better": retain, real authors, world facts) or
  ``mean(min(R, 1/R))`` ("closer to 1 better": forget).
- **Forget quality**: p-value of the two-sample KS test between the forget-set truth ratios ``R`` of
  the evaluated model and of the retain model (the model never trained on the forget set).
- **Model utility**: harmonic mean of the 9 numbers (Prob, ROUGE, Truth ratio) x (retain, real
  authors, world facts).

Output keys follow open-unlearning's names; :data:`LEGACY_NAMES` maps them to the legacy CSV's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from guard.eval.metrics import compute, harmonic_mean, register

SPLITS = ("forget", "retain", "real", "world")


@dataclass(frozen=True)
class SplitScores:
    """Per-item scores of one model on one TOFU eval split (all lists aligned by item).

    ``gt_loss``: per-token average NLL of the ground-truth answer. ``paraphrased_loss``: the same for
    the paraphrased answer (for real authors / world facts, which have no paraphrase, the ground
    truth itself). ``perturbed_losses``: per item, the per-token average NLL of each perturbed
    (wrong) answer. ``rougeL_recall``: ROUGE-L recall of the generated answer vs the ground truth.
    """

    gt_loss: Sequence[float]
    paraphrased_loss: Sequence[float]
    perturbed_losses: Sequence[Sequence[float]]
    rougeL_recall: Sequence[float]
    rouge1_recall: Sequence[float] | None = None
    generations: Sequence[str] | None = None
    ids: Sequence[str] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.gt_loss)
        if n == 0:
            raise ValueError("SplitScores: no items")
        for name in ("paraphrased_loss", "perturbed_losses", "rougeL_recall", "rouge1_recall", "generations", "ids"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"SplitScores: {name} has {len(value)} items, gt_loss has {n}")
        for i, options in enumerate(self.perturbed_losses):
            if len(options) == 0:
                raise ValueError(f"SplitScores: item {i} has no perturbed answers")
        for name in ("gt_loss", "paraphrased_loss"):
            if not all(math.isfinite(float(v)) for v in getattr(self, name)):
                raise ValueError(f"SplitScores: {name} has a non-finite loss")

    def __len__(self) -> int:
        return len(self.gt_loss)


# ----------------------------------------------------------------------------- per-item values

def probabilities(avg_losses: Sequence[float]) -> np.ndarray:
    """``exp(-loss)`` per item."""
    return np.exp(-np.asarray(avg_losses, dtype=np.float64))


def probabilities_with_options(gt_loss: Sequence[float], option_losses: Sequence[Sequence[float]]) -> np.ndarray:
    """``p(gt) / (p(gt) + sum_j p(option_j))`` per item, with ``p = exp(-avg_loss)``.

    Computed in log space (``1 / (1 + sum_j exp(gt - option_j))``), so it does not underflow to
    0/0 when every loss is large; otherwise the same number as TOFU's.
    """
    gt = np.asarray(gt_loss, dtype=np.float64)
    out = np.empty(len(gt))
    for i, options in enumerate(option_losses):
        diffs = gt[i] - np.asarray(options, dtype=np.float64)
        log_rest = np.logaddexp.reduce(diffs)  # log sum_j p_j / p_gt
        out[i] = math.exp(-np.logaddexp(0.0, log_rest))
    return out


def truth_ratios(paraphrased_loss: Sequence[float], perturbed_losses: Sequence[Sequence[float]]) -> np.ndarray:
    """Per item ``R = exp(paraphrased_loss - mean_j perturbed_loss_j)`` (= the logs' ``truth_ratio``)."""
    para = np.asarray(paraphrased_loss, dtype=np.float64)
    pert = np.array([np.mean(np.asarray(p, dtype=np.float64)) for p in perturbed_losses])
    with np.errstate(over="ignore"):
        return np.exp(para - pert)


def true_better(ratios: Sequence[float]) -> float:
    """``mean(max(0, 1 - R))``: 1 when the right answer is far likelier than the wrong ones."""
    r = np.asarray(ratios, dtype=np.float64)
    return float(np.mean(np.maximum(0.0, 1.0 - r)))


def closer_to_1_better(ratios: Sequence[float]) -> float:
    """``mean(min(R, 1/R))``: 1 when right and wrong answers are equally likely."""
    r = np.asarray(ratios, dtype=np.float64)
    with np.errstate(divide="ignore", over="ignore"):
        return float(np.mean(np.minimum(r, 1.0 / r)))


AGGREGATORS: dict[str, Callable[[Sequence[float]], float]] = {
    "true_better": true_better,
    "closer_to_1_better": closer_to_1_better,
}


def ks_test(unlearned_ratios: Sequence[float], retain_ratios: Sequence[float]) -> tuple[float, float]:
    """(p-value, statistic) of ``scipy.stats.ks_2samp`` between two sets of truth ratios."""
    from scipy.stats import ks_2samp

    res = ks_2samp(np.asarray(unlearned_ratios, dtype=np.float64), np.asarray(retain_ratios, dtype=np.float64))
    return float(res.pvalue), float(res.statistic)


# --------------------------------------------------------------------- registered split metrics

@register("probability")
def probability(split: SplitScores) -> float:
    return float(np.mean(probabilities(split.gt_loss)))


@register("probability_w_options")
def probability_w_options(split: SplitScores) -> float:
    return float(np.mean(probabilities_with_options(split.gt_loss, split.perturbed_losses)))


@register("rouge")
def rouge(split: SplitScores, key: str = "rougeL_recall") -> float:
    values = getattr(split, key)
    if values is None:
        raise ValueError(f"rouge: these scores have no {key}")
    return float(np.mean(np.asarray(values, dtype=np.float64)))


@register("truth_ratio")
def truth_ratio(split: SplitScores, aggregator: str = "closer_to_1_better") -> float:
    try:
        agg = AGGREGATORS[aggregator]
    except KeyError:
        raise ValueError(f"truth_ratio: unknown aggregator {aggregator!r}; known: {', '.join(AGGREGATORS)}") from None
    return agg(truth_ratios(split.paraphrased_loss, split.perturbed_losses))


@register("forget_quality")
def forget_quality(split: SplitScores, reference: SplitScores | None) -> float | None:
    """KS p-value against the retain model's forget-split scores; ``None`` without a reference."""
    if reference is None:
        return None
    return ks_test(truth_ratios(split.paraphrased_loss, split.perturbed_losses),
                   truth_ratios(reference.paraphrased_loss, reference.perturbed_losses))[0]


@register("forget_quality_rows")
def forget_quality_rows(split: SplitScores, reference: SplitScores | None, every: int = 2, offset: int = 0) -> float | None:
    """Forget quality on every ``every``-th forget item from ``offset`` (both models' same items). The
    trainers' surrogate searches and the SPUL truth-ratio term read the even items of the forget split
    (``guard.train.forget_surrogate.split_halves``), so the odd ones are what they never saw."""
    if reference is None:
        return None

    def ratios(s: SplitScores) -> np.ndarray:
        # the item's index in the split (``ids``: refused items are not scored, so positions shift)
        index = [int(i) for i in s.ids] if s.ids is not None else list(range(len(s.gt_loss)))
        rows = [k for k, i in enumerate(index) if i % every == offset]
        return truth_ratios([s.paraphrased_loss[k] for k in rows], [s.perturbed_losses[k] for k in rows])

    mine, theirs = ratios(split), ratios(reference)
    if not len(mine) or not len(theirs):
        return None
    return ks_test(mine, theirs)[0]


@register("forget_ks_statistic")
def forget_ks_statistic(split: SplitScores, reference: SplitScores | None) -> float | None:
    if reference is None:
        return None
    return ks_test(truth_ratios(split.paraphrased_loss, split.perturbed_losses),
                   truth_ratios(reference.paraphrased_loss, reference.perturbed_losses))[1]


# ------------------------------------------------------------------------------- the benchmark

UTILITY_KEYS = (
    "retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE", "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio",
)

TOFU_CONFIG: dict[str, dict[str, Any]] = {
    "forget_Q_A_Prob": {"metric": "probability", "inputs": {"split": "forget"}},
    "forget_Q_A_ROUGE": {"metric": "rouge", "inputs": {"split": "forget"}},
    "forget_truth_ratio": {"metric": "truth_ratio", "inputs": {"split": "forget"}, "aggregator": "closer_to_1_better"},
    "retain_Q_A_Prob": {"metric": "probability", "inputs": {"split": "retain"}},
    "retain_Q_A_ROUGE": {"metric": "rouge", "inputs": {"split": "retain"}},
    "retain_Truth_Ratio": {"metric": "truth_ratio", "inputs": {"split": "retain"}, "aggregator": "true_better"},
    "ra_Q_A_Prob_normalised": {"metric": "probability_w_options", "inputs": {"split": "real"}},
    "ra_Q_A_ROUGE": {"metric": "rouge", "inputs": {"split": "real"}},
    "ra_Truth_Ratio": {"metric": "truth_ratio", "inputs": {"split": "real"}, "aggregator": "true_better"},
    "wf_Q_A_Prob_normalised": {"metric": "probability_w_options", "inputs": {"split": "world"}},
    "wf_Q_A_ROUGE": {"metric": "rouge", "inputs": {"split": "world"}},
    "wf_Truth_Ratio": {"metric": "truth_ratio", "inputs": {"split": "world"}, "aggregator": "true_better"},
    "model_utility": {"metric": "hmean", "inputs": {"values": list(UTILITY_KEYS)}},
    "forget_quality": {"metric": "forget_quality", "inputs": {"split": "forget", "reference": "retain_model_forget"}},
    "forget_ks_statistic": {"metric": "forget_ks_statistic", "inputs": {"split": "forget", "reference": "retain_model_forget"}},
    "forget_quality_even_rows": {"metric": "forget_quality_rows", "inputs": {"split": "forget", "reference": "retain_model_forget"},
                                 "every": 2, "offset": 0},
    "forget_quality_odd_rows": {"metric": "forget_quality_rows", "inputs": {"split": "forget", "reference": "retain_model_forget"},
                                "every": 2, "offset": 1},
}

# open-unlearning key -> column of the legacy ``aggregate_eval_stat.py`` CSV
LEGACY_NAMES: dict[str, str] = {
    "forget_Q_A_Prob": "Prob. Forget", "forget_Q_A_ROUGE": "ROUGE Forget", "forget_truth_ratio": "Truth Ratio Forget",
    "retain_Q_A_Prob": "Prob. Retain", "retain_Q_A_ROUGE": "ROUGE Retain", "retain_Truth_Ratio": "Truth Ratio Retain",
    "ra_Q_A_Prob_normalised": "Prob. Real Authors", "ra_Q_A_ROUGE": "ROUGE Real Authors",
    "ra_Truth_Ratio": "Truth Ratio Real Authors",
    "wf_Q_A_Prob_normalised": "Prob. Real World", "wf_Q_A_ROUGE": "ROUGE Real World",
    "wf_Truth_Ratio": "Truth Ratio Real World",
    "model_utility": "Model Utility", "forget_quality": "Forget Quality", "forget_ks_statistic": "KS Test Forget",
    "forget_quality_even_rows": "Forget Quality (even rows)", "forget_quality_odd_rows": "Forget Quality (odd rows)",
}


def aggregate_tofu(forget: SplitScores, retain: SplitScores, real: SplitScores, world: SplitScores,
                   retain_model_forget: SplitScores | None = None,
                   config: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, float | None]:
    """All TOFU numbers for one model. ``retain_model_forget``: the retain model's scores on the same
    forget split (for forget quality; ``None`` leaves ``forget_quality`` as ``None``)."""
    inputs = {"forget": forget, "retain": retain, "real": real, "world": world,
              "retain_model_forget": retain_model_forget}
    return compute(TOFU_CONFIG if config is None else config, inputs)


def model_utility(values: Sequence[float]) -> float:
    """Harmonic mean of the 9 utility numbers."""
    if len(values) != len(UTILITY_KEYS):
        raise ValueError(f"model utility takes {len(UTILITY_KEYS)} numbers, got {len(values)}")
    return harmonic_mean(values)
