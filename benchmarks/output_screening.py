#!/usr/bin/env python3
"""Measurements that choose the output screener's defaults (docs/output-screening.md).

    OMP_NUM_THREADS=1 python benchmarks/output_screening.py --data ../shared/data \
        --answers runs/output-screen/answers-default.jsonl=policies/tofu/forget10.yaml \
        --answers runs/output-screen/answers-micro-target.jsonl=policies/tofu/forget01.yaml \
        --out runs/output-screen/report.json
    OMP_NUM_THREADS=1 python benchmarks/output_screening.py --data ../shared/data --holdout-authors --no-semantic \
        --out runs/output-screen/holdback-holdout.json     # held-out check: 20 retain authors as targets

``--answers FILE=POLICY`` (from ``benchmarks/output_answers.py``): each answer is screened against
that policy's targets, as a whole text and streamed token by token (the default model's tokenizer
cuts it into the deltas a stream carries). Per policy, besides those answers: the TOFU forget gold
answers of its targets, as written and with every form of the author's name replaced by "the
author" (what is left is facts only). Reported:

* false stops: share of answers to retain / real-author / world-fact / general questions stopped;
* catches: share of forget answers stopped (gold; a model's answers to forget questions that
  reproduce the gold answer, ROUGE-L recall >= 0.5, or name the author);
* hold-back: for each stopped leak, the smallest ``holdback_tokens`` at which the stream stops
  before any character of the match is released; the share caught whole per hold-back;
* cost: CPU time of streamed screening per generated token (``time.process_time``), names/facts
  only and with the semantic stage;
* each configuration with and without the semantic stage (the trained detector judging each
  sentence; needs the policy's ``detector.artifact``, skipped when it is not there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NEGATIVE_SETS = ("retain", "real", "world", "general")
HOLDBACKS = (1, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24, 32)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def deltas_of(tokenizer: Any, text: str) -> list[str]:
    """``text`` as per-token deltas: each token's piece of the text (by the tokenizer's offsets, the
    text between two tokens going with the later one), as a streaming detokenizer sends them."""
    ends = [e for _, e in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    out, prev = [], 0
    for e in ends:
        if e > prev:
            out.append(text[prev:e])
            prev = e
    if prev < len(text):
        out.append(text[prev:])
    return out


def streamed(screener: Any, deltas: Sequence[str]) -> tuple[Any, float]:
    """(hit, CPU seconds) of one answer streamed one token per delta."""
    t0 = time.process_time()
    answer = screener.start()
    hit = None
    for d in deltas:
        step = answer.feed(d, 1)
        if step.hit:
            hit = step.hit
            break
    if hit is None:
        hit = answer.finish().hit
    return hit, time.process_time() - t0


def masked(text: str, names: Sequence[str]) -> str:
    from classifiers.names import find_name_spans

    out, last = [], 0
    for a, b in find_name_spans(text, names):
        out += [text[last:a], "the author"]
        last = b
    return "".join(out) + text[last:]


def author_of(policy: Any, question: str, gold: str) -> str | None:
    from classifiers.names import find_name_spans

    for t in policy.targets:
        if find_name_spans(question + " " + gold, t.all_names):
            return t.id
    return None


def screeners(policy: Any, semantic_ok: bool) -> dict[str, Any]:
    from classifiers.loader import build_detector
    from guard.output_screen import build_output_screener

    out: dict[str, Any] = {"names+facts": build_output_screener(policy)}
    artifact = policy.detector.artifact
    if semantic_ok and policy.detector.kind == "trained" and artifact and Path(artifact, "manifest.json").exists():
        detector = build_detector(policy)
        out["names+facts (artifact facts)"] = build_output_screener(policy, detector)
        sem = policy.model_copy(update={"output": policy.output.model_copy(update={"semantic": True})})
        out["+semantic"] = build_output_screener(sem, detector)
        out["_detector"] = detector
    return out


def holdback_needed(screener: Any, deltas: Sequence[str]) -> int | None:
    """The smallest hold-back (of ``HOLDBACKS``) at which the stream stops with nothing of the match released."""
    from guard.output_screen import OutputScreener

    for h in HOLDBACKS:
        s = OutputScreener(screener.matcher, screener.actions, holdback_tokens=h, semantic=screener.semantic,
                           sentence_words=screener.sentence_words, fail_closed=screener.fail_closed)
        hit, _ = streamed(s, deltas)
        if hit is not None and hit.leaked_chars == 0:
            return h
    return None


def index_separation(detector: Any, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The FAISS forget index as the semantic signal instead of the heads: per answer the best cosine
    similarity of any of its sentences to a target's forget exemplars; the threshold that stops 0.5 %
    of the negative answers, and the share of name-less leaks above it."""
    import numpy as np

    from classifiers.text import split_sentences

    model = detector.model

    def best(text: str) -> float:
        sents = split_sentences(text, min_chars=1) or [text]
        vecs = detector.embed(model.index_stage, sents)
        return float(model.index.max_sim_per_target(vecs, model.n_targets).max())

    neg = np.array([best(r["answer"]) for r in items if r["set"] in NEGATIVE_SETS])
    pos = {k: np.array([best(r["answer"]) for r in items if r["set"] == k])
           for k in ("gold-nameless", "forget-model-leak-nameless", "nameless-model-leak-nameless")}
    if not len(neg):
        return {}
    tau = float(np.quantile(neg, 0.995))
    return {"index_stage": model.index_stage, "threshold_at_0.5pct_fpr": tau, "negatives": len(neg),
            "catch": {k: {"n": len(v), "rate": float((v > tau).mean()) if len(v) else None} for k, v in pos.items()}}


def measure(policy_path: Path, answer_files: Sequence[Path], data: Path, tokenizer: Any, semantic_ok: bool) -> dict[str, Any]:
    from classifiers.names import find_name_spans
    from guard.eval.metrics import rougeL_recall
    from guard.policy import load_policy

    policy = load_policy(policy_path)
    rows: list[dict[str, Any]] = []
    for f in answer_files:
        rows += [dict(r, source=f.name) for r in _jsonl(f)]
    # the policy's forget gold answers: the forget rows its targets were built from
    gold: list[dict[str, Any]] = []
    for t in policy.targets:
        for src in t.forget_data:
            from classifiers.data import parse_rows

            recs = _jsonl(Path(src.path))
            for i in parse_rows(src.rows, len(recs)):
                gold.append({"set": "gold", "question": recs[i]["question"], "answer": recs[i]["answer"], "target": t.id})
                gold.append({"set": "gold-nameless", "question": recs[i]["question"],
                             "answer": masked(recs[i]["answer"], t.all_names), "target": t.id})
    # model answers to forget questions: leaks when they reproduce the gold answer or name the author
    for r in list(rows):
        if r["set"].startswith(("forget", "nameless")) and r.get("gold"):
            base = "forget" if r["set"].startswith("forget") else "nameless"
            tid = author_of(policy, r["question"], r["gold"])
            if tid is None:
                r["set"] = f"{base}-other"
                continue
            names = policy.target(tid).all_names
            r["target"] = tid
            r["leak"] = rougeL_recall(r["answer"], r["gold"]) >= 0.5 or bool(find_name_spans(r["answer"], names))
            r["set"] = f"{base}-model-leak" if r["leak"] else f"{base}-model-noleak"
            if r["leak"]:
                rows.append(dict(r, set=f"{base}-model-leak-nameless", answer=masked(r["answer"], names)))
    items = rows + gold
    report: dict[str, Any] = {"policy": str(policy_path), "answers": [str(f) for f in answer_files], "configs": {}}
    built = screeners(policy, semantic_ok)
    detector = built.pop("_detector", None)
    if detector is not None:
        report["index_separation"] = index_separation(detector, items)
        print(f"{policy_path.name} index: {report['index_separation']}", flush=True)
    all_deltas = [deltas_of(tokenizer, r["answer"]) for r in items]
    for name, screener in built.items():
        by_set: dict[str, dict[str, Any]] = defaultdict(lambda: {"n": 0, "stopped": 0, "false_stops": 0, "examples": [],
                                                                 "reasons": defaultdict(int)})
        cpu, tokens = 0.0, 0
        needed: list[int | None] = []
        for r, deltas in zip(items, all_deltas):
            hit, dt = streamed(screener, deltas)
            whole = screener.screen_text(r["answer"])
            assert (hit is None) == (whole is None), (r["answer"], hit, whole)
            key = r["set"] + (f"/{r['source']}" if "source" in r and r["set"] in NEGATIVE_SETS else "")
            s = by_set[key]
            s["n"] += 1
            if r["set"] in NEGATIVE_SETS:
                cpu += dt
                tokens += len(deltas)
            if hit is not None:
                s["stopped"] += 1
                # a stop on an answer that names the target (an over-fitted model names its forget
                # authors in answers to unrelated questions) is a caught leak, not a false stop
                if r["set"] in NEGATIVE_SETS and not (hit.target_id and find_name_spans(r["answer"], policy.target(hit.target_id).all_names)):
                    s["false_stops"] += 1
                s["reasons"][hit.reason] += 1
                if len(s["examples"]) < 5:
                    s["examples"].append({"answer": r["answer"][:300], "reason": hit.reason, "match": hit.text[:80], "target": hit.target_id})
                if not r["set"] in NEGATIVE_SETS and hit.reason != "unscreened":
                    needed.append(holdback_needed(screener, deltas))
        for s in by_set.values():
            s["rate"] = s["stopped"] / s["n"] if s["n"] else None
            s["false_stop_rate"] = s["false_stops"] / s["n"] if s["n"] else None
            s["reasons"] = dict(s["reasons"])
        caught = [n for n in needed if n is not None]
        report["configs"][name] = {
            "sets": dict(by_set),
            "cpu_ms_per_token": 1000 * cpu / tokens if tokens else None, "tokens_timed": tokens,
            "holdback": {"stops": len(needed), "never_whole": sum(n is None for n in needed),
                         "caught_whole_at": {h: sum(n is not None and n <= h for n in needed) / len(needed) if needed else None
                                             for h in HOLDBACKS},
                         "max_needed": max(caught) if caught else None},
        }
        print(f"{policy_path.name} {name}: " + ", ".join(f"{k} {v['stopped']}/{v['n']} (false {v['false_stops']})"
                                                       for k, v in sorted(by_set.items())), flush=True)
    return report


def holdout_authors_policy(data: Path, out_dir: Path, n: int = 20) -> Path:
    """A keyword policy naming ``n`` TOFU retain authors (every 9th from the 5th; none of forget10's):
    authors nothing in the screener was built or tuned on, for a held-out check of the hold-back."""
    import yaml

    from classifiers.policygen import tofu_author_name

    full = _jsonl(data / "tofu" / "full.json")
    targets = []
    for a in range(4, 4 + 9 * n, 9):
        block = full[a * 20:(a + 1) * 20]
        targets.append({"id": f"holdout-{a}", "names": [tofu_author_name(block)],
                        "forget_data": [{"path": str((data / "tofu" / "full.json").resolve()), "format": "tofu_qa",
                                         "rows": f"{a * 20}:{(a + 1) * 20}"}]})
    path = out_dir / "holdout-authors.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "detector": {"kind": "keyword"}, "default_action": "refuse",
                                    "targets": targets}, sort_keys=False), encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--answers", action="append", default=[], help="FILE=POLICY (repeatable)")
    ap.add_argument("--holdout-authors", action="store_true",
                    help="also measure the gold answers of 20 TOFU retain authors as targets (a held-out check)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-semantic", action="store_true")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from guard.atomic import write_json
    from guard.models import resolve_model

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("default"))
    by_policy: dict[Path, list[Path]] = defaultdict(list)
    for spec in args.answers:
        f, _, p = spec.partition("=")
        by_policy[Path(p)].append(Path(f))
    with tempfile.TemporaryDirectory() as tmp:
        if args.holdout_authors:
            by_policy[holdout_authors_policy(args.data, Path(tmp))] = []
        if not by_policy:
            ap.error("give --answers FILE=POLICY and/or --holdout-authors")
        reports = [measure(p, files, args.data, tokenizer, not args.no_semantic) for p, files in by_policy.items()]
    write_json(args.out, {"reports": reports, "load": os.getloadavg()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
