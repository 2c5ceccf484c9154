"""``guard-eval false-stops``: share of benign answers the output screen cuts, through the serving
path (see :mod:`guard.eval.false_stops`).

Examples::

    # TOFU-mini (CPU): 100 answers per set, greedy, 64 new tokens
    guard-eval false-stops --model tofu-mini-target --policy policies/tofu/forget01.yaml \\
        --limit 100 --max-new-tokens 64 --threads 1 --out results/false-stops-mini-forget01

    # only two sets, all of their questions
    guard-eval false-stops --model default --policy policies/tofu/forget10.yaml --sets real,world --out results/fs

    # enough answers to bound a small set's rate: 6 sampled answers per question (T = 1.0)
    guard-eval false-stops --model tofu-mini-target --policy policies/tofu/forget01.yaml --sets real,world \
        --samples 6 --temperature 1.0 --threads 1 --out results/fs-sampled
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from guard.cli_common import command_line
from guard.errors import ConfigError
from guard.paths import default_data_dir

PARTIAL = "answers.partial.jsonl"   # one line per answer as it is made: an interrupted run resumes


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "false-stops", help="share of benign answers (retain, real authors, world facts, general) the output screen cuts",
        description="Benign questions answered by the guard as served (request screen, method, output screening); "
                    "counts the answers the output screen stopped and which of them named the stopped target.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1])
    p.add_argument("--model", required=True, help="the served model (default, tofu-mini-target, a folder)")
    p.add_argument("--policy", type=Path, required=True, help="the guard's policy (output screening as it configures it)")
    p.add_argument("--sets", default="retain,real,world,general",
                   help="comma-separated benign sets: retain, real, world, general (default %(default)s)")
    p.add_argument("--data", type=Path, help="data folder (default: shared/data beside the checkout)")
    p.add_argument("--limit", type=int, help="at most N questions per set, evenly spread (CPU runs)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="answer length (default %(default)s)")
    p.add_argument("--samples", type=int, default=1,
                   help="answers per question (default %(default)s); more than 1 needs --temperature > 0: a "
                        "small set (100 real-author questions) needs ~600 answers to bound a rate at 0.5 %%")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature (default %(default)s: greedy); sample j of a question uses seed --seed + j")
    p.add_argument("--seed", type=int, default=0, help="first sampling seed (default %(default)s)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--out", type=Path, required=True,
                   help="output directory (results.json, report.md; answers.partial.jsonl lets a rerun resume)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_cli)


def _sets(args: argparse.Namespace) -> list[str]:
    from guard.eval.false_stops import BENIGN_SETS

    names = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in names if s not in BENIGN_SETS]
    if not names or unknown:
        raise ConfigError(f"--sets: unknown set(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(BENIGN_SETS)}",
                          param="sets")
    return list(dict.fromkeys(names))


def _check(args: argparse.Namespace) -> list[str]:
    from guard.eval.cmd_leak import check_local_run

    check_local_run(args)
    if args.samples < 1:
        raise ConfigError(f"--samples must be at least 1 (got {args.samples})", param="samples")
    if args.temperature < 0:
        raise ConfigError(f"--temperature must be >= 0 (got {args.temperature:g})", param="temperature")
    if args.samples > 1 and args.temperature == 0:
        raise ConfigError("--samples > 1 with --temperature 0 gives the same greedy answer each time; "
                          "set --temperature (e.g. 1.0) or drop --samples", param="samples")
    return _sets(args)


async def run_false_stops(args: argparse.Namespace, sets: list[str]) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from guard.engines.base import SamplingParams
    from guard.eval.cmd_leak import guard_on_local_engine, write_outputs
    from guard.eval.false_stops import answer_benign, benign_questions, report_lines, results_json, summarise
    from guard.eval.leak import evenly_spread
    from guard.metrics import GuardMetrics

    data = args.data or default_data_dir()
    questions = [(name, q) for name in sets for q in evenly_spread(benign_questions(data, name), args.limit)]
    metrics = GuardMetrics.create()
    sampled = args.temperature > 0
    run_key = {"model": args.model, "policy": str(args.policy), "max_new_tokens": args.max_new_tokens,
               **({"temperature": args.temperature, "seed": args.seed} if sampled else {})}
    partial = args.out / PARTIAL
    done = answered_before(partial, run_key)
    results = []
    async with guard_on_local_engine(args.model, args.policy, args.threads) as (engine, pipeline):
        args.out.mkdir(parents=True, exist_ok=True)
        with tqdm(total=len(questions) * args.samples, desc="benign answers", disable=args.no_progress) as bar, \
                partial.open("a", encoding="utf-8") as log:
            if log.tell() and not partial.read_bytes().endswith(b"\n"):
                log.write("\n")   # after a line an interruption cut short
            for (name, question), sample in ((q, j) for q in questions for j in range(args.samples)):
                result = done.get((name, question, sample))
                if result is None:
                    params = SamplingParams(max_tokens=args.max_new_tokens, temperature=args.temperature,
                                            seed=args.seed + sample if sampled else None)
                    result = await answer_benign(name, question, engine, pipeline, params, metrics, sample)
                    log.write(json.dumps({"run": run_key, **asdict(result)}, ensure_ascii=False) + "\n")
                    log.flush()
                results.append(result)
                bar.update(1)
                if result.cut:
                    bar.set_postfix(cut=sum(r.cut for r in results), false=sum(r.false_stop for r in results))
    settings = {"model": args.model, "policy": str(args.policy), "sets": sets, "limit": args.limit,
                "max_new_tokens": args.max_new_tokens, "samples": args.samples, "temperature": args.temperature,
                "seed": args.seed, "answers": len(results),
                "command": command_line("guard-eval", "false-stops")}
    summary = summarise(results)
    write_outputs(args.out, results_json(results, summary, settings), report_lines(summary, settings))
    return summary


def answered_before(path: Path, run_key: dict[str, Any]) -> dict[tuple[str, str, int], Any]:
    """Answers an interrupted run with the same model, policy and length already wrote to
    ``path`` (one JSON line each; a line cut short by the interruption is skipped)."""
    from guard.eval.false_stops import BenignAnswer

    done: dict[tuple[str, str, int], BenignAnswer] = {}
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.pop("run", None) == run_key:
            answer = BenignAnswer(**row)
            done[(answer.set, answer.question, answer.sample)] = answer
    return done


def run_cli(args: argparse.Namespace) -> int:
    sets = _check(args)
    asyncio.run(run_false_stops(args, sets))
    return 0
