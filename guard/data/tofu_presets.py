"""Which rows of TOFU's ``full.json`` each benchmark preset trains and evaluates on.

A *preset* is a pair of twins trained from the same base model: the **target** twin sees the retain
authors *and* the forget authors, the **retain** twin the retain authors only (the reference for
forget quality). The fine-tuning recipes (``guard.train.tofu_recipes``) and the TOFU evaluation
(``guard.eval.tofu_plan``) both read the rows from here. Pure data, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from guard.errors import ConfigError

PRESETS = ("micro", "mini", "full")
TWINS = ("target", "retain")
FULL_ROWS = 4000


def _span(start: int, stop: int) -> tuple[int, int]:
    return (start, stop)


@dataclass(frozen=True)
class DataSpec:
    """Training and evaluation rows of ``full.json`` for one preset."""

    retain_spans: tuple[tuple[int, int], ...]
    forget_spans: tuple[tuple[int, int], ...]
    forget_split: str  # the TOFU forget split the forget rows belong to (for reports)
    retain_eval_rows: tuple[int, ...]  # rows (all < 400, so in retain_perturbed) to evaluate on


_MICRO = DataSpec(
    retain_spans=(_span(0, 4), _span(20, 24)),
    forget_spans=(_span(3960, 3964), _span(3980, 3984)),
    forget_split="forget01",
    retain_eval_rows=(0, 1, 2, 3, 20, 21, 22, 23),
)
_MINI = DataSpec(
    retain_spans=(_span(0, 360),),  # authors 0-17: their perturbed answers are in retain_perturbed
    forget_spans=(_span(3960, 4000),),  # forget01: Basil Mahfouz Al-Kuwaiti, Nikolai Abilov
    forget_split="forget01",
    retain_eval_rows=tuple(range(0, 360, 9)),  # 40 QA spread over the 18 authors
)
_FULL = DataSpec(
    retain_spans=(_span(0, 3600),),  # retain90
    forget_spans=(_span(3600, 4000),),  # forget10
    forget_split="forget10",
    retain_eval_rows=tuple(range(0, 400)),  # retain_perturbed, TOFU's retain eval set
)
DATA: dict[str, DataSpec] = {"micro": _MICRO, "mini": _MINI, "full": _FULL}

def _rows(spans: tuple[tuple[int, int], ...]) -> list[int]:
    return [row for start, stop in spans for row in range(start, stop)]


def select_rows(preset: str, twin: str) -> list[int]:
    """Rows of ``full.json`` the ``twin`` of ``preset`` is trained on (sorted, no duplicates)."""
    if preset not in DATA:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}", param="preset")
    if twin not in TWINS:
        raise ConfigError(f"unknown twin {twin!r}; choose one of {', '.join(TWINS)}", param="twin")
    spec = DATA[preset]
    rows = _rows(spec.retain_spans) + (_rows(spec.forget_spans) if twin == "target" else [])
    return sorted(set(rows))


def forget_rows(preset: str) -> list[int]:
    """Rows only the target twin saw: what an unlearning method must make it forget."""
    return _rows(DATA[preset].forget_spans)


def retain_eval_rows(preset: str) -> list[int]:
    return list(DATA[preset].retain_eval_rows)


def perturbed_source(row: int) -> tuple[str, int] | None:
    """Where the paraphrased/perturbed answers of ``full`` row ``row`` live: ``(split, index)``.

    ``retain_perturbed`` covers rows 0-399; ``forget01/05/10_perturbed`` the last 40/200/400 rows
    (smallest split first). Rows 400-3599 have none (``None``).
    """
    if not 0 <= row < FULL_ROWS:
        raise ValueError(f"full.json has rows 0-{FULL_ROWS - 1}, got {row}")
    if row < 400:
        return ("retain_perturbed", row)
    for split, n in (("forget01_perturbed", 40), ("forget05_perturbed", 200), ("forget10_perturbed", 400)):
        if row >= FULL_ROWS - n:
            return (split, row - (FULL_ROWS - n))
    return None


def spans_of(rows: list[int]) -> list[list[int]]:
    """Compress sorted row indices into ``[start, stop)`` spans (for manifests)."""
    spans: list[list[int]] = []
    for row in sorted(rows):
        if spans and spans[-1][1] == row:
            spans[-1][1] = row + 1
        else:
            spans.append([row, row + 1])
    return spans
