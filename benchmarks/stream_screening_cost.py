"""CPU cost of screening a forwarded stream in the guard process, without the network (issue #14).

A 64-token chat stream as the fake upstream writes it (``benchmarks/fake_upstream.py``) goes through
``guard.output_wire.screened_events`` with the one-target policy of ``proxy_overhead.py``'s (a2)/(b3)
rows, its bytes arriving one event per read (a paced upstream) or several (reads that coalesce
under load, or an instant upstream); every answer must come out byte for byte. Reported: CPU time
(``time.process_time``) per stream and per token, the best of ``--repeats`` runs.

    python benchmarks/stream_screening_cost.py [--guard-root /tmp/old-checkout] [--streams 200]

``--guard-root`` imports ``guard`` from another checkout (e.g. a ``git worktree`` of an older commit),
so two versions are compared on one machine in one session.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

TOKENS = 64
POLICY = {"version": 1, "detector": {"kind": "keyword"}, "default_action": "refuse",
          "output": {"screen": True, "holdback_tokens": 16},
          "targets": [{"id": "tofu-basil", "names": ["Basil Mahfouz Al-Kuwaiti"], "action": "refuse"}]}


def events() -> list[bytes]:
    """The fake upstream's chat stream: 64 content chunks, the finish chunk and ``[DONE]``."""
    def chunk(text: str | None, finish: str | None) -> bytes:
        body = {"id": "chatcmpl-0123456789abcdef", "object": "chat.completion.chunk", "created": 1700000000,
                "model": "SmolLM2-135M-Instruct", "choices": [{"index": 0, "delta": {} if text is None else {"content": text},
                                                               "logprobs": None, "finish_reason": finish}]}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    return [chunk(f" tok{i}", None) for i in range(TOKENS)] + [chunk(None, "length"), b"data: [DONE]\n\n"]


def measure(streams: int, per_read: int, repeats: int) -> float:
    """Best CPU seconds per stream over ``repeats`` runs of ``streams`` streams."""
    from guard.output_guard import OutputGuard
    from guard.output_screen import build_output_screener
    from guard.output_wire import screened_events
    from guard.policy import parse_policy

    guard = OutputGuard(build_output_screener(parse_policy(POLICY)), None, lambda hit: None)  # type: ignore[arg-type]
    stream = events()
    reads = [b"".join(stream[i:i + per_read]) for i in range(0, len(stream), per_read)]
    expected = b"".join(stream)

    async def no_hit(hit, head, finished):  # type: ignore[no-untyped-def]
        raise AssertionError(f"unexpected hit {hit}")
        yield b""

    async def upstream():  # type: ignore[no-untyped-def]
        for data in reads:
            yield data

    async def run(n: int) -> None:
        for _ in range(n):
            out = b"".join([b async for b in screened_events(upstream(), guard, no_hit)])
            assert out == expected

    asyncio.run(run(10))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        asyncio.run(run(streams))
        best = min(best, (time.process_time() - started) / streams)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guard-root", type=Path, help="import guard from this checkout")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--per-read", type=int, nargs="*", default=[1, 4], help="events per network read")
    args = parser.parse_args()
    sys.path.insert(0, str((args.guard_root or Path(__file__).resolve().parent.parent).resolve()))
    print("| events per read | CPU ms per 64-token stream | CPU ms per token |\n|---|---|---|")
    for per_read in args.per_read:
        seconds = measure(args.streams, per_read, args.repeats)
        print(f"| {per_read} | {seconds * 1000:.3f} | {seconds * 1000 / TOKENS:.4f} |", flush=True)


if __name__ == "__main__":
    main()
