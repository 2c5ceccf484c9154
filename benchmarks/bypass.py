#!/usr/bin/env python3
"""Bypass attempts on the detector: catch rate per jailbreak disguise, TOFU forget01.

    python benchmarks/bypass.py --data ../shared/data --out runs/bench/bypass

Trains (or reuses, in ``--out``) the TOFU forget01 detector on the first half of each author's QA
pairs (static mode, ~15 s), then screens the 20 held-out forget questions and their 20 paraphrases
wrapped in every attack of ``guard.eval.bypass.ATTACKS`` (plus hand-written translations), and 40
unrelated questions (other fictitious authors, real authors) in the same wrappers, with four
detectors: the name matcher and the trained detector, each raw and as served (``+deobf``: behind
``classifiers.normalize.NormalizingDetector``). Then the name and encoding variant families of
issue 19 (``guard.eval.bypass_variants.variant_families``: dash and space classes, look-alike letters,
invisible characters, separators inside a name in a long text, inverted order, leading given names,
MIME/grouped/nested base64), in two tables: the generators the matcher was tuned on, and the
held-out generators written separately. Prints the tables; writes ``bypass.json`` and ``bypass.md``
in ``--out`` (atomically).

    python benchmarks/bypass.py --families --data ../shared/data --out runs/bench/bypass-families

``--families``: issue 15's families instead (``guard.eval.bypass_families``: misspellings at 1-3
edits, dropped hyphens, Cyrillic/Greek/Arabic transliterations, spaced letters, reversed names,
lower-case surname, many-turn benign chats, many-shot wrappers, a long benign document) on TOFU
forget10 (first-half policy, trained into ``--out`` or reused): 200 held-out forget questions and 316
retain / real-author / world-fact questions, each split into a tuned and a held-out half, for the
trained detector raw and as served. Writes ``families.json`` and ``families.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    from guard.atomic import write_json, write_text
    from guard.eval.bypass import (
        catch_table,
        general_instructions,
        screen_latency,
        tofu01_detectors,
        tofu_names,
        tofu_probes,
    )
    from guard.eval.bypass_variants import variant_families
    from guard.paths import default_data_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None, help="benchmark data folder (default: ../shared/data or $GUARD_DATA_DIR)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "bypass")
    ap.add_argument("--retrain", action="store_true", help="train the detector again even if --out holds one")
    ap.add_argument("--families", action="store_true", help="issue 15's families on TOFU forget10 (see above)")
    args = ap.parse_args()
    data = args.data or default_data_dir()
    if args.families:
        return families(data, args.out, reuse=not args.retrain)
    t0 = time.perf_counter()
    detectors = tofu01_detectors(data, args.out, reuse=not args.retrain)
    print(f"detectors ready in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    forget, other = tofu_probes(data)
    instructions = general_instructions(data)
    report = catch_table(detectors, forget, other, extra_negatives={"general instructions (as sent)": instructions} if instructions else None)
    tuned, held_out = variant_families(tofu_names(data, "forget01"))
    variants = catch_table(detectors, forget, other, attacks=tuned, translated=False)
    variants_held = catch_table(detectors, forget, other, attacks=held_out, translated=False)
    # what the de-obfuscation costs on clean traffic: unrelated questions and general instructions, as sent
    latency = screen_latency(detectors, list(other) + list(instructions))
    lat_md = ("\n`screen([text])` latency on clean traffic (the unrelated questions and the general instructions, "
              "caches cleared; wall time on a shared machine):\n\n| detector | p50 ms | p99 ms |\n|---|---:|---:|\n"
              + "\n".join(f"| {d} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} |" for d, v in latency.items()) + "\n")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    md = (f"Bypass attempts, TOFU forget01 (first-half policy), {len(forget)} forget questions and {len(other)} other "
          f"questions per attack; commit {commit}, load {os.getloadavg()[0]:.1f}.\n"
          "'caught' = forget questions flagged (higher is better); 'FP' = other questions flagged (lower is better).\n\n"
          + report.markdown() + "\n"
          + "\nName and encoding variants (issue 19), generators tuned on:\n\n" + variants.markdown() + "\n"
          + "\nName and encoding variants, held-out generators (not tuned on):\n\n" + variants_held.markdown() + "\n"
          + lat_md)
    print(md)
    write_json(args.out / "bypass.json", {**report.to_json(), "variants": variants.to_json(), "variants_held_out": variants_held.to_json(),
                                          "latency": latency, "commit": commit, "n_forget": len(forget), "n_other": len(other)})
    write_text(args.out / "bypass.md", md)
    return 0


def families(data: Path, out: Path, *, reuse: bool) -> int:
    from guard.atomic import write_json, write_text
    from guard.eval.bypass import tofu_names
    from guard.eval.bypass_families import (
        family_markdown,
        family_report,
        issue15_families,
        tofu10_detectors,
        tofu10_family_probes,
    )

    t0 = time.perf_counter()
    detectors = tofu10_detectors(data, out, reuse=reuse)
    fams = issue15_families(tofu_names(data, "forget10"), data)
    forget, other = tofu10_family_probes(data)
    reports = {name: family_report(det, forget, other, fams) for name, det in detectors.items()}
    md = "\n\n".join(f"{name}:\n\n{family_markdown(rep)}" for name, rep in reports.items())
    md += f"\n\n({time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f})\n"
    print(md)
    write_json(out / "families.json", reports)
    write_text(out / "families.md", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
