"""RWKU's numbers from per-item results: per target (forget FB/QA/AA, neighbour FB/QA, utility,
and how often the guard intervened), and their mean over targets."""

from __future__ import annotations

import math
from typing import Any, Sequence

from guard.data.rwku import FORGET_SETS, NEIGHBOR_SETS, PROBE_SETS


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return math.fsum(vals) / len(vals) if vals else None


def target_metrics(items: dict[str, list[dict[str, Any]]]) -> dict[str, float | None]:
    """Per-target numbers from per-item results (items with an ``error`` are left out)."""
    ok = {k: [r for r in v if "error" not in r] for k, v in items.items()}
    m: dict[str, float | None] = {}
    for s in PROBE_SETS:
        if s in ok:
            m[s] = _mean([r["rouge_l_recall"] for r in ok[s]])
    forget = [m[s] for s in FORGET_SETS if m.get(s) is not None]
    neighbor = [m[s] for s in NEIGHBOR_SETS if m.get(s) is not None]
    if forget:
        m["forget_all"] = _mean(forget)
    if neighbor:
        m["neighbor_all"] = _mean(neighbor)
    if "mmlu" in ok:
        m["mmlu_acc"] = _mean([r["correct"] for r in ok["mmlu"]])
    if "bbh" in ok:
        m["bbh_em"] = _mean([r["em"] for r in ok["bbh"]])
        m["bbh_em_rwku"] = _mean([r["em_rwku"] for r in ok["bbh"]])
    if "truthfulqa" in ok:
        m["truthfulqa_mc1"] = _mean([r["mc1"] for r in ok["truthfulqa"]])
        m["truthfulqa_mc2"] = _mean([r["mc2"] for r in ok["truthfulqa"]])
    if "triviaqa" in ok:
        m["triviaqa_em"] = _mean([r["em"] for r in ok["triviaqa"]])
        m["triviaqa_f1"] = _mean([r["f1"] for r in ok["triviaqa"]])
    if "fluency" in ok:
        m["fluency_entropy"] = _mean([r["entropy"] for r in ok["fluency"]])
    return m


def guard_action_rates(items: dict[str, list[dict[str, Any]]]) -> dict[str, float | None]:
    """Per set, the share of items the guard did not pass.

    Read from the guard's ``X-Guard-Action`` debug header, which it sends on the responses it
    produces itself; a forwarded (passed) response has none. So the rates exist only when at least
    one response of this target carried the header (a guard with ``--debug``), else ``None``.
    """
    seen_any = any(r.get("action") for rows in items.values() for r in rows)
    out: dict[str, float | None] = {}
    for s, rows in items.items():
        actions = [r.get("action") or "pass" for r in rows if "error" not in r]
        out[s] = (sum(a != "pass" for a in actions) / len(actions)) if seen_any and actions else None
    return out


METRIC_KEYS = ("forget_fb", "forget_qa", "forget_aa", "forget_all", "neighbor_fb", "neighbor_qa", "neighbor_all",
               "mmlu_acc", "bbh_em", "bbh_em_rwku", "truthfulqa_mc1", "truthfulqa_mc2", "triviaqa_em", "triviaqa_f1",
               "fluency_entropy")


def aggregate(per_target: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """RWKU's averages: each metric is the mean over the targets that have it."""
    out: dict[str, Any] = {}
    for key in METRIC_KEYS:
        values = [r["metrics"].get(key) for r in per_target if r["metrics"].get(key) is not None]
        out[key] = _mean(values)
        out[f"n_targets_{key}"] = len(values)
    return out
