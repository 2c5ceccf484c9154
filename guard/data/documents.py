"""Long documents built from the benchmark data, for measuring how long inputs are screened.

One builder for the screening-cost benchmark and the long-input tests, so both measure the same kind
of text: ordinary, non-repeating prose (RWKU passages about real people, none of them a TOFU target)
with, where asked, one question inserted at a chosen depth.
"""

from __future__ import annotations

import json
import random
from pathlib import Path


def prose_paragraphs(data_dir: Path, seed: int = 0) -> list[str]:
    """Every RWKU passage paragraph under ``data_dir/rwku``, shuffled with ``seed``."""
    paras = [row["text"] for d in sorted((Path(data_dir) / "rwku").iterdir()) if (d / "passage.json").exists()
             for row in json.loads((d / "passage.json").read_text(encoding="utf-8"))]
    random.Random(seed).shuffle(paras)
    return paras


def prose(data_dir: Path, words: int, seed: int = 0) -> str:
    """About ``words`` words of prose (paragraphs joined by blank lines), repeated only if the data runs out."""
    paras = prose_paragraphs(data_dir, seed)
    out: list[str] = []
    n = 0
    while n < words:
        for p in paras:
            out.append(p)
            n += len(p.split())
            if n >= words:
                break
    return "\n\n".join(out)


def insert_at(doc: str, question: str, fraction: float) -> str:
    """``doc`` with ``question`` inserted after ``fraction`` of its space-separated tokens."""
    toks = doc.split(" ")
    k = int(len(toks) * fraction)
    return " ".join(toks[:k] + [question] + toks[k:])
