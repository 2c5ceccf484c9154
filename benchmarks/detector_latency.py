#!/usr/bin/env python3
"""Detector quality/latency trade-off, component costs, and time-to-enforcement of a new target.

    python benchmarks/detector_latency.py --data ../shared/data --out runs/bench/detector
    python benchmarks/detector_latency.py --data ../shared/data --out runs/bench/detector --skip-live

What it does (all on this machine's CPU, single process):

1. Trains (or reuses, from the cache) a ``cascade`` detector for a policy (default: TOFU forget10,
   first half of each author's QA pairs), which holds both the static-embedder heads and the
   MiniLM heads, and evaluates it as four detectors on the same held-out sets:
   ``keyword`` (name/alias match), ``static`` (distilled static embedder + char n-grams + names),
   ``sentence`` (MiniLM fp32 + char n-grams + names), ``sentence-int8`` (the same heads, MiniLM with
   dynamic int8 linear layers), ``cascade`` (static gate at a loose threshold, MiniLM when unsure).
   For each: recall/FPR per set and ``screen([query])`` latency over a mix of positive and negative
   queries (wall time and CPU time, p50/p90/p99, LRU cache cleared before every query).
2. Component costs for one short query: MiniLM fp32 / int8 encode, static encode, char n-grams.
3. Time to enforcement of a new RWKU target (``--live``): an artifact for some RWKU targets, a policy
   that adds one more, ``build_detector(policy)`` (what SIGHUP / the admin reload call) until the new
   target's questions are flagged. Cold = nothing cached for that target.

4. ``--served ARTIFACT`` (instead of 1-3): a static TOFU artifact timed the way it is served, side by
   side: raw, behind the de-obfuscation without name matching (``NormalizingDetector(...,
   approximate=False)``, the served stack before issue 15 plus its cheap decoders) and as served now
   (misspelt / transliterated / initials respelling, ROT13 and reversal guesses); and the keyword
   detector with exact and with approximate matching. Short queries: TOFU forget10 held-out questions
   and retain / real-author / world-fact questions.

Results: ``detector_latency.json`` and ``detector_latency.md`` in ``--out`` (written atomically).
Load on the machine is recorded (``os.getloadavg``): wall-clock latencies on a shared 2-core box
include time the process waited for a core; CPU times do not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentiles(xs: list[float]) -> dict[str, float]:
    a = np.array(xs)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean())}


def time_screen(detector, queries: list[str]) -> dict[str, dict[str, float]]:
    detector.screen(queries[:1])
    wall, cpu = [], []
    for q in queries:
        lock = getattr(detector, "_lock", None)
        if lock is not None:
            with lock:
                detector._cache.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        detector.screen([q])
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return {"wall_ms": percentiles(wall), "cpu_ms": percentiles(cpu)}


def quality(detector, sets) -> dict[str, float]:
    out = {}
    for s in sets:
        if not s.texts:
            continue
        hits = [detector.screen([t]).flagged for t in s.texts]
        key = s.name
        prev = out.get(key)
        out[key] = (prev[0] + sum(hits), prev[1] + len(hits)) if prev else (sum(hits), len(hits))
    return {k: v[0] / v[1] for k, v in out.items()}


class Int8Sentence:
    """The sentence embedder with torch dynamic int8 quantisation of its Linear layers."""

    def __init__(self, spec: str) -> None:
        import torch

        from classifiers.embedder import SentenceEmbedder

        self.inner = SentenceEmbedder(spec)
        model = self.inner.model
        model[0].auto_model = torch.ao.quantization.quantize_dynamic(model[0].auto_model, {torch.nn.Linear}, dtype=torch.qint8)
        self.key, self.dim = self.inner.key + "-int8", self.inner.dim

    def encode(self, texts, progress=False):
        return self.inner.encode(texts)


def components(spec: str, static) -> dict[str, dict[str, float]]:
    from classifiers.embedder import SentenceEmbedder
    from classifiers.features import CharNgrams

    q = ["What pseudonym has Stephen King published under?"]
    out = {}

    def bench(name: str, fn, n: int = 100) -> None:
        fn()
        wall, cpu = [], []
        for _ in range(n):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        out[name] = {"wall_p50_ms": float(np.median(wall)), "cpu_p50_ms": float(np.median(cpu))}

    import torch

    sent = SentenceEmbedder(spec)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        bench(f"MiniLM fp32 encode, {threads} thread(s)", lambda: sent.encode(q), 50)
    torch.set_num_threads(1)
    int8 = Int8Sentence(spec)
    bench("MiniLM int8 encode, 1 thread", lambda: int8.encode(q), 50)
    bench("static encode", lambda: static.encode(q), 300)
    char = CharNgrams()
    bench("char n-grams (hashing)", lambda: char.transform(q), 300)
    return out


def live_add(data: Path, out_dir: Path, kind: str, base_targets: int) -> dict:
    """Seconds from a policy with one more RWKU target to that target being enforced."""
    import yaml

    from classifiers.detector import save_model
    from classifiers.loader import build_detector
    from classifiers.policygen import rwku_folders, rwku_policy
    from classifiers.train import TrainConfig, train
    from guard.policy import load_policy

    folders = rwku_folders(data)[: base_targets + 1]
    base, new = folders[:base_targets], folders[base_targets]
    work = Path(tempfile.mkdtemp(prefix="live-", dir=out_dir))
    artifact = work / "artifact"
    p_base = work / "base.yaml"
    p_base.write_text(yaml.safe_dump(rwku_policy(data, base, work, artifact=artifact, embedder_kind=kind)), encoding="utf-8")
    policy = load_policy(p_base)
    log(f"live: training a {kind} artifact for {len(base)} RWKU targets (not timed)")
    save_model(train(policy, TrainConfig.from_policy(policy), progress=log), artifact)
    p_new = work / "plus-one.yaml"
    p_new.write_text(yaml.safe_dump(rwku_policy(data, base + [new], work, artifact=artifact, embedder_kind=kind)), encoding="utf-8")
    queries = [r["query"] for r in json.loads((new / "forget_level2.json").read_text())]
    os.environ["GUARD_CACHE_DIR"] = str(work / "cache")  # cold: no overlay, no embeddings of the new target
    from classifiers.embedder import static_for

    static_for("default")  # the distilled table is per machine, built once: not part of adding a target
    # the long calibration texts' features are cached per call (LongWindowCache), so this is cold
    log(f"live: adding {new.name} through build_detector (timed)")
    t0, c0 = time.perf_counter(), time.process_time()
    detector = build_detector(load_policy(p_new))
    flagged = [detector.screen([q]) for q in queries]
    cold, cold_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    build_detector(load_policy(p_new))
    warm = time.perf_counter() - t0
    tid = detector.model.target_ids[-1]
    return {"kind": kind, "base_targets": len(base), "new_target": new.name, "cold_seconds": round(cold, 2),
            "cold_cpu_seconds": round(cold_cpu, 2),
            "reload_seconds_cached": round(warm, 2), "new_target_qa_recall": float(np.mean([v.flagged for v in flagged])),
            "attributed_to_new": float(np.mean([v.target_id == tid for v in flagged if v.flagged])) if any(v.flagged for v in flagged) else 0.0}


def served_latency(artifact: Path, data: Path, n: int) -> dict:
    """``screen([query])`` wall/CPU time of the served stack before and after issue 15 (see the module docstring)."""
    from classifiers.detector import TrainedDetector, load_model
    from classifiers.keyword import KeywordDetector
    from classifiers.names import NameFinder
    from classifiers.normalize import NormalizingDetector
    from guard.eval.bypass_families import tofu10_family_probes

    trained = TrainedDetector(load_model(artifact))
    names = dict(trained.target_names)
    forget, other = tofu10_family_probes(data)
    rng = random.Random(0)
    queries = rng.sample(forget, min(n // 2, len(forget))) + rng.sample(other, min(n // 2, len(other)))
    exact_keyword = KeywordDetector(names)
    exact_keyword._finder = NameFinder(names)  # the matcher before issue 15: exact forms only
    detectors = {
        "trained (raw)": trained,
        "served, exact names only": NormalizingDetector(trained, approximate=False),
        "served, approximate names (now)": NormalizingDetector(trained),
        "keyword, exact": exact_keyword,
        "keyword, approximate (now)": KeywordDetector(names),
    }
    out = {}
    for name, det in detectors.items():
        inner = getattr(det, "inner", det)
        out[name] = time_screen(_Uncached(det, inner), queries)
        out[name]["caught_forget"] = sum(det.screen([q]).flagged for q in queries[: n // 2])
        out[name]["flagged_other"] = sum(det.screen([q]).flagged for q in queries[n // 2:])
        log(f"{name}: p50 {out[name]['wall_ms']['p50']:.2f} ms wall, {out[name]['cpu_ms']['p50']:.2f} ms CPU")
    return {"queries": len(queries), "detectors": out}


class _Uncached:
    """``screen`` with the trained detector's segment cache cleared first (``time_screen`` clears
    ``_cache`` of what it is given; a wrapper has none)."""

    def __init__(self, det, inner) -> None:
        self.det, self.inner = det, inner

    def screen(self, texts):
        cache = getattr(self.inner, "_cache", None)
        if cache is not None:
            with self.inner._lock:
                cache.clear()
        return self.det.screen(texts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--policy", type=Path, default=None, help="policy to benchmark (default: TOFU forget10 detector-eval built from --data)")
    ap.add_argument("--queries", type=int, default=200, help="queries timed per detector (half positives, half negatives)")
    ap.add_argument("--live-kind", default="static", choices=("static", "cascade"))
    ap.add_argument("--live-base", type=int, default=10, help="RWKU targets already in the artifact")
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--skip-components", action="store_true")
    ap.add_argument("--only-live", action="store_true", help="only the time-to-enforcement measurement")
    ap.add_argument("--served", type=Path, default=None, metavar="ARTIFACT",
                    help="only time a static TOFU artifact as served, before/after issue 15's name matching")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.served is not None:
        from guard.atomic import write_json, write_text

        args.out.mkdir(parents=True, exist_ok=True)
        report = {"load_before": os.getloadavg(), **served_latency(args.served, args.data, args.queries)}
        report["load_after"] = os.getloadavg()
        md = ("| detector | p50 wall ms | p99 wall ms | p50 CPU ms | forget caught | other flagged |\n|---|---:|---:|---:|---:|---:|\n"
              + "\n".join(f"| {k} | {v['wall_ms']['p50']:.2f} | {v['wall_ms']['p99']:.2f} | {v['cpu_ms']['p50']:.2f} | "
                          f"{v['caught_forget']} | {v['flagged_other']} |" for k, v in report["detectors"].items()))
        write_json(args.out / "served_latency.json", report)
        write_text(args.out / "served_latency.md", md + "\n")
        print(md)
        return 0

    import torch
    import yaml

    from classifiers.detector import TrainedDetector, load_model, save_model
    from classifiers.embedder import SentenceEmbedder
    from classifiers.keyword import KeywordDetector
    from classifiers.policygen import tofu_policy
    from classifiers.train import TrainConfig, train
    from guard.atomic import staged_dir, write_json, write_text
    from guard.eval import detector as ev
    from guard.paths import cache_dir
    from guard.policy import load_policy

    torch.set_num_threads(1)  # the server screens in a worker thread; one core per request
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"load_before": os.getloadavg(), "cpu_count": os.cpu_count()}
    if args.only_live:
        report["live"] = live_add(args.data, args.out, args.live_kind, args.live_base)
        report["load_after"] = os.getloadavg()
        report["variants"] = []
        write_json(args.out / "detector_live.json", report)
        print(json.dumps(report["live"], indent=2))
        return 0
    if args.policy is None:
        pdir = Path(tempfile.mkdtemp(prefix="bench-policy-", dir=args.out))
        artifact = cache_dir() / "eval-detectors" / "tofu-forget10-first-cascade"  # shared with `guard-eval detector --suite tofu`
        data = tofu_policy(args.data, "forget10", pdir, half="first", embedder_kind="cascade", artifact=artifact)
        policy_path = pdir / "tofu-forget10.yaml"
        policy_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    else:
        policy_path = args.policy
    policy = load_policy(policy_path)
    artifact = Path(policy.detector.artifact)
    if not (artifact / "manifest.json").exists():
        cfg = TrainConfig.from_policy(policy)
        cfg.mode = "cascade"
        log(f"training a cascade detector into {artifact}")
        model = train(policy, cfg, progress=log)
        with staged_dir(artifact) as tmp:
            save_model(model, tmp)
    model = load_model(artifact)
    if model.mode != "cascade":
        print("the benchmark needs a cascade artifact (it holds both stages)", file=sys.stderr)
        return 2
    sets = ev.tofu_sets(policy, args.data) + ev.rwku_sets(policy, args.data)
    seen = ev.training_texts(model)
    for s in sets:
        s.texts = [t for t in s.texts if t not in seen]
    rng = random.Random(0)
    pos = [t for s in sets if s.positive for t in s.texts]
    neg = [t for s in sets if not s.positive for t in s.texts]
    timed = rng.sample(pos, min(args.queries // 2, len(pos))) + rng.sample(neg, min(args.queries // 2, len(neg)))

    variants = {}
    keyword = KeywordDetector({t.id: t.all_names for t in policy.targets})
    variants["keyword (names/aliases)"] = keyword
    import copy

    for mode in ("static", "sentence", "cascade"):
        m = copy.copy(model)
        m.mode = mode
        variants[mode] = TrainedDetector(m, sentence=SentenceEmbedder(model.sentence_spec or "default"))
    m8 = copy.copy(model)
    m8.mode = "sentence"
    variants["sentence-int8"] = TrainedDetector(m8, sentence=Int8Sentence(model.sentence_spec or "default"))  # type: ignore[arg-type]
    m8c = copy.copy(model)
    variants["cascade-int8"] = TrainedDetector(m8c, sentence=variants["sentence-int8"]._sentence)  # type: ignore[arg-type]

    rows = []
    for name, det in variants.items():
        log(f"{name}: quality on {sum(len(s.texts) for s in sets)} texts, latency on {len(timed)} queries")
        q = quality(det, sets)
        lat = time_screen(det, timed)
        lat_neg = time_screen(det, [t for t in timed if t in set(neg)])
        rows.append({"detector": name, "quality": q, "latency_mix": lat, "latency_negatives": lat_neg})
        log(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in q.items()) + f"; p50 wall {lat['wall_ms']['p50']:.2f} ms, cpu {lat['cpu_ms']['p50']:.2f} ms")
    report["variants"] = rows
    report["policy"] = str(policy_path)
    if not args.skip_components:
        log("component costs")
        report["components"] = components(model.sentence_spec or "default", model.static)
    if not args.skip_live:
        report["live"] = live_add(args.data, args.out, args.live_kind, args.live_base)
    report["load_after"] = os.getloadavg()
    write_json(args.out / "detector_latency.json", report)
    write_text(args.out / "detector_latency.md", to_markdown(report))
    print(to_markdown(report))
    return 0


def to_markdown(r: dict) -> str:
    lines = ["# Detector quality / latency trade-off", "",
             f"Machine: {r['cpu_count']} CPUs, load average before {r['load_before'][0]:.1f}, after {r['load_after'][0]:.1f}. "
             "Latency = `screen([query])` with the cache cleared, 1 torch thread; wall includes waiting for a core.", ""]
    sets = sorted({k for v in r["variants"] for k in v["quality"]})
    lines.append("| detector | " + " | ".join(sets) + " | p50 wall ms | p99 wall ms | p50 CPU ms | p99 CPU ms | p50 wall ms (negatives) |")
    lines.append("|---|" + "---:|" * (len(sets) + 5))
    for v in r["variants"]:
        lm, ln = v["latency_mix"], v["latency_negatives"]
        lines.append(f"| {v['detector']} | " + " | ".join(f"{100 * v['quality'].get(s, float('nan')):.2f} %" for s in sets)
                     + f" | {lm['wall_ms']['p50']:.2f} | {lm['wall_ms']['p99']:.2f} | {lm['cpu_ms']['p50']:.2f} | {lm['cpu_ms']['p99']:.2f} | "
                       f"{ln['wall_ms']['p50']:.2f} |")
    lines.append("\n(rates: recall for forget_* sets, false-positive rate for the others)\n")
    if "components" in r:
        lines += ["| component (one short query) | p50 wall ms | p50 CPU ms |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['wall_p50_ms']:.2f} | {v['cpu_p50_ms']:.2f} |" for k, v in r["components"].items()]
        lines.append("")
    if "live" in r:
        lv = r["live"]
        lines.append(f"Time to enforcement of a new RWKU target ({lv['new_target']}, {lv['kind']} detector, artifact with "
                     f"{lv['base_targets']} targets): **{lv['cold_seconds']} s** wall ({lv['cold_cpu_seconds']} s CPU) cold (policy reload -> head trained -> its questions "
                     f"flagged), {lv['reload_seconds_cached']} s for a reload once cached; the new target's QA probes flagged: "
                     f"{100 * lv['new_target_qa_recall']:.1f} %, attributed to it: {100 * lv['attributed_to_new']:.1f} %.\n")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
