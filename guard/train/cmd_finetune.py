"""``guard-train finetune``: the command line of :mod:`guard.train.finetune` (the TOFU twins)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from guard.errors import ConfigError
from guard.paths import models_dir
from guard.train import tofu_recipes as R
from guard.train.finetune import build_preset
from guard.train.finetune_plan import RunOptions, plan_preset, read_manifest

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune the TOFU benchmark models (target and retain twins)",
        description=(
            "Fine-tune a base model on TOFU: the 'target' twin on the retain + forget authors, the 'retain' "
            "twin on the retain authors only. Presets: micro (CPU, minutes; tests), mini (CPU, ~1 h; 20 authors, "
            "forget01), full (GPU; TOFU's recipe: full vs retain90, forget10). Models go to "
            f"{models_dir()}/<name> and load by name (--model tofu-mini-target)."
        ),
    )
    p.add_argument("--preset", required=True, choices=R.PRESETS)
    p.add_argument("--twin", choices=("both",) + R.TWINS, default="both", help="which twin(s) to build (default both)")
    p.add_argument("--base-model", default=None, help="model to fine-tune: 'default', a cached name, a folder or a hub id")
    p.add_argument("--data", type=Path, default=None, help="benchmark data folder (default: ../shared/data or $GUARD_DATA_DIR)")
    p.add_argument("--name", default=None, help="output name prefix (default tofu-<preset>[-<base>]); twins get -target/-retain")
    p.add_argument("--force", action="store_true", help="retrain even if a model with the same recipe is cached")
    p.add_argument("--dry-run", action="store_true", help="print the plan (names, rows, recipe, hash) as JSON and exit")
    run = p.add_argument_group("running (not part of the recipe)")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    run.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    run.add_argument("--no-eval", action="store_true", help="skip the memorisation report after training")
    run.add_argument("--eval-batch-size", type=int, default=None)
    ck = run.add_mutually_exclusive_group()
    ck.add_argument("--checkpoint", dest="checkpoint", action="store_true", default=None,
                    help="save resumable checkpoints (default: when an epoch has >= 20 steps)")
    ck.add_argument("--no-checkpoint", dest="checkpoint", action="store_false")
    run.add_argument("--checkpoint-minutes", type=float, default=15.0,
                     help="checkpoint inside an epoch after this many minutes of training (default 15)")
    run.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for GPU memory")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    rec = p.add_argument_group("recipe overrides (change the recipe hash, hence the cache entry)")
    rec.add_argument("--lr", type=float)
    rec.add_argument("--epochs", type=int)
    rec.add_argument("--batch-size", type=int, help="effective batch size")
    rec.add_argument("--micro-batch-size", type=int, help="per-step batch; batch-size/micro-batch-size = accumulation")
    rec.add_argument("--weight-decay", type=float)
    rec.add_argument("--warmup-epochs", type=float)
    rec.add_argument("--schedule", choices=("linear", "constant"))
    rec.add_argument("--max-grad-norm", type=float)
    rec.add_argument("--max-length", type=int)
    rec.add_argument("--seed", type=int)
    rec.add_argument("--dtype", choices=("float32", "bfloat16", "auto"))
    rec.add_argument("--system-prompt", default=None, help="system message for every example (default: the template's)")
    rec.add_argument("--eval-limit", type=int, help="evaluate on at most this many QA per set")
    rec.add_argument("--eval-max-new-tokens", type=int)
    p.set_defaults(func=run_cli)


RECIPE_ARGS = ("base_model", "lr", "epochs", "batch_size", "micro_batch_size", "weight_decay", "warmup_epochs",
               "schedule", "max_grad_norm", "max_length", "seed", "dtype", "system_prompt", "eval_limit",
               "eval_max_new_tokens")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in RECIPE_ARGS if getattr(args, k, None) is not None}


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into an exception so staging folders are cleaned up (SIGINT already is one);
    checkpoints written so far stay, and the same command resumes from them."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_cli(args: argparse.Namespace) -> int:
    twins = R.TWINS if args.twin == "both" else (args.twin,)
    overrides = overrides_from_args(args)
    opts = RunOptions(
        data_dir=args.data, force=args.force, threads=args.threads, device=args.device, evaluate=not args.no_eval,
        checkpoint=args.checkpoint, checkpoint_minutes=args.checkpoint_minutes,
        gradient_checkpointing=args.gradient_checkpointing,
        progress=not args.no_progress, name=args.name, eval_batch_size=args.eval_batch_size,
    )
    if args.threads is not None and args.threads < 1:
        raise ConfigError("--threads must be >= 1", param="threads")
    plans = plan_preset(args.preset, twins, overrides, args.name)
    if args.dry_run:
        print(json.dumps([p.summary() for p in plans], indent=2))
        return 0
    t0 = time.monotonic()
    with _sigterm_unwinds():
        paths = build_preset(args.preset, twins, overrides, opts)
    for twin, path in paths.items():
        man = read_manifest(path) or {}
        ev = man.get("eval", {})
        fq = ev.get("forget_quality", {}).get("forget_quality")
        print(json.dumps({
            "twin": twin, "name": path.name, "path": str(path),
            "train_time_s": man.get("train", {}).get("time_s"), "final_loss": man.get("train", {}).get("final_loss"),
            "forget": ev.get("forget"), "retain": ev.get("retain"), "forget_quality": fq,
        }))
    log.info("finetune --preset %s done in %.0f s", args.preset, time.monotonic() - t0)
    return 0
