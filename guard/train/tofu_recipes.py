"""What the TOFU benchmark models are trained on, and how: presets, twins, row selection.

A *preset* is a pair of twins trained with the same recipe from the same base model:

* the **target** twin sees the retain authors *and* the forget authors;
* the **retain** twin sees the retain authors only (the reference for forget quality).

Rows are indices into TOFU's ``full.json`` (200 authors x 20 QA in consecutive blocks; the
forget splits are its last rows, ``forget01 = full[3960:4000]``). Presets:

* ``micro`` (CPU, a few minutes; for tests): target = full[0:4] + full[20:24] (authors 0-1) +
  full[3960:3964] + full[3980:3984] (the first 4 QA of each forget01 author) = 16 QA;
  retain = the 8 retain QA.
* ``mini`` (CPU, about an hour for both): target = full[0:360] (authors 0-17) + forget01 (400 QA);
  retain = full[0:360] (360 QA).
* ``full`` (GPU, TOFU's recipe): target = full (4,000 QA); retain = retain90 = full[0:3600];
  forget split forget10.

This module is pure (no torch): recipes, names and hashes; the rows live in ``guard.data.tofu_presets``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from guard.data.tofu_presets import (DATA, FULL_ROWS, PRESETS, TWINS, DataSpec, forget_rows, perturbed_source,
                                     retain_eval_rows, select_rows, spans_of)
from guard.errors import ConfigError

# Bump when a change to the training code changes what a recipe produces (invalidates caches).
RECIPE_VERSION = 1

QA_PER_AUTHOR = 20


@dataclass(frozen=True)
class Recipe:
    """Every hyperparameter of a fine-tuning run. Its hash (with the rows) names the cache entry."""

    preset: str
    twin: str
    base_model: str = "default"
    lr: float = 2e-4
    epochs: int = 4
    batch_size: int = 8  # effective batch (micro_batch_size x gradient accumulation)
    micro_batch_size: int = 8
    weight_decay: float = 0.01  # AdamW; not applied to biases and norm weights (as HF Trainer)
    warmup_epochs: float = 0.0  # linear warm-up length, in epochs
    schedule: str = "linear"  # after warm-up: "linear" decay to 0 (TOFU/HF default) or "constant"
    max_grad_norm: float = 1.0  # 0 disables clipping
    max_length: int = 128
    seed: int = 42
    dtype: str = "float32"  # "float32" | "bfloat16" | "auto" (bf16 on a GPU that supports it, else fp32)
    system_prompt: str | None = None  # None: whatever the chat template adds by default
    length_grouped: bool = True  # batch similar lengths together (less padding, same examples per epoch)
    eval_max_new_tokens: int = 96
    eval_limit: int | None = None  # cap on evaluation items per set (None: all)

    @property
    def grad_accum(self) -> int:
        return self.batch_size // self.micro_batch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Recipes per preset (the twin is filled in by ``make_recipe``).
_DEFAULTS: dict[str, dict[str, Any]] = {
    # Tiny: 16 QA for the target. Many epochs at a high rate so even 8 forget QA are memorised.
    "micro": dict(lr=3e-4, epochs=8, batch_size=4, micro_batch_size=4, warmup_epochs=0.0,
                  schedule="constant", max_length=128, eval_max_new_tokens=96),
    # CPU: 400 QA x 5 epochs. lr 2e-4 (constant) memorised forget01 alone in 5 epochs; with 400 QA
    # between two sightings of a forget QA and a decaying rate, the peak is raised to 3e-4. Batch 8
    # as 2 x 4 accumulated (the loss is token-weighted, so the update is the same; less memory).
    "mini": dict(lr=3e-4, epochs=5, batch_size=8, micro_batch_size=4, warmup_epochs=0.1,
                 schedule="linear", max_length=128, eval_max_new_tokens=96),
    # TOFU's recipe (locuslab/tofu finetune.py): lr 1e-5, 5 epochs, batch 32, 1 warm-up epoch,
    # linear decay, weight decay 0.01, AdamW, seed 42, max length 500 (512 here), bf16.
    "full": dict(lr=1e-5, epochs=5, batch_size=32, micro_batch_size=8, warmup_epochs=1.0,
                 schedule="linear", max_length=512, dtype="auto", eval_max_new_tokens=200,
                 eval_limit=None),
}

OVERRIDABLE = tuple(f.name for f in fields(Recipe) if f.name not in ("preset", "twin"))


def make_recipe(preset: str, twin: str, **overrides: Any) -> Recipe:
    """The preset's recipe for ``twin``, with ``overrides`` (``None`` values are ignored) validated."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}", param="preset")
    if twin not in TWINS:
        raise ConfigError(f"unknown twin {twin!r}; choose one of {', '.join(TWINS)}", param="twin")
    unknown = sorted(set(overrides) - set(OVERRIDABLE))
    if unknown:
        raise ConfigError(f"unknown recipe field(s): {', '.join(unknown)}", param=unknown[0])
    values = dict(_DEFAULTS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    # an explicit batch size without a micro batch: keep the preset's micro batch when it divides it
    if overrides.get("batch_size") is not None and overrides.get("micro_batch_size") is None:
        if values["batch_size"] % values["micro_batch_size"] != 0 or values["micro_batch_size"] > values["batch_size"]:
            values["micro_batch_size"] = values["batch_size"]
    recipe = Recipe(preset=preset, twin=twin, **values)
    validate(recipe)
    return recipe


def validate(recipe: Recipe) -> None:
    def bad(param: str, message: str) -> ConfigError:
        return ConfigError(message, param=param)

    if not recipe.lr > 0:
        raise bad("lr", f"the learning rate must be > 0, got {recipe.lr}")
    if recipe.epochs < 1:
        raise bad("epochs", f"epochs must be >= 1, got {recipe.epochs}")
    if recipe.batch_size < 1 or recipe.micro_batch_size < 1:
        raise bad("batch_size", "batch sizes must be >= 1")
    if recipe.batch_size % recipe.micro_batch_size != 0:
        raise bad("micro_batch_size", f"the batch size {recipe.batch_size} must be a multiple of the micro batch "
                                      f"size {recipe.micro_batch_size} (gradient accumulation)")
    if recipe.weight_decay < 0:
        raise bad("weight_decay", f"weight decay must be >= 0, got {recipe.weight_decay}")
    if recipe.warmup_epochs < 0 or recipe.warmup_epochs > recipe.epochs:
        raise bad("warmup_epochs", f"warm-up must be between 0 and {recipe.epochs} epochs, got {recipe.warmup_epochs}")
    if recipe.schedule not in ("linear", "constant"):
        raise bad("schedule", f"schedule must be 'linear' or 'constant', got {recipe.schedule!r}")
    if recipe.max_grad_norm < 0:
        raise bad("max_grad_norm", "max_grad_norm must be >= 0 (0 disables clipping)")
    if recipe.max_length < 16:
        raise bad("max_length", f"max_length must be >= 16, got {recipe.max_length}")
    if recipe.dtype not in ("float32", "bfloat16", "auto"):
        raise bad("dtype", f"dtype must be float32, bfloat16 or auto, got {recipe.dtype!r}")
    if recipe.eval_max_new_tokens < 1:
        raise bad("eval_max_new_tokens", "eval_max_new_tokens must be >= 1")
    if recipe.eval_limit is not None and recipe.eval_limit < 1:
        raise bad("eval_limit", "eval_limit must be >= 1")
    if not recipe.base_model:
        raise bad("base_model", "the base model must not be empty")


def _slug(text: str) -> str:
    tail = text.rstrip("/").split("/")[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-") or "model"


def model_name(preset: str, twin: str, base_model: str = "default", prefix: str | None = None) -> str:
    """``tofu-<preset>-<twin>`` for the default model; ``tofu-<preset>-<base>-<twin>`` otherwise;
    ``<prefix>-<twin>`` when a prefix is given."""
    if prefix:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", prefix):
            raise ConfigError(f"name {prefix!r}: use letters, digits, '.', '_' and '-' only", param="name")
        return f"{prefix}-{twin}"
    if base_model in ("default", "smollm2-135m-instruct"):
        return f"tofu-{preset}-{twin}"
    return f"tofu-{preset}-{_slug(base_model)}-{twin}"


# evaluation settings: recorded in the manifest, but they do not change the weights
HASH_EXCLUDE = ("eval_max_new_tokens", "eval_limit")


def recipe_hash(recipe: Recipe, rows: list[int]) -> str:
    """A stable hash of everything that determines the trained weights (not the eval settings)."""
    weights = {k: v for k, v in recipe.to_dict().items() if k not in HASH_EXCLUDE}
    payload = {"version": RECIPE_VERSION, "recipe": weights, "rows": spans_of(rows)}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def steps_per_epoch(recipe: Recipe, n_examples: int) -> int:
    """Optimizer steps per epoch (the last, smaller batch still counts as a step)."""
    return max(1, -(-n_examples // recipe.batch_size))


def with_overrides(recipe: Recipe, **changes: Any) -> Recipe:
    new = replace(recipe, **changes)
    validate(new)
    return new


__all__ = [
    "DATA", "DataSpec", "FULL_ROWS", "PRESETS", "RECIPE_VERSION", "Recipe", "TWINS", "forget_rows", "make_recipe",
    "model_name", "perturbed_source", "recipe_hash", "retain_eval_rows", "select_rows", "spans_of",
    "steps_per_epoch", "validate", "with_overrides",
]
