"""TOFU splits (JSON Lines) and their author structure.

``full.json`` holds 200 fictitious authors x 20 QA pairs in consecutive blocks; ``forgetNN`` are the
last 2/10/20 authors; ``retain_perturbed`` is ``full[0:400]`` (authors 0-19) with paraphrased and
perturbed answers. The data folder is always an argument, never a constant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guard.errors import ConfigError

QA_PER_AUTHOR = 20
SPLITS = (
    "full", "forget01", "forget05", "forget10", "retain90", "retain95", "retain99",
    "forget01_perturbed", "forget05_perturbed", "forget10_perturbed", "retain_perturbed",
    "real_authors", "real_authors_perturbed", "world_facts", "world_facts_perturbed",
    "holdout01", "holdout05", "holdout10",
)
FORGET_AUTHORS = {"forget01": 2, "forget05": 10, "forget10": 20}


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    index: int  # row in the split it came from
    extra: dict[str, Any]


def tofu_dir(data_dir: Path) -> Path:
    path = Path(data_dir) / "tofu" if (Path(data_dir) / "tofu").is_dir() else Path(data_dir)
    if not (path / "full.json").exists():
        raise ConfigError(f"no TOFU data at {path}: expected full.json there (pass --data DIR pointing at shared/data)", param="data")
    return path


def load_rows(data_dir: Path, split: str) -> list[dict[str, Any]]:
    path = tofu_dir(data_dir) / f"{split}.json"
    if not path.exists():
        raise ConfigError(f"TOFU split {split!r} not found at {path}; known splits: {', '.join(SPLITS)}", param="split")
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_qa(data_dir: Path, split: str, rows: slice | None = None) -> list[QA]:
    data = load_rows(data_dir, split)
    indices = range(len(data))[rows] if rows is not None else range(len(data))
    return [
        QA(question=data[i]["question"], answer=data[i]["answer"], index=i,
           extra={k: v for k, v in data[i].items() if k not in ("question", "answer")})
        for i in indices
    ]


def author_rows(author: int) -> slice:
    """Rows of ``full.json`` for the author at position ``author`` (0-199)."""
    if not 0 <= author < 200:
        raise ValueError(f"TOFU has authors 0-199, got {author}")
    return slice(author * QA_PER_AUTHOR, (author + 1) * QA_PER_AUTHOR)


def forget_author_range(split: str) -> range:
    """Author positions in ``full.json`` that a forget split covers (forget01 -> 198, 199)."""
    base = split.removesuffix("_perturbed")
    n = FORGET_AUTHORS[base]
    return range(200 - n, 200)


def parse_slice(text: str | None) -> slice | None:
    """'START:END[:STEP]' -> a slice (the policy's row-range syntax, ``classifiers.sources.row_slice``)."""
    from classifiers.sources import row_slice

    return row_slice(text)
