"""``guard-train spul --holdout``: SPUL's counterfactual weight ``w_divergent`` chosen by the
forget-quality surrogate, never by the retain twin or the evaluation questions.

Why a search: ``--w-divergent`` (how much the few label tokens the frozen model does not predict
weigh in the forget CE, ``guard.train.spul_objective.divergent_tokens``) sets how far the soft prompt
pulls the forget answers away from the memorised ones. Too little and the model still prefers the
true answer; too much and it prefers the perturbed ones more than a model that never saw the target
would (truth ratio past the never-seen level). Reading ``guard-eval``'s forget quality on the
evaluation rows to pick it (docs/spul.md, "Counterfactual targets") fits the metric being reported.

What is chosen against (``guard.train.forget_surrogate``, the surrogate ULD's alpha and ECO's grid use):

* **Level**: the frozen served model, no soft prompt, on QA about people it never saw (``--holdout``,
  TOFU's ``retain_perturbed.json`` rows 360:400 for the mini preset), scored teacher-forced as
  ``guard-eval tofu`` scores a question that is not flagged.
* **Candidates**: for each W of ``--search-w-divergent`` a soft prompt trained exactly as
  ``guard-train spul --w-divergent W`` with every other flag as given (same data, split and seed; the
  data, and with ``--forget-target counterfactual`` the teacher's answers, are built once).
* **Score**: the *tuned half* of the policy's forget QA (every ``--search-forget-every``-th, sorted by
  source and row; the others are held out and reported for the chosen W only) through the served SPUL
  intervention: its ``scoring_inputs`` (the soft prompt inserted where serving inserts it) and the
  scorer of ``guard-eval tofu`` (``guard.train.eco_served_scoring.ServedScoring``; the prompt is run
  once for the 7 answers, checked per run against ``Scorer.losses`` itself: ``check``).
* **Feasibility**: a flagged retain question keeps its answer: the trainer's held-out retain QA routed
  through the soft prompt as if flagged (worst case): the share of their gold-answer positions whose
  teacher-forced top token stays the frozen model's is >= ``--min-retain-agreement``.
* **Rule**: ``lexicographic_choice``: the smallest KS statistic among feasible W, ties to the smallest W.

The chosen soft prompt is the artifact; the trace (per W: KS, mean log truth ratio, the retain check,
training time), the level, the halves and the held-out half at the chosen W go into its manifest
(``w_divergent_search``). The retain twin and the evaluation rows are never read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from guard.errors import ConfigError
from guard.train.eco_holdout import describe_truth_ratios
from guard.train.forget_surrogate import (
    Level, TruthRatioItem, check_forget_every, item_truth_ratios, lexicographic_choice, never_seen_holdout, split_halves,
)
from guard.train.method_data import SourceRef, select_targets

log = logging.getLogger(__name__)

PURPOSE = "the SPUL w_divergent search scores TOFU truth ratios (question/answer pairs with perturbed answers)"
RULE = "lexicographic: smallest KS statistic vs the holdout level among feasible w_divergent, ties to the smallest w_divergent"
DEFAULT_W_DIVERGENT = (10.0, 30.0, 100.0)


@dataclass(frozen=True)
class WDivergentSearch:
    """The search's settings (module docstring). ``retain_items``: at most this many of the trainer's
    held-out retain QA for the feasibility check."""

    holdout: SourceRef
    candidates: tuple[float, ...] = DEFAULT_W_DIVERGENT
    forget_every: int = 2
    retain_items: int = 20
    min_retain_agreement: float = 0.9

    def validate(self) -> None:
        if not self.candidates:
            raise ConfigError("--search-w-divergent needs at least one weight", param="search_w_divergent")
        if any(not (w > 0 and math.isfinite(w)) for w in self.candidates):
            raise ConfigError("--search-w-divergent weights must be finite numbers > 0", param="search_w_divergent")
        check_forget_every(self.forget_every)
        if self.retain_items < 1 or not 0 <= self.min_retain_agreement <= 1:
            raise ConfigError("--search-retain-items must be >= 1 and --min-retain-agreement in [0, 1]",
                              param="min_retain_agreement")


@dataclass
class SearchItems:
    """The forget QA (with its target id) split into the tuned and held-out halves, and the holdout QA."""

    tuned: list[tuple[TruthRatioItem, str]]
    held_out: list[tuple[TruthRatioItem, str]]
    holdout: list[TruthRatioItem]
    target_ids: list[str]


def search_items(policy: Any, targets: Sequence[str] | None, search: WDivergentSearch) -> SearchItems:
    """The search's items, checked before any model loads (the targets ``collect_data`` trains on)."""
    from guard.train.spul_truth_ratio import forget_items_by_target

    forget = forget_items_by_target(policy, targets, purpose=PURPOSE, none_found="the w_divergent search scores the forget QA")
    seen = {it.question for it, _ in forget}
    tuned, held_out = split_halves(forget, search.forget_every)
    holdout = never_seen_holdout(search.holdout, seen, PURPOSE)
    return SearchItems(tuned, held_out, holdout, [t.id for _, t in select_targets(policy, targets) if t.forget_data])


def _round(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()}


def spul_intervention(scoring: Any, vectors: torch.Tensor, position: str) -> Any:
    """The served SPUL intervention with ``vectors`` for every searched target."""
    from guard.interventions.spul import SoftPrompt, SoftPromptUnlearning

    soft = SoftPrompt(vectors=vectors.detach().float().cpu(), position=position)
    return SoftPromptUnlearning({tid: soft for tid in scoring.targets}, "")


def score_forget(scoring: Any, spul: Any, items: Sequence[tuple[TruthRatioItem, str]],
                 tick: Callable[[], None] = lambda: None) -> tuple[list[list[float]], list[float]]:
    """(losses in ``answers`` order, gold top-1 agreement) of each item through ``spul`` (None: plain)."""
    losses, top1 = [], []
    for it, tid in items:
        values, _, t1 = scoring.losses(spul, it, tid if spul is not None else None)
        losses.append(values)
        top1.append(t1)
        tick()
    return losses, top1


def run_search(run: Any, cfg: Any, search: WDivergentSearch, items: SearchItems, scoring: Any, *, progress: bool = True,
               say: Callable[[str], None] = lambda m: None) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Train and score every candidate; returns (the manifest's ``w_divergent_search`` record, the chosen
    candidate's training result, its config)."""
    from guard.train.progress import progress_bar
    from guard.train.spul import fit

    started = time.perf_counter()
    retain = [(ex.question, ex.gold) for ex in run.data.retain_val][: search.retain_items]
    if not retain:
        raise ConfigError("the w_divergent search checks flagged-retain answers on held-out retain QA, and none is held "
                          "out: set --val-fraction > 0 (with at least 2 retain QA)", param="val_fraction")
    bar = progress_bar(len(items.holdout) + len(retain), "spul holdout level", progress)
    holdout_losses, holdout_top1 = score_forget(scoring, None, [(h, "") for h in items.holdout], lambda: bar.update(1))
    level = Level.from_losses(holdout_losses)
    flag_as = items.target_ids[0]  # one soft prompt serves every searched target
    clean = []
    for q, gold in retain:
        nll, top, _ = scoring.gold_scan(scoring.inputs(None, q, None), q, gold)
        clean.append((nll, top))
        bar.update(1)
    bar.close()
    described = level.describe()
    say(f"level (frozen model on {len(items.holdout)} never-seen QA): mean log truth ratio "
        f"{described['mean_log_truth_ratio']:.4f}, truth ratio {described['truth_ratio_mean']:.4f}")
    trace: list[dict[str, Any]] = []
    per_item: list[list[dict[str, Any]]] = []
    fits: list[tuple[dict[str, Any], Any]] = []
    candidates = sorted(set(float(x) for x in search.candidates))
    for n, w in enumerate(candidates, 1):
        cand = dataclasses.replace(cfg, weights=dataclasses.replace(cfg.weights, divergent=w))
        say(f"candidate {n}/{len(candidates)}: training with --w-divergent {w:g}")
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        result = fit(run, cand, progress=progress)
        train_s = time.perf_counter() - t0
        spul = spul_intervention(scoring, result["soft"], cfg.position)
        t1 = time.perf_counter()
        losses, top1 = score_forget(scoring, spul, items.tuned)
        tr = item_truth_ratios(losses)
        kept, rise = [], []
        for (q, gold), (nll0, top0) in zip(retain, clean):
            nll, top, _ = scoring.gold_scan(scoring.inputs(spul, q, flag_as), q, gold, (nll0, top0))
            kept.append(top == top0)
            rise.append(nll - nll0)
        row: dict[str, Any] = {
            "w_divergent": w, **describe_truth_ratios(tr, level),
            "forget_gold_nll": float(np.mean([x[0] for x in losses])),
            "forget_prob": float(np.mean(np.exp(-np.asarray([x[0] for x in losses])))),
            "forget_gold_top1": float(np.mean(top1)),
            "retain_top_token_kept": float(np.mean(np.concatenate(kept))), "retain_nll_rise": float(np.mean(rise))}
        row["feasible"] = bool(row["retain_top_token_kept"] >= search.min_retain_agreement)
        row.update({"best_epoch": result["best_epoch"], "epochs_run": len(result["history"]),
                    "best_val": result["best_score"] if math.isfinite(result["best_score"]) else None,
                    "train_time_s": train_s, "score_time_s": time.perf_counter() - t1})
        trace.append(_round(row))
        fits.append((result, cand))
        per_item.append([{"source": it.source, "row": it.row, "target": tid, "truth_ratio": float(t),
                          "losses": [float(v) for v in x]} for (it, tid), t, x in zip(items.tuned, tr, losses)])
        say(f"w_divergent {w:g}: KS D {row['ks_d']:.3f} (p {row['ks_p']:.3f})  |d mean log TR| {row['dlogtr']:.3f}  "
            f"gold top-1 {row['forget_gold_top1']:.3f}  retain kept {row['retain_top_token_kept']:.3f}"
            + ("" if row["feasible"] else " (infeasible)") + f"  trained {train_s:.0f}s")
    chosen = lexicographic_choice(trace, "w_divergent")
    at = trace.index(chosen)
    trained = {ex.question for ex in [*run.data.retain_train, *run.data.retain_val]}
    spul = spul_intervention(scoring, fits[at][0]["soft"], cfg.position)
    held, held_top1 = score_forget(scoring, spul, items.held_out)
    # the search's shortcut against guard-eval's own scorer, on the first tuned item at the chosen W
    first, tid = items.tuned[0]
    check = scoring.check_shortcut(spul, first, tid, per_item[at][0]["losses"])
    record = {
        "method": "one soft prompt per w_divergent, scored through the served SPUL scoring path",
        "rule": RULE,
        "never_read": "the retain twin and the evaluation questions",
        "candidates": candidates,
        "chosen": chosen,
        "level": {**described, "gold_top1": round(float(np.mean(holdout_top1)), 6)},
        "trace": trace,
        "chosen_items": per_item[at],
        "check": check,
        "held_out_half": {**_round(describe_truth_ratios(item_truth_ratios(held), level)), "n": len(held),
                          "forget_gold_top1": round(float(np.mean(held_top1)), 6),
                          "note": "the forget items left out of the choice, at the chosen w_divergent (surrogate, not the twin)"},
        "constraint": {"min_retain_agreement": search.min_retain_agreement,
                       "measured_on": "the trainer's held-out retain QA routed through the soft prompt as if flagged "
                                      "(share of gold-answer positions whose top token stays the frozen model's)"},
        "halves": {"every": search.forget_every,
                   "tuned": [{"source": it.source, "row": it.row, "target": t} for it, t in items.tuned],
                   "held_out": [{"source": it.source, "row": it.row, "target": t} for it, t in items.held_out]},
        "holdout": {"path": str(search.holdout.source.path), "rows": search.holdout.source.rows, "n": len(items.holdout),
                    # the level is the frozen model without the soft prompt, so retain training on these cannot move it
                    "also_retain_qa": sum(h.question in trained for h in items.holdout)},
        "retain_items": [{"question": q} for q, _ in retain],
        "time_s": round(time.perf_counter() - started, 1),
    }
    return record, fits[at][0], fits[at][1]


def train_spul_holdout(policy_path: Path, out: Path, cfg: Any, search: WDivergentSearch, *, model_name: str = "default",
                       targets: Sequence[str] | None = None, retain: Sequence[SourceRef] | None = None,
                       data_dir: Path | None = None, idk_file: Path | None = None, device: str = "auto",
                       threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """``guard-train spul --holdout``: the search, then the chosen soft prompt written as the artifact
    (``guard.train.spul.write_artifact``, atomically) with the search in its manifest."""
    from guard.engines.local import LocalEngine
    from guard.models import resolve_model
    from guard.policy import load_policy
    from guard.train.eco_served_scoring import ServedScoring
    from guard.train.spul import prepare_run, write_artifact

    def say(message: str) -> None:
        if progress:
            print(f"guard-train spul: {message}", file=sys.stderr, flush=True)
        else:
            log.info("spul w_divergent search: %s", message)

    cfg.validate()
    search.validate()
    if threads is not None and threads < 1:
        raise ConfigError("--threads must be >= 1", param="threads")
    if cfg.val_fraction <= 0:
        raise ConfigError("the w_divergent search checks flagged-retain answers on held-out retain QA: set --val-fraction > 0",
                          param="val_fraction")
    items = search_items(load_policy(Path(policy_path)), targets, search)  # bad data fails before the model loads
    model_dir = Path(resolve_model(model_name))
    engine = LocalEngine(model_dir, model_name, threads=threads, device=device)
    asyncio.run(engine.start())
    try:
        run = prepare_run(policy_path, cfg, targets=targets, retain=retain, data_dir=data_dir, idk_file=idk_file,
                          threads=threads, loaded=(engine.model, engine.tokenizer, model_dir), progress=progress)
        scoring = ServedScoring(engine, load_policy(Path(policy_path)), items.target_ids, seed=0)
        say(f"{len(items.tuned)} tuned + {len(items.held_out)} held-out forget QA ({', '.join(items.target_ids)}), "
            f"{len(items.holdout)} never-seen holdout QA; w_divergent candidates "
            f"{', '.join(f'{w:g}' for w in sorted(set(search.candidates)))}")
        record, result, chosen_cfg = run_search(run, cfg, search, items, scoring, progress=progress, say=say)
        manifest = write_artifact(run, chosen_cfg, result, out, progress=progress, extra={"w_divergent_search": record})
    finally:
        asyncio.run(engine.close())
    chosen = record["chosen"]
    say(f"chose w_divergent {chosen['w_divergent']:g} (KS D {chosen['ks_d']:.3f}, p {chosen['ks_p']:.3f}); held-out half "
        f"KS p {record['held_out_half']['ks_p']:.3f}; wrote {out} in {manifest['metrics']['total_time_s']:.0f}s")
    return manifest
