"""``guard-train uld``: the command line of :mod:`guard.train.uld` (the ULD assistant)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from guard.train.cli_args import HOLDOUT_HELP, add_method_data_args, add_optimisation_args, add_retain_check_args, holdout_source
from guard.errors import ConfigError
from guard.train.method_data import retain_override
from guard.train.uld import DEFAULT_ALPHAS, AlphaSearch, UldConfig, train_uld


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "uld", help="train the ULD assistant (remember forget data, forget retain data) for a policy's targets",
        description=("Build the assistant from the served model (embeddings, first K layers, final norm, LM head) with LoRA "
                     "on its linear layers, and train it with the reversed objectives: cross-entropy on the targets' "
                     "forget_data (plus TOFU paraphrases), KL(uniform || assistant) on their keep_data. Writes "
                     "DIR/manifest.json + DIR/adapter/ (PEFT, safetensors); point a target's params.artifact at DIR with "
                     "action: uld. With --holdout, alpha is chosen after training from the policy's data and never-seen QA."))
    add_method_data_args(p, model_example="tofu-micro-target", target_help="train for this target id only (repeatable)")
    m = p.add_argument_group("assistant and objective")
    m.add_argument("--layers", type=int, default=None, help="K: transformer layers kept (default 8 for >= 32-layer models, else depth // 7, at least 2: 4 for the bundled model)")
    m.add_argument("--lora-r", type=int, default=16)
    m.add_argument("--lora-alpha", type=int, default=32)
    m.add_argument("--lora-dropout", type=float, default=0.05)
    m.add_argument("--retain-weight", type=float, default=1.0, help="weight of KL(uniform || assistant) on retain data (default 1)")
    m.add_argument("--no-paraphrases", action="store_true", help="train on the forget QA only, not their paraphrases")
    d = p.add_argument_group("decoding defaults stored in the artifact (overridable in the policy)")
    d.add_argument("--alpha", type=float, default=0.8,
                   help="logits = target - alpha * assistant, when --holdout is not given (default 0.8, as the paper)")
    d.add_argument("--top-k", type=int, default=20, help="plausible set: the target's top-k tokens (default 20; <= vLLM --max-logprobs)")
    d.add_argument("--min-prob-ratio", type=float, default=0.0, help="also require p >= ratio * p_max (default 0: off)")
    a = p.add_argument_group("choosing alpha after training (guard.train.uld_alpha; the retain twin and eval rows are never read)")
    a.add_argument("--holdout", type=Path, default=None,
                   help=f"{HOLDOUT_HELP}; given: alpha is chosen so the forget answers' truth ratios match the target's on these")
    a.add_argument("--holdout-rows", default=None, help="rows of --holdout, e.g. 360:400")
    a.add_argument("--alphas", default=None, help="comma-separated alpha grid (default 0, 0.05, ..., 1, 1.2, 1.5, 2, 3)")
    add_retain_check_args(a, what="ULD", min_agreement=0.98)
    a.add_argument("--max-retain-shift", type=float, default=None, help="optional bound on their mean |change of log truth ratio|")
    a.add_argument("--max-retain-nll-rise", type=float, default=None, help="optional bound on their mean gold-NLL rise (nats/token)")
    add_optimisation_args(p, epochs=10, lr=3e-3, lr_note="; the paper used 1e-3 on Llama-2-7B", val_fraction=0.1, max_retain=200,
                          unit="items")
    r = p.add_argument_group("running")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    r.add_argument("--eval", type=int, default=0, metavar="N",
                   help="after training, compare greedy plain vs ULD answers on N forget and N retain questions (default 0)")
    r.add_argument("--eval-max-new-tokens", type=int, default=48)
    r.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    retain = retain_override(args.retain, args.retain_rows)
    cfg = UldConfig(layers=args.layers, lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                    retain_weight=args.retain_weight, paraphrases=not args.no_paraphrases, epochs=args.epochs, lr=args.lr,
                    batch_size=args.batch_size, val_fraction=args.val_fraction, patience=args.patience,
                    max_retain=args.max_retain or None, max_length=args.max_length, seed=args.seed, alpha=args.alpha,
                    top_k=args.top_k, min_prob_ratio=args.min_prob_ratio, eval_items=args.eval,
                    eval_max_new_tokens=args.eval_max_new_tokens)
    manifest = train_uld(args.policy, args.out, cfg, model_name=args.model, targets=args.target, retain=retain,
                         threads=args.threads, progress=not args.no_progress, alpha_search=alpha_search(args))
    metrics = manifest["metrics"]
    print(json.dumps({"out": str(args.out), "base_model": manifest["base_model"]["name"],
                      "layers": manifest["assistant"]["layers"], "decoding": manifest["decoding"],
                      "initial_val": (metrics["initial_val"] or {}).get("total"), "best_val": metrics["best_val"],
                      "alpha_search": {k: (manifest["alpha_search"] or {}).get(k) for k in ("chosen", "rule")} if manifest["alpha_search"] else None,
                      "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
                      "stopped_early": metrics["stopped_early"], "train_time_s": metrics["train_time_s"],
                      "total_time_s": metrics["total_time_s"], "generation": metrics["generation"]}, indent=2))
    return 0


def alpha_search(args: argparse.Namespace) -> AlphaSearch | None:
    """The ``--holdout`` α search settings, or ``None`` (α = ``--alpha``)."""
    if args.holdout is None:
        if args.holdout_rows:
            raise ConfigError("--holdout-rows needs --holdout", param="holdout_rows")
        return None
    holdout = holdout_source(args.holdout, args.holdout_rows)
    try:
        alphas = tuple(float(x) for x in args.alphas.split(",")) if args.alphas else DEFAULT_ALPHAS
    except ValueError as exc:
        raise ConfigError(f"--alphas: {exc}", param="alphas") from None
    return AlphaSearch(holdout, alphas=alphas, forget_every=args.search_forget_every, retain_items=args.search_retain_items,
                       min_retain_agreement=args.min_retain_agreement, max_retain_shift=args.max_retain_shift,
                       max_retain_nll_rise=args.max_retain_nll_rise)
