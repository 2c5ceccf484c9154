"""``guard-eval tofu``: TOFU on the local engine, unguarded and through the guard (see :mod:`guard.eval.tofu`).

Examples::

    # TOFU-mini (CPU): target, retain twin, and the target behind a refuse and an ECO policy
    guard-eval tofu --model tofu-mini-target --retain-model tofu-mini-retain \\
        --policy policies/examples/eco_tofu_mini.yaml --actions refuse,eco --limit 40 --out results/tofu-mini

    # one guard per policy file (each policy names its own action and artifacts)
    guard-eval tofu --model tofu-mini-target --retain-model tofu-mini-retain \\
        --guard spul=policies/examples/spul_tofu_mini.yaml --guard uld=policies/examples/uld_tofu_mini.yaml --out results/tofu-mini

    # model utility when the detector is wrong: every retain / real-author / world-fact question through the
    # method as if flagged (rows labelled <label>@worst-case), next to the served rows
    guard-eval tofu --model tofu-mini-target --retain-model tofu-mini-retain \
        --guard eco=policies/tofu/forget01.eco-answer-names.trained.yaml --regime served,worst-case --out results/tofu-mini

    # sampling leak (issues #14, #16): each system's 8 samples at T = 1 on the forget questions and the
    # nameless probes; guard rows input-only and input+output (as served); per-probe lines in leak/<label>.jsonl
    guard-eval tofu --model tofu-mini-target --retain-model tofu-mini-retain \
        --guard eco=policies/tofu/forget01.eco-answer-names.trained.yaml --guard uld=policies/examples/uld_tofu_mini.yaml \
        --policy policies/tofu/forget01.yaml --actions refuse --limit 40 --max-new-tokens 64 \
        --samples 8 --temperature 1.0 --probes both --out results/tofu-mini

    # the full benchmark (GPU): forget10, retain90 twin, 200 new tokens, all items
    guard-eval tofu --model tofu-full-target --retain-model tofu-full-retain --preset full --out results/tofu-full
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path
from typing import Any

from guard.cli_common import command_line
from guard.errors import ConfigError
from guard.eval.tofu import EvalPlan, System, TofuRun, plan_for_preset, preset_of, run_tofu
from guard.eval.tofu_leak import LeakSpec
from guard.eval.tofu_regime import DEFAULT_REGIME, parse_regimes, regime_label
from guard.paths import default_data_dir

_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RESERVED = ("target", "retain")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tofu", help="TOFU metrics for a fine-tuned model, its retain twin and the guard with each action",
        description="TOFU (probability, ROUGE, truth ratio, forget quality, model utility) on the local engine: the "
                    "unguarded target, its retain twin and the target behind each policy/action.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1])
    p.add_argument("--model", required=True, help="the fine-tuned target (e.g. tofu-mini-target, a folder)")
    p.add_argument("--retain-model", help="its retain twin (e.g. tofu-mini-retain); needed for forget quality")
    p.add_argument("--data", type=Path, help="data folder (shared/data or shared/data/tofu; default: shared/data beside the checkout)")
    p.add_argument("--preset", choices=["micro", "mini", "full"],
                   help="which rows the models were trained on (default: read from the model's manifest)")
    p.add_argument("--forget-split", choices=["forget01", "forget05", "forget10"], help="override the forget split")
    p.add_argument("--forget-rows", help="rows of <forget-split>_perturbed, e.g. 0:40 (default: the preset's)")
    p.add_argument("--retain-rows", help="rows of retain_perturbed, e.g. 0:360 (default: the preset's)")
    p.add_argument("--guard", action="append", default=[], metavar="LABEL=POLICY",
                   help="evaluate the target behind POLICY (repeatable); the policy names actions and artifacts")
    p.add_argument("--policy", type=Path, help="a policy to run once per --actions entry, every target's action replaced")
    p.add_argument("--actions", help="comma-separated actions for --policy (e.g. refuse,eco,spul,uld)")
    p.add_argument("--regime", default=DEFAULT_REGIME,
                   help="served (the detector decides, default), worst-case (every retain/real/world question through "
                        "the method as if flagged; rows labelled LABEL@worst-case), or served,worst-case for both")
    p.add_argument("--samples", type=int, metavar="K",
                   help="add the sampling leak section: every system answers each probe K times; a probe leaks when any "
                        "sample has ROUGE-L recall >= 0.5 vs the gold answer or names an author the question did not")
    p.add_argument("--temperature", type=float, help="sampling temperature for --samples (default 1.0; 0: greedy, K = 1)")
    p.add_argument("--probes", choices=["forget", "nameless", "both"],
                   help="--samples probe sets: the forget questions scored, the split's nameless probes, or both (default both)")
    p.add_argument("--limit", type=int, help="at most N items per split (and N nameless probes), evenly spread (CPU runs)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="generation length (TOFU: 200)")
    p.add_argument("--batch-size", type=int, default=8, help="batch for plain-model generation (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="request seed (ECO's noise) (default %(default)s)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU when visible, default), cpu, cuda or cuda:N")
    p.add_argument("--out", type=Path, required=True, help="output directory (results.json, report.md, plots/, systems/)")
    p.add_argument("--force", action="store_true", help="recompute systems (and leak answers) already evaluated with the same settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_cli)


def _rows(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    rows: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?::(\d+))?", part)
        if not m:
            raise ConfigError(f"{what} {text!r}: use START:END or comma-separated rows, e.g. 0:360 or 0,1,20", param=what)
        start = int(m.group(1))
        rows += list(range(start, int(m.group(2)))) if m.group(2) else [start]
    return rows


def build_plan(args: argparse.Namespace, model_dir: Path) -> tuple[EvalPlan, str | None]:
    preset = args.preset or preset_of(model_dir)
    if preset:
        plan = plan_for_preset(preset, args.limit, args.forget_split)
    elif args.forget_split:
        plan = EvalPlan(args.forget_split, None, None, args.limit)
    else:
        raise ConfigError(f"{model_dir} has no guard-train manifest naming its preset: pass --preset or --forget-split",
                          param="preset")
    if args.forget_rows is not None:
        plan.forget_rows = _rows(args.forget_rows, "forget_rows")
    if args.retain_rows is not None:
        plan.retain_rows = _rows(args.retain_rows, "retain_rows")
    return plan, preset


def build_guards(args: argparse.Namespace, target_model: str) -> list[System]:
    from guard.interventions.registry import available_actions

    policies: list[tuple[str, Path, str | None]] = []
    for spec in args.guard:
        label, sep, path = spec.partition("=")
        if not sep:
            label, path = Path(spec).stem, spec
        if not _LABEL_RE.match(label) or label in _RESERVED:
            raise ConfigError(f"guard label {label!r}: letters, digits, '.', '_', '-', not {'/'.join(_RESERVED)}", param="guard")
        if not Path(path).is_file():
            raise ConfigError(f"policy file {path} not found", param="guard")
        policies.append((label, Path(path), None))
    if args.actions and not args.policy:
        raise ConfigError("--actions needs --policy (the policy whose targets get each action)", param="actions")
    if args.policy:
        if not args.policy.is_file():
            raise ConfigError(f"policy file {args.policy} not found", param="policy")
        available = available_actions()
        actions = [a.strip() for a in (args.actions or "").split(",") if a.strip()]
        if not actions:
            raise ConfigError("--policy needs --actions (e.g. refuse,eco)", param="actions")
        for action in actions:
            if action not in available:
                raise ConfigError(f"action {action!r} is not available (available: {', '.join(sorted(available))})",
                                  param="actions")
            policies.append((f"guard-{action}", args.policy, action))
    regimes = parse_regimes(args.regime)
    return [System(regime_label(label, regime), "guard", target_model, path, action, regime)
            for label, path, action in policies for regime in regimes]


def build_leak(args: argparse.Namespace) -> LeakSpec | None:
    """The leak section ``--samples/--temperature/--probes`` ask for (None without ``--samples``)."""
    if args.samples is None:
        for flag, value in (("temperature", args.temperature), ("probes", args.probes)):
            if value is not None:
                raise ConfigError(f"--{flag} needs --samples (the sampling leak section)", param=flag)
        return None
    return LeakSpec(args.samples, 1.0 if args.temperature is None else args.temperature, args.probes or "both")


def run_cli(args: argparse.Namespace) -> int:
    from guard.models import resolve_model

    data_dir = args.data or default_data_dir()
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be >= 1", param="limit")
    if args.max_new_tokens < 1:
        raise ConfigError("--max-new-tokens must be >= 1", param="max_new_tokens")
    leak = build_leak(args)
    model_dir = Path(resolve_model(args.model))
    plan, preset = build_plan(args, model_dir)
    run = TofuRun(data_dir=data_dir, out_dir=args.out, plan=plan, target_model=args.model, retain_model=args.retain_model,
                  guards=build_guards(args, args.model), max_new_tokens=args.max_new_tokens, seed=args.seed,
                  batch_size=args.batch_size, threads=args.threads, device=args.device, force=args.force, progress=not args.no_progress,
                  leak=leak)
    if not args.retain_model:
        print("note: no --retain-model, so forget quality is n/a", file=sys.stderr)
    results = asyncio.run(run_tofu(run))
    results["settings"]["preset"] = preset
    from guard.eval.report import write_tofu_report

    command = command_line("guard-eval", "tofu")
    paths = write_tofu_report(results, args.out, command)
    for system in results["systems"]:
        m = system["metrics"]
        print(f"{system['label']:>16}: forget quality {_f(m.get('forget_quality'))}  model utility {_f(m.get('model_utility'))}  "
              f"forget ROUGE {_f(m.get('forget_Q_A_ROUGE'))}  forget Prob {_f(m.get('forget_Q_A_Prob'))}")
    for row in (results.get("leak") or {}).get("rows", []):
        rates = "  ".join(f"{name} {_pct(stats)}" for name, stats in row["sets"].items())
        print(f"{row['label']:>16}: leak ({row['screen']}) {rates}")
    print(f"report: {paths['report']}")
    return 0


def _pct(stats: dict[str, Any]) -> str:
    return "n/a" if stats.get("leak_rate") is None else f"{stats['leak_rate']:.1%} ({stats['leaked']}/{stats['probes']})"


def _f(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.3f}"
