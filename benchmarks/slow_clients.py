"""Slow clients against a running guard (issue 19, finding 5): do trickling connections lock out or
slow down everyone else?

A guard (`guard serve`, its own process) in front of the fake upstream (another process, instant
answers, so only the guard is measured). A client sends small non-streamed chat requests one after
another and records their latency: against the idle guard, then while N connections (a third
process) each send headers promising ``Content-Length: 100000`` and trickle a few bytes now and then
(a slow-body attack), then while N connections trickle their *headers*, then idle again (the two
idle runs show the machine's noise). Reports p50/p95 per phase, the ratio to idle, how many normal
requests were refused (before the fix, every one: 429), and what the tricklers got back (408 after
``body_read_timeout_s``; a closed connection after ``header_timeout_s``).

    python benchmarks/slow_clients.py [--connections 256] [--requests 200] [--json out.json]

Target (issue 19): p50 under attack within 2x of idle, no request refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from benchmarks.proxy_overhead import MODEL, free_port, pct, start_fake, wait_http  # noqa: E402

SMALL = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def start_guard(upstream_url: str, body_timeout_s: float, header_timeout_s: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "GUARD_LOG_LEVEL": "warning", "GUARD_BODY_READ_TIMEOUT_S": str(body_timeout_s),
           "GUARD_HEADER_TIMEOUT_S": str(header_timeout_s)}
    proc = subprocess.Popen([sys.executable, "-m", "guard.cli", "serve", "--upstream-url", upstream_url, "--port", str(port),
                             "--served-model-name", MODEL, "--upstream-model", MODEL],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health")
    return proc, url


class Trickler:
    """One slow client: a body trickler (full headers, then a few bytes of body now and then) or a
    header trickler (a few bytes of the header block now and then). Records how the guard ended it."""

    def __init__(self, port: int, body: bool, every_s: float) -> None:
        self.port, self.body, self.every_s = port, body, every_s
        self.outcome = "open"
        self.connected = asyncio.Event()

    async def run(self) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError as exc:
            self.outcome = f"connect failed: {exc.strerror}"
            self.connected.set()
            return
        try:
            if self.body:
                writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: guard\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 100000\r\n\r\n")
                pending = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * 200
            else:
                pending = b"POST /v1/chat/completions HTTP/1.1\r\nHost: guard\r\nX-Slow: " + b"a" * 200
            reading = asyncio.create_task(reader.readline())
            while pending:
                writer.write(pending[:3])
                pending = pending[3:]
                await writer.drain()
                self.connected.set()
                done, _ = await asyncio.wait({reading}, timeout=self.every_s)
                if done:
                    break
            line = await reading
            self.outcome = line.decode(errors="replace").strip()[:40] or "closed by the guard"
        except (ConnectionError, OSError):
            self.outcome = "closed by the guard"
        finally:
            writer.close()


async def latencies(session: aiohttp.ClientSession, url: str, n: int) -> tuple[list[float], dict[int, int]]:
    samples: list[float] = []
    statuses: dict[int, int] = {}
    for _ in range(n):
        started = time.perf_counter()
        async with session.post(f"{url}/v1/chat/completions", json=SMALL) as resp:
            await resp.read()
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
        samples.append((time.perf_counter() - started) * 1000)
    return samples, statuses


def summary(samples: list[float], statuses: dict[int, int]) -> dict:
    return {"p50_ms": round(pct(samples, 50), 2), "p95_ms": round(pct(samples, 95), 2),
            "mean_ms": round(statistics.fmean(samples), 2), "statuses": statuses}


async def trickle(port: int, connections: int, body: bool, every_s: float) -> None:
    """The attacker process: prints READY once every connection has sent its first bytes, then one
    JSON line of outcomes once the guard has ended them all."""
    tricklers = [Trickler(port, body, every_s) for _ in range(connections)]
    tasks = [asyncio.create_task(t.run()) for t in tricklers]
    await asyncio.gather(*(t.connected.wait() for t in tricklers))
    print("READY", flush=True)
    await asyncio.gather(*tasks)
    outcomes: dict[str, int] = {}
    for t in tricklers:
        outcomes[t.outcome] = outcomes.get(t.outcome, 0) + 1
    print(json.dumps(outcomes), flush=True)


async def phase(url: str, port: int, n_requests: int, connections: int, body: bool | None, every_s: float) -> dict:
    attacker = None
    if body is not None:
        attacker = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--trickle", "body" if body else "headers", "--port", str(port),
            "--connections", str(connections), "--every-s", str(every_s), stdout=asyncio.subprocess.PIPE)
        assert attacker.stdout is not None
        ready = await attacker.stdout.readline()
        assert ready.strip() == b"READY", ready
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        samples, statuses = await latencies(session, url, n_requests)
    outcomes: dict[str, int] = {}
    if attacker is not None:
        assert attacker.stdout is not None
        outcomes = json.loads(await attacker.stdout.readline())  # once the guard's timeouts have ended them
        await attacker.wait()
    return {**summary(samples, statuses), "trickler_outcomes": outcomes}


async def run(args: argparse.Namespace) -> dict:
    fake, fake_url = start_fake(0.0)
    guard, url = start_guard(fake_url, args.body_timeout_s, args.header_timeout_s)
    port = int(url.rsplit(":", 1)[1])
    results: dict = {}
    try:
        async with aiohttp.ClientSession() as session:
            await latencies(session, url, 20)  # warm-up
        results["idle"] = await phase(url, port, args.requests, 0, None, args.every_s)
        results["slow bodies"] = await phase(url, port, args.requests, args.connections, True, args.every_s)
        results["slow headers"] = await phase(url, port, args.requests, args.connections, False, args.every_s)
        results["idle again"] = await phase(url, port, args.requests, 0, None, args.every_s)
    finally:
        for proc in (guard, fake):
            proc.terminate()
    return results


def report(results: dict, args: argparse.Namespace) -> str:
    idle = results["idle"]["p50_ms"]
    lines = [f"guard in front of an instant fake upstream; {args.connections} slow connections; "
             f"body_read_timeout_s={args.body_timeout_s}, header_timeout_s={args.header_timeout_s}", "",
             "| phase | p50 ms | p95 ms | p50 / idle | normal requests (status: count) | slow connections: how they ended |",
             "|---|---|---|---|---|---|"]
    for name, row in results.items():
        ended = ", ".join(f"{k}: {v}" for k, v in row["trickler_outcomes"].items()) or "-"
        lines.append(f"| {name} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['p50_ms'] / idle:.2f}x "
                     f"| {row['statuses']} | {ended} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=256, help="slow connections per attack phase")
    parser.add_argument("--requests", type=int, default=200, help="normal requests measured per phase")
    parser.add_argument("--every-s", type=float, default=1.0, help="a slow client sends 3 bytes this often")
    parser.add_argument("--body-timeout-s", type=float, default=15.0, help="the guard's body_read_timeout_s")
    parser.add_argument("--header-timeout-s", type=float, default=15.0, help="the guard's header_timeout_s")
    parser.add_argument("--json", help="write the raw numbers here")
    parser.add_argument("--trickle", choices=["body", "headers"], help=argparse.SUPPRESS)  # the attacker process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trickle:
        asyncio.run(trickle(args.port, args.connections, args.trickle == "body", args.every_s))
        return
    results = asyncio.run(run(args))
    print(report(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
