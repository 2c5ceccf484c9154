"""Planning ``guard-train finetune`` runs (no torch): how to run, which twin gets which rows and
recipe, where it goes and whether an identical model is already cached."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from guard.paths import models_dir
from guard.train import tofu_recipes as R

MANIFEST = "guard_manifest.json"
EVAL_FILE = "guard_eval.json"
KIND = "tofu-finetuned-model"


@dataclass
class RunOptions:
    """How to run (none of it changes the trained weights, so none of it is in the recipe hash)."""

    data_dir: Path | None = None
    force: bool = False
    threads: int | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    evaluate: bool = True
    checkpoint: bool | None = None  # None: checkpoints when an epoch has >= 20 steps
    checkpoint_minutes: float = 15.0  # also checkpoint inside an epoch after this much training time
    gradient_checkpointing: bool = False
    progress: bool = True
    name: str | None = None  # prefix: <name>-target / <name>-retain
    eval_batch_size: int | None = None


@dataclass
class TwinPlan:
    preset: str
    twin: str
    name: str
    path: Path
    recipe: R.Recipe
    rows: list[int]
    recipe_hash: str

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "preset": self.preset,
            "twin": self.twin,
            "rows": R.spans_of(self.rows),
            "n_examples": len(self.rows),
            "steps_per_epoch": R.steps_per_epoch(self.recipe, len(self.rows)),
            "recipe": self.recipe.to_dict(),
            "recipe_hash": self.recipe_hash,
            "cached": cached_manifest(self) is not None,
        }


def plan_twin(preset: str, twin: str, overrides: dict[str, Any] | None = None, name: str | None = None) -> TwinPlan:
    recipe = R.make_recipe(preset, twin, **(overrides or {}))
    rows = R.select_rows(preset, twin)
    model = R.model_name(preset, twin, recipe.base_model, name)
    return TwinPlan(preset, twin, model, models_dir() / model, recipe, rows, R.recipe_hash(recipe, rows))


def plan_preset(
    preset: str, twins: Sequence[str] = R.TWINS, overrides: dict[str, Any] | None = None, name: str | None = None
) -> list[TwinPlan]:
    """Both twins' plans, retain first (the target's forget quality needs the retain twin)."""
    order = [t for t in ("retain", "target") if t in twins]
    return [plan_twin(preset, t, overrides, name) for t in order]


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cached_manifest(plan: TwinPlan) -> dict[str, Any] | None:
    """The manifest of an existing model built with the same recipe and rows, else ``None``."""
    manifest = read_manifest(plan.path)
    if manifest and manifest.get("recipe_hash") == plan.recipe_hash and (plan.path / "config.json").exists():
        return manifest
    return None
