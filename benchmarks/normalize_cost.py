#!/usr/bin/env python3
"""Cost of de-obfuscation and name matching on adversarial text: ms per 10 KB, 1 KB ... 4 MiB.

    python benchmarks/normalize_cost.py                      # every family, 1 KB .. 4 MiB
    python benchmarks/normalize_cost.py --sizes 1K 16K 64K --timeout 60 --code-root /tmp/old-checkout

Families (``guard.eval.adversarial_inputs.cost_families``): unmatched quotes (\u201c " \u00ab), a guillemet before
a run of spaces, nested brackets, many base64-looking runs (decodable, noise, grouped), many short
lines, many turns, separator runs after a name part, invisible/look-alike characters, a long
non-repeating document. Two columns per size:

* ``normalise``: what ``NormalizingDetector`` adds before its second screen (``deobfuscate`` with its
  name respelling, ``pieces`` of every text, ``across_turns``);
* ``keyword``: the whole served keyword screen, ``NormalizingDetector(KeywordDetector(names))``
  over the TOFU forget10 authors (two screens, name matching included).

Each family runs in a child process; a size that takes longer than ``--timeout`` is reported as
``>T s`` and the larger sizes of that family are skipped (so the quadratic code of an older checkout,
``--code-root``, can be measured side by side). Target (issue 18): <= 50 ms per 10 KB.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_SIZES = ("1K", "4K", "16K", "64K", "256K", "1M", "4M")
NAMES = ["Hsiao Yun-Hwa", "Carmen Montenegro", "Elvin Mammadov", "Rajeev Majumdar", "Jad Ambrose Al-Shamary",
         "Adib Jarrah", "Ji-Yeon Park", "Behrouz Rohani", "Wei-Jun Chen", "Tae-ho Park", "Hina Ameen",
         "Xin Lee Williams", "Moshe Ben-David", "Kalkidan Abera", "Takashi Nakamura", "Raven Marais",
         "Aysha Al-Hashim", "Edward Patrick Sullivan", "Basil Mahfouz Al-Kuwaiti", "Nikolai Abilov"]


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * scale)


def _child(family: str, sizes: list[int], code_root: str | None, out: Connection) -> None:
    from guard.eval.adversarial_inputs import cost_families

    inputs = {n: cost_families(n)[family] for n in sizes}
    if code_root:  # measure another checkout's classifiers on the same inputs
        for name in [m for m in sys.modules if m == "classifiers" or m.startswith("classifiers.")]:
            del sys.modules[name]
        sys.path.insert(0, code_root)
    from classifiers.keyword import KeywordDetector
    from classifiers.normalize import (
        NormalizingDetector,
        across_turns,
        deobfuscate,
        pieces,
    )

    detector = NormalizingDetector(KeywordDetector({n: [n] for n in NAMES}))
    detector.screen(cost_families(1024)[family])  # warm-up: first-call costs are not per-byte costs
    for n in sizes:
        texts = inputs[n]
        started = time.perf_counter()
        respelling = getattr(detector, "respelling", None)  # the served respelling (issue 15); older checkouts have none
        base = (deobfuscate(texts, respelling) if respelling is not None else deobfuscate(texts)) or texts
        for t in base:
            pieces(t)
        across_turns(base)
        normalise = time.perf_counter() - started
        started = time.perf_counter()
        detector.screen(texts)
        keyword = time.perf_counter() - started
        out.send((n, sum(len(t) for t in texts), normalise, keyword))  # sent now: a queue's feeder thread would
        # wait for the GIL, which a slow regex holds for the whole next size


def run_family(family: str, sizes: list[int], timeout: float, code_root: str | None) -> list[dict]:
    ctx = mp.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(family, sizes, code_root, sender), daemon=True)
    proc.start()
    rows: list[dict] = []
    for n in sizes:
        if not receiver.poll(timeout + (30 if not rows else 0)):  # the first size also loads the code
            rows.append({"size": n, "timeout_s": timeout})
            break
        size, chars, normalise, keyword = receiver.recv()
        rows.append({"size": size, "chars": chars, "normalise_ms": normalise * 1000, "keyword_ms": keyword * 1000,
                     "normalise_ms_per_10kb": normalise * 1000 / (chars / 10240),
                     "keyword_ms_per_10kb": keyword * 1000 / (chars / 10240)})
    proc.kill()
    proc.join()
    return rows


def _cell(row: dict, key: str) -> str:
    if "timeout_s" in row:
        return f">{row['timeout_s']:.0f} s"
    return f"{row[key]:.2f}"


def main() -> int:
    from guard.eval.adversarial_inputs import cost_families

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="text sizes (1K, 64K, 4M, ...)")
    ap.add_argument("--families", nargs="+", default=None, help="subset of the families (default: all)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per size before giving up on a family")
    ap.add_argument("--code-root", default=None, help="another checkout whose classifiers/ to measure (before/after)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes]
    families = args.families or sorted(cost_families(1024))
    results: dict[str, list[dict]] = {}
    print(f"ms per 10 KB (normalise / keyword screen); code: {args.code_root or ROOT}")
    print("| family | " + " | ".join(args.sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for family in families:
        rows = run_family(family, sizes, args.timeout, args.code_root)
        results[family] = rows
        cells = [f"{_cell(r, 'normalise_ms_per_10kb')} / {_cell(r, 'keyword_ms_per_10kb')}" for r in rows]
        cells += ["-"] * (len(sizes) - len(rows))
        print(f"| {family} | " + " | ".join(cells) + " |", flush=True)
    worst = max((r.get("keyword_ms_per_10kb", float("inf")) for rows in results.values() for r in rows), default=0.0)
    print(f"worst: {worst:.2f} ms per 10 KB (target <= 50)")
    if args.json:
        from guard.atomic import write_json

        write_json(args.json, {"sizes": args.sizes, "code_root": args.code_root, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
