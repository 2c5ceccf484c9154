"""``guard-train eco``: the command line of :mod:`guard.train.eco` (ECO's corruption-strength search)."""

from __future__ import annotations

import argparse
from pathlib import Path

from guard.errors import ConfigError
from guard.train.eco import DEFAULT_MODEL, EcoTrainOptions, SearchConfig, train_eco
from guard.train.cli_args import FORGET_EVERY_HELP, HOLDOUT_HELP, holdout_source
from guard.train.eco_holdout import DEFAULT_CORRUPTIONS, HoldoutSearch, train_eco_holdout


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eco",
        help="choose ECO's corruption and its strength from the policy's data and write an artifact",
        description=(
            "With --holdout (recommended): a grid over the corruption and its strength, scored through ECO as served "
            "(teacher-forced, answer_names included), choosing the point whose forget truth ratios (every second forget "
            "QA; the rest held out) are closest (KS) to the clean model's on never-seen QA, under a keep_data utility "
            "check (guard.train.eco_holdout). Without it: the older zeroth-order search that drives the first answer "
            "tokens' log-prob to the TOFU holdout split's level under a fluency constraint. The retain twin is never "
            "read. Writes OUT/manifest.json; use it with targets.N.params.artifact: OUT."),
    )
    p.add_argument("--policy", type=Path, required=True, help="policy YAML: targets with forget_data (format tofu_qa)")
    p.add_argument("--out", type=Path, required=True, help="artifact directory to write (replaced atomically)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model searched on (default {DEFAULT_MODEL}; tests: tofu-micro-target)")
    p.add_argument("--data", type=Path, default=None, help="benchmark data folder (default ../shared/data or $GUARD_DATA_DIR)")
    p.add_argument("--target", action="append", default=[], help="target id to use (repeatable; default: every eco target)")
    p.add_argument("--holdout-rows", default=None,
                   help="rows of --holdout (e.g. 360:400), or of --holdout-split without it (e.g. 0:20)")
    p.add_argument("--select", default=None,
                   help="token selection for every target: entity | all_content | facts_only (default: the policy's; "
                        "entity for the zeroth-order search)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (--holdout: the request seed each item is scored with, "
                                                          "as guard-eval tofu's default 0)")
    h = p.add_argument_group("--holdout: grid search on the forget-quality surrogate (guard.train.eco_holdout)")
    h.add_argument("--holdout", type=Path, default=None, help=HOLDOUT_HELP)
    h.add_argument("--corruptions", default=",".join(DEFAULT_CORRUPTIONS),
                   help=f"comma-separated corruptions to try (default {','.join(DEFAULT_CORRUPTIONS)}; also zero_out_top_k)")
    h.add_argument("--sigmas", default=None, help="noise grid, comma-separated (default 0, 1, 2, 3, 4, 5, 6, 8 x the embedding RMS)")
    h.add_argument("--ks", default=None, help="top-k grid, comma-separated (default hidden/32, /16, /8, /4, /2)")
    h.add_argument("--search-forget-every", type=int, default=2, help=FORGET_EVERY_HELP)
    h.add_argument("--search-keep-items", type=int, default=20,
                   help="utility check: at most this many of the targets' keep_data questions (default 20; 0: off)")
    h.add_argument("--min-keep-agreement", type=float, default=0.9,
                   help="share of their answer positions whose top token must stay the clean model's when routed "
                        "through ECO (default 0.9)")
    h.add_argument("--report-answers", type=int, default=0, metavar="N",
                   help="also generate greedy answers at the chosen point to N tuned forget and N holdout questions and "
                        "report their ROUGE-L recall (default 0)")
    h.add_argument("--max-new-tokens", type=int, default=64, help="for --report-answers (default 64)")
    o = p.add_argument_group("without --holdout: the zeroth-order log-prob search")
    o.add_argument("--holdout-split", default="holdout01", help="TOFU split of never-seen QA (default holdout01)")
    o.add_argument("--max-forget", type=int, default=None, help="use at most N forget QA (spread over the targets)")
    o.add_argument("--max-holdout", type=int, default=None, help="use at most N holdout QA")
    s = o
    s.add_argument("--corruption", default="rand_noise_first_n", help="rand_noise_first_n | zero_out_top_k | flip_sign_top_k")
    s.add_argument("--search", default="sigma", help="parameters to search: sigma, k or sigma,k (top-k corruptions: k)")
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
    s.add_argument("--surrogate-tokens", type=int, default=8, metavar="N",
                   help="the surrogate scores the first N answer tokens (default 8; 0 = the whole answer, "
                        "which saturates on memorised answers: docs/eco.md)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run_cli)


def _floats(text: str | None, param: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--{param} takes comma-separated numbers, got {text!r}", param=param) from None


def holdout_search(args: argparse.Namespace) -> HoldoutSearch:
    """The ``--holdout`` grid search settings."""
    holdout = holdout_source(args.holdout, args.holdout_rows)
    ks = _floats(args.ks, "ks")
    if ks is not None and any(k != int(k) for k in ks):
        raise ConfigError("--ks takes integers", param="ks")
    return HoldoutSearch(holdout, corruptions=tuple(x.strip() for x in args.corruptions.split(",") if x.strip()),
                         sigmas=_floats(args.sigmas, "sigmas"), ks=tuple(int(k) for k in ks) if ks is not None else None,
                         forget_every=args.search_forget_every, keep_items=args.search_keep_items,
                         min_keep_agreement=args.min_keep_agreement, seed=args.seed, select=args.select,
                         report_answers=args.report_answers, max_new_tokens=args.max_new_tokens)


def run_cli(args: argparse.Namespace) -> int:
    if args.holdout is not None:
        opts = EcoTrainOptions(policy=args.policy, out=args.out, model=args.model, data_dir=args.data, targets=args.target,
                               threads=args.threads, progress=not args.quiet)
        train_eco_holdout(opts, holdout_search(args))
        return 0
    cfg = SearchConfig(corruption=args.corruption, search=tuple(x.strip() for x in args.search.split(",") if x.strip()),
                       select=args.select or "entity", sigma0=args.sigma0, k0=args.k0, iters=args.iters, mu=args.mu,
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
                           max_holdout=args.max_holdout, threads=args.threads,
                           progress=not args.quiet)
    train_eco(opts, cfg)
    return 0
