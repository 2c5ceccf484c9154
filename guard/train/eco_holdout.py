"""``guard-train eco --holdout``: ECO's corruption chosen by the forget-quality surrogate, never the retain twin.

TOFU's forget quality compares the forget answers' truth ratios under the method with those of a model
that never saw the target. A deployer has no such model, but has the served model on QA about people it
never saw (``--holdout``, with TOFU's paraphrased and perturbed answers): the *clean* model's truth ratios
there are the level to reach (``guard.train.forget_surrogate``, the same surrogate ULD's alpha search uses).

* **Grid**: for each corruption of ``--corruptions`` (the registry's; default ``rand_noise_first_n`` and
  ``flip_sign_top_k``) a strength grid: ``sigma`` for noise (default 0, 1, 2, 3, 4, 5, 6, 8 x the embedding
  RMS; 0 = the clean model), ``k`` for top-k corruptions (default hidden/32, /16, /8, /4, /2). The policy's own
  ``select``, ``facts`` and ``answer_names`` are kept: the search chooses how hard, not which tokens.
* **Score**: every forget item of the *tuned* half (every ``forget_every``-th, sorted by source and row;
  the others are held out from the choice and reported separately) is scored teacher-forced exactly as
  ``guard-eval tofu`` scores a flagged question: the served intervention's ``scoring_inputs`` and
  ``scoring_answer_embeds`` (``guard.eval.tofu_scoring``; with ``answer_names`` the target's names in
  each candidate answer are corrupted as the model reads them back), the request seed ``--seed``. The
  forward pass runs the prompt once for the 7 answers (``shared_prompt_losses``); each run checks one
  item at the chosen point against ``Scorer.losses`` itself (``check`` in the manifest).
* **Objective**: KS statistic between the tuned half's truth ratios and the holdout level (and the
  |difference of mean log truth ratio|, reported). Also reported, not used by the rule: the gold answer's
  teacher-forced top-1 agreement (the share of its tokens greedy decoding would reproduce), on the
  forget items at each point and on the holdout (clean): a twin-free view of how much of the memorised
  answer generation would still give.
* **Utility constraint** (when the targets have ``keep_data``): the worst-case regime, a keep question
  routed through ECO as if the detector had flagged it for its target: the share of its gold-answer
  positions whose top token stays the clean model's (greedy answer unchanged) must be
  >= ``min_keep_agreement``.
* **Rule**: ``lexicographic_choice``: the smallest KS statistic among feasible points, ties to the
  smallest strength. Strength is comparable across corruptions: the relative size of the change,
  ``||corrupted - clean|| / ||clean||`` over the corrupted prompt rows of the tuned items (sigma / RMS
  for noise on all dimensions; 2 for flipping every sign).

The retain twin and the evaluation rows are never read. The trace (every grid point: corruption,
strength, KS, mean log truth ratio, the utility check), the halves and the level go into the manifest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from classifiers.sources import QARecord, read_qa
from guard.errors import ConfigError
from guard.train.forget_surrogate import (
    Level, TruthRatioItem, check_forget_every, item_truth_ratios, lexicographic_choice, never_seen_holdout, split_halves, surrogate, truth_ratio_items,
)
from guard.train.eco_served_scoring import ServedScoring, relative_change, target_params
from guard.train.method_data import SourceRef, forget_sources, keep_sources, select_targets

log = logging.getLogger(__name__)

PURPOSE = "the ECO holdout search scores TOFU truth ratios (question/answer pairs with perturbed answers)"
RULE = ("lexicographic: smallest KS statistic vs the holdout level among feasible grid points, ties to the smallest "
        "strength (relative size of the embedding change)")
DEFAULT_CORRUPTIONS = ("rand_noise_first_n", "flip_sign_top_k")
SIGMA_RMS_MULTIPLES = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
K_FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)


@dataclass(frozen=True)
class HoldoutSearch:
    """The grid search's settings (module docstring). ``sigmas``/``ks``: absolute grids (None: the
    defaults scaled to the model); ``keep_items``: at most this many keep_data questions for the
    utility check; ``seed``: the request seed every item is scored with (``guard-eval tofu``'s default 0)."""

    holdout: SourceRef
    corruptions: tuple[str, ...] = DEFAULT_CORRUPTIONS
    sigmas: tuple[float, ...] | None = None
    ks: tuple[int, ...] | None = None
    forget_every: int = 2
    keep_items: int = 20
    min_keep_agreement: float = 0.9
    seed: int = 0
    select: str | None = None  # overrides every target's select when given
    report_answers: int = 0  # greedy answers at the chosen point: this many tuned forget and holdout questions
    max_new_tokens: int = 64

    def validate(self) -> None:
        from guard.interventions.corruption import get_corruption

        if not self.corruptions:
            raise ConfigError("--corruptions needs at least one corruption", param="corruptions")
        for name in self.corruptions:
            get_corruption(name, "corruptions")
        if self.sigmas is not None and (not self.sigmas or any(not (s >= 0 and math.isfinite(s)) for s in self.sigmas)):
            raise ConfigError("--sigmas must be numbers >= 0", param="sigmas")
        if self.ks is not None and (not self.ks or any(k < 1 for k in self.ks)):
            raise ConfigError("--ks must be integers >= 1", param="ks")
        check_forget_every(self.forget_every)
        if self.keep_items < 0 or not 0 <= self.min_keep_agreement <= 1:
            raise ConfigError("--search-keep-items must be >= 0 and --min-keep-agreement in [0, 1]",
                              param="min_keep_agreement")
        if self.report_answers < 0 or self.max_new_tokens < 1:
            raise ConfigError("--report-answers must be >= 0 and --max-new-tokens >= 1", param="report_answers")


# ------------------------------------------------------------------------------------------------
# data


def with_perturbed(records: Sequence[QARecord], param: str) -> list[TruthRatioItem]:
    """Truth-ratio items of forget records. Rows without TOFU's paraphrased/perturbed answers take them
    from their TOFU companion file when there is one (``full.json`` row r -> the ``*_perturbed`` split that
    holds it, ``forget01.json`` -> ``forget01_perturbed.json``, same row), checked by the question text."""
    from guard.data.tofu_presets import FULL_ROWS, perturbed_source

    files: dict[Path, list[dict[str, Any]]] = {}

    def companion(rec: QARecord) -> QARecord | None:
        path = Path(rec.source)
        where: tuple[Path, int] | None = None
        if path.name == "full.json" and 0 <= rec.row < FULL_ROWS:
            found = perturbed_source(rec.row)
            where = (path.parent / f"{found[0]}.json", found[1]) if found else None
        elif (path.parent / f"{path.stem}_perturbed.json").exists():
            where = (path.parent / f"{path.stem}_perturbed.json", rec.row)
        if where is None or not where[0].exists():
            return None
        if where[0] not in files:
            files[where[0]] = [json.loads(line) for line in where[0].read_text().splitlines() if line.strip()]
        rows = files[where[0]]
        if where[1] >= len(rows) or rows[where[1]].get("question") != rec.question:
            return None
        return QARecord(rec.question, rec.answer, rec.source, rec.row,
                        {k: v for k, v in rows[where[1]].items() if k not in ("question", "answer")})

    out = []
    for rec in records:
        if "perturbed_answer" not in rec.extra:
            rec = companion(rec) or rec
        out.extend(truth_ratio_items([rec], param))
    return out


@dataclass
class SearchData:
    """Forget items (each with its target id) split into the tuned half and the held-out half, the
    never-seen holdout QA, and the keep questions of the utility check."""

    tuned: list[tuple[TruthRatioItem, str]]
    held_out: list[tuple[TruthRatioItem, str]]
    holdout: list[TruthRatioItem]
    keep: list[tuple[QARecord, str]]
    target_ids: list[str]


def search_data(policy: Any, target_ids: Sequence[str] | None, search: HoldoutSearch) -> SearchData:
    from guard.train.eco_data import spread

    chosen = select_targets(policy, target_ids, action="eco", require_action=True)
    for i, target in chosen:
        if not target.forget_data:
            raise ConfigError(f"target {target.id!r} has no forget_data: the search needs its forget QA",
                              param=f"targets.{i}.forget_data")
    forget: list[tuple[TruthRatioItem, str]] = []
    for ref in forget_sources(chosen):
        forget += [(it, str(ref.target_id)) for it in with_perturbed(read_qa(ref.source, ref.param, purpose=PURPOSE), ref.param)]
    forget.sort(key=lambda x: (x[0].source, x[0].row))
    tuned, held_out = split_halves(forget, search.forget_every)
    questions = {it.question for it, _ in forget}
    holdout = never_seen_holdout(search.holdout, questions, PURPOSE)
    keep: list[tuple[QARecord, str]] = []
    for ref in keep_sources(chosen):
        keep += [(rec, str(ref.target_id)) for rec in read_qa(ref.source, ref.param, purpose=PURPOSE)
                 if rec.question not in questions]
    return SearchData(tuned, held_out, holdout, spread(keep, search.keep_items), [t.id for _, t in chosen])


def grid(search: HoldoutSearch, rms: float, hidden: int) -> list[dict[str, Any]]:
    """The grid points ``{corruption, sigma, k}`` in order (each corruption's strengths ascending)."""
    from guard.interventions.corruption import get_corruption

    points = []
    for name in search.corruptions:
        if get_corruption(name).uses_sigma:
            sigmas = search.sigmas if search.sigmas is not None else tuple(m * rms for m in SIGMA_RMS_MULTIPLES)
            points += [{"corruption": name, "sigma": round(float(s), 6), "k": None} for s in sorted(set(sigmas))]
        else:
            ks = search.ks if search.ks is not None else tuple(max(1, round(f * hidden)) for f in K_FRACTIONS)
            bad = [k for k in ks if k > hidden]
            if bad:
                raise ConfigError(f"--ks {bad[0]} exceeds the model's hidden size {hidden}", param="ks")
            points += [{"corruption": name, "sigma": None, "k": int(k)} for k in sorted(set(ks))]
    return points


def _round(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()}


def describe_truth_ratios(tr: np.ndarray, level: Level) -> dict[str, Any]:
    with np.errstate(divide="ignore"):
        return {**surrogate(tr, level), "forget_mean_log_tr": float(np.mean(np.log(tr))),
                "forget_truth_ratio_mean": float(np.mean(tr))}


def run_search(scoring: ServedScoring, data: SearchData, points: Sequence[dict[str, Any]], search: HoldoutSearch,
               *, progress: bool = True, say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Score every grid point and choose by ``lexicographic_choice``; returns the manifest's ``search`` record."""
    from guard.train.progress import progress_bar

    started = time.perf_counter()
    n_keep = len(data.keep)
    bar = progress_bar(len(data.holdout) + n_keep + len(points) * (len(data.tuned) + n_keep) + len(data.held_out),
                       "eco holdout search", progress)
    holdout_losses, holdout_top1 = [], []
    for it in data.holdout:
        values, _, top1 = scoring.losses(None, it, None)
        holdout_losses.append(values)
        holdout_top1.append(top1)
        bar.update(1)
    level = Level.from_losses(holdout_losses)
    say(f"level (clean model on {len(data.holdout)} never-seen QA): mean log truth ratio "
        f"{level.describe()['mean_log_truth_ratio']:.4f}, truth ratio {level.describe()['truth_ratio_mean']:.4f}, "
        f"gold top-1 {np.mean(holdout_top1):.3f}")
    keep_clean = []
    for rec, _ in data.keep:
        nll, top, _ = scoring.gold_scan(scoring.inputs(None, rec.question, None), rec.question, rec.answer)
        keep_clean.append((nll, top))
        bar.update(1)

    trace: list[dict[str, Any]] = []
    per_item: list[list[dict[str, Any]]] = []
    for point in points:
        t0 = time.perf_counter()
        eco = scoring.intervention(point)
        losses, pairs, top1s = [], [], []
        for it, tid in data.tuned:
            values, inputs, top1 = scoring.losses(eco, it, tid)
            losses.append(values)
            top1s.append(top1)
            pairs.append((inputs.prompt_embeds, scoring.clean_prompt(it.question)))
            bar.update(1)
        tr = item_truth_ratios(losses)
        row: dict[str, Any] = {**point, "strength": relative_change(pairs), **describe_truth_ratios(tr, level),
                               "forget_gold_nll": float(np.mean([x[0] for x in losses])),
                               "forget_prob": float(np.mean(np.exp(-np.asarray([x[0] for x in losses])))),
                               "forget_gold_top1": float(np.mean(top1s))}
        if n_keep:
            kept, rise, changed = [], [], 0
            for (rec, tid), (nll0, top0) in zip(data.keep, keep_clean):
                nll, top, moved = scoring.gold_scan(scoring.inputs(eco, rec.question, tid), rec.question, rec.answer,
                                                    (nll0, top0))
                kept.append(top == top0)
                rise.append(nll - nll0)
                changed += int(moved)
                bar.update(1)
            row.update({"keep_top_token_kept": float(np.mean(np.concatenate(kept))), "keep_nll_rise": float(np.mean(rise)),
                        "keep_changed": changed / n_keep})
            row["feasible"] = bool(row["keep_top_token_kept"] >= search.min_keep_agreement)
        else:
            row.update({"keep_top_token_kept": None, "keep_nll_rise": None, "keep_changed": None, "feasible": True})
        row["time_s"] = time.perf_counter() - t0
        trace.append(_round(row))
        per_item.append([{"source": it.source, "row": it.row, "target": tid, "truth_ratio": float(t), "gold_nll": float(x[0]),
                          "losses": [float(v) for v in x]}
                         for (it, tid), t, x in zip(data.tuned, tr, losses)])
        say(f"{point['corruption']} sigma={point['sigma']} k={point['k']}: strength {row['strength']:.3f}  KS D "
            f"{row['ks_d']:.3f} (p {row['ks_p']:.3f})  mean log TR {row['forget_mean_log_tr']:.3f}  gold top-1 "
            f"{row['forget_gold_top1']:.3f}"
            + (f"  keep kept {row['keep_top_token_kept']:.3f}" if n_keep else "")
            + ("" if row["feasible"] else "  (infeasible)") + f"  {row['time_s']:.1f}s")
    chosen = lexicographic_choice(trace, "strength")
    at = trace.index(chosen)
    # the held-out half at the chosen point (reported, never used for the choice)
    eco = scoring.intervention({k: chosen[k] for k in ("corruption", "sigma", "k")})
    held, held_top1 = [], []
    for it, tid in data.held_out:
        values, _, top1 = scoring.losses(eco, it, tid)
        held.append(values)
        held_top1.append(top1)
        bar.update(1)
    bar.close()
    held_tr = item_truth_ratios(held)
    # the shortcut against guard-eval's own scorer, on the first tuned item at the chosen point
    first, tid = data.tuned[0]
    check = scoring.check_shortcut(eco, first, tid, per_item[at][0]["losses"])
    return {
        "method": "grid over corruption x strength, scored through the served ECO scoring path",
        "rule": RULE,
        "chosen": chosen,
        "level": {**level.describe(), "gold_top1": round(float(np.mean(holdout_top1)), 6)},
        "trace": trace,
        "chosen_items": per_item[at],
        "check": check,
        "held_out_half": {**_round(describe_truth_ratios(held_tr, level)), "n": len(held),
                          "forget_gold_top1": round(float(np.mean(held_top1)), 6) if held_top1 else None,
                          "note": "the forget items left out of the choice, at the chosen point (surrogate, not the twin)"},
        "constraint": {"min_keep_agreement": search.min_keep_agreement if n_keep else None,
                       "measured_on": "keep_data questions routed through ECO as if flagged for their target (worst case)"
                       if n_keep else "not measured: the targets have no keep_data"},
        "halves": {"every": search.forget_every,
                   "tuned": [{"source": it.source, "row": it.row, "target": tid} for it, tid in data.tuned],
                   "held_out": [{"source": it.source, "row": it.row, "target": tid} for it, tid in data.held_out]},
        "holdout": {"path": str(search.holdout.source.path), "rows": search.holdout.source.rows, "n": len(data.holdout)},
        "keep_items": [{"source": rec.source, "row": rec.row, "target": tid} for rec, tid in data.keep],
        "config": {k: v for k, v in asdict(search).items() if k != "holdout"},
        "time_s": round(time.perf_counter() - started, 1),
    }


async def _answers(scoring: ServedScoring, eco: Any, items: Sequence[tuple[TruthRatioItem, str]],
                   holdout: Sequence[TruthRatioItem], n: int) -> dict[str, Any]:
    """Greedy answers at the chosen point (served generation, ``answer_names`` included) to ``n`` tuned
    forget questions, and the clean model's to ``n`` holdout questions: ROUGE-L recall vs gold each."""
    from classifiers.base import Verdict
    from guard.lm.rouge import rouge_recall

    forget = []
    for it, tid in list(items)[:n]:
        _, target = scoring.targets[tid]
        request = scoring.scorer.request(it.question)
        text = "".join([c.text async for c in eco.stream(request, Verdict(flagged=True, target_id=tid), target, scoring.engine)])
        forget.append({"question": it.question, "gold": it.answer, "answer": text, "rougeL_recall": rouge_recall(text, it.answer)[1]})
    qs = list(holdout)[:n]
    texts = scoring.scorer.plain_generate([h.question for h in qs]) if qs else []
    clean = [{"question": h.question, "gold": h.answer, "answer": t, "rougeL_recall": rouge_recall(t, h.answer)[1]}
             for h, t in zip(qs, texts)]
    mean = lambda rows: float(np.mean([r["rougeL_recall"] for r in rows])) if rows else None  # noqa: E731
    return {"forget_rougeL_recall": mean(forget), "holdout_clean_rougeL_recall": mean(clean),
            "max_new_tokens": scoring.scorer.max_new_tokens, "forget": forget, "holdout_clean": clean}


def train_eco_holdout(opts: Any, search: HoldoutSearch) -> dict[str, Any]:
    """``guard-train eco --holdout``: run the grid search and write ``OUT/manifest.json`` (kind ``eco``)."""
    from guard.atomic import staged_dir, write_json
    from guard.engines.local import LocalEngine
    from guard.models import resolve_model
    from guard.policy import load_policy
    from guard.train.artifact_files import policy_stamp
    from guard.train.eco import MANIFEST, manifest_head

    def say(message: str) -> None:
        if opts.progress:
            print(f"guard-train eco: {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    search.validate()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    policy = load_policy(opts.policy)
    data = search_data(policy, opts.targets, search)
    model_path = Path(resolve_model(opts.model))
    say(f"loading {opts.model}")
    engine = LocalEngine(model_path, opts.model)

    async def run() -> dict[str, Any]:
        await engine.start()
        try:
            matrix = engine.model.get_input_embeddings().weight.detach().float()
            rms, hidden = float(matrix.pow(2).mean().sqrt()), int(matrix.shape[1])
            points = grid(search, rms, hidden)
            scoring = ServedScoring(engine, policy, data.target_ids, search.seed, search.select)
            scoring.intervention(points[0])  # the policy's own params must parse before anything is scored
            say(f"{len(data.tuned)} tuned + {len(data.held_out)} held-out forget QA ({', '.join(data.target_ids)}), "
                f"{len(data.holdout)} never-seen holdout QA, {len(data.keep)} keep QA; {len(points)} grid points")
            record = run_search(scoring, data, points, search, progress=opts.progress, say=say)
            record["embedding_rms"], record["hidden_size"] = rms, hidden
            if search.report_answers:
                scoring.scorer.max_new_tokens = search.max_new_tokens
                chosen_eco = scoring.intervention({k: record["chosen"][k] for k in ("corruption", "sigma", "k")})
                record["answers"] = await _answers(scoring, chosen_eco, data.tuned, data.holdout, search.report_answers)
                say(f"greedy answers: forget ROUGE-L recall {record['answers']['forget_rougeL_recall']:.3f} at the chosen "
                    f"point; clean model on never-seen QA {record['answers']['holdout_clean_rougeL_recall']:.3f}")
            return record
        finally:
            await engine.close()

    record = asyncio.run(run())
    chosen = record["chosen"]
    by_id = {t.id: t for t in policy.targets}
    params = [target_params(by_id[tid], search.select) for tid in data.target_ids]
    common = {key: params[0].get(key, default) for key, default in (("select", "entity"), ("answer_names", False))
              if all(p.get(key, default) == params[0].get(key, default) for p in params)}
    manifest: dict[str, Any] = {
        **manifest_head(model_path, opts.model),
        "policy": policy_stamp(opts.policy)["path"],
        "policy_sha256": policy_stamp(opts.policy)["sha256"],
        "targets": data.target_ids,
        "chosen": {"corruption": chosen["corruption"], "sigma": chosen["sigma"], "k": chosen["k"], **common},
        "searched_with": {tid: {k: v for k, v in p.items() if k in ("select", "facts", "answer_names")}
                          for tid, p in zip(data.target_ids, params)},
        "objective": {"surrogate": "KS statistic of the tuned forget half's truth ratios (scored through ECO as served) "
                                   "vs the clean model's on never-seen holdout QA (guard.train.forget_surrogate)",
                      "retain_twin": "never read"},
        "search": record,
        "time_s": round(time.perf_counter() - started, 1),
    }
    out = Path(opts.out)
    with staged_dir(out) as tmp:
        write_json(tmp / MANIFEST, manifest)
    say(f"chose {chosen['corruption']} sigma={chosen['sigma']} k={chosen['k']} (strength {chosen['strength']:.3f}, "
        f"KS D {chosen['ks_d']:.3f}, p {chosen['ks_p']:.3f}); held-out half KS p {record['held_out_half']['ks_p']:.3f}; "
        f"wrote {out / MANIFEST} in {manifest['time_s']:.0f}s")
    return manifest
