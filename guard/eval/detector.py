"""Detector evaluation: recall per positive set, FPR per negative set, attribution, ROC, latency.

The sets are discovered from the policy's data sources and the data folder (``--data``), never from
a fixed list, and nothing scored was trained or calibrated on: every scored text that also occurs in
the detector's training data (exemplars, name templates, negative bank) is dropped and counted
(``leaked_dropped``).

* TOFU (a target whose forget data is ``tofu_qa`` rows of a split in a TOFU folder): positives are
  the questions of the target author's rows *not* trained on (``forget_heldout``) and the
  ``paraphrased_question`` of all the author's rows in ``<split>_perturbed.json``
  (``forget_paraphrased``); negatives are ``retain_perturbed`` (= full[0:400]), ``real_authors`` and
  ``world_facts`` questions.
* RWKU (a target given by ``rwku_intro``/``rwku_passage`` of a target folder): positives are the
  target's ``forget_level1/2/3`` probes (FB, QA, AA; AA also per attack type), negatives its
  ``neighbor_level1/2`` probes and the general instructions of the *other* targets' ``fluency.json``.

Settings: ``batch`` (the whole policy: max over heads against the global threshold; attribution =
the flagged head is the right target) and ``single`` (each target's head alone with its own
calibrated threshold: the single-target setting, where that target's negatives include the other
targets' passages).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from guard.policy import Policy

log = logging.getLogger(__name__)

TOFU_NEGATIVES = ("retain_perturbed", "real_authors", "world_facts")
RWKU_POSITIVES = {"forget_level1": "forget_fb", "forget_level2": "forget_qa", "forget_level3": "forget_aa"}
RWKU_NEGATIVES = {"neighbor_level1": "neighbor_fb", "neighbor_level2": "neighbor_qa"}


@dataclass
class EvalSet:
    name: str
    positive: bool
    texts: list[str]
    target: str | None = None               # the expected target (positives), or whose negatives these are
    types: list[str] = field(default_factory=list)
    suite: str = ""


def _jsonl_or_json(path: Path) -> list[dict[str, Any]]:
    raw = path.read_text(encoding="utf-8")
    if raw.lstrip().startswith("["):
        return json.loads(raw)
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def _rows(spec: str | None, n: int) -> range:
    from classifiers.data import parse_rows

    return parse_rows(spec, n)


# ------------------------------------------------------------------------------------------ sets


def tofu_sets(policy: Policy, data_dir: Path) -> list[EvalSet]:
    sets: list[EvalSet] = []
    tofu_dir: Path | None = None
    for target in policy.targets:
        for src in target.forget_data:
            if src.format != "tofu_qa" or not (src.path.parent / "full.json").exists():
                continue
            tofu_dir = Path(data_dir) / "tofu" if (Path(data_dir) / "tofu" / "full.json").exists() else src.path.parent
            split = src.path.stem
            rows_all = _jsonl_or_json(tofu_dir / src.path.name)
            trained = set(_rows(src.rows, len(rows_all)))
            blocks = {r // 20 for r in trained}
            block_rows = [r for b in sorted(blocks) for r in range(b * 20, min(b * 20 + 20, len(rows_all)))]
            held = [r for r in block_rows if r not in trained]
            if held:
                sets.append(EvalSet("forget_heldout", True, [rows_all[r]["question"] for r in held], target.id, suite="tofu"))
            pert = tofu_dir / f"{split}_perturbed.json"
            if pert.exists():
                prow = _jsonl_or_json(pert)
                sets.append(EvalSet("forget_paraphrased", True,
                                    [prow[r]["paraphrased_question"] for r in block_rows if r < len(prow) and prow[r].get("paraphrased_question")],
                                    target.id, suite="tofu"))
    if tofu_dir is not None:
        for name in TOFU_NEGATIVES:
            path = tofu_dir / f"{name}.json"
            if path.exists():
                sets.append(EvalSet(name, False, [r["question"] for r in _jsonl_or_json(path)], suite="tofu"))
    return sets


def _rwku_root(data_dir: Path) -> Path:
    return Path(data_dir) / "rwku" if (Path(data_dir) / "rwku").is_dir() else Path(data_dir)


def rwku_sets(policy: Policy, data_dir: Path) -> list[EvalSet]:
    sets: list[EvalSet] = []
    root = _rwku_root(data_dir)
    own_folders: dict[str, Path] = {}
    for target in policy.targets:
        for src in target.forget_data:
            if src.format in ("rwku_intro", "rwku_passage"):
                folder = root / src.path.parent.name
                if folder.is_dir():
                    own_folders[target.id] = folder
                break
    if not own_folders:
        return sets
    for tid, folder in own_folders.items():
        for fname, set_name in {**RWKU_POSITIVES, **RWKU_NEGATIVES}.items():
            path = folder / f"{fname}.json"
            if not path.exists():
                continue
            rows = _jsonl_or_json(path)
            positive = fname in RWKU_POSITIVES
            types = [str(r.get("type", "")) for r in rows]
            sets.append(EvalSet(set_name, positive, [r["query"] for r in rows], tid, types, suite="rwku"))
    # general instructions: fluency.json of targets that are *not* being evaluated here when there
    # are any, else of all folders (they are never training data either way)
    others = [p for p in root.iterdir() if p.is_dir() and p not in own_folders.values() and (p / "fluency.json").exists()]
    pool = others or [p for p in own_folders.values() if (p / "fluency.json").exists()]
    general = list(dict.fromkeys(r["instruction"] for p in sorted(pool) for r in _jsonl_or_json(p / "fluency.json")))
    sets.append(EvalSet("general_instructions", False, general, suite="rwku"))
    return sets


def long_filler_set(pos_sets: Sequence[EvalSet], filler_pool: Sequence[str], n: int = 40, words: int = 1500, seed: int = 0) -> EvalSet:
    """Forget questions hidden after ~``words`` words of unrelated filler (tests windowed screening)."""
    from classifiers.benign_text import filler_text

    rng = random.Random(seed)
    cands = [(t, s.target) for s in pos_sets for t in s.texts]
    rng.shuffle(cands)
    texts, targets = [], []
    for q, tid in cands[:n]:
        texts.append(filler_text(filler_pool, words, rng) + " " + q)
        targets.append(tid)
    es = EvalSet("long_filler", True, texts, None, suite="windowed")
    es.types = [t or "" for t in targets]
    return es


def long_negative_set(filler_pool: Sequence[str], n: int = 40, words: int = 1500, seed: int = 1) -> EvalSet:
    """Long benign inputs: ~``words`` words of negatives only (the false positives of windowed screening)."""
    from classifiers.benign_text import long_benign_texts

    texts = long_benign_texts(filler_pool, n, words, random.Random(seed))
    es = EvalSet("long_negatives", False, texts, None, suite="windowed")
    es.types = [""] * len(texts)
    return es


# ------------------------------------------------------------------------------------------ scoring


def training_texts(model: Any) -> set[str]:
    from classifiers.facts import date_variants
    from classifiers.templates import entity_questions, surname_questions

    texts = set(model.index.texts) | set(model.neg_texts)
    for names in model.names.values():
        texts |= set(entity_questions(names))
        toks = names[0].replace(",", " ").split() if names else []
        if len(toks) >= 2:
            texts |= set(surname_questions(toks[-1]))
    for t in model.index.texts:  # the heads also train on their exemplars with the dates re-rendered
        texts |= set(date_variants(t))
    return texts


def _rate(mask: np.ndarray) -> float:
    return float(mask.mean()) if len(mask) else float("nan")


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    if not len(pos) or not len(neg):
        return float("nan")
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([pos, neg]))
    return float((r[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def score_sets(detector: Any, sets: Sequence[EvalSet], progress: Callable[[str], None]) -> dict[str, Any]:
    """Probabilities of every stage for every unique text: {'static': [N,T], 'sentence': [N,T], 'index': {text: row}}."""
    texts = list(dict.fromkeys(t for s in sets for t in s.texts))
    out: dict[str, Any] = {"index": {t: i for i, t in enumerate(texts)}}
    for stage in detector.model.stages:
        t0 = time.perf_counter()
        last = [0.0]

        def tick(done: int, total: int, stage: str = stage) -> None:
            if time.perf_counter() - last[0] > 15:
                last[0] = time.perf_counter()
                progress(f"  {stage}: {done}/{total} segments")

        out[stage] = detector.stage_scores(stage, texts, progress=tick)
        progress(f"scored {len(texts)} texts with the {stage} stage in {time.perf_counter() - t0:.1f}s")
    return out


def final_scores(model: Any, scores: dict[str, Any], rows: np.ndarray, target: int | None = None) -> np.ndarray:
    """Deciding-stage log-odds for ``rows`` ([n, T], or [n] for one head in the single setting)."""
    mode = model.mode
    if mode == "static":
        P = scores["static"][rows]
        return P if target is None else P[:, target]
    if mode == "sentence":
        P = scores["sentence"][rows]
        return P if target is None else P[:, target]
    from classifiers.detector import CLEAN

    P1, P2 = scores["static"][rows], scores["sentence"][rows]
    st = model.stages["static"]
    if target is None:
        gate = P1.max(axis=1) > st.tau_loose
        return np.where(gate[:, None], P2, CLEAN)
    gate = P1[:, target] > st.tau_loose_target[target]
    return np.where(gate, P2[:, target], CLEAN)


def deciding_stage(model: Any) -> str:
    return "static" if model.mode == "static" else "sentence"


def evaluate_sets(detector: Any, sets: Sequence[EvalSet], *, settings: Sequence[str], progress: Callable[[str], None],
                  threshold: float | None = None) -> dict[str, Any]:
    model = detector.model
    seen = training_texts(model)
    dropped: dict[str, int] = defaultdict(int)
    clean_sets = []
    for s in sets:
        keep = [(t, ty) for t, ty in zip(s.texts, s.types or [""] * len(s.texts)) if t not in seen]
        dropped[s.name] += len(s.texts) - len(keep)
        clean_sets.append(EvalSet(s.name, s.positive, [k[0] for k in keep], s.target, [k[1] for k in keep], s.suite))
    scores = score_sets(detector, clean_sets, progress)
    idx = scores["index"]
    tid_pos = {t: j for j, t in enumerate(model.target_ids)}
    from classifiers.classifier import logit, sigmoid

    stage = model.stages[deciding_stage(model)]
    tau = logit(threshold) if threshold is not None else stage.tau
    tau_long, tau_long_target = stage.long_thresholds()
    if threshold is not None:
        tau_long, tau_long_target = tau, np.full(len(model.target_ids), tau, np.float32)
    is_long = np.array([len(t.split()) > model.window_words for t in idx], bool)
    result: dict[str, Any] = {"leaked_dropped": dict(dropped), "threshold": float(sigmoid(tau)), "threshold_log_odds": tau,
                              "threshold_long_log_odds": float(tau_long),
                              "mode": model.mode, "targets": len(model.target_ids)}

    if "batch" in settings:
        per_set: dict[str, dict[str, Any]] = {}
        pooled_pos: list[np.ndarray] = []
        neg_scores: dict[str, list[np.ndarray]] = defaultdict(list)
        by_type: dict[str, list[bool]] = defaultdict(list)
        attributed = flagged_total = 0
        for s in clean_sets:
            if not s.texts:
                continue
            rows = np.array([idx[t] for t in s.texts])
            P = final_scores(model, scores, rows)
            mx = P.max(axis=1)
            hit = mx > np.where(is_long[rows], tau_long, tau)
            agg = per_set.setdefault(s.name, {"n": 0, "flagged": 0, "positive": s.positive, "attributed": 0})
            agg["n"] += len(rows)
            agg["flagged"] += int(hit.sum())
            if s.positive:
                pooled_pos.append(mx)
                if s.target in tid_pos:
                    right = P.argmax(axis=1) == tid_pos[s.target]
                    agg["attributed"] += int((hit & right).sum())
                    attributed += int((hit & right).sum())
                    flagged_total += int(hit.sum())
                for ty, h in zip(s.types, hit):
                    if ty:
                        by_type[f"{s.name}:{ty}"].append(bool(h))
            else:
                neg_scores[s.name].append(mx)
        for name, agg in per_set.items():
            agg["rate"] = agg["flagged"] / agg["n"] if agg["n"] else float("nan")
            agg["metric"] = "recall" if agg["positive"] else "fpr"
            if agg["positive"]:
                agg["attribution"] = agg["attributed"] / agg["flagged"] if agg["flagged"] else float("nan")
        pos_all = np.concatenate(pooled_pos) if pooled_pos else np.zeros(0)
        negs = {k: np.concatenate(v) for k, v in neg_scores.items()}
        grid = sorted(set([-6.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0] + [round(tau, 4)]))
        roc = [{"threshold_log_odds": g, "threshold": float(sigmoid(g)), "recall": _rate(pos_all > g),
                **{f"fpr_{k}": _rate(v > g) for k, v in negs.items()}} for g in grid]
        result["batch"] = {
            "sets": per_set,
            "by_type": {k: {"n": len(v), "recall": float(np.mean(v))} for k, v in sorted(by_type.items())},
            "attribution_accuracy": attributed / flagged_total if flagged_total else float("nan"),
            "auc": {k: _auc(pos_all, v) for k, v in negs.items()},
            "roc": roc,
        }

    if "single" in settings:
        per_target: dict[str, dict[str, float]] = {}
        type_hits: dict[str, list[float]] = defaultdict(list)
        general = [s for s in clean_sets if s.target is None and not s.positive]
        for tid, j in tid_pos.items():
            tau_t = logit(threshold) if threshold is not None else float(stage.tau_target[j])
            tau_t_long = float(tau_long_target[j])
            rec: dict[str, float] = {}
            types_t: dict[str, list[bool]] = defaultdict(list)
            for s in [s for s in clean_sets if s.target == tid] + general:
                if not s.texts:
                    continue
                rows = np.array([idx[t] for t in s.texts])
                hit = final_scores(model, scores, rows, target=j) > np.where(is_long[rows], tau_t_long, tau_t)
                key = s.name
                rec[key] = float(hit.mean())
                for ty, h in zip(s.types, hit):
                    if ty and s.positive:
                        types_t[f"{s.name}:{ty}"].append(bool(h))
            for k, v in types_t.items():
                rec[k] = float(np.mean(v))
                type_hits[k].append(float(np.mean(v)))
            per_target[tid] = rec
        keys = sorted({k for r in per_target.values() for k in r})
        result["single"] = {
            "per_target": per_target,
            "mean": {k: float(np.mean([r[k] for r in per_target.values() if k in r])) for k in keys},
            "targets_below": {k: sum(1 for r in per_target.values() if k in r and r[k] < 0.9) for k in keys if k.startswith("forget")},
        }
    return result


def latency(detector: Any, sets: Sequence[EvalSet], n: int = 300, seed: int = 0) -> dict[str, Any]:
    """Wall time of ``screen([query])`` per query (the detector's caches cleared before each), by positive/negative."""
    rng = random.Random(seed)
    out: dict[str, Any] = {}
    for label, positive in (("negatives", False), ("positives", True)):
        pool = [t for s in sets if s.positive == positive and s.suite != "windowed" for t in s.texts]
        if not pool:
            continue
        sample = rng.sample(pool, min(n, len(pool)))
        detector.screen(sample[:1])
        times = []
        for q in sample:
            detector.clear_cache()
            t0 = time.perf_counter()
            detector.screen([q])
            times.append((time.perf_counter() - t0) * 1000)
        a = np.array(times)
        out[label] = {"n": len(a), "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
                      "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}
    return out


def windowed(detector: Any, es: EvalSet, negatives: EvalSet | None = None) -> dict[str, Any]:
    hits, ms = [], []
    for text, tid in zip(es.texts, es.types):
        t0 = time.perf_counter()
        v = detector.screen([text])
        ms.append((time.perf_counter() - t0) * 1000)
        hits.append(v.flagged)
    out = {"n": len(hits), "recall": float(np.mean(hits)) if hits else float("nan"),
           "words": int(np.mean([len(t.split()) for t in es.texts])) if es.texts else 0,
           "p50_ms": float(np.median(ms)) if ms else float("nan")}
    if negatives is not None and negatives.texts:
        flagged = [detector.screen([t]).flagged for t in negatives.texts]
        out.update({"negatives_n": len(flagged), "negatives_fpr": float(np.mean(flagged))})
    return out


# ------------------------------------------------------------------------------------------ report


def _pct(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * float(x):.2f} %"


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Detector evaluation: {report.get('policy', '')}", ""]
    lines.append(f"- command: `{report.get('command', '')}`")
    lines.append(f"- mode: {report.get('mode')}, targets: {report.get('targets')}, threshold: log-odds {report.get('threshold_log_odds'):.3f} "
                 f"(p = {report.get('threshold'):.6f}), target FPR {report.get('target_fpr')}")
    lines.append(f"- scored texts dropped because they were training data: {report.get('leaked_dropped')}")
    lines.append("")
    b = report.get("batch")
    if b:
        lines += ["## Batch setting (whole policy)", "", "| set | n | metric | value | attribution |", "|---|---:|---|---:|---:|"]
        for name, s in sorted(b["sets"].items(), key=lambda kv: (not kv[1]["positive"], kv[0])):
            lines.append(f"| {name} | {s['n']} | {s['metric']} | {_pct(s['rate'])} | {_pct(s.get('attribution')) if s['positive'] else ''} |")
        lines.append(f"\nAttribution accuracy (flagged positives given to the right target): {_pct(b['attribution_accuracy'])}\n")
        if b.get("by_type"):
            lines += ["| probe type | n | recall |", "|---|---:|---:|"]
            lines += [f"| {k} | {v['n']} | {_pct(v['recall'])} |" for k, v in b["by_type"].items()]
            lines.append("")
        negs = [k for k in b["roc"][0] if k.startswith("fpr_")]
        lines += ["ROC / threshold table (recall over all positives pooled; threshold as log-odds):", "",
                  "| threshold | recall | " + " | ".join(negs) + " |", "|---:|---:|" + "---:|" * len(negs)]
        for r in b["roc"]:
            lines.append(f"| {r['threshold_log_odds']:.3f} | {_pct(r['recall'])} | " + " | ".join(_pct(r[k]) for k in negs) + " |")
        lines.append("\nAUC (pooled positives vs each negative set): " + ", ".join(f"{k} {v:.4f}" for k, v in b["auc"].items()) + "\n")
    s = report.get("single")
    if s:
        lines += ["## Single-target setting (each head alone, its own threshold), mean over targets", "",
                  "| set | mean rate | targets < 90 % |", "|---|---:|---:|"]
        for k, v in s["mean"].items():
            lines.append(f"| {k} | {_pct(v)} | {s['targets_below'].get(k, '')} |")
        lines.append("")
    w = report.get("windowed")
    if w:
        lines.append("## Windowed screening\n")
        if "negatives_n" in w:
            lines.append(f"{w['negatives_n']} long benign inputs (~{w['words']} words of negatives only): "
                         f"false positives {_pct(w['negatives_fpr'])}\n")
        lines.append(f"{w['n']} forget questions after ~{w['words']} words of filler: recall {_pct(w['recall'])}, "
                     f"p50 {w['p50_ms']:.1f} ms per request\n")
    lat = report.get("latency")
    if lat:
        lines += ["## Latency per query (`screen([q])`, cache cleared)", "", "| queries | n | p50 ms | p90 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
        for k, v in lat.items():
            lines.append(f"| {k} | {v['n']} | {v['p50_ms']:.2f} | {v['p90_ms']:.2f} | {v['p99_ms']:.2f} |")
        lines.append("")
    return "\n".join(lines) + "\n"
