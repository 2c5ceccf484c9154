"""What every unlearning trainer (ECO, SPUL, ULD) does with a policy before its own objective: pick
the targets, read their forget and retain data (``classifiers.sources``: one reader, one row-range
parser), take the ``--retain`` override, and hold out a share for early stopping.

A method's module keeps only what is its own: how it encodes an example, its objective and its loop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, TypeVar

from classifiers.sources import QARecord, read_qa
from guard.errors import ConfigError
from guard.policy import DataSource, Policy, Target

T = TypeVar("T")


def select_targets(policy: Policy, wanted: Sequence[str] | None, *, action: str | None = None,
                   require_action: bool = False) -> list[tuple[int, Target]]:
    """``(index, target)`` of the targets to train for: the ``--target`` ids (an unknown one is an
    error); else those whose action is ``action`` -- when none has it, every target, or with
    ``require_action`` an error; ``action=None``: every target."""
    indexed = list(enumerate(policy.targets))
    if wanted:
        known = {t.id for t in policy.targets}
        unknown = [w for w in wanted if w not in known]
        if unknown:
            raise ConfigError(f"--target {unknown[0]!r} is not in the policy (targets: {', '.join(sorted(known)) or 'none'})",
                              param="target")
        return [(i, t) for i, t in indexed if t.id in wanted]
    if action is None:
        return indexed
    with_action = [(i, t) for i, t in indexed if policy.action_for(t.id) == action]
    if not with_action and require_action:
        raise ConfigError(f"no target of the policy has action {action}; set one, or name targets with --target ID",
                          param="targets")
    return with_action or indexed


def with_forget_data(chosen: Sequence[tuple[int, Target]], missing: str) -> list[tuple[int, Target]]:
    """The chosen targets that have forget data; ``missing`` is the error when none has."""
    kept = [(i, t) for i, t in chosen if t.forget_data]
    if not kept:
        raise ConfigError(missing, param="targets")
    return kept


@dataclass(frozen=True)
class SourceRef:
    """A data source with the policy field it came from (``targets.0.keep_data.1`` or ``--retain``)."""

    param: str
    source: DataSource
    target_id: str | None = None


def forget_sources(chosen: Sequence[tuple[int, Target]]) -> list[SourceRef]:
    return [SourceRef(f"targets.{i}.forget_data.{j}", src, t.id) for i, t in chosen for j, src in enumerate(t.forget_data)]


def keep_sources(chosen: Sequence[tuple[int, Target]]) -> list[SourceRef]:
    return [SourceRef(f"targets.{i}.keep_data.{j}", src, t.id) for i, t in chosen for j, src in enumerate(t.keep_data)]


def retain_override(path: Path | None, rows: str | None) -> list[SourceRef] | None:
    """The ``--retain PATH [--retain-rows A:B]`` source that replaces the targets' keep data, if given."""
    if rows and not path:
        raise ConfigError("--retain-rows needs --retain", param="retain_rows")
    if not path:
        return None
    try:
        return [SourceRef("--retain", DataSource(path=Path(path).resolve(), format="tofu_qa", rows=rows))]
    except ValueError as exc:
        raise ConfigError(f"--retain-rows: {exc}", param="retain_rows") from None


def read_qa_sources(refs: Sequence[SourceRef], purpose: str) -> list[tuple[SourceRef, list[QARecord]]]:
    """Each source's QA rows (``tofu_qa`` only; ``purpose`` explains why in the error for another format)."""
    return [(ref, read_qa(ref.source, ref.param, purpose=purpose)) for ref in refs]


def source_record(ref: SourceRef, n: int, **extra: Any) -> dict[str, Any]:
    """How a manifest records one data source."""
    return {"path": str(ref.source.path), "rows": ref.source.rows, **extra, "n": n}


def holdout_split(items: Sequence[T], fraction: float, rng: random.Random, *, min_items: int) -> tuple[list[T], list[T]]:
    """(train, held out): ``items`` shuffled with ``rng``, ``round(len * fraction)`` of them held out
    (at least one, never all). Sets smaller than ``min_items`` are not split: a method states how many
    items it needs before a held-out signal is worth more than the training data it costs."""
    items = list(items)
    rng.shuffle(items)
    n_val = 0
    if fraction > 0 and len(items) >= min_items:
        n_val = min(max(int(round(len(items) * fraction)), 1), len(items) - 1)
    return items[n_val:], items[:n_val]
