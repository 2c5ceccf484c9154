"""What a ``guard-eval tofu`` run scores: TOFU's four eval splits (forget, retain, real authors,
world facts) as items with their paraphrased and perturbed answers, and which rows of which files
make each split (``EvalPlan``; ``plan_for_preset`` matches a ``guard-train finetune`` preset)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from guard.data import tofu_presets as P
from guard.data.tofu import FORGET_AUTHORS, QA_PER_AUTHOR, load_rows
from guard.errors import ConfigError

SPLITS = ("forget", "retain", "real", "world")
SPLIT_FILES = {"retain": "retain_perturbed", "real": "real_authors_perturbed", "world": "world_facts_perturbed"}
SPLIT_TITLES = {"forget": "Forget", "retain": "Retain", "real": "Real authors", "world": "World facts"}


# ---------------------------------------------------------------------------------------- data

@dataclass(frozen=True)
class TofuItem:
    split: str             # forget | retain | real | world
    source: str            # the file it came from, e.g. forget01_perturbed
    index: int             # row in that file
    question: str
    answer: str
    paraphrased: str       # the paraphrased answer (real/world have none: the answer itself, as TOFU)
    perturbed: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.split}:{self.index}"


def _item(split: str, source: str, index: int, row: dict[str, Any]) -> TofuItem:
    perturbed = row.get("perturbed_answer") or []
    if isinstance(perturbed, str):
        perturbed = [perturbed]
    if not perturbed:
        raise ConfigError(f"{source} row {index} has no perturbed_answer; TOFU's truth ratio needs them", param="data")
    return TofuItem(split, source, index, row["question"], row["answer"], row.get("paraphrased_answer") or row["answer"],
                    tuple(perturbed))


def spread(rows: Sequence[int], limit: int | None) -> list[int]:
    """At most ``limit`` rows, evenly spread over ``rows`` (all of them without a limit)."""
    rows = list(rows)
    if limit is None or limit >= len(rows):
        return rows
    return [rows[(i * len(rows)) // limit] for i in range(limit)]


@dataclass
class EvalPlan:
    """Which rows of which files make the four eval splits."""

    forget_split: str                      # forget01 | forget05 | forget10
    forget_rows: list[int] | None = None   # rows of <forget_split>_perturbed (None: all)
    retain_rows: list[int] | None = None   # rows of retain_perturbed (None: all 400)
    limit: int | None = None               # per split, evenly spread

    def __post_init__(self) -> None:
        if self.forget_split not in FORGET_AUTHORS:
            raise ConfigError(f"unknown forget split {self.forget_split!r}; choose {', '.join(FORGET_AUTHORS)}",
                              param="forget_split")

    def load(self, data_dir: Path) -> dict[str, list[TofuItem]]:
        out: dict[str, list[TofuItem]] = {}
        source = f"{self.forget_split}_perturbed"
        rows = load_rows(data_dir, source)
        idx = self.forget_rows if self.forget_rows is not None else range(len(rows))
        out["forget"] = [_item("forget", source, i, rows[i]) for i in spread(_check(idx, len(rows), source), self.limit)]
        for split, source in SPLIT_FILES.items():
            rows = load_rows(data_dir, source)
            idx = self.retain_rows if (split == "retain" and self.retain_rows is not None) else range(len(rows))
            out[split] = [_item(split, source, i, rows[i]) for i in spread(_check(idx, len(rows), source), self.limit)]
        return out


def _check(rows: Iterable[int], n: int, source: str) -> list[int]:
    rows = list(rows)
    bad = [r for r in rows if not 0 <= r < n]
    if bad:
        raise ConfigError(f"rows {bad[:5]} are outside {source} (0-{n - 1})", param="rows")
    return rows


def plan_for_preset(preset: str, limit: int | None = None, forget_split: str | None = None) -> EvalPlan:
    """The eval rows that match what a ``guard-train finetune --preset`` pair was trained on.

    Forget: the preset's forget rows of ``full.json`` mapped into ``<split>_perturbed``; retain:
    its retain rows that ``retain_perturbed`` covers (``full[0:400]``): mini -> rows 0:360 (authors
    0-17), micro -> its 8 rows, full -> all 400 (TOFU's retain set).
    """
    if preset not in P.DATA:
        raise ConfigError(f"unknown preset {preset!r}; choose {', '.join(P.PRESETS)}", param="preset")
    spec = P.DATA[preset]
    split = forget_split or spec.forget_split
    n = FORGET_AUTHORS[split] * QA_PER_AUTHOR
    first = P.FULL_ROWS - n
    forget = [row - first for row in P.forget_rows(preset) if row >= first]
    if not forget:
        raise ConfigError(f"preset {preset} trained on no row of {split}", param="forget_split")
    retain = sorted({row for start, stop in spec.retain_spans for row in range(start, stop) if row < 400})
    return EvalPlan(split, forget, retain, limit)


def preset_of(model_path: Path) -> str | None:
    """The preset recorded by ``guard-train finetune`` in the model's manifest, if any."""
    try:
        manifest = json.loads((Path(model_path) / "guard_manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.get("preset") if manifest.get("kind") == "tofu-finetuned-model" else None
