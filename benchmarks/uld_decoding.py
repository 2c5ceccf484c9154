"""ULD decoding: speed relative to plain decoding on the same engine, and answer quality.

Subcommands (all print a markdown table and, with ``--out``, write JSON):

* ``speed``: decoding tokens/s of the ULD path vs plain decoding, in one run, interleaved prompt
  by prompt so both see the same machine load. Local engine (transformers logits processor) and,
  with ``--vllm-url``, the vLLM engine (plain streamed completion vs ULD ``stream`` and ``step``).
  Targets (issue 7): ULD >= 80 % of plain on the local engine, >= 50 % on vLLM.
* ``quality``: greedy answers on the forget and retain questions of a policy, plain vs ULD, on a
  model that knows the forget data: ROUGE-L recall vs the gold answer (forget: should drop) and
  ULD vs the unguarded answer (retain: should stay), for each ``--alpha``.
* ``training``: the training-time table from ``guard-train uld`` artifacts' manifests.

Examples::

    python -m benchmarks.uld_decoding speed --artifact artifacts/uld/uld_tofu_forget01 \\
        --policy policies/examples/uld_tofu_forget01.yaml --vllm-url http://127.0.0.1:8011
    python -m benchmarks.uld_decoding quality --model tofu-micro-target \\
        --artifact artifacts/uld/uld_tofu_micro --policy policies/examples/uld_tofu_micro.yaml
    python -m benchmarks.uld_decoding training artifacts/uld/uld_tofu_forget01
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from guard.engines.base import PromptInput, SamplingParams


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _questions(policy_path: Path, which: str, limit: int) -> list[tuple[str, str]]:
    """(question, gold answer) pairs of the policy's forget data (``forget``) or keep data (``retain``)."""
    from guard.policy import load_policy
    from guard.train.uld import load_source

    policy = load_policy(policy_path)
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, target in enumerate(policy.targets):
        sources = target.forget_data if which == "forget" else target.keep_data
        for j, src in enumerate(sources):
            for item in load_source(src, f"targets.{i}.{which}.{j}"):
                if item.question and item.question not in seen:
                    seen.add(item.question)
                    out.append((item.question, item.answer))
    return out[:limit]


def _load_runtime(artifact: Path | None, model_dir: Path, layers: int | None):
    """The assistant: a trained artifact, or (speed only) an untrained one of the default depth."""
    from guard.interventions.uld import load_runtime
    from guard.interventions.uld_decoding import AssistantRuntime, ULDSettings
    from guard.train.uld_assistant import attach_lora, base_layer_count, default_layers, load_base_assistant, lora_config

    from guard.engines.local import LocalEngine

    if artifact is not None:  # an engine that is not started: load_runtime reads its model folder only
        runtime, manifest = load_runtime(artifact, LocalEngine(model_dir, model_dir.name, device="cpu"))
        dec = manifest.get("decoding", {})
        return runtime, ULDSettings(alpha=dec.get("alpha", 0.8), top_k=dec.get("top_k", 20),
                                    min_prob_ratio=dec.get("min_prob_ratio", 0.0)), f"{artifact}"
    k = layers or default_layers(base_layer_count(model_dir))
    model = attach_lora(load_base_assistant(model_dir, k), lora_config(random_init=True), seed=0).merge_and_unload()
    return AssistantRuntime(model.eval()), ULDSettings(), f"untrained {k}-layer assistant"


async def _timed(chunks) -> tuple[str, int, float]:
    started = time.perf_counter()
    text, tokens = [], 0
    async for chunk in chunks:
        text.append(chunk.text)
        if chunk.finish_reason:
            tokens = chunk.completion_tokens
    return "".join(text), tokens, time.perf_counter() - started


def _rate(rows: list[dict[str, Any]], key: str) -> float:
    tokens = sum(r[f"{key}_tokens"] for r in rows)
    seconds = sum(r[f"{key}_s"] for r in rows)
    return tokens / seconds if seconds else 0.0


async def run_speed(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from guard.engines.local import LocalEngine
    from guard.engines.vllm import VllmEngine
    from guard.interventions.uld_decoding import ULDLogitsProcessor, uld_stream
    from guard.models import resolve_model, served_name_for

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = Path(resolve_model(args.model))
    runtime, settings, which = _load_runtime(args.artifact, model_dir, args.layers)
    if args.alpha is not None or args.top_k is not None:
        from dataclasses import replace

        settings = replace(settings, **{k: v for k, v in (("alpha", args.alpha), ("top_k", args.top_k)) if v is not None})
    questions = [q for q, _ in _questions(args.policy, "forget", args.prompts)] if args.policy else []
    questions = questions or ["Tell me a short story about a dragon who learns to read."] * args.prompts
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    result: dict[str, Any] = {"date": _now(), "model": args.model, "assistant": which, "settings": settings.describe(),
                              "max_tokens": args.max_tokens, "prompts": len(questions), "torch_threads": torch.get_num_threads()}
    messages = [[{"role": "user", "content": q}] for q in questions]
    if not args.skip_local:
        engine = LocalEngine(model_dir, served_name_for(args.model))
        await engine.start()
        rows = []
        # warm-up (first-call costs do not count)
        ids = engine.render_chat(messages[0]).token_ids
        await _timed(engine.generate(PromptInput(token_ids=ids), SamplingParams(max_tokens=4, temperature=0)))
        await _timed(engine.generate(PromptInput(token_ids=ids), SamplingParams(max_tokens=4, temperature=0),
                                     logits_processors=[ULDLogitsProcessor(runtime, settings)]))
        for msg in messages:
            ids = engine.render_chat(msg).token_ids
            for _ in range(args.repeats):
                _, pt, ps = await _timed(engine.generate(PromptInput(token_ids=ids), params))
                _, ut, us = await _timed(engine.generate(PromptInput(token_ids=ids), params,
                                                         logits_processors=[ULDLogitsProcessor(runtime, settings)]))
                rows.append({"plain_tokens": pt, "plain_s": ps, "uld_tokens": ut, "uld_s": us})
        await engine.close()
        plain, uld = _rate(rows, "plain"), _rate(rows, "uld")
        result["local"] = {"plain_tok_s": round(plain, 2), "uld_tok_s": round(uld, 2), "ratio": round(uld / plain, 3),
                           "per_prompt_ratio_median": round(statistics.median(
                               (r["uld_tokens"] / r["uld_s"]) / (r["plain_tokens"] / r["plain_s"]) for r in rows), 3),
                           "tokens": {"plain": sum(r["plain_tokens"] for r in rows), "uld": sum(r["uld_tokens"] for r in rows)}}
    if args.vllm_url:
        engine = VllmEngine(args.vllm_url, model_dir, None)
        await engine.start()
        rows = []
        ids = engine.render_chat(messages[0]).token_ids
        await _timed(engine.generate(PromptInput(token_ids=ids), SamplingParams(max_tokens=4, temperature=0)))
        requests = {"stream": 0, "step": 0}
        for msg in messages:
            ids = engine.render_chat(msg).token_ids
            for _ in range(args.repeats):
                row: dict[str, Any] = {}
                _, row["plain_tokens"], row["plain_s"] = await _timed(engine.generate(PromptInput(token_ids=ids), params))
                for mode in ("stream", "step"):
                    if mode == "step" and args.skip_step:
                        continue
                    stats: dict[str, int] = {}
                    _, row[f"{mode}_tokens"], row[f"{mode}_s"] = await _timed(
                        uld_stream(engine, ids, params, runtime, settings, mode=mode, stats=stats))
                    requests[mode] += stats["requests"]
                rows.append(row)
        await engine.close()
        plain = _rate(rows, "plain")
        out: dict[str, Any] = {"plain_tok_s": round(plain, 2)}
        for mode in ("stream", "step"):
            if mode == "step" and args.skip_step:
                continue
            rate = _rate(rows, mode)
            tokens = sum(r[f"{mode}_tokens"] for r in rows)
            out[f"uld_{mode}_tok_s"] = round(rate, 2)
            out[f"uld_{mode}_ratio"] = round(rate / plain, 3)
            out[f"uld_{mode}_requests_per_token"] = round(requests[mode] / max(tokens, 1), 3)
        result["vllm"] = out
    return result


async def run_quality(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from guard.engines.local import LocalEngine
    from guard.interventions.uld_decoding import ULDLogitsProcessor
    from guard.models import resolve_model, served_name_for
    from guard.lm.rouge import rouge_l_recall

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = Path(resolve_model(args.model))
    runtime, settings, which = _load_runtime(args.artifact, model_dir, None)
    forget = _questions(args.policy, "forget", args.limit)
    retain = _questions(args.policy, "retain", args.limit)
    if args.retain_rows:
        from guard.policy import DataSource
        from guard.train.uld import load_source

        retain = []
        for rows in args.retain_rows:
            src = DataSource(path=args.retain_file.resolve(), format="tofu_qa", rows=rows)
            retain += [(it.question, it.answer) for it in load_source(src, "--retain-rows")]
        retain = retain[: args.limit]
    engine = LocalEngine(model_dir, served_name_for(args.model))
    await engine.start()
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    alphas = [float(a) for a in args.alphas.split(",")] if args.alphas else [settings.alpha]
    from dataclasses import replace

    async def answer(question: str, alpha: float | None) -> str:
        ids = engine.render_chat([{"role": "user", "content": question}]).token_ids
        procs = [] if alpha is None else [ULDLogitsProcessor(runtime, replace(settings, alpha=alpha))]
        text, _, _ = await _timed(engine.generate(PromptInput(token_ids=ids), params, logits_processors=procs))
        return text.strip()

    items = []
    for kind, pairs in (("forget", forget), ("retain", retain)):
        for q, gold in pairs:
            plain = await answer(q, None)
            row = {"set": kind, "question": q, "gold": gold, "plain": plain, "rouge_plain_vs_gold": rouge_l_recall(plain, gold)}
            for alpha in alphas:
                got = await answer(q, alpha)
                row[f"uld@{alpha}"] = got
                row[f"rouge_uld@{alpha}_vs_gold"] = rouge_l_recall(got, gold)
                row[f"rouge_uld@{alpha}_vs_plain"] = rouge_l_recall(got, plain)
            items.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.startswith("rouge")})[:400], file=sys.stderr)
    await engine.close()

    def mean(kind: str, key: str) -> float:
        vals = [r[key] for r in items if r["set"] == kind]
        return round(sum(vals) / len(vals), 4) if vals else float("nan")

    table = []
    for alpha in alphas:
        table.append({"alpha": alpha, "top_k": settings.top_k,
                      "forget_plain_vs_gold": mean("forget", "rouge_plain_vs_gold"),
                      "forget_uld_vs_gold": mean("forget", f"rouge_uld@{alpha}_vs_gold"),
                      "retain_plain_vs_gold": mean("retain", "rouge_plain_vs_gold"),
                      "retain_uld_vs_gold": mean("retain", f"rouge_uld@{alpha}_vs_gold"),
                      "retain_uld_vs_plain": mean("retain", f"rouge_uld@{alpha}_vs_plain")})
    return {"date": _now(), "model": args.model, "assistant": which, "settings": settings.describe(),
            "max_tokens": args.max_tokens, "n_forget": len(forget), "n_retain": len(retain), "table": table, "items": items}


def run_training(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for artifact in args.artifacts:
        m = json.loads((Path(artifact) / "manifest.json").read_text())
        metrics = m.get("metrics", {})
        rows.append({"artifact": str(artifact), "base_model": m["base_model"]["name"], "layers": m["assistant"]["layers"],
                     "forget_items": m["data"].get("n_forget"), "forget_examples": m["data"].get("n_forget_examples"),
                     "retain_items": m["data"].get("n_retain"), "epochs_run": metrics.get("epochs_run"),
                     "best_epoch": metrics.get("best_epoch"), "stopped_early": metrics.get("stopped_early"),
                     "s_per_epoch": round(metrics.get("train_time_s", 0) / max(1, metrics.get("epochs_run") or 1), 1),
                     "train_time_s": metrics.get("train_time_s"), "total_time_s": metrics.get("total_time_s"),
                     "threads": metrics.get("threads"), "created_at": m.get("created_at")})
    return {"date": _now(), "table": rows}


def _markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.uld_decoding", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("speed", help="ULD vs plain decoding tokens/s on the local (and vLLM) engine")
    s.add_argument("--model", default="default")
    s.add_argument("--artifact", type=Path, default=None, help="trained ULD artifact (default: an untrained assistant)")
    s.add_argument("--layers", type=int, default=None, help="depth of the untrained assistant (default: as guard-train uld)")
    s.add_argument("--policy", type=Path, default=None, help="take the prompts from this policy's forget questions")
    s.add_argument("--alpha", type=float, default=None)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--prompts", type=int, default=4)
    s.add_argument("--repeats", type=int, default=1)
    s.add_argument("--max-tokens", type=int, default=48)
    s.add_argument("--vllm-url", default=None, help="also measure the vLLM engine against this server")
    s.add_argument("--skip-local", action="store_true")
    s.add_argument("--skip-step", action="store_true")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--out", type=Path, default=None)
    q = sub.add_parser("quality", help="ROUGE-L of plain vs ULD greedy answers on forget and retain questions")
    q.add_argument("--model", required=True)
    q.add_argument("--artifact", type=Path, required=True)
    q.add_argument("--policy", type=Path, required=True)
    q.add_argument("--alphas", default=None, help="comma-separated alphas to compare (default: the artifact's)")
    q.add_argument("--limit", type=int, default=40)
    q.add_argument("--retain-file", type=Path, default=None, help="retain questions from this tofu_qa file (with --retain-rows)")
    q.add_argument("--retain-rows", action="append", default=None, help="rows of --retain-file (repeatable), e.g. 0:4")
    q.add_argument("--max-tokens", type=int, default=48)
    q.add_argument("--threads", type=int, default=None)
    q.add_argument("--out", type=Path, default=None)
    t = sub.add_parser("training", help="training-time table from artifacts' manifests")
    t.add_argument("artifacts", nargs="+", type=Path)
    t.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.command == "speed":
        result = asyncio.run(run_speed(args))
        rows = [{"engine": name, **result[name]} for name in ("local", "vllm") if name in result]
        for r in rows:
            r.pop("tokens", None)
    elif args.command == "quality":
        if args.retain_rows and not args.retain_file:
            parser.error("--retain-rows needs --retain-file")
        result = asyncio.run(run_quality(args))
        rows = result["table"]
    else:
        result = run_training(args)
        rows = result["table"]
    print(json.dumps({k: v for k, v in result.items() if k not in ("items", "table")}, indent=2))
    print(_markdown(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
