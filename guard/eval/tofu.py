"""TOFU through the guard (``guard-eval tofu``), in-process on the local engine.

Systems measured (each one a row of the report):

* ``target``: the fine-tuned model, unguarded (every question answered by the plain model);
* ``retain``: its retain twin (never saw the forget authors); its forget-split truth ratios are the
  reference for forget quality;
* ``guard:<label>``: the target behind a policy. Each question goes through the real pipeline
  (``Pipeline.build(policy, engine, build_detector)`` then ``decide([question])``), exactly as the
  server screens a chat request's user turn. Unflagged questions are answered by the plain model;
  flagged ones by the target's intervention. That is the ``served`` regime; in the ``worst-case``
  regime every retain / real-author / world-fact question goes through the method as if flagged
  (:mod:`guard.eval.tofu_regime`: which target, and why). A row's regime is in its fingerprint, so
  a cached row of one regime is never reused for the other.

With ``TofuRun.leak`` (``--samples K --temperature T --probes ...``) every system also answers the
forget questions and/or the nameless probes ``K`` times, and the results gain a ``leak`` section
(:mod:`guard.eval.tofu_leak`: the model alone; each guard with output screening off and as served).

What each number sees:

* **Generation** (ROUGE): the text the system returns: ``intervention.stream`` for flagged
  questions (ECO's corrupted embeddings, SPUL's soft prompt, ULD's logit difference, or the fixed
  refusal text), the plain model's greedy answer otherwise. Greedy, ``max_new_tokens`` (TOFU:
  200), the request seed fixed (``--seed``) so ECO's noise is reproducible. Plain answers are
  generated in batches (left padding); that is the same greedy answer as one at a time up to float
  rounding.
* **Probabilities and truth ratios** (teacher forcing): the answer's per-token NLL *through the
  intervention the question would get*: ``intervention.scoring_inputs(...)`` gives the prompt
  embeddings (corrupted / with the soft prompt) and an optional logits transform (ULD), and, for
  an intervention that changes how the model reads its own answer (ECO ``answer_names``), the
  answer embeddings with the target's names corrupted (``scoring_answer_embeds``); then
  :func:`guard.lm.nll.mean_answer_nll`. Unflagged questions are scored on the plain
  model (``PassThrough.scoring_inputs``: the plain prompt).
* **Refusal** has no teacher-forced score: a refusing system puts all its probability on the
  refusal text, so the probability of the gold answer is 0 and the truth ratio is 0/0. Following
  the guardrail-baseline convention (Thaker et al., "Guardrail Baselines for Unlearning in LLMs"),
  refused questions are scored by **generation metrics only**: they count in ROUGE (the refusal
  text is the answer) and in the refusal rate, and are left out of Probability, Truth Ratio and
  the KS test, which are computed over the questions the system actually answered (``n_scored``
  in the results). A split with no answered question reports ``None`` for those metrics, and so
  does Model Utility. The same applies to any intervention that does not implement
  ``scoring_inputs``.

The answer tokens are those the fine-tuning used (``guard.lm.chat_format.encode_qa``: the text
the chat template puts after the generation prompt, up to and including the end-of-turn token),
so the target's NLL here equals its training NLL. Metrics and their aggregation are TOFU's
(:mod:`guard.eval.tofu_metrics`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from guard.atomic import write_json
from guard.errors import ConfigError
from guard.eval.metrics import get_metric
from guard.eval.tofu_metrics import TOFU_CONFIG, SplitScores, truth_ratios
from guard.eval.tofu_plan import SPLITS, EvalPlan, TofuItem, plan_for_preset, preset_of, spread
from guard.eval.tofu_regime import DEFAULT_REGIME, route
from guard.eval.tofu_leak import LeakSpec, evaluate_leak, leak_probes
from guard.eval.tofu_scoring import ItemResult, Scorer, generation_only
from guard.interventions.base import PassThrough

__all__ = ["SPLITS", "EvalPlan", "ItemResult", "Scorer", "System", "TofuItem", "TofuRun", "aggregate", "evaluate_system",
           "generation_only", "plan_for_preset", "preset_of", "run_tofu", "split_scores", "spread", "truth_ratio_values"]

log = logging.getLogger(__name__)

HARNESS_VERSION = 1
GUARD_SCORING_VERSION = 2  # 2: answers scored as the intervention reads them (ECO answer_names); guard rows only

# ------------------------------------------------------------------------------------- systems

@dataclass
class System:
    """One row of the report: a model, optionally behind a policy."""

    label: str
    kind: str                      # target | retain | guard
    model: str
    policy_path: Path | None = None
    action_override: str | None = None
    regime: str = DEFAULT_REGIME     # guard rows: served | worst-case (guard.eval.tofu_regime)

    def fingerprint(self, plan: EvalPlan, max_new_tokens: int, seed: int, data_dir: Path, model_dir: Path) -> dict[str, Any]:
        policy_sha = None
        if self.policy_path is not None:
            policy_sha = hashlib.sha256(Path(self.policy_path).read_bytes()).hexdigest()
        out = {"version": HARNESS_VERSION, "kind": self.kind, "model": str(model_dir), "model_id": _model_stamp(model_dir),
               "data": str(data_dir), "plan": asdict(plan), "max_new_tokens": max_new_tokens, "seed": seed,
               "policy_sha256": policy_sha, "action_override": self.action_override}
        if self.kind == "guard":  # a change in how guards are scored redoes guard rows, not the unguarded ones
            out["guard_scoring"] = GUARD_SCORING_VERSION
            if self.regime != DEFAULT_REGIME:  # served rows keep the fingerprint they had before regimes existed
                out["regime"] = self.regime
        return out


def _regime(system: System) -> str | None:
    return system.regime if system.kind == "guard" else None


def _model_stamp(model_dir: Path) -> str:
    files = sorted(Path(model_dir).glob("*.safetensors"))
    return hashlib.sha256(json.dumps([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]).encode()).hexdigest()[:16]


def load_guard_policy(path: Path, action: str | None) -> Any:
    """The policy at ``path``; with ``action``, every target (and the default) uses that action."""
    from guard.policy import load_policy

    policy = load_policy(Path(path))
    if action is None:
        return policy
    targets = tuple(t.model_copy(update={"action": action}) for t in policy.targets)
    return policy.model_copy(update={"targets": targets, "default_action": action})


async def evaluate_system(system: System, scorer: Scorer, items: dict[str, list[TofuItem]],
                          pipeline: Any = None) -> dict[str, list[ItemResult]]:
    """Per-split item results of one system (``pipeline`` ``None``: the plain model)."""
    from tqdm.auto import tqdm

    out: dict[str, list[ItemResult]] = {}
    for split in SPLITS:
        split_items = items[split]
        if pipeline is None:
            out[split] = scorer.plain(split_items, desc=f"{system.label}/{split}")
            continue
        served = [await pipeline.decide([it.question]) for it in split_items]
        decisions = route(pipeline, split, served, system.regime)
        routed = {it.index for it, s, d in zip(split_items, served, decisions) if d is not s}
        plain_items = [it for it, d in zip(split_items, decisions) if isinstance(d.intervention, PassThrough)]
        plain = {r.index: r for r in scorer.plain(plain_items, desc=f"{system.label}/{split} unflagged")}
        results: list[ItemResult] = []
        flagged = [(it, d) for it, d in zip(split_items, decisions) if not isinstance(d.intervention, PassThrough)]
        bar = tqdm(total=len(flagged), desc=f"{system.label}/{split} flagged", leave=False, disable=not scorer.progress)
        by_index: dict[int, ItemResult] = {}
        for it, d in flagged:
            result = await scorer.intervened(it, d)
            if it.index in routed:   # the detector passed it; the regime sent it to the method
                result.flagged, result.routed = False, True
            by_index[it.index] = result
            bar.update(1)
        bar.close()
        for it, d in zip(split_items, decisions):
            if it.index in by_index:
                results.append(by_index[it.index])
            else:
                base = plain[it.index]
                results.append(ItemResult(**{**base.to_dict(), "flagged": d.verdict.flagged and it.index not in routed,
                                             "target": d.verdict.target_id, "action": d.action,
                                             "score": d.verdict.score, "routed": it.index in routed}))
        out[split] = results
    return out


# ------------------------------------------------------------------------------------- metrics

def split_scores(results: Sequence[ItemResult]) -> SplitScores | None:
    """Teacher-forced scores of the answered (scored) items, or ``None`` if there is none."""
    scored = [r for r in results if r.scored]
    if not scored:
        return None
    return SplitScores(gt_loss=[r.gt_loss for r in scored], paraphrased_loss=[r.paraphrased_loss for r in scored],
                       perturbed_losses=[r.perturbed_losses for r in scored],
                       rougeL_recall=[r.rougeL_recall for r in scored], ids=[str(r.index) for r in scored])


def aggregate(results: dict[str, Sequence[ItemResult]], reference_forget: SplitScores | None) -> dict[str, Any]:
    """TOFU's numbers (open-unlearning keys) for one system.

    Runs :data:`TOFU_CONFIG` with two changes for guarded systems: ROUGE is the mean over *all*
    items (refusals included), the other metrics use the scored items only; a metric whose input is
    missing (no scored item) is ``None``, and so is anything computed from it (Model Utility).
    """
    inputs: dict[str, Any] = {"retain_model_forget": reference_forget}
    for split in SPLITS:
        inputs[split] = split_scores(results[split])
        inputs[f"{split}_rougeL"] = [r.rougeL_recall for r in results[split]]
    out: dict[str, Any] = {}
    for key, entry in TOFU_CONFIG.items():
        if entry["metric"] == "rouge":
            fn, kwargs = get_metric("mean"), {"values": inputs[f"{entry['inputs']['split']}_rougeL"]}
        else:
            fn = get_metric(entry["metric"])
            kwargs = {k: v for k, v in entry.items() if k not in ("metric", "inputs")}
            for param, source in (entry.get("inputs") or {}).items():
                kwargs[param] = [out.get(s, inputs.get(s)) for s in source] if isinstance(source, list) \
                    else out.get(source, inputs.get(source))
        missing = any(v is None or (isinstance(v, list) and any(x is None for x in v))
                      for k, v in kwargs.items() if k != "reference")
        out[key] = None if missing else fn(**kwargs)
    for split in SPLITS:
        rows = results[split]
        n = len(rows)
        out[f"{split}_n"] = n
        out[f"{split}_n_scored"] = sum(r.scored for r in rows)
        out[f"{split}_flag_rate"] = sum(r.flagged for r in rows) / n if n else None
        out[f"{split}_intervened_rate"] = sum(r.action != "pass" for r in rows) / n if n else None
        out[f"{split}_routed_rate"] = sum(r.routed for r in rows) / n if n else None
    return out


def truth_ratio_values(scores: SplitScores | None) -> list[float]:
    if scores is None:
        return []
    return [float(x) for x in truth_ratios(scores.paraphrased_loss, scores.perturbed_losses)]


# --------------------------------------------------------------------------------- orchestration

def system_path(out_dir: Path, system: System) -> Path:
    return out_dir / "systems" / f"{system.label}.json"


def load_system(path: Path, fingerprint: dict[str, Any]) -> dict[str, list[ItemResult]] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("settings") != fingerprint:
        return None
    return {split: [ItemResult(**r) for r in rows] for split, rows in data["items"].items()}


@dataclass
class TofuRun:
    data_dir: Path
    out_dir: Path
    plan: EvalPlan
    target_model: str
    retain_model: str | None = None
    guards: list[System] = field(default_factory=list)
    max_new_tokens: int = 200
    seed: int = 0
    batch_size: int = 8
    threads: int | None = None
    device: str = "auto"
    force: bool = False
    progress: bool = True
    leak: LeakSpec | None = None   # --samples: the sampling leak section (guard.eval.tofu_leak)


async def run_tofu(run: TofuRun) -> dict[str, Any]:
    """Evaluate target, retain twin and every guard; write per-system files; return all results."""
    from classifiers.loader import build_detector
    from guard.engines.local import LocalEngine
    from guard.models import resolve_model, served_name_for
    from guard.pipeline import Pipeline

    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    items = run.plan.load(run.data_dir)
    systems = [System("target", "target", run.target_model)]
    if run.retain_model:
        systems.append(System("retain", "retain", run.retain_model))
    systems += run.guards
    labels = [s.label for s in systems]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"system labels must be unique, got {labels}", param="guard")
    engines: dict[str, Any] = {}
    scorers: dict[str, Scorer] = {}
    results: dict[str, dict[str, list[ItemResult]]] = {}
    timings: dict[str, float] = {}
    model_dirs = {name: Path(resolve_model(name)) for name in {s.model for s in systems}}

    pipelines: dict[str, Any] = {}

    async def pipeline_for(system: System) -> Any:
        if system.label not in pipelines:
            scorer = await scorer_for(system.model)
            try:
                policy = load_guard_policy(system.policy_path, system.action_override)
                pipelines[system.label] = Pipeline.build(policy, scorer.engine, build_detector, source=system.policy_path)
            except ConfigError as exc:
                action = f" with action {system.action_override}" if system.action_override else ""
                raise ConfigError(f"guard {system.label!r} (policy {system.policy_path}{action}): {exc}",
                                  param="guard") from None
        return pipelines[system.label]

    async def engine_for(model: str) -> Any:
        return (await scorer_for(model)).engine

    leak: dict[str, Any] | None = None

    async def scorer_for(model: str) -> Scorer:
        if model not in scorers:
            engine = LocalEngine(model_dirs[model], served_name_for(model), max_concurrency=1, threads=run.threads,
                                 device=run.device)
            await engine.start()
            engines[model] = engine
            scorers[model] = Scorer(engine, max_new_tokens=run.max_new_tokens, seed=run.seed,
                                    batch_size=run.batch_size, progress=run.progress)
        return scorers[model]

    try:
        # finished systems first: their plain items seed the cache of the model they ran on
        pending = []
        for system in systems:
            fp = system.fingerprint(run.plan, run.max_new_tokens, run.seed, run.data_dir, model_dirs[system.model])
            done = None if run.force else load_system(system_path(run.out_dir, system), fp)
            if done is not None:
                log.info("%s: already evaluated with these settings, reusing %s", system.label, system_path(run.out_dir, system))
                results[system.label] = done
            else:
                pending.append((system, fp))
        # build every pending guard's pipeline before measuring anything: a bad policy or a missing
        # artifact fails in seconds, not after the unguarded runs
        for system, _ in pending:
            if system.kind == "guard":
                await pipeline_for(system)
        for system, fp in pending:
            scorer = await scorer_for(system.model)
            for label, res in results.items():
                other = next(s for s in systems if s.label == label)
                if other.model == system.model:
                    scorer.seed_plain(r for rows in res.values() for r in rows)
            pipeline = pipelines.get(system.label)
            t0 = time.perf_counter()
            res = await evaluate_system(system, scorer, items, pipeline)
            timings[system.label] = round(time.perf_counter() - t0, 1)
            results[system.label] = res
            write_json(system_path(run.out_dir, system), {
                "label": system.label, "kind": system.kind, "model": system.model,
                "policy": str(system.policy_path) if system.policy_path else None,
                "action_override": system.action_override, "regime": _regime(system), "settings": fp,
                "elapsed_s": timings[system.label],
                "items": {split: [r.to_dict() for r in rows] for split, rows in res.items()}})
        if run.leak is not None:
            t0 = time.perf_counter()
            leak = await evaluate_leak(run.leak, leak_probes(run.leak, run.data_dir, run.plan, items), systems,
                                       out_dir=run.out_dir, max_new_tokens=run.max_new_tokens, seed=run.seed,
                                       data_dir=run.data_dir, model_dirs=model_dirs, model_stamp=_model_stamp,
                                       engine_for=engine_for, pipeline_for=pipeline_for, progress=run.progress,
                                       force=run.force)
            leak["elapsed_s"] = round(time.perf_counter() - t0, 1)
    finally:
        for pipeline in pipelines.values():
            pipeline.close()   # its screening process and the methods' models (ULD's assistant)
        for engine in engines.values():
            await engine.close()
        torch.set_num_threads(threads_before)  # the engine's --threads is process-wide; give it back

    reference = split_scores(results["retain"]["forget"]) if "retain" in results else None
    out_systems = []
    for system in systems:
        res = results[system.label]
        metrics = aggregate(res, reference)
        out_systems.append({
            "label": system.label, "kind": system.kind, "model": system.model,
            "policy": str(system.policy_path) if system.policy_path else None, "action_override": system.action_override,
            "regime": _regime(system), "actions": sorted({r.action for rows in res.values() for r in rows}),
            "metrics": metrics, "elapsed_s": timings.get(system.label),
            "forget_truth_ratios": truth_ratio_values(split_scores(res["forget"])),
        })
    out: dict[str, Any] = {
        "benchmark": "tofu",
        "settings": {"data": str(run.data_dir), "plan": asdict(run.plan), "target_model": run.target_model,
                     "retain_model": run.retain_model, "max_new_tokens": run.max_new_tokens, "seed": run.seed,
                     "batch_size": run.batch_size, "harness_version": HARNESS_VERSION,
                     "items": {s: len(v) for s, v in items.items()}},
        "systems": out_systems,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    if leak is not None:
        out["leak"] = leak
    return out
