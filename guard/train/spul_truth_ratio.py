"""SPUL's truth-ratio term (``--w-truth-ratio``): the soft prompt learns where a model that never saw
the target stands between a forget question's true answer and its wrong variants (issue #16).

Why: forget quality is the KS test of the forget answers' *truth ratios* (paraphrased answer NLL minus
the mean NLL of the perturbed, wrong answers) against a model that never learned the target. Every
other SPUL objective trains along one answer (an IDK line, a counterfactual label, or a teacher's
distribution along the gold answer) and measured to move the answer's surface but not that preference
(docs/spul.md: the truth ratios' upper tail stays where the target had it). This term trains the
preference itself, against a level a deployer can measure without the retain twin:

* **Level** (``guard.train.forget_surrogate``'s, as ``guard-train uld|eco|spul --holdout`` use it): the
  frozen served model, no soft prompt, on QA about people it never saw (``--holdout``), its log truth
  ratios.
* **Targets:** the forget items the term reads (every ``every``-th, sorted by source and row, as the
  surrogate searches split them) are ranked by their log truth ratio under the frozen model; the item
  of rank ``r`` of ``n`` gets the level's ``(r + 0.5) / n`` quantile. This is the monotone map that
  moves one empirical distribution onto the other at the least squared cost (1-D optimal transport),
  so the term asks for the level's *distribution* (what a KS test compares), not one mean.
* **Term:** ``mean_i (log TR_i(S) - target_i)^2`` over the batch's items, with the soft prompt ``S``
  inserted where serving inserts it; the NLLs are the token-mean NLLs ``guard-eval tofu`` scores.
* **Held-out half:** the other forget items never reach the term (their gold answers may still train
  the forget KL: that reads no wrong answer). ``truth_ratio_report`` scores both halves against the
  level after training; the artifact records it, and ``guard-eval tofu``'s halves are the same split
  for the rows of ``full.json``.

The retain twin and the evaluation's forget quality are never read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from guard.errors import ConfigError
from guard.train.forget_surrogate import TruthRatioItem, split_halves
from guard.train.method_data import SourceRef
from guard.train.spul_objective import TR_EXAMPLES, TR_TARGET, Example, encode_example, group_log_truth_ratios

PURPOSE = "the SPUL truth-ratio term reads TOFU truth ratios (question/answer pairs with paraphrased and perturbed answers)"


ANSWERS = ("tofu", "swapped")


@dataclass(frozen=True)
class TruthRatioTerm:
    """Where the term's level comes from, which wrong answers it reads (``answers``: TOFU's perturbed
    answers, or the true answer's facts swapped, ``guard.train.fact_swap``) and which forget items
    (every ``every``-th; 1 only with ``swapped``, whose wrong answers are not the evaluation's)."""

    holdout: SourceRef
    every: int = 2
    answers: str = "tofu"
    n_wrong: int = 5  # swapped: wrong answers per question (TOFU has 5 perturbed answers)
    seed: int = 0

    def validate(self) -> None:
        if self.answers not in ANSWERS:
            raise ConfigError(f"--truth-ratio-answers must be one of {', '.join(ANSWERS)}", param="truth_ratio_answers")
        least = 2 if self.answers == "tofu" else 1  # TOFU's perturbed answers are the evaluation's: a share stays out
        if self.every < least:
            raise ConfigError(f"--truth-ratio-every must be >= {least} with --truth-ratio-answers {self.answers}",
                              param="truth_ratio_every")

    def describe(self) -> dict[str, Any]:
        return {"holdout": str(self.holdout.source.path), "holdout_rows": self.holdout.source.rows, "every": self.every,
                "answers": self.answers, **({"n_wrong": self.n_wrong} if self.answers == "swapped" else {})}


def encode_group(tokenizer: Any, item: TruthRatioItem, cfg: Any) -> tuple[Example, ...]:
    """The paraphrased answer then each perturbed answer, encoded as the trainer encodes a forget QA."""
    try:
        return tuple(encode_example(tokenizer, item.question, answer, position=cfg.position, max_length=cfg.max_length,
                                    system_prompt=cfg.system_prompt)
                     for answer in (item.paraphrased, *item.perturbed))
    except ValueError as exc:
        raise ConfigError(f"{item.source} row {item.row}: {exc}", param="max_length") from None


@torch.no_grad()
def log_truth_ratios(model: Any, soft: torch.Tensor | None, groups: Sequence[Sequence[Example]], *, keep_ok: bool = True,
                     bar: Any = None) -> np.ndarray:
    """``group_log_truth_ratios`` of each group, without gradients (``bar``: a progress bar to advance)."""
    values: list[float] = []
    for group in groups:
        values += group_log_truth_ratios(model, soft, [group], keep_ok=keep_ok).tolist()
        if bar is not None:
            bar.update(1)
    return np.asarray(values, dtype=np.float64)


def rank_matched_targets(initial: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Per item, the level's quantile at the item's rank among ``initial`` (ties by order): the least-cost
    monotone map of the items' distribution onto the level's."""
    ranks = np.empty(len(initial), dtype=np.int64)
    ranks[np.argsort(initial, kind="stable")] = np.arange(len(initial))
    return np.quantile(level, (ranks + 0.5) / len(initial))


@dataclass
class TruthRatioPlan:
    """The level, and the forget items split into the term's half (with targets) and the held-out half."""

    level: np.ndarray
    tuned: list[tuple[TruthRatioItem, tuple[Example, ...], float]]  # item, its encoded answers, its target
    held_out: list[tuple[TruthRatioItem, tuple[Example, ...]]]
    initial: np.ndarray  # the tuned items' log truth ratios under the frozen model, no soft prompt
    # swapped: TOFU's own truth ratios of every forget item and the TOFU level (what forget quality reads,
    # never trained on), when the data has TOFU's perturbed answers
    readout: list[tuple[TruthRatioItem, tuple[Example, ...]]] | None = None
    readout_level: np.ndarray | None = None
    holdout: list[TruthRatioItem] = field(default_factory=list)  # the never-seen QA (``--choose-epoch``'s ROUGE level)


def forget_items_by_target(policy: Any, targets: Sequence[str] | None, *, purpose: str = PURPOSE,
                           none_found: str = "the truth-ratio term reads the forget QA") -> list[tuple[TruthRatioItem, str]]:
    """The selected targets' forget QA with TOFU's paraphrased/perturbed answers, one per question (the
    first target that lists it), with that target's id, sorted by source and row (the order every half
    is cut from). ``purpose`` and ``none_found`` say who reads them in the errors."""
    from classifiers.sources import read_qa
    from guard.train.eco_holdout import with_perturbed
    from guard.train.method_data import forget_sources, select_targets, with_forget_data

    chosen = with_forget_data(select_targets(policy, targets), f"no selected target has forget_data: {none_found}")
    out: dict[str, tuple[TruthRatioItem, str]] = {}
    for ref in forget_sources(chosen):
        for it in with_perturbed(read_qa(ref.source, ref.param, purpose=purpose), ref.param):
            out.setdefault(it.question, (it, str(ref.target_id)))
    return sorted(out.values(), key=lambda x: (x[0].source, x[0].row))


def forget_truth_ratio_items(policy: Any, targets: Sequence[str] | None) -> list[TruthRatioItem]:
    """``forget_items_by_target`` without the target ids."""
    return [it for it, _ in forget_items_by_target(policy, targets)]


def term_items(policy: Any, targets: Sequence[str] | None, answers: str) -> list[TruthRatioItem]:
    """The forget items with TOFU's perturbed answers; with ``swapped`` answers a forget source without
    them is fine (an empty list: ``attach_to_data`` takes the trainer's forget QA, and there is no TOFU
    readout)."""
    try:
        return forget_truth_ratio_items(policy, targets)
    except ConfigError:
        if answers == "tofu":
            raise
        return []


def swapped_items(items: Sequence[TruthRatioItem], pool: dict[str, Sequence[str]], n: int, seed: int) -> list[TruthRatioItem]:
    """``items`` as truth-ratio items over their true answer and ``n`` fact-swapped wrong ones (the true
    answer stands where TOFU has its paraphrase); an answer with no fact to swap is left out."""
    from guard.train.fact_swap import swapped_answers

    out = []
    for it in items:
        wrong = swapped_answers(it.answer, it.question, pool, n, seed)
        if wrong:
            out.append(TruthRatioItem(it.question, it.answer, it.answer, tuple(wrong), it.source, it.row))
    return out


def plan_truth_ratio(model: Any, tokenizer: Any, cfg: Any, term: TruthRatioTerm, forget: Sequence[TruthRatioItem], *,
                     keep_ok: bool = True, progress: bool = False, pool_answers: Sequence[str] = ()) -> TruthRatioPlan:
    """Encode the term's items and the holdout, measure the level and the items' starting point, and
    give every item its target. ``forget``: the forget QA in order (with TOFU's perturbed answers for
    ``answers='tofu'``; for ``swapped`` those only feed the readout). ``pool_answers``: other people's
    answers the swapped facts come from."""
    from guard.train.fact_swap import span_pool
    from guard.train.forget_surrogate import never_seen_holdout
    from guard.train.progress import progress_bar

    term.validate()
    holdout = never_seen_holdout(term.holdout, {it.question for it in forget}, PURPOSE)
    readout = None
    if term.answers == "swapped":
        holdout_answers = {h.answer for h in holdout}  # the level's own facts never become its wrong answers
        pool = span_pool(a for a in pool_answers if a not in holdout_answers)
        if not any(pool.values()):
            raise ConfigError("--truth-ratio-answers swapped draws wrong facts from the retain QA, and they have none",
                              param="truth_ratio_answers")
        tuned, held_out = split_halves(swapped_items(forget, pool, term.n_wrong, term.seed), term.every) \
            if term.every > 1 else (swapped_items(forget, pool, term.n_wrong, term.seed), [])
        level_items = swapped_items(holdout, pool, term.n_wrong, term.seed + 1)
        readout = [it for it in forget if it.perturbed and it.paraphrased != it.answer] or None
    else:
        tuned, held_out = split_halves(list(forget), term.every)
        level_items = holdout

    def encode(items: Sequence[TruthRatioItem]) -> list[tuple[Example, ...]]:
        return [encode_group(tokenizer, it, cfg) for it in items]

    tuned_groups = encode(tuned)
    readout_groups = encode(readout) if readout else []
    bar = progress_bar(len(level_items) + len(tuned) + (len(holdout) if readout else 0), "spul truth-ratio level", progress)
    try:
        level = log_truth_ratios(model, None, encode(level_items), keep_ok=keep_ok, bar=bar)
        initial = log_truth_ratios(model, None, tuned_groups, keep_ok=keep_ok, bar=bar)
        readout_level = log_truth_ratios(model, None, encode(holdout), keep_ok=keep_ok, bar=bar) if readout else None
    finally:
        bar.close()
    goal = rank_matched_targets(initial, level)
    return TruthRatioPlan(level=level, tuned=list(zip(tuned, tuned_groups, goal.tolist())),
                          held_out=list(zip(held_out, encode(held_out))), initial=initial,
                          readout=list(zip(readout, readout_groups)) if readout else None, readout_level=readout_level,
                          holdout=list(holdout))


def attach_truth_ratio(examples: Sequence[Example], plan: TruthRatioPlan) -> tuple[list[Example], int]:
    """``examples`` with the term's answers and target in ``meta`` where the example is a tuned item
    (matched by source and row); how many got one."""
    by_key = {(it.source, it.row): (groups, goal) for it, groups, goal in plan.tuned}
    out, n = [], 0
    for ex in examples:
        found = by_key.get((ex.meta.get("source"), ex.meta.get("row")))
        if found is not None and found[0][0].question == ex.question:
            ex = replace(ex, meta={**ex.meta, TR_EXAMPLES: found[0], TR_TARGET: float(found[1])})
            n += 1
        out.append(ex)
    return out, n


def attach_to_data(model: Any, tokenizer: Any, cfg: Any, items: Sequence[TruthRatioItem], data: Any, *,
                   progress: bool = True) -> TruthRatioPlan:
    """``--w-truth-ratio``: the level and the targets (``guard.train.spul_truth_ratio.plan_truth_ratio``),
    attached to the forget examples of the term's half; returns the plan (the artifact's report reads it)."""
    from guard.lm.nll import supports_logits_to_keep
    from guard.train.cli_args import holdout_source

    term = TruthRatioTerm(holdout_source(Path(str(cfg.truth_ratio_holdout)), cfg.truth_ratio_holdout_rows),
                          every=cfg.truth_ratio_every, answers=cfg.truth_ratio_answers, seed=cfg.seed)
    if not items:  # the trainer's forget QA, in source and row order
        own = sorted({ex.question: ex for ex in [*data.forget_train, *data.forget_val]}.values(),
                     key=lambda ex: (str(ex.meta.get("source")), int(ex.meta.get("row", 0))))
        items = [TruthRatioItem(ex.question, ex.gold, ex.gold, (), str(ex.meta.get("source")), int(ex.meta.get("row", 0)))
                 for ex in own]
    plan = plan_truth_ratio(model, tokenizer, cfg, term, items, keep_ok=supports_logits_to_keep(model), progress=progress,
                            pool_answers=[ex.gold for ex in [*data.retain_train, *data.retain_val]])
    data.forget_train, n_train = attach_truth_ratio(data.forget_train, plan)
    data.forget_val, n_val = attach_truth_ratio(data.forget_val, plan)
    if n_train + n_val < len(plan.tuned):
        logging.getLogger(__name__).warning("spul truth-ratio term: %d of its %d forget items are not in the trainer's forget data",
                    len(plan.tuned) - n_train - n_val, len(plan.tuned))
    data.sources["truth_ratio"] = {**term.describe(), "tuned_train": n_train, "tuned_val": n_val,
                                   "held_out": len(plan.held_out), "level_n": int(len(plan.level)),
                                   "level_mean_log_truth_ratio": round(float(plan.level.mean()), 6)}
    return plan


def describe_log_truth_ratios(log_tr: np.ndarray, level: np.ndarray) -> dict[str, float]:
    from guard.train.forget_surrogate import Level, surrogate

    tr = np.exp(log_tr)
    found = surrogate(tr, Level(np.exp(level), float("nan")))
    return {"n": int(len(tr)), "ks_d": round(found["ks_d"], 6), "ks_p": round(found["ks_p"], 6),
            "mean_log_truth_ratio": round(float(np.mean(log_tr)), 6),
            "truth_ratio_q10_q50_q90": [round(float(x), 4) for x in np.quantile(tr, [0.1, 0.5, 0.9])]}


@torch.no_grad()
def truth_ratio_report(model: Any, soft: torch.Tensor, plan: TruthRatioPlan, *, keep_ok: bool | None = None) -> dict[str, Any]:
    """Both halves before (frozen model) and after (with ``soft``) against the level: KS statistic and
    p-value (the surrogate of forget quality), mean log truth ratio and quartiles. The held-out half
    never reached the term."""
    if keep_ok is None:
        from guard.lm.nll import supports_logits_to_keep

        keep_ok = supports_logits_to_keep(model)
    tuned_groups = [g for _, g, _ in plan.tuned]
    held_groups = [g for _, g in plan.held_out]
    after_tuned = log_truth_ratios(model, soft, tuned_groups, keep_ok=keep_ok)
    out: dict[str, Any] = {
        "level": {"n": int(len(plan.level)), "mean_log_truth_ratio": round(float(np.mean(plan.level)), 6)},
        "tuned_half": {"before": describe_log_truth_ratios(plan.initial, plan.level),
                       "after": describe_log_truth_ratios(after_tuned, plan.level),
                       "items": [{"source": it.source, "row": it.row, "target": round(goal, 6),
                                  "before": round(float(b), 6), "after": round(float(a), 6)}
                                 for (it, _, goal), b, a in zip(plan.tuned, plan.initial, after_tuned)]},
    }
    if held_groups:
        before = log_truth_ratios(model, None, held_groups, keep_ok=keep_ok)
        after = log_truth_ratios(model, soft, held_groups, keep_ok=keep_ok)
        out["held_out_half"] = {"before": describe_log_truth_ratios(before, plan.level),
                                "after": describe_log_truth_ratios(after, plan.level),
                                "rows": [{"source": it.source, "row": it.row} for it, _ in plan.held_out]}
    if plan.readout and plan.readout_level is not None:
        groups = [g for _, g in plan.readout]
        before = log_truth_ratios(model, None, groups, keep_ok=keep_ok)
        after = log_truth_ratios(model, soft, groups, keep_ok=keep_ok)
        every = {"all": slice(None), "even_rows": slice(0, None, 2), "odd_rows": slice(1, None, 2)}
        out["tofu_readout"] = {
            "note": "TOFU's paraphrased vs perturbed answers of every forget item (never trained on) against the "
                    "frozen model's on the holdout: forget quality's surrogate",
            "level": {"n": int(len(plan.readout_level)), "mean_log_truth_ratio": round(float(np.mean(plan.readout_level)), 6)},
            **{name: {"before": describe_log_truth_ratios(before[cut], plan.readout_level),
                      "after": describe_log_truth_ratios(after[cut], plan.readout_level)}
               for name, cut in every.items()}}
    return out
