"""``guard-eval rwku``: RWKU through OpenAI-compatible URLs (see :mod:`guard.eval.rwku`).

Examples::

    # before (raw vLLM), after (a guard in front of it), and RWKU's ICU prompt on the raw upstream
    guard-eval rwku --data ../shared/data --targets 1-3 --limit 5 \\
        --url before=http://127.0.0.1:8011 --url guard=http://127.0.0.1:8100 --icu before --out results/rwku

    # issue #14: guards with output screening off and on (both --debug); the report's "Guard stops,
    # end to end" section: request / output / either per AA attack type, and on the probes the
    # unguarded ("before", or --unguarded LABEL) run answers with the target knowledge
    guard-eval rwku --data ../shared/data --targets 1-100 --sets forget_aa --max-tokens-cap 30 \\
        --url before=http://127.0.0.1:8011 --url guard-input=http://127.0.0.1:8125 \\
        --url guard-io=http://127.0.0.1:8124 --out results/rwku-io

    # a policy forgetting targets 1-3 (batch setting), to start the guard with
    guard-eval rwku --data ../shared/data --targets 1-3 --write-policy policy.yaml --action refuse
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml

from guard.data.rwku import ALL_SETS, discover_targets, policy_dict, select_targets, target_id
from guard.cli_common import command_line
from guard.errors import ConfigError
from guard.eval.rwku import MC_SCORINGS, PROMPT_FORMATS, PolicySwap, RunSpec, RwkuSettings, run_rwku
from guard.paths import default_data_dir

log = logging.getLogger(__name__)
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "rwku", help="RWKU forget/neighbor/utility through OpenAI-compatible URLs (before/after/ICU)",
        description="Measure RWKU through one or more OpenAI-compatible URLs. Targets are discovered from the data folder.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Examples::", 1)[1])
    p.add_argument("--data", type=Path, default=None,
                   help="data folder (shared/data or shared/data/rwku; default: shared/data beside the checkout)")
    p.add_argument("--url", action="append", default=[], metavar="[LABEL=]URL",
                   help="an OpenAI-compatible server to measure (repeatable), e.g. before=http://127.0.0.1:8011")
    p.add_argument("--model", help="model name to request (default: the first one the URL's /v1/models lists)")
    p.add_argument("--api-key", help="bearer key sent to every URL")
    p.add_argument("--icu", nargs="?", const="", default=None, metavar="LABEL",
                   help="also run RWKU's in-context-unlearning prompt on URL LABEL (default: the first URL)")
    p.add_argument("--targets", help="which targets: 1-3, '1,4,7', '1-3;Beyonce', a folder name or a name (default: all)")
    p.add_argument("--sets", default=",".join(ALL_SETS), help="comma-separated sets (default: all of %(default)s)")
    p.add_argument("--limit", type=int, help="at most N items per set and target (CPU runs)")
    p.add_argument("--max-tokens-cap", type=int, help="cap every generation length (RWKU: 30 for probes, 256 for BBH/fluency)")
    p.add_argument("--prompt-format", choices=PROMPT_FORMATS, default="rwku",
                   help="rwku: RWKU's exact text via /v1/completions (needs the tokenizer); chat: user turn via /v1/chat/completions")
    p.add_argument("--tokenizer", help="local model folder or cached name whose chat template renders the rwku prompts "
                                       "(default: from --model / the server's model root)")
    p.add_argument("--mc-scoring", choices=MC_SCORINGS, default="generate",
                   help="MMLU/TruthfulQA: generate (letter answer; any URL) or logprobs (RWKU's log-likelihoods; needs echo+logprobs)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight per URL (default %(default)s)")
    p.add_argument("--out", type=Path, help="output directory (results.json, report.md, plots/, targets/)")
    p.add_argument("--policy-per-target", type=Path, metavar="DIR",
                   help="single-target setting: before each target, copy DIR/<target id>.yaml over --live-policy and "
                        "POST /admin/reload to the guard (--reload-label)")
    p.add_argument("--live-policy", type=Path, help="the policy file the guard was started with (single-target setting)")
    p.add_argument("--admin-key", help="the guard's admin key (single-target setting)")
    p.add_argument("--reload-label", help="which --url is the guard to reload (default: the last one)")
    p.add_argument("--write-policy", type=Path, metavar="FILE", help="write one policy forgetting the selected targets and exit")
    p.add_argument("--write-policy-per-target", type=Path, metavar="DIR", help="write one policy per selected target and exit")
    p.add_argument("--action", default="refuse", help="action for --write-policy* (default %(default)s)")
    p.add_argument("--detector", default="keyword", help="detector kind for --write-policy* (default %(default)s)")
    p.add_argument("--unguarded", metavar="LABEL",
                   help="the --url run whose answers tell which probes the model knows, for the guarded runs' "
                        "end-to-end stop share on them (default: the run labelled 'before', if any)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_cli)


def parse_urls(values: list[str]) -> list[tuple[str, str]]:
    out = []
    for i, value in enumerate(values):
        label, sep, url = value.partition("=")
        if not sep or "://" in label:
            label, url = f"url{i + 1}", value
        if not _LABEL_RE.match(label):
            raise ConfigError(f"label {label!r} must be letters, digits, '.', '_' or '-'", param="url")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{url!r} is not an http(s) URL", param="url")
        out.append((label, url))
    return out


def local_tokenizer(name: str | None) -> Path | None:
    """A local folder holding the tokenizer for ``name``; never touches the network."""
    from guard.models import DEFAULT_MODEL, DEFAULT_MODEL_DIRNAME, DEFAULT_SERVED_NAME, resolve_model
    from guard.paths import models_dir

    if not name:
        return None
    if name.lower() in (DEFAULT_MODEL, DEFAULT_MODEL_DIRNAME, DEFAULT_SERVED_NAME.lower()):
        return resolve_model(DEFAULT_MODEL)
    for cand in (models_dir() / name, Path(name).expanduser()):
        if cand.is_dir() and ((cand / "tokenizer_config.json").exists() or (cand / "tokenizer.json").exists()):
            return cand
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):  # a hub id already in the local HF cache (no download)
        try:
            from huggingface_hub import snapshot_download

            cached = Path(snapshot_download(name, local_files_only=True))
        except Exception:  # noqa: BLE001 - not cached (or not a hub id)
            return None
        if (cached / "tokenizer_config.json").exists():
            return cached
    return None


async def _server_model_root(url: str, api_key: str | None, model: str | None) -> tuple[str | None, str | None]:
    from guard.eval.rwku import OpenAICompatClient, resolve_model_name

    async with OpenAICompatClient(url, api_key=api_key) as client:
        name, info = await resolve_model_name(client, model)
    return name, info.get("root")


def run_cli(args: argparse.Namespace) -> int:
    data_dir = args.data or default_data_dir()
    targets = select_targets(discover_targets(data_dir), args.targets)
    if args.write_policy or args.write_policy_per_target:
        return write_policies(args, targets)
    if not args.url:
        raise ConfigError("give at least one --url (e.g. --url before=http://127.0.0.1:8011)", param="url")
    if not args.out:
        raise ConfigError("give --out DIR for the results", param="out")
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be >= 1", param="limit")
    sets = tuple(s.strip() for s in args.sets.split(",") if s.strip())
    unknown = [s for s in sets if s not in ALL_SETS]
    if unknown:
        raise ConfigError(f"unknown set(s) {', '.join(unknown)}; known: {', '.join(ALL_SETS)}", param="sets")
    urls = parse_urls(args.url)
    unguarded = args.unguarded if args.unguarded is not None else ("before" if "before" in dict(urls) else None)
    if unguarded is not None and unguarded not in dict(urls):
        raise ConfigError(f"--unguarded {unguarded!r} names no --url ({', '.join(l for l, _ in urls)})", param="unguarded")
    runs = [RunSpec(label, url, False, args.api_key) for label, url in urls]
    if args.icu is not None:
        base = dict(urls).get(args.icu) if args.icu else urls[0][1]
        if base is None:
            raise ConfigError(f"--icu {args.icu!r} names no --url label ({', '.join(l for l, _ in urls)})", param="icu")
        label = (args.icu or urls[0][0]) + "-icu"
        runs.append(RunSpec(label, base, True, args.api_key))
    settings = RwkuSettings(prompt_format=args.prompt_format, mc_scoring=args.mc_scoring, limit=args.limit,
                            max_tokens_cap=args.max_tokens_cap, sets=sets, concurrency=args.concurrency)
    tokenizer = tokenizer_name = None
    if args.prompt_format == "rwku":
        path = local_tokenizer(args.tokenizer or args.model)
        if path is None and not args.tokenizer:
            name, root = asyncio.run(_server_model_root(urls[0][1], args.api_key, args.model))
            path = local_tokenizer(name) or local_tokenizer(root)
        if path is None:
            raise ConfigError("--prompt-format rwku renders RWKU's prompts with the served model's chat template, but no "
                              "local tokenizer was found for it: pass --tokenizer (a model folder or cached name) or use "
                              "--prompt-format chat", param="tokenizer")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer_name = str(path)
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"the tokenizer at {path} has no chat template; RWKU's prompts need one (use --prompt-format chat "
                              "against a chat server)", param="tokenizer")
    swap = None
    if args.policy_per_target:
        if not (args.live_policy and args.admin_key):
            raise ConfigError("--policy-per-target needs --live-policy (the guard's policy file) and --admin-key",
                              param="policy_per_target")
        reload_label = args.reload_label or urls[-1][0]
        if reload_label not in dict(urls):
            raise ConfigError(f"--reload-label {reload_label!r} names no --url", param="reload_label")
        swap = PolicySwap(args.policy_per_target, args.live_policy, args.admin_key, reload_label)
        for t in targets:
            swap.policy_for(t)  # fail before measuring anything
    results = asyncio.run(run_rwku(targets, runs, args.out, settings, model=args.model, tokenizer=tokenizer,
                                   tokenizer_name=tokenizer_name, policy_swap=swap, progress=not args.no_progress))
    results["setting"] = "single-target" if swap else "as served (batch: one policy for all targets)"
    results["screening"] = screening_summary(args.out, results, targets, unguarded)
    from guard.eval.report import write_rwku_report

    command = command_line("guard-eval", "rwku")
    paths = write_rwku_report(results, args.out, command)
    for run in results["runs"]:
        agg = run["aggregate"]
        print(f"{run['label']:>16}: forget All {_f(agg.get('forget_all'))}  neighbor All {_f(agg.get('neighbor_all'))}  "
              f"MMLU {_f(agg.get('mmlu_acc'))}  fluency {_f(agg.get('fluency_entropy'))}")
    for label, k in (results["screening"].get("knowing") or {}).items():
        a = k["all"]
        if not a["n"]:
            continue
        print(f"{label:>16}: forget AA probes the unguarded model knows: n={a['n']}, stopped or answered by a method "
              f"{_f(a['either'])} (request {_f(a['request'])}, output {_f(a['output'])})")
    print(f"report: {paths['report']}")
    return 0


def screening_summary(out_dir: Path, results: dict[str, Any], targets: list, unguarded: str | None) -> dict[str, Any]:
    """The guard's stops per run (request screen, output screen, either; per set and per AA attack
    type) and, against the ``unguarded`` run's answers, issue #14's end-to-end measure on the AA
    probes the model knows. Read from the per-target item files (the results hold no items)."""
    from guard.eval.rwku import result_path
    from guard.eval.rwku_aggregate import KNOWLEDGE_ROUGE, KNOWLEDGE_STRICT, knowing_probes, stop_table

    def items(run: RunSpec) -> dict[str, dict[str, list[dict[str, Any]]]]:
        out = {}
        for t in targets:
            path = result_path(out_dir, run, t)
            if path.exists():
                out[t.key] = json.loads(path.read_text(encoding="utf-8")).get("items") or {}
        return out

    runs = [RunSpec(r["label"], r["url"], r["icu"]) for r in results["runs"]]
    loaded = {r.label: items(r) for r in runs}
    guarded = {label: stop_table(rows) for label, rows in loaded.items()
               if any(row.get("action") or row.get("output_screen") for per in rows.values()
                      for set_rows in per.values() for row in set_rows)}
    summary: dict[str, Any] = {"runs": guarded, "unguarded": unguarded}
    if unguarded is not None and unguarded in loaded:
        for key, threshold in (("knowing", KNOWLEDGE_ROUGE), ("knowing_strict", KNOWLEDGE_STRICT)):
            summary[key] = {label: knowing_probes(loaded[unguarded], loaded[label], threshold=threshold)
                            for label in guarded if label != unguarded}
    return summary


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write_policies(args: argparse.Namespace, targets: list) -> int:
    from guard.atomic import write_text
    from guard.policy import parse_policy

    def dump(policy: dict[str, Any], path: Path) -> None:
        parse_policy(policy, str(path))  # validate before writing
        write_text(path, "# written by guard-eval rwku --write-policy\n" + yaml.safe_dump(policy, sort_keys=False, allow_unicode=True))

    if args.write_policy:
        dump(policy_dict(targets, args.action, args.detector), args.write_policy)
        print(f"wrote {args.write_policy} ({len(targets)} targets, action {args.action})")
    if args.write_policy_per_target:
        for t in targets:
            dump(policy_dict([t], args.action, args.detector), args.write_policy_per_target / f"{target_id(t)}.yaml")
        print(f"wrote {len(targets)} policies to {args.write_policy_per_target}")
    return 0
