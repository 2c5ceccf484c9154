"""What screening adversarial and long inputs costs, and whether one such request slows the others.

    python benchmarks/screening_cost.py [--quick] [--skip-served] [--quality] [--out runs/bench/screening]

1. **Cost**: each input family (unmatched quotes, nested brackets, base64-like runs, many turns,
   text without spaces, long non-repeating prose) at 1 KB ... 4 MiB of UTF-8, through the served
   detector stack (``guard.app.default_detector_factory``: de-obfuscation around the trained
   detector) under the policy's limits exactly as the pipeline applies them
   (``detector.max_screen_tokens``, ``detector.budget_ms``): outcome and time. Up to 1 MiB also
   without any limit (``unbounded``), for the cost per 10 KB. Every run starts with a cold cache.
2. **In flight** (skip with ``--skip-served``): a ``guard serve`` subprocess in vLLM mode against an
   in-process fake upstream (which reports a 16M-token context, so the guard's context-length check
   does not refuse the heavy requests before screening), the p50/p95 latency of normal requests
   (a tiny chat request, passed through; ``/health``) on an idle guard and while heavy requests are
   screened back to back; for the served stack and for the trained detector alone (``--served-stack``).
3. **Quality** (``--quality``): recall of held-out forget questions placed at several depths of a
   10,000- and a 100,000-word document of ordinary prose, and false positives on long benign
   documents (RWKU passages; TOFU retain QA, which is about other fictitious authors).

The detector is the TOFU forget01 one the bypass benchmark uses (trained into ``--out`` in ~30 s,
or reused). Results: ``screening_cost.json`` in ``--out`` (written atomically) and a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from guard.data.documents import insert_at, prose, prose_paragraphs  # noqa: E402 - after the path set-up

KB, MIB = 1024, 1024 * 1024
SIZES = (KB, 10 * KB, 100 * KB, MIB, 4 * MIB)
UNBOUNDED_MAX = MIB  # larger inputs are measured under the limits only (unbounded they take minutes)


# ------------------------------------------------------------------ adversarial inputs (one list of texts each)


def _fill(unit: Callable[[int], str], size: int) -> str:
    parts, n, i = [], 0, 0
    while n < size:
        piece = unit(i)
        parts.append(piece)
        n += len(piece.encode("utf-8"))
        i += 1
    return "".join(parts)


def families(data_dir: Path) -> dict[str, Callable[[int], list[str]]]:
    paras = prose_paragraphs(data_dir)
    rng = random.Random(0)
    b64 = [base64.b64encode(rng.randbytes(rng.randint(12, 48))).decode() for _ in range(4096)]
    return {
        "quotes": lambda n: [_fill(lambda i: ("He said “quote ", '"an open one ', "« guillemet ", "‘single ")[i % 4], n)],
        "guillemet_spaces": lambda n: ["Hi «" + " " * max(0, n - 6) + "x"],
        "brackets": lambda n: [_fill(lambda i: "(" * 8 + "[" * 8 + "{" * 8 + f" nested {i} ", n)],
        "base64_runs": lambda n: [_fill(lambda i: b64[i % len(b64)] + " ", n)],
        "no_spaces": lambda n: [_fill(lambda i: "“", n)],
        "many_turns": lambda n: [f"Part {i}: tell me more about the history of the harbour town, please. " for i in range(max(1, n // 80))],
        "prose": lambda n: [_fill(lambda i: paras[i % len(paras)] + "\n\n", n)],
    }


# ------------------------------------------------------------------ the served detector stack


def build_stack(data_dir: Path, workdir: Path) -> tuple[Path, Any, Any]:
    """(policy path, policy, served detector) for TOFU forget01, as ``guard serve`` builds it."""
    from guard.app import default_detector_factory
    from guard.eval.bypass import tofu01_detectors
    from guard.policy import load_policy

    tofu01_detectors(data_dir, workdir, reuse=True)  # trains the artifact once (~30 s)
    path = workdir / "policy.yaml"
    policy = load_policy(path)
    return path, policy, default_detector_factory(policy)


def trained_of(detector: Any) -> Any:
    return getattr(detector, "inner", detector)


async def screen_once(policy: Any, detector: Any, texts: list[str], *, bounded: bool) -> tuple[str, float]:
    """(outcome, seconds): under the policy's limits as the pipeline applies them, or unbounded."""
    from classifiers.base import ScreeningIncomplete
    from guard.pipeline import Pipeline

    if not bounded:
        spec = policy.detector.model_copy(update={"budget_ms": 600_000.0, "max_screen_tokens": 10**9})
        policy = policy.model_copy(update={"detector": spec})
    pipeline = Pipeline(policy=policy, detector=detector, interventions={}, takes_deadline=_takes_deadline(detector))
    trained_of(detector).clear_cache()
    started = time.perf_counter()
    try:
        verdict = await pipeline.screen(texts)
        outcome = "flagged" if verdict.flagged else "clean"
    except ScreeningIncomplete as exc:
        outcome = f"refused ({exc.param})"
    return outcome, time.perf_counter() - started


def _takes_deadline(detector: Any) -> bool:
    from guard.screen_worker import takes_deadline

    return takes_deadline(detector)


async def measure_cost(policy: Any, detector: Any, data_dir: Path, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for name, make in families(data_dir).items():
        for size in sizes:
            texts = make(size)
            nbytes = sum(len(t.encode("utf-8")) for t in texts)
            outcome, secs = await screen_once(policy, detector, texts, bounded=True)
            row: dict[str, Any] = {"family": name, "bytes": nbytes, "texts": len(texts), "outcome": outcome, "ms": round(secs * 1000, 1)}
            if size <= UNBOUNDED_MAX:
                u_outcome, u_secs = await screen_once(policy, detector, texts, bounded=False)
                row.update({"unbounded_outcome": u_outcome, "unbounded_ms": round(u_secs * 1000, 1),
                            "unbounded_ms_per_10kb": round(u_secs * 1000 / (nbytes / (10 * KB)), 2)})
            rows.append(row)
            print(f"  {name:17s} {nbytes / KB:9.0f} KB  {outcome:38s} {row['ms']:9.1f} ms   "
                  + (f"unbounded {row['unbounded_ms']:9.1f} ms  {row['unbounded_ms_per_10kb']:7.2f} ms/10KB"
                     if "unbounded_ms" in row else ""), flush=True)
    return rows


# ------------------------------------------------------------------ a served guard: normal requests while a heavy one screens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_fake_upstream() -> tuple[Any, str]:
    """The benchmarks' fake vLLM (4 tokens, no delay), reporting a 16M-token ``max_model_len``."""
    from aiohttp import web

    from benchmarks.fake_upstream import build_fake_app

    app = build_fake_app(4, 0.0)

    @web.middleware
    async def long_context(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [{"id": "SmolLM2-135M-Instruct", "object": "model",
                                                                  "max_model_len": 1 << 24}]})
        return await handler(request)

    app.middlewares.append(long_context)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def wait_ready(session: Any, url: str, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"guard exited with {proc.returncode}")
        try:
            async with session.get(url) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


PACE_S = 0.05  # between normal requests: the stream spans seconds, so it overlaps heavy requests' screening


async def normal_stream(session: Any, base: str, n: int) -> dict[str, list[float]]:
    chat = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 4}
    out: dict[str, list[float]] = {"chat": [], "health": []}
    for _ in range(n):
        t = time.perf_counter()
        async with session.post(f"{base}/v1/chat/completions", json=chat) as r:
            await r.read()
            assert r.status == 200, r.status
        out["chat"].append(time.perf_counter() - t)
        t = time.perf_counter()
        async with session.get(f"{base}/health") as r:
            await r.read()
        out["health"].append(time.perf_counter() - t)
        await asyncio.sleep(PACE_S)
    return out


def heavy_sender(url: str, body: bytes, stop: Any, results: Any) -> None:
    """In its own process (so the client's event loop that times the normal requests is not busy
    sending megabytes): POST ``body`` back to back until ``stop`` is set; one result row per request."""
    import aiohttp

    async def run() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            while not stop.is_set():
                t = time.perf_counter()
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    payload = await r.read()
                    code = json.loads(payload).get("error", {}).get("code") if r.status != 200 else None
                results.put({"bytes": len(body), "status": r.status, "code": code, "s": round(time.perf_counter() - t, 3)})

    asyncio.run(run())


_TRAINED_ONLY_SERVER = """
import sys
from aiohttp import web
from classifiers.loader import build_detector
from guard.app import build_app
from guard.config import load_settings
upstream, policy, port = sys.argv[1:4]
settings = load_settings(None, {"upstream.kind": "vllm", "upstream.url": upstream, "policy": policy, "port": int(port),
                                "log_level": "error"}, environ={})
web.run_app(build_app(settings, detector_factory=build_detector), host="127.0.0.1", port=int(port), print=None, access_log=None)
"""


async def measure_in_flight(policy_path: Path, policy: Any, data_dir: Path, n: int, stack: str = "served") -> dict[str, Any]:
    import aiohttp

    fams = families(data_dir)
    limit = policy.detector.max_screen_tokens
    # the worst cases: as much prose as the length limit screens, and 4 MiB bodies of adversarial text
    prose_words = " ".join(fams["prose"](12 * limit)[0].split()[: int(limit * 0.95)])
    heavy_texts = {"prose_at_limit": [prose_words], "no_spaces_4mib": fams["no_spaces"](int(1.3 * MIB)),
                   "base64_4mib": fams["base64_runs"](4 * MIB - 4 * KB), "quotes_4mib": fams["quotes"](int(3.9 * MIB))}
    bodies = {name: json.dumps({"model": "SmolLM2-135M-Instruct", "max_tokens": 4, "messages": [
        {"role": "user", "content": "\n".join(texts)}]}, ensure_ascii=False).encode("utf-8") for name, texts in heavy_texts.items()}
    runner, upstream = await start_fake_upstream()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    if stack == "served":
        cmd = [sys.executable, "-m", "guard.cli", "serve", "--upstream-url", upstream, "--policy", str(policy_path),
               "--port", str(port), "--log-level", "error"]
    else:  # the same guard with the trained detector alone (no de-obfuscation wrapper)
        cmd = [sys.executable, "-c", _TRAINED_ONLY_SERVER, upstream, str(policy_path), str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    results: dict[str, Any] = {"stack": stack, "normal_requests": n, "heavy_bodies": {k: len(v) for k, v in bodies.items()}}
    try:
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await wait_ready(session, f"{base}/health", proc)
            await normal_stream(session, base, 5)  # warm-up
            idle = await normal_stream(session, base, n)
            results["idle"] = {k: _summary(v) for k, v in idle.items()}
            ctx = multiprocessing.get_context("spawn")
            for name, body in bodies.items():
                stop, queue = ctx.Event(), ctx.Queue()
                sender = ctx.Process(target=heavy_sender, args=(f"{base}/v1/chat/completions", body, stop, queue), daemon=True)
                sender.start()
                while queue.empty():  # the sender is up once its first heavy request was answered
                    await asyncio.sleep(0.05)
                busy = await normal_stream(session, base, n)
                stop.set()
                await asyncio.to_thread(sender.join, 120)
                log = []
                while not queue.empty():
                    log.append(queue.get())
                results[name] = {**{k: _summary(v) for k, v in busy.items()}, "heavy": _heavy_summary(log)}
                print(f"  {name:16s} chat p50 {results[name]['chat']['p50_ms']:7.1f} ms (idle {results['idle']['chat']['p50_ms']:.1f})  "
                      f"health p50 {results[name]['health']['p50_ms']:7.1f} ms (idle {results['idle']['health']['p50_ms']:.1f})  "
                      f"heavy: {results[name]['heavy']}", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        await runner.cleanup()
    return results


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(values) * 1000, 1), "p95_ms": round(percentile(values, 0.95) * 1000, 1)}


def _heavy_summary(log: list[dict[str, Any]]) -> dict[str, Any]:
    outcomes: dict[str, int] = {}
    for row in log:
        key = f"{row['status']}" + (f" {row['code']}" if row["code"] else "")
        outcomes[key] = outcomes.get(key, 0) + 1
    return {"requests": len(log), "outcomes": outcomes, "max_s": max((r["s"] for r in log), default=None)}


# ------------------------------------------------------------------ recall and false positives on long documents


def measure_quality(detector: Any, data_dir: Path, quick: bool) -> dict[str, Any]:
    trained = trained_of(detector)
    rows = [json.loads(line) for line in (data_dir / "tofu" / "forget01.json").read_text(encoding="utf-8").splitlines() if line.strip()]
    held_out = [r["question"] for r in rows[10:20] + rows[30:40]]  # not in the policy's forget data (first halves)
    out: dict[str, Any] = {}
    for words, positions, docs in ((10_000, 10, 20), (100_000, 5, 5)):
        if quick:
            positions, docs = 3, 3
        doc = prose(data_dir, words, seed=7)
        hits = total = 0
        for q in held_out:
            for k in range(positions):
                hits += bool(detector.screen([insert_at(doc, q, (k + 0.5) / positions)]).flagged)
                total += 1
        benign = [prose(data_dir, words, seed=100 + s) for s in range(docs)]
        retain = _retain_docs(data_dir, words, docs)
        fp_prose = sum(bool(detector.screen([d]).flagged) for d in benign)
        fp_retain = sum(bool(detector.screen([d]).flagged) for d in retain)
        trained.clear_cache()
        out[f"{words}_words"] = {"recall": round(hits / total, 4), "questions_x_positions": total,
                                 "fpr_prose": f"{fp_prose}/{docs}", "fpr_tofu_retain": f"{fp_retain}/{docs}"}
        print(f"  {words:7d} words: recall {hits}/{total}; false positives: prose {fp_prose}/{docs}, TOFU retain {fp_retain}/{docs}",
              flush=True)
    return out


def _retain_docs(data_dir: Path, words: int, n: int) -> list[str]:
    rows = [json.loads(line) for line in (data_dir / "tofu" / "retain90.json").read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(0)
    docs = []
    for _ in range(n):
        rng.shuffle(rows)
        parts, count = [], 0
        for r in rows:
            parts.append(f"{r['question']} {r['answer']}")
            count += len(parts[-1].split())
            if count >= words:
                break
        docs.append("\n".join(parts))
    return docs


# ------------------------------------------------------------------ main


def main() -> int:
    from guard.atomic import write_json
    from guard.paths import default_data_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="benchmark data folder (default: ../shared/data or $GUARD_DATA_DIR)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "screening")
    ap.add_argument("--quick", action="store_true", help="sizes up to 100 KB plus 4 MiB, fewer requests")
    ap.add_argument("--skip-served", action="store_true", help="no guard subprocess (cost table only)")
    ap.add_argument("--quality", action="store_true", help="also recall and false positives on long documents")
    ap.add_argument("--requests", type=int, default=40, help="normal requests per latency measurement")
    ap.add_argument("--served-stack", choices=["served", "trained", "both"], default="both",
                    help="the guard as `guard serve` builds it, the trained detector alone, or both")
    args = ap.parse_args()
    data_dir = args.data or default_data_dir()
    policy_path, policy, detector = build_stack(data_dir, args.out / "tofu01")
    spec = policy.detector
    sizes = (KB, 10 * KB, 100 * KB, 4 * MIB) if args.quick else SIZES
    result: dict[str, Any] = {"policy": str(policy_path), "budget_ms": spec.budget_ms, "max_screen_tokens": spec.max_screen_tokens,
                              "long_input": spec.long_input, "stack": type(detector).__name__}
    print(f"screening cost (budget {spec.budget_ms:g} ms, max_screen_tokens {spec.max_screen_tokens:,}, stack {type(detector).__name__}):")
    result["cost"] = asyncio.run(measure_cost(policy, detector, data_dir, sizes))
    if not args.skip_served:
        print("normal requests while heavy ones are screened (guard subprocess, fake upstream):")
        stacks = ["served", "trained"] if args.served_stack == "both" else [args.served_stack]
        result["in_flight"] = {}
        for stack in stacks:
            print(f"  [{stack} stack]")
            result["in_flight"][stack] = asyncio.run(measure_in_flight(policy_path, policy, data_dir, 15 if args.quick else args.requests,
                                                                       stack))
    if args.quality:
        print("long documents (served stack, no limits):")
        result["quality"] = measure_quality(detector, data_dir, args.quick)
    write_json(args.out / "screening_cost.json", result)
    print(f"wrote {args.out / 'screening_cost.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
