"""``guard-eval leak``: leak rate on nameless probes, target vs guard input-only vs input+output, for
one policy as written (see :mod:`guard.eval.leak`). ``guard-eval tofu --samples K --probes nameless``
measures the same rows inside the TOFU report, for every system it evaluates (the retain twin, each
action); both run :func:`guard.eval.leak.answer_probes`.

Examples::

    # TOFU-mini (CPU): held-out half b of the forget01 probes, 8 samples each at T = 1
    guard-eval leak --model tofu-mini-target --policy policies/tofu/forget01.yaml --split forget01 \\
        --half b --samples 8 --temperature 1.0 --max-new-tokens 48 --out results/leak-mini

    # greedy (one answer per probe)
    guard-eval leak --model tofu-mini-target --policy policies/tofu/forget01.yaml --split forget01 --out results/leak-greedy
"""

from __future__ import annotations

import argparse
import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from guard.cli_common import command_line
from guard.errors import ConfigError
from guard.paths import default_data_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "leak", help="leak rate on questions that never name the target: target, guard input-only, input+output",
        description="Nameless probes (guard.eval.nameless_probes) answered k times by the model alone, the guard with "
                    "output screening off, and the guard as served.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1])
    p.add_argument("--model", required=True, help="the fine-tuned target (e.g. tofu-mini-target, a folder)")
    p.add_argument("--policy", type=Path, required=True, help="the guard's policy (its targets are the split's authors)")
    p.add_argument("--split", default="forget01", choices=["forget01", "forget05", "forget10"], help="TOFU forget split")
    p.add_argument("--half", choices=["a", "b"], help="only this half of the probes (default: all)")
    p.add_argument("--data", type=Path, help="data folder (default: shared/data beside the checkout)")
    p.add_argument("--samples", type=int, default=1, help="answers per probe, k (default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy; default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="answer length (default %(default)s)")
    p.add_argument("--limit", type=int, help="at most N probes, evenly spread (CPU runs)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, the same for every system (default %(default)s)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", type=Path, required=True, help="output directory (results.json, report.md; probes.partial.jsonl lets a rerun resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_cli)


def check_local_run(args: argparse.Namespace) -> None:
    """The arguments ``guard-eval leak`` and ``false-stops`` share: answer length, limit, policy file."""
    if args.max_new_tokens < 1:
        raise ConfigError("--max-new-tokens must be >= 1", param="max_new_tokens")
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be >= 1", param="limit")
    if not args.policy.is_file():
        raise ConfigError(f"policy file {args.policy} not found", param="policy")


def _check(args: argparse.Namespace) -> None:
    if args.samples < 1:
        raise ConfigError("--samples must be >= 1", param="samples")
    if args.samples > 1 and args.temperature <= 0:
        raise ConfigError("--samples > 1 needs --temperature > 0 (greedy answers are all the same)", param="temperature")
    check_local_run(args)


def write_outputs(out: Path, results: dict[str, Any], report_lines: list[str]) -> None:
    """``results.json`` and ``report.md`` in ``out`` (atomically), and the report on stdout."""
    from guard.atomic import write_json, write_text

    write_json(out / "results.json", results)
    report = "\n".join(report_lines) + "\n"
    write_text(out / "report.md", report)
    print(report)


@asynccontextmanager
async def guard_on_local_engine(model: str, policy: Path, threads: int | None) -> AsyncIterator[tuple[Any, Any]]:
    """(engine, pipeline): the guard as ``guard-serve`` builds it for ``policy``, on a local engine
    serving ``model`` (one request at a time, ``threads`` torch threads); both are closed after."""
    from classifiers.loader import build_detector
    from guard.engines.local import LocalEngine
    from guard.models import resolve_model, served_name_for
    from guard.pipeline import Pipeline
    from guard.policy import load_policy

    engine = LocalEngine(Path(resolve_model(model)), served_name_for(model), max_concurrency=1, threads=threads)
    await engine.start()
    try:
        pipeline = Pipeline.build(load_policy(policy), engine, build_detector, source=policy)
        try:
            yield engine, pipeline
        finally:
            pipeline.close()  # its screening process and the methods' models
    finally:
        await engine.close()


PARTIAL = "probes.partial.jsonl"   # one line per answered probe and system: an interrupted run resumes


async def run_leak(args: argparse.Namespace) -> dict[str, Any]:
    """The probes answered by the three systems through :func:`guard.eval.leak.answer_probes`, the
    loop ``guard-eval tofu --samples`` uses too."""
    from tqdm.auto import tqdm

    from guard.engines.base import SamplingParams
    from guard.eval.leak import SYSTEMS, ProbeLog, answer_probes, evenly_spread, report_lines, results_json, summarise
    from guard.eval.nameless_probes import nameless_probes

    probes = nameless_probes(args.data or default_data_dir(), args.split, half=args.half)
    probes = evenly_spread(probes, args.limit)
    run_key = {"model": args.model, "policy": str(args.policy), "samples": args.samples,
               "temperature": args.temperature, "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    log = ProbeLog(args.out / PARTIAL, run_key)
    async with guard_on_local_engine(args.model, args.policy, args.threads) as (engine, pipeline):
        params = SamplingParams(max_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed, n=args.samples)
        with tqdm(total=len(probes) * len(SYSTEMS), desc="probes x systems", disable=args.no_progress) as bar:
            results = await answer_probes(probes, SYSTEMS, engine, pipeline, params, log=log, bar=bar)
    settings = {"model": args.model, "policy": str(args.policy), "split": args.split, "half": args.half,
                "samples": args.samples, "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
                "seed": args.seed, "probes": len(probes), "command": command_line("guard-eval", "leak")}
    summary = summarise(results)
    write_outputs(args.out, results_json(results, summary, settings), report_lines(summary, settings))
    return summary


def run_cli(args: argparse.Namespace) -> int:
    _check(args)
    asyncio.run(run_leak(args))
    return 0
