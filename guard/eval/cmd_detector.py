"""``guard-eval detector``: detector recall/FPR/attribution/ROC/latency on TOFU and RWKU.

    guard-eval detector --policy policies/tofu/forget10.detector-eval.yaml --data ../shared/data --out runs/eval/det-tofu10
    guard-eval detector --policy policies/rwku/all.yaml --data ../shared/data --setting both --out runs/eval/det-rwku
    guard-eval detector --suite rwku --targets 1-10 --data ../shared/data --out runs/eval/det-rwku10   # policy built from the folder

The artifact is the policy's ``detector.artifact`` (or ``--artifact``); it is trained first if it
does not exist yet (or with ``--train``), and reconciled with the policy's targets if they differ.
Results: ``report.json`` and ``report.md`` in ``--out``, written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
import tempfile
import time
from pathlib import Path

from guard.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("detector", help="detector quality and latency (TOFU / RWKU protocols)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", type=Path, default=None, help="policy YAML (its targets' data decide the protocol)")
    p.add_argument("--suite", choices=("tofu", "rwku"), default=None, help="without --policy: build one from --data")
    p.add_argument("--split", default="forget10", help="--suite tofu: forget01|forget05|forget10")
    p.add_argument("--half", choices=("first", "second"), default="first", help="--suite tofu: which half of each author's QA trains")
    p.add_argument("--targets", default=None, help="--suite rwku: which target folders, e.g. '1-10' or '1,5,9' (default: all found)")
    p.add_argument("--data", type=Path, required=True, help="the benchmark data folder (shared/data)")
    p.add_argument("--artifact", type=Path, default=None, help="detector artifact (default: the policy's detector.artifact)")
    p.add_argument("--train", action="store_true", help="(re)train the artifact before evaluating")
    p.add_argument("--embedder-kind", choices=("static", "sentence", "cascade"), default=None, help="override for training")
    p.add_argument("--passage-focus", choices=("all", "mentions", "contrast"), default=None, help="override for training")
    p.add_argument("--setting", choices=("batch", "single", "both"), default="both")
    p.add_argument("--threshold", type=float, default=None, help="evaluate at this threshold instead of the calibrated one")
    p.add_argument("--latency-queries", type=int, default=300, help="queries timed through screen() (0: skip)")
    p.add_argument("--filler", type=int, default=40, help="forget questions hidden in ~1,500 words of filler (0: skip)")
    p.add_argument("--out", type=Path, required=True, help="directory for report.json and report.md")
    p.set_defaults(func=run)


def _select(folders: list[Path], spec: str | None) -> list[Path]:
    if not spec:
        return folders
    import re

    wanted: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if m:
            wanted |= set(range(int(m.group(1)), int(m.group(2)) + 1))
        elif part.isdigit():
            wanted.add(int(part))
        else:
            raise ConfigError(f"--targets {spec!r}: use numbers and ranges like '1-10,15'", param="targets")
    chosen = [f for f in folders if f.name.split("_", 1)[0].isdigit() and int(f.name.split("_", 1)[0]) in wanted]
    if not chosen:
        raise ConfigError(f"--targets {spec!r} matches no target folder", param="targets")
    return chosen


def _suite_policy(args: argparse.Namespace, workdir: Path) -> Path:
    import yaml

    from classifiers.policygen import rwku_folders, rwku_policy, slug, tofu_policy
    from guard.paths import cache_dir

    kind = args.embedder_kind or "static"
    label = f"{args.split}-{args.half}" if args.suite == "tofu" else slug(args.targets or "all")
    if args.passage_focus:
        label += f"-{args.passage_focus}"
    artifact = args.artifact or cache_dir() / "eval-detectors" / f"{args.suite}-{label}-{kind}"
    if args.suite == "tofu":
        data = tofu_policy(args.data, args.split, workdir, half=args.half, embedder_kind=kind, artifact=artifact)
    else:
        data = rwku_policy(args.data, _select(rwku_folders(args.data), args.targets), workdir, embedder_kind=kind, artifact=artifact)
    path = workdir / f"{args.suite}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _command(args: argparse.Namespace) -> str:
    parts = ["guard-eval", "detector"]
    for key, value in vars(args).items():
        if key in ("func", "command") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag] if value is True else [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> int:
    from classifiers.detector import TrainedDetector, load_model, save_model
    from classifiers.embedder import CachedEmbedder, SentenceEmbedder
    from classifiers.loader import reconcile
    from classifiers.train import TrainConfig, train
    from guard.atomic import staged_dir, write_json, write_text
    from guard.eval import detector as ev
    from guard.paths import cache_dir
    from guard.policy import load_policy

    started = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    if not args.data.is_dir():
        raise ConfigError(f"--data {args.data} is not a directory (point it at shared/data)", param="data")
    tmp = None
    if args.policy is None:
        if args.suite is None:
            raise ConfigError("pass --policy POLICY, or --suite tofu|rwku to build one from --data", param="policy")
        tmp = tempfile.TemporaryDirectory(prefix="guard-eval-policy-")
        policy_path = _suite_policy(args, Path(tmp.name))
    else:
        policy_path = args.policy
    policy = load_policy(policy_path)
    if not policy.targets:
        raise ConfigError(f"policy {policy_path} has no targets", param="targets")
    artifact = args.artifact or policy.detector.artifact
    if artifact is None:
        key = hashlib.sha1(policy_path.read_bytes() + str(args.embedder_kind).encode()).hexdigest()[:16]
        artifact = cache_dir() / "eval-detectors" / key
    artifact = Path(artifact)
    if args.train or not (artifact / "manifest.json").exists():
        cfg = TrainConfig.from_policy(policy)
        if args.embedder_kind:
            cfg.mode = args.embedder_kind
        if args.passage_focus:
            cfg.passage_focus = args.passage_focus
        progress(f"training the detector into {artifact}")
        model = train(policy, cfg, progress=progress)
        with staged_dir(artifact) as staging:
            save_model(model, staging)
    model = load_model(artifact)
    model, changes = reconcile(model, policy, progress=progress)
    if changes["added"] or changes["removed"]:
        progress(f"artifact reconciled with the policy: {changes}")
    sentence = CachedEmbedder(SentenceEmbedder(model.sentence_spec)) if model.mode in ("sentence", "cascade") else None
    detector = TrainedDetector(model, threshold=args.threshold, sentence=sentence)  # type: ignore[arg-type]

    sets = ev.tofu_sets(policy, args.data) + ev.rwku_sets(policy, args.data)
    if not sets:
        raise ConfigError(f"no TOFU or RWKU evaluation sets found for the targets of {policy_path} under {args.data}", param="data")
    progress(f"{len(sets)} sets, {sum(len(s.texts) for s in sets)} texts: " + ", ".join(sorted({s.name for s in sets})))
    settings = ("batch", "single") if args.setting == "both" else (args.setting,)
    report = ev.evaluate_sets(detector, sets, settings=settings, progress=progress, threshold=args.threshold)
    report.update({"policy": str(policy_path if tmp is None else f"--suite {args.suite}"), "artifact": str(artifact),
                   "target_fpr": model.fpr, "data": str(args.data),
                   "command": _command(args),
                   "train_metrics": model.manifest.get("metrics")})
    live_detector = TrainedDetector(model, threshold=args.threshold)
    if args.filler:
        filler_pool = [t for s in sets if not s.positive and s.target is None for t in s.texts]
        pos_sets = [s for s in sets if s.positive]
        if filler_pool and pos_sets:
            progress("windowed screening: forget questions after ~1,500 words of filler...")
            report["windowed"] = ev.windowed(live_detector, ev.long_filler_set(pos_sets, filler_pool, n=args.filler),
                                             ev.long_negative_set(filler_pool, n=args.filler))
    if args.latency_queries:
        progress(f"latency: {args.latency_queries} queries per kind through screen()...")
        report["latency"] = ev.latency(live_detector, sets, n=args.latency_queries)
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "report.json", report)
    write_text(args.out / "report.md", ev.markdown(report))
    print(ev.markdown(report))
    if tmp is not None:
        tmp.cleanup()
    return 0
