"""``guard-train spul`` (train a soft prompt, :mod:`guard.train.spul`) and ``guard-train spul-report``
(the before/after report of a trained one on chosen rows, :mod:`guard.train.spul_report`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from guard.paths import default_data_dir
from guard.train.cli_args import (
    HOLDOUT_HELP,
    add_data_arg,
    add_method_data_args,
    add_optimisation_args,
    add_retain_check_args,
    holdout_source,
)
from guard.errors import ConfigError
from guard.train.method_data import retain_override
from guard.devices import resolve_device
from guard.train.spul import load_frozen_model, train_spul
from guard.train.spul_config import DEFAULT_INIT_TEXT, FORGET_TARGETS, SpulConfig
from guard.train.spul_counterfactual import DEFAULT_STAND_INS
from guard.train.spul_holdout import DEFAULT_W_DIVERGENT, WDivergentSearch, train_spul_holdout
from guard.train.spul_weight_search import parse_candidates
from guard.train.spul_data import QAItem, encode_example_checked, load_qa_source
from guard.train.spul_objective import Weights
from guard.train.spul_report import generation_report


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "spul", help="train a soft prompt (SPUL) that makes the served model unlearn a policy's targets",
        description=("Learn n soft-prompt vectors with the model frozen: CE towards 'I don't know' (or perturbed) "
                     "answers on the targets' forget_data, CE + KL-to-the-frozen-model on their keep_data. "
                     "Writes DIR/soft_prompt.safetensors + manifest.json; point a target's params.artifact at DIR "
                     "with action: spul. Uses a GPU when one is visible."))
    add_method_data_args(p, model_example="tofu-mini-target", target_help="train for this target id only (repeatable; default all)")
    add_data_arg(p)
    p.add_argument("--idk-file", type=Path, default=None, help="'I don't know' answers, one per line (default DATA/tofu/idontknow.jsonl)")
    m = p.add_argument_group("method")
    m.add_argument("--n-tokens", type=int, default=20, help="soft-prompt length (default 20)")
    m.add_argument("--position", choices=("user", "assistant"), default="user",
                   help="where the vectors go: before the last user message's content (default) or after the assistant header")
    m.add_argument("--forget-target", choices=FORGET_TARGETS, default="idk",
                   help="what forget questions are trained towards: 'I don't know' (default), a perturbed answer, "
                        "counterfactual: the model's own answer about a never-seen stand-in name, distill: the "
                        "model's distribution along the true answer when it is about the stand-in, or uld: ULD's "
                        "distribution along the true answer (--teacher-artifact; docs/spul.md)")
    m.add_argument("--teacher-artifact", default=None, metavar="DIR",
                   help="uld: the directory `guard-train uld` wrote for this model; its alpha and top_k decode the teacher")
    m.add_argument("--stand-in", action="append", default=None, metavar="NAME",
                   help="counterfactual: invented name to ask the model about instead of the target (repeatable; "
                        "default a built-in list)")
    m.add_argument("--teacher-max-new-tokens", type=int, default=64, help="counterfactual: teacher answer length (default 64)")
    m.add_argument("--init", choices=("text", "vocab"), default="text", help="start from the embeddings of --init-text or random tokens")
    m.add_argument("--init-text", default=DEFAULT_INIT_TEXT)
    m.add_argument("--w-forget", type=float, default=1.0, help="weight of the forget CE (default 1)")
    m.add_argument("--w-retain", type=float, default=1.0, help="weight of the retain CE (default 1)")
    m.add_argument("--w-kl", type=float, default=1.0, help="weight of the retain KL to the frozen model (default 1)")
    m.add_argument("--w-first-token", type=float, default=1.0,
                   help="weight of each retain answer's first token in the retain CE and KL (default 1; see docs/spul.md)")
    m.add_argument("--w-divergent", type=float, default=1.0,
                   help="weight of forget label tokens the frozen model does not predict (default 1; for "
                        "--forget-target counterfactual, docs/spul.md; --holdout chooses it)")
    m.add_argument("--w-truth-ratio", type=float, default=0.0,
                   help="weight of the truth-ratio term (default 0: off): the forget items' log truth ratios are trained "
                        "toward the frozen model's on the never-seen --holdout QA (docs/spul.md)")
    m.add_argument("--truth-ratio-answers", choices=("tofu", "swapped"), default="tofu",
                   help="the term's wrong answers: TOFU's perturbed answers beside the forget data (default; they are "
                        "the evaluation's, so --truth-ratio-every >= 2 keeps a share out), or swapped: the true answer "
                        "with its facts replaced by other people's (guard.train.fact_swap)")
    m.add_argument("--truth-ratio-every", type=int, default=2,
                   help="the truth-ratio term reads every n-th forget item (sorted by source and row); the others are "
                        "its held-out half, reported in the manifest (default 2; 1 with swapped answers: all)")
    m.add_argument("--system-prompt", default=None, help="system message used in training prompts (default: the template's)")
    s = p.add_argument_group("never-seen QA: the truth-ratio term's level, or choosing --w-divergent "
                             "(guard.train.spul_holdout; the retain twin and eval rows are never read)")
    s.add_argument("--holdout", type=Path, default=None,
                   help=f"{HOLDOUT_HELP}; with --w-truth-ratio: the term's level; with --forget-target counterfactual: "
                        "one soft prompt per --search-w-divergent weight, the one whose forget truth ratios match the "
                        "frozen model's on these is written")
    s.add_argument("--holdout-rows", default=None, help="rows of --holdout, e.g. 360:400")
    s.add_argument("--search-w-divergent", default=None,
                   help=f"comma-separated --w-divergent candidates (default {','.join(f'{w:g}' for w in DEFAULT_W_DIVERGENT)})")
    add_retain_check_args(s, what="the soft prompt", min_agreement=0.9)
    c = p.add_argument_group("which epoch's soft prompt is written (guard.train.spul_epoch_choice)")
    c.add_argument("--choose-epoch", choices=("val-loss", "never-seen"), default="val-loss",
                   help="val-loss: the best held-out objective (default); never-seen (with --w-truth-ratio): among "
                        "epochs whose greedy forget ROUGE-L is within --rouge-band of the frozen model's on the "
                        "--holdout questions, the smallest KS statistic of the term's truth ratios against its level")
    c.add_argument("--choose-from-epoch", type=int, default=3, help="never-seen: score epochs from this one on (default 3)")
    c.add_argument("--rouge-band", type=float, default=0.1, help="never-seen: the ROUGE-L band around the level (default 0.1)")
    c.add_argument("--choose-max-new-tokens", type=int, default=64,
                   help="never-seen: greedy answer length for the ROUGE-L (default 64, as guard-eval tofu is run)")
    c.add_argument("--search-w-forget", default=None, metavar="W1,W2,...",
                   help="never-seen: one soft prompt per --w-forget value, the rule's choice over all their epochs is "
                        "written (guard.train.spul_weight_search; one training per value)")
    add_optimisation_args(p, epochs=6, lr=3e-2, lr_note="", val_fraction=0.2, max_retain=40, unit="QA")
    r = p.add_argument_group("running")
    r.add_argument("--device", default="auto", help="auto (GPU if visible, default), cpu, cuda or cuda:N")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    r.add_argument("--no-eval", action="store_true", help="skip the before/after generation report on held-out questions")
    r.add_argument("--eval-max-new-tokens", type=int, default=48)
    r.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    retain = retain_override(args.retain, args.retain_rows)
    cfg = SpulConfig(
        n_tokens=args.n_tokens, position=args.position, init=args.init, init_text=args.init_text,
        forget_target=args.forget_target, teacher_artifact=args.teacher_artifact,
        stand_ins=tuple(args.stand_in or DEFAULT_STAND_INS),
        teacher_max_new_tokens=args.teacher_max_new_tokens,
        weights=Weights(args.w_forget, args.w_retain, args.w_kl, args.w_first_token, args.w_divergent, args.w_truth_ratio),
        truth_ratio_holdout=str(args.holdout) if args.holdout is not None and args.w_truth_ratio else None,
        truth_ratio_holdout_rows=args.holdout_rows if args.w_truth_ratio else None, truth_ratio_every=args.truth_ratio_every,
        truth_ratio_answers=args.truth_ratio_answers, choose_epoch=args.choose_epoch,
        choose_from_epoch=args.choose_from_epoch, rouge_band=args.rouge_band, choose_max_new_tokens=args.choose_max_new_tokens,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, val_fraction=args.val_fraction,
        patience=args.patience, max_retain=args.max_retain or None, max_length=args.max_length, seed=args.seed,
        system_prompt=args.system_prompt, eval_generate=not args.no_eval, eval_max_new_tokens=args.eval_max_new_tokens)
    search = w_divergent_search(args)
    if search is not None and args.search_w_forget is not None:
        raise ConfigError("--search-w-forget searches the truth-ratio preset's forget weight (with --choose-epoch "
                          "never-seen); --search-w-divergent is the counterfactual search: give one", param="search_w_forget")
    if search is None:
        weights = parse_candidates(args.search_w_forget) if args.search_w_forget is not None else None
        manifest = train_spul(args.policy, args.out, cfg, model_name=args.model, targets=args.target, retain=retain,
                              data_dir=args.data, idk_file=args.idk_file, device=args.device, threads=args.threads,
                              progress=not args.no_progress, search_w_forget=weights)
    else:
        manifest = train_spul_holdout(args.policy, args.out, cfg, search, model_name=args.model, targets=args.target,
                                      retain=retain, data_dir=args.data, idk_file=args.idk_file, device=args.device,
                                      threads=args.threads, progress=not args.no_progress)
    metrics = manifest["metrics"]
    found = manifest.get("w_divergent_search")
    print(json.dumps({"out": str(args.out), "base_model": manifest["base_model"]["name"],
                      "n_tokens": manifest["n_tokens"], "position": manifest["position"],
                      "initial_val": (metrics["initial_val"] or {}).get("total"), "best_val": metrics["best_val"],
                      "best_epoch": metrics["best_epoch"], "epochs_run": metrics["epochs_run"],
                      "train_time_s": metrics["train_time_s"], "train_cpu_time_s": metrics["train_cpu_time_s"],
                      "total_time_s": metrics["total_time_s"],
                      "device": metrics["device"], "generation": metrics["generation"],
                      "w_divergent_search": {"chosen": found["chosen"]["w_divergent"], "ks_d": found["chosen"]["ks_d"],
                                             "rule": found["rule"]} if found else None,
                      "epoch_choice": {k: v for k, v in manifest["epoch_choice"].items() if k != "trace"}
                      if manifest.get("epoch_choice") else None,
                      "w_forget_search": manifest["w_forget_search"]["chosen"] if manifest.get("w_forget_search") else None},
                     indent=2))
    return 0


def w_divergent_search(args: argparse.Namespace) -> WDivergentSearch | None:
    """The ``--holdout`` search settings, or ``None`` (``--w-divergent`` as given)."""
    if args.holdout is None:
        for flag, value in (("holdout_rows", args.holdout_rows), ("search_w_divergent", args.search_w_divergent)):
            if value is not None:
                raise ConfigError(f"--{flag.replace('_', '-')} needs --holdout", param=flag)
        return None
    if args.forget_target != "counterfactual":
        if args.w_truth_ratio:  # the holdout is the truth-ratio term's level, nothing is searched
            if args.search_w_divergent is not None:
                raise ConfigError("--search-w-divergent needs --forget-target counterfactual", param="search_w_divergent")
            return None
        raise ConfigError("--holdout is the level of --w-truth-ratio, or chooses --w-divergent, the weight of "
                          "--forget-target counterfactual: give one of them", param="forget_target")
    holdout = holdout_source(args.holdout, args.holdout_rows)
    text = args.search_w_divergent
    try:
        weights = DEFAULT_W_DIVERGENT if text is None else tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--search-w-divergent takes comma-separated numbers, got {text!r}", param="search_w_divergent") from None
    search = WDivergentSearch(holdout, candidates=weights, forget_every=args.search_forget_every,
                              retain_items=args.search_retain_items, min_retain_agreement=args.min_retain_agreement)
    search.validate()
    return search


def report_rows(artifact: Path, model_name: str, forget: Sequence[QAItem], retain: Sequence[QAItem], *,
                device: str = "auto", max_new_tokens: int = 48, progress: bool = True) -> dict[str, Any]:
    """``generation_report`` of a trained soft prompt on explicit forget/retain QA (refuses a soft
    prompt trained for another model, like the guard does)."""
    from transformers import AutoTokenizer

    from guard.artifacts import check_identity
    from guard.interventions.spul import RETRAIN, load_soft_prompt
    from guard.models import resolve_model

    model_dir = Path(resolve_model(model_name))
    soft = load_soft_prompt(artifact)
    check_identity(soft.manifest, model_dir, artifact=f"soft prompt {artifact}", retrain=RETRAIN)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    cfg = SpulConfig(position=soft.position, system_prompt=(soft.manifest.get("hyperparameters") or {}).get("system_prompt"))
    f = [encode_example_checked(tokenizer, it, it.answer, cfg, "forget") for it in forget]
    r = [encode_example_checked(tokenizer, it, it.answer, cfg, "retain") for it in retain]
    model = load_frozen_model(model_dir, resolve_device(device, label="--device"))
    report = generation_report(model, tokenizer, soft.vectors, f, r, max_new_tokens=max_new_tokens, progress=progress)
    report["model"] = model_dir.name
    report["artifact"] = str(artifact)
    return report


def register_report(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("spul-report", help="before/after greedy answers of a trained soft prompt on chosen TOFU rows",
                              description="Greedy answers with and without a trained soft prompt (refusals, changed answers, "
                                          "ROUGE-L) on chosen forget and retain rows of a tofu_qa file.")
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--model", default="default")
    p.add_argument("--file", type=Path, default=None, help="tofu_qa file (default DATA/tofu/full.json)")
    p.add_argument("--forget-rows", action="append", required=True, help="rows of --file, e.g. 3960:3964 (repeatable)")
    p.add_argument("--retain-rows", action="append", required=True)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--out", type=Path, default=None, help="write the full report (JSON) here")
    p.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from guard.policy import DataSource

    file = (args.file or default_data_dir() / "tofu" / "full.json").resolve()

    def items(slices: Sequence[str], where: str) -> list[QAItem]:
        return [it for s in slices for it in load_qa_source(DataSource(path=file, format="tofu_qa", rows=s), where)]

    report = report_rows(args.artifact, args.model, items(args.forget_rows, "forget_rows"),
                         items(args.retain_rows, "retain_rows"), max_new_tokens=args.max_new_tokens)
    if args.out:
        from guard.atomic import write_json

        write_json(args.out, report)
    print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "items"} if isinstance(v, dict) else v)
                      for k, v in report.items()}, indent=2))
    return 0
