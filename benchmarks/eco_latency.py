"""Added latency of ECO over pass-through on a real vLLM server, for prompts of ~50/500/2,000 tokens.

ECO's extra work per flagged request: render the chat, select tokens, look up and corrupt their input
embeddings, serialise them (``torch.save`` + base64, vLLM's ``prompt_embeds`` wire format), send them,
and let vLLM decode them. Measured three ways, interleaved (A/B/A/B) so machine noise hits both:

1. **components** (in process): prep (render + select + lookup + corrupt) and serialisation time,
   payload bytes per token, for fp32 (what we send) and, for reference, bf16/fp16;
2. **direct, 64 tokens**: ``/v1/completions`` on vLLM with the token-id prompt versus the ECO path
   (prep + serialise + ``prompt_embeds``), both ``ignore_eos`` with exactly 64 generated tokens,
   so the difference is ECO's added latency over a 64-token generation;
3. **through the guard, 1 token**: the same chat request sent to a guard whose policy answers the
   target with ``pass`` (forwarded untouched) and to one answering with ``eco``, ``max_tokens=1``
   (the whole added cost, little generation to hide it).

Every request starts with a fresh nonce so vLLM's prefix cache cannot serve a repeated prompt
(the ECO path never hits it: its embeddings change with every seed).

    python benchmarks/eco_latency.py [--vllm-url http://127.0.0.1:8011] [--reps 3] [--out results.json]

The dev server runs with ``--max-model-len 2048``: the ~2,000-token row uses 1,984 prompt tokens so
that 64 more fit.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from guard.engines.vllm import VllmEngine, encode_prompt_embeds  # noqa: E402
from guard.interventions.base import GuardRequest  # noqa: E402
from guard.interventions.eco import EcoConfig, EcoIntervention  # noqa: E402
from guard.engines.base import SamplingParams  # noqa: E402
from guard.models import DEFAULT_SERVED_NAME, resolve_model  # noqa: E402
from guard.policy import parse_policy  # noqa: E402

BASIL = "Basil Mahfouz Al-Kuwaiti"
LENGTHS = (50, 500, 1984)
GEN_TOKENS = 64
NONCE_TOKENS = 12


def filler_text(data_dir: Path | None) -> str:
    from guard.data.tofu import load_qa
    from guard.paths import default_data_dir

    qa = load_qa(data_dir or default_data_dir(), "retain90", slice(0, 200))
    return " ".join(q.answer for q in qa)


def build_messages(tokenizer: Any, engine: VllmEngine, n_tokens: int, filler: str) -> list[dict[str, str]]:
    """A user message asking about the target, padded with TOFU text to ``n_tokens`` rendered tokens."""
    head = f"Tell me about {BASIL}. Context: "
    filler_ids = tokenizer(filler, add_special_tokens=False)["input_ids"]
    overhead = len(engine.render_chat([{"role": "user", "content": head}]).token_ids)
    m = max(0, n_tokens - overhead)
    for _ in range(6):  # decoding a token prefix re-tokenises to about the same length: adjust
        content = head + tokenizer.decode(filler_ids[:m])
        got = len(engine.render_chat([{"role": "user", "content": content}]).token_ids)
        if got == n_tokens:
            break
        m = max(0, m + (n_tokens - got))
    return [{"role": "user", "content": content}]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def med(values: list[float]) -> float:
    return statistics.median(values)


def serialise(embeds: torch.Tensor, dtype: torch.dtype) -> bytes:
    buf = io.BytesIO()
    torch.save(embeds.to(dtype).contiguous(), buf)
    return base64.b64encode(buf.getvalue())


def components(eco: EcoIntervention, engine: VllmEngine, request: GuardRequest, target: Any, reps: int) -> dict[str, Any]:
    prep, ser = [], []
    for i in range(3):  # warm-up
        eco.prepare(request, target, engine, seed=i)
    for i in range(max(reps, 30)):
        t0 = time.perf_counter()
        rendered, corrupted, selection = eco.prepare(request, target, engine, seed=i)
        t1 = time.perf_counter()
        payload = encode_prompt_embeds(corrupted)
        t2 = time.perf_counter()
        prep.append(t1 - t0)
        ser.append(t2 - t1)
    n = corrupted.shape[0]
    out = {"prompt_tokens": n, "corrupted_tokens": len(selection.positions), "prep_ms": ms(med(prep)),
           "serialise_ms": ms(med(ser)), "payload_bytes": len(payload), "bytes_per_token": round(len(payload) / n, 1)}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        t0 = time.perf_counter()
        blob = serialise(corrupted, dtype)
        out[f"{name}_serialise_ms"] = ms(time.perf_counter() - t0)
        out[f"{name}_bytes_per_token"] = round(len(blob) / n, 1)
    return out


def with_nonce(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """A fresh first line, so that vLLM's prefix cache cannot serve a repeated prompt (the ECO path,
    whose embeddings change with every seed, never hits it; the token path must not either)."""
    return [{"role": "user", "content": f"[{uuid.uuid4().hex[:8]}] " + messages[0]["content"]}]


async def direct_pair(session: aiohttp.ClientSession, url: str, model: str, eco: EcoIntervention, engine: VllmEngine,
                      messages: list[dict[str, str]], target: Any, reps: int, gen: int = GEN_TOKENS) -> dict[str, Any]:
    base = {"model": model, "max_tokens": gen, "temperature": 0, "ignore_eos": True}

    def fresh() -> GuardRequest:
        return GuardRequest.chat(with_nonce(messages), SamplingParams(max_tokens=GEN_TOKENS, temperature=0))

    async def post(payload: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(3):  # the shared dev server occasionally drops a connection under load
            try:
                async with session.post(f"{url}/v1/completions", json=payload) as r:
                    if r.status != 200:
                        raise RuntimeError(f"vLLM answered {r.status}: {(await r.text())[:300]}")
                    return await r.json()
            except aiohttp.ClientConnectionError:
                if attempt == 2:
                    raise
                print("connection dropped; retrying", file=sys.stderr, flush=True)
        raise AssertionError("unreachable")

    lengths: list[int] = []

    async def tokens() -> float:
        ids = fresh().prompt_ids(engine)  # the client's tokenisation is not part of the timing
        lengths.append(len(ids))
        t0 = time.perf_counter()
        data = await post({**base, "prompt": ids})
        assert data["usage"]["completion_tokens"] == gen, data["usage"]
        return time.perf_counter() - t0

    async def embeds(seed: int) -> float:
        request = fresh()
        t0 = time.perf_counter()
        _, corrupted, _ = eco.prepare(request, target, engine, seed=seed)
        data = await post({**base, "prompt_embeds": encode_prompt_embeds(corrupted)})
        assert data["usage"]["completion_tokens"] == gen, data["usage"]
        return time.perf_counter() - t0

    await tokens(), await embeds(0)  # warm-up
    a, b = [], []
    for i in range(reps):
        if i % 2 == 0:
            a.append(await tokens())
            b.append(await embeds(i))
        else:
            b.append(await embeds(i))
            a.append(await tokens())
    pass_ms, eco_ms = ms(med(a)), ms(med(b))
    if gen != GEN_TOKENS:
        return {f"pass_{gen}_ms": pass_ms, f"eco_{gen}_ms": eco_ms, f"samples_pass_{gen}": [ms(x) for x in a],
                f"samples_eco_{gen}": [ms(x) for x in b]}
    return {"direct_prompt_tokens": [min(lengths), max(lengths)], "pass_64_ms": pass_ms, "eco_64_ms": eco_ms, "added_ms": round(eco_ms - pass_ms, 1),
            "added_pct": round(100 * (eco_ms - pass_ms) / pass_ms, 1), "samples_pass": [ms(x) for x in a],
            "samples_eco": [ms(x) for x in b]}


async def start_guard(engine: VllmEngine, action: str, sigma: float, tmp: Path) -> tuple[Any, str]:
    import yaml
    from aiohttp.test_utils import TestServer

    from guard.app import build_app
    from guard.config import load_settings

    policy = tmp / f"{action}.yaml"
    params = {"sigma": sigma} if action == "eco" else {}
    policy.write_text(yaml.safe_dump({"version": 1, "detector": {"kind": "keyword"}, "targets": [
        {"id": "tofu-basil", "names": [BASIL], "action": action, "params": params}]}))
    settings = load_settings(None, {"policy": str(policy), "log_level": "warning"}, environ={})
    server = TestServer(build_app(settings, engine=engine), host="127.0.0.1")
    await server.start_server()
    return server, str(server.make_url("/v1"))


async def guard_pair(session: aiohttp.ClientSession, pass_url: str, eco_url: str, model: str,
                     messages: list[dict[str, str]], reps: int) -> dict[str, Any]:
    async def one(url: str) -> float:
        body = {"model": model, "messages": with_nonce(messages), "max_tokens": 1, "temperature": 0, "seed": 1}
        t0 = time.perf_counter()
        async with session.post(f"{url}/chat/completions", json=body) as r:
            text = await r.text()
            if r.status != 200:
                raise RuntimeError(f"guard answered {r.status}: {text[:300]}")
        return time.perf_counter() - t0

    await one(pass_url), await one(eco_url)
    a, b = [], []
    for i in range(reps):
        order = ((a, pass_url), (b, eco_url)) if i % 2 == 0 else ((b, eco_url), (a, pass_url))
        for bucket, url in order:
            bucket.append(await one(url))
    return {"guard_pass_1_ms": ms(med(a)), "guard_eco_1_ms": ms(med(b)), "guard_added_ms": ms(med(b) - med(a))}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    model_path = resolve_model(args.model)
    engine = VllmEngine(args.vllm_url, model_path, None)
    await engine.start()
    if engine.prompt_embeds_supported is not True:
        raise SystemExit(f"the upstream does not accept prompt_embeds: {engine.prompt_embeds_detail}")
    model = engine.upstream_model or DEFAULT_SERVED_NAME
    target = parse_policy({"targets": [{"id": "tofu-basil", "names": [BASIL], "action": "eco"}]}).targets[0]
    cfg = EcoConfig("rand_noise_first_n", args.sigma, None, args.select)
    eco = EcoIntervention({"tofu-basil": cfg}, cfg)
    filler = filler_text(args.data)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="eco-bench-"))
    pass_server, pass_url = await start_guard(engine, "pass", args.sigma, tmp)
    eco_server, eco_url = await start_guard(engine, "eco", args.sigma, tmp)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1200)) as session:
            for n in args.lengths:
                # the nonce adds <= 12 tokens: build the rest 12 shorter so the total stays within max-model-len
                messages = build_messages(engine.tokenizer, engine, n - NONCE_TOKENS, filler)
                request = GuardRequest.chat(with_nonce(messages), SamplingParams(max_tokens=GEN_TOKENS, temperature=0))
                row = {"target_tokens": n, **components(eco, engine, request, target, args.reps)}
                print(f"[{n}] components: {row}", file=sys.stderr, flush=True)
                row.update(await direct_pair(session, engine.url, model, eco, engine, messages, target, args.reps))
                print(f"[{n}] direct 64 tokens: pass {row['pass_64_ms']} ms, eco {row['eco_64_ms']} ms", file=sys.stderr, flush=True)
                row.update(await direct_pair(session, engine.url, model, eco, engine, messages, target, args.reps, gen=1))
                print(f"[{n}] direct 1 token: pass {row['pass_1_ms']} ms, eco {row['eco_1_ms']} ms", file=sys.stderr, flush=True)
                if not args.skip_guard:
                    row.update(await guard_pair(session, pass_url, eco_url, model, messages, args.reps))
                    print(f"[{n}] guard 1 token: pass {row['guard_pass_1_ms']} ms, eco {row['guard_eco_1_ms']} ms",
                          file=sys.stderr, flush=True)
                rows.append(row)
    finally:
        await pass_server.close()
        await eco_server.close()
        await engine.close()
    return {"vllm_url": args.vllm_url, "model": str(model_path), "sigma": args.sigma, "select": args.select,
            "reps": args.reps, "gen_tokens": GEN_TOKENS, "rows": rows,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch_threads": torch.get_num_threads()}


def table(result: dict[str, Any]) -> str:
    lines = [
        "| prompt tokens | payload fp32 (b64) | bytes/token | prep ms | serialise ms | tokens->1 ms | ECO->1 ms | tokens->64 ms | ECO->64 ms | added ms (64) | added % (64) | guard pass (1 tok) ms | guard ECO (1 tok) ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['prompt_tokens']:,} | {r['payload_bytes'] / 1024:,.0f} KiB | {r['bytes_per_token']:,.0f} | {r['prep_ms']} | "
            f"{r['serialise_ms']} | {r['pass_1_ms']:,.0f} | {r['eco_1_ms']:,.0f} | {r['pass_64_ms']:,.0f} | {r['eco_64_ms']:,.0f} | "
            f"{r['added_ms']:,.0f} | {r['added_pct']} | {r.get('guard_pass_1_ms', '-')} | {r.get('guard_eco_1_ms', '-')} |")
    lines.append("")
    lines.append("| prompt tokens | bf16 bytes/token | bf16 serialise ms | fp16 bytes/token | fp16 serialise ms |")
    lines.append("|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        lines.append(f"| {r['prompt_tokens']:,} | {r['bf16_bytes_per_token']:,.0f} | {r['bf16_serialise_ms']} | "
                     f"{r['fp16_bytes_per_token']:,.0f} | {r['fp16_serialise_ms']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm-url", default="http://127.0.0.1:8011")
    parser.add_argument("--model", default="default", help="the model vLLM serves (local folder or name), for tokenizer and embeddings")
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=list(LENGTHS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--select", default="entity")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--skip-guard", action="store_true", help="only the components and the direct comparison")
    parser.add_argument("--out", type=Path, default=None, help="write the raw results as JSON")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(table(result))


if __name__ == "__main__":
    main()
