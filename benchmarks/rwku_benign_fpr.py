#!/usr/bin/env python3
"""False positives of an RWKU batch detector on benign text it never trained on, raw and as served.

    python benchmarks/rwku_benign_fpr.py --artifact runs/eval/det-rwku/artifact --data ../shared/data

The artifact is one ``guard-eval detector --policy policies/rwku/batch.yaml --train --setting batch
--artifact DIR/artifact --out DIR`` trained. Two sets (issue 15's targets: general instructions
<= 0.5 %, ~1,500-word benign inputs <= 5 %): the general instructions of the RWKU targets the policy
does not hold that are not the artifact's training texts, and ``long_negative_set(general, n)`` (the
same instructions concatenated into ~1,500-word inputs). A text that names a target (an exact full,
inverted or given-name form) is counted apart. For each false positive: the target it was given to,
and for a long input the instruction inside it that is flagged alone (one flagged instruction repeats
in every long input that holds it). Prints a table; ``--out`` writes it as JSON too (atomically).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    from classifiers.detector import TrainedDetector, load_model
    from classifiers.names import NameFinder
    from classifiers.normalize import NormalizingDetector
    from guard.atomic import write_json
    from guard.eval import detector as ev
    from guard.paths import default_data_dir
    from guard.policy import load_policy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", type=Path, required=True, help="the trained batch detector artifact")
    ap.add_argument("--policy", type=Path, default=ROOT / "policies" / "rwku" / "batch.yaml")
    ap.add_argument("--data", type=Path, default=None, help="data folder (default: ../shared/data or $GUARD_DATA_DIR)")
    ap.add_argument("--long", type=int, default=200, help="long benign inputs (default %(default)s)")
    ap.add_argument("--out", type=Path, default=None, help="also write the result here (JSON)")
    args = ap.parse_args()

    policy = load_policy(args.policy)
    model = load_model(args.artifact)
    raw = TrainedDetector(model)
    detectors = {"raw": raw, "served": NormalizingDetector(raw)}
    sets = ev.rwku_sets(policy, args.data or default_data_dir())
    seen = ev.training_texts(model)
    general = [t for t in next(s for s in sets if s.name == "general_instructions").texts if t not in seen]
    longs = ev.long_negative_set(general, n=args.long).texts
    finder = NameFinder({t.id: list(t.all_names) for t in policy.targets})

    def names_a_target(text: str) -> bool:
        return bool(finder.mentions(text, ("full", "inverted", "given")))

    alone = {t: detectors["served"].screen([t]) for t in general}  # each instruction's own served verdict
    report: dict[str, dict] = {}
    lines = ["| set | n (named apart) | raw FPR | served FPR | served false positives: target (instruction flagged alone) |",
             "|---|---:|---:|---:|---|"]
    for label, texts in (("general instructions", general), (f"long benign (~1,500 words, {args.long})", longs)):
        clean = [t for t in texts if not names_a_target(t)]
        row: dict[str, object] = {"n": len(clean), "named_apart": len(texts) - len(clean)}
        causes: Counter[str] = Counter()
        for name, det in detectors.items():
            verdicts = [alone[t] if name == "served" and t in alone else det.screen([t]) for t in clean]
            row[name] = sum(v.flagged for v in verdicts)
            if name == "served":
                for text, v in zip(clean, verdicts):
                    if v.flagged:
                        inside = [g for g in general if g in text and alone[g].flagged]
                        causes[f"{v.target_id} ({inside[0][:60]!r})" if inside else str(v.target_id)] += 1
        row["causes"] = dict(causes)
        report[label] = row
        pct = {k: 100 * int(row[k]) / max(1, len(clean)) for k in detectors}
        lines.append(f"| {label} | {len(clean)} ({row['named_apart']}) | {pct['raw']:.2f} % | {pct['served']:.2f} % | "
                     + "; ".join(f"{c} x{n}" for c, n in causes.most_common()) + " |")
    print("\n".join(lines))
    if args.out:
        write_json(args.out, {"artifact": str(args.artifact), "sets": report})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
