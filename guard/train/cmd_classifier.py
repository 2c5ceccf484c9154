"""``guard-train classifier``: train the forget-target detector a policy describes.

    guard-train classifier --policy policies/tofu/forget10.yaml --out runs/detector-forget10
    guard-train classifier --policy P --out DIR --update      # add/remove targets in an existing artifact

The artifact (a directory: manifest.json, heads_*.npz, the FAISS forget index, the static embedder
table, the negative bank) is written atomically: an interrupted run leaves the previous artifact.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from guard.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("classifier", help="train the forget-target detector (prompt classifier + FAISS index)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, type=Path, help="policy YAML whose targets the detector recognises")
    p.add_argument("--out", type=Path, default=None, help="artifact directory (default: the policy's detector.artifact)")
    p.add_argument("--embedder-kind", choices=("static", "sentence", "cascade"), default=None,
                   help="override detector.embedder_kind (static: fastest; cascade: static gate + sentence model)")
    p.add_argument("--embedder", default=None, help="override detector.embedder (sentence-transformers folder or hub id)")
    p.add_argument("--fpr", type=float, default=None, help="override detector.target_fpr")
    p.add_argument("--update", action="store_true",
                   help="reuse the artifact at --out: train heads only for new/changed targets, drop removed ones (seconds)")
    p.add_argument("--metrics-json", type=Path, default=None, help="also write the train-time metrics here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from classifiers.detector import load_model, save_model
    from classifiers.loader import reconcile
    from classifiers.train import TrainConfig, train
    from guard.atomic import staged_dir, write_json
    from guard.policy import load_policy

    policy = load_policy(args.policy)
    out = args.out or policy.detector.artifact
    if out is None:
        raise ConfigError("no output directory: pass --out DIR or set detector.artifact in the policy", param="out")
    out = Path(out)
    cfg = TrainConfig.from_policy(policy)
    if args.embedder_kind:
        cfg.mode = args.embedder_kind
    if args.embedder:
        cfg.sentence_spec = args.embedder
    if args.fpr is not None:
        if not 0 < args.fpr < 0.5:
            raise ConfigError(f"--fpr {args.fpr} must be between 0 and 0.5", param="fpr")
        cfg.fpr = args.fpr
    started = time.perf_counter()

    def progress(msg: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    if args.update:
        model = load_model(out)
        model, changes = reconcile(model, policy, progress=progress)
        progress(f"update: added {changes['added'] or 'none'}, removed {changes['removed'] or 'none'}")
    else:
        model = train(policy, cfg, progress=progress)
    with staged_dir(out) as tmp:
        save_model(model, tmp)
    metrics = model.manifest.get("metrics", {})
    summary = {
        "artifact": str(out), "targets": len(model.target_ids), "mode": model.mode, "target_fpr": model.fpr,
        "thresholds": {s: round(st.tau, 6) for s, st in model.stages.items()},
        "seconds": round(time.perf_counter() - started, 1), "metrics": metrics,
    }
    print(json.dumps(summary, indent=2, sort_keys=True))
    if args.metrics_json:
        write_json(args.metrics_json, summary)
    return 0
