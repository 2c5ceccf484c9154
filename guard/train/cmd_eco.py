"""``guard-train eco``: the command line of :mod:`guard.train.eco` (ECO's corruption-strength search)."""

from __future__ import annotations

import argparse
from pathlib import Path

from guard.errors import ConfigError
from guard.train.eco import DEFAULT_MODEL, EcoTrainOptions, SearchConfig, train_eco


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eco",
        help="search ECO's corruption strength (zeroth-order) and write an artifact",
        description=(
            "Zeroth-order (finite-difference) search of ECO's corruption strength (sigma, optionally k) on a "
            "TOFU-style target model: the corrupted model's answer log-prob on the policy's forget QA is driven to "
            "its level on QA it never saw (TOFU holdout), under a fluency constraint. Writes OUT/manifest.json; "
            "use it with targets.N.params.artifact: OUT."),
    )
    p.add_argument("--policy", type=Path, required=True, help="policy YAML: targets with forget_data (format tofu_qa)")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write (replaced atomically)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model searched on (default {DEFAULT_MODEL}; tests: tofu-micro-target)")
    p.add_argument("--data", type=Path, default=None, help="benchmark data folder (default ../shared/data or $GUARD_DATA_DIR)")
    p.add_argument("--target", action="append", default=[], help="target id to use (repeatable; default: every eco target)")
    p.add_argument("--holdout-split", default="holdout01", help="TOFU split of never-seen QA (default holdout01)")
    p.add_argument("--holdout-rows", default=None, help="rows of it, e.g. 0:20")
    p.add_argument("--max-forget", type=int, default=None, help="use at most N forget QA (spread over the targets)")
    p.add_argument("--max-holdout", type=int, default=None, help="use at most N holdout QA")
    p.add_argument("--retain-model", default=None, help="also score the forget QA on this model (e.g. tofu-mini-retain), for reference")
    s = p.add_argument_group("search")
    s.add_argument("--corruption", default="rand_noise_first_n", help="rand_noise_first_n | zero_out_top_k | flip_sign_top_k")
    s.add_argument("--search", default="sigma", help="parameters to search: sigma, k or sigma,k (top-k corruptions: k)")
    s.add_argument("--select", default="entity", help="token selection: entity | all_content (all_user: its older name)")
    s.add_argument("--sigma0", type=float, default=None, help="starting sigma (default: the embedding RMS)")
    s.add_argument("--k", dest="k0", type=int, default=None, help="k (starting value when searched)")
    s.add_argument("--iters", type=int, default=10)
    s.add_argument("--tol", type=float, default=0.02, help="|f - target| counted as matched (nats/token)")
    s.add_argument("--mu", type=float, default=0.15, help="finite-difference half-step in log space")
    s.add_argument("--max-step", type=float, default=1.0, help="largest change of log(theta) per iteration")
    s.add_argument("--max-ppl-ratio", type=float, default=3.0)
    s.add_argument("--min-entropy-ratio", type=float, default=0.75)
    s.add_argument("--max-empty-frac", type=float, default=0.25, help="largest fraction of empty corrupted answers")
    s.add_argument("--fluency-items", type=int, default=8)
    s.add_argument("--fluency-tokens", type=int, default=32)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--surrogate-tokens", type=int, default=8, metavar="N",
                   help="the surrogate scores the first N answer tokens (default 8; 0 = the whole answer, "
                        "which saturates on memorised answers: docs/eco.md)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    cfg = SearchConfig(corruption=args.corruption, search=tuple(x.strip() for x in args.search.split(",") if x.strip()),
                       select=args.select, sigma0=args.sigma0, k0=args.k0, iters=args.iters, mu=args.mu,
                       max_step=args.max_step, tol=args.tol, max_ppl_ratio=args.max_ppl_ratio,
                       min_entropy_ratio=args.min_entropy_ratio, max_empty_frac=args.max_empty_frac,
                       fluency_items=args.fluency_items,
                       fluency_tokens=args.fluency_tokens, batch_size=args.batch_size, seed=args.seed,
                       surrogate_tokens=args.surrogate_tokens or None)
    if args.surrogate_tokens < 0:
        raise ConfigError("--surrogate-tokens must be >= 0 (0 = the whole answer)", param="surrogate_tokens")
    for name in ("iters", "fluency_items", "fluency_tokens", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1", param=name)
    opts = EcoTrainOptions(policy=args.policy, out=args.out, model=args.model, data_dir=args.data, targets=args.target,
                           holdout_split=args.holdout_split, holdout_rows=args.holdout_rows, max_forget=args.max_forget,
                           max_holdout=args.max_holdout, retain_model=args.retain_model, threads=args.threads,
                           progress=not args.quiet)
    train_eco(opts, cfg)
    return 0
