"""Metric registry and the primitives every benchmark shares (open-unlearning style).

Each metric is one small, pure function registered by name; a benchmark is a *config* that says
which metric produces which output key from which inputs, so the same aggregation code runs on the
official reference logs and on our own model's outputs::

    config = {
        "retain_Q_A_Prob": {"metric": "probability", "inputs": {"split": "retain"}},
        "model_utility":   {"metric": "hmean", "inputs": {"values": ["retain_Q_A_Prob", ...]}},
    }
    results = compute(config, {"retain": retain_scores, ...})

An input source is looked up first among the results computed so far (entries run in order), then
among the inputs; a list of sources gives a list of values. Every other key of an entry is passed
to the metric as a keyword argument. The TOFU and RWKU metrics register themselves when
``guard.eval.tofu_metrics`` / ``guard.eval.rwku_metrics`` are imported; :func:`get_metric` imports
them on first use, so ``compute`` always sees the full registry. ROUGE (``rouge_recall``) comes from
the LM toolkit (``guard.lm.rouge``).
"""

from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

from guard.errors import ConfigError
from guard.lm.rouge import rouge_recall

__all__ = ["METRICS", "compute", "get_metric", "harmonic_mean", "mean", "register", "rougeL_recall", "rouge_recall"]

MetricFn = Callable[..., Any]
METRICS: dict[str, MetricFn] = {}
_PLUGINS = ("guard.eval.tofu_metrics", "guard.eval.rwku_metrics")


def register(name: str) -> Callable[[MetricFn], MetricFn]:
    """Decorator: make ``fn`` available to configs as ``name``."""

    def deco(fn: MetricFn) -> MetricFn:
        existing = METRICS.get(name)
        if existing is not None and existing is not fn:
            raise ValueError(f"metric {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        METRICS[name] = fn
        return fn

    return deco


def _load_plugins() -> None:
    for module in _PLUGINS:
        importlib.import_module(module)


def get_metric(name: str) -> MetricFn:
    if name not in METRICS:
        _load_plugins()
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}; known metrics: {', '.join(sorted(METRICS))}", param="metric") from None


def _resolve(source: Any, results: Mapping[str, Any], inputs: Mapping[str, Any], where: str) -> Any:
    if isinstance(source, (list, tuple)):
        return [_resolve(s, results, inputs, where) for s in source]
    if source in results:
        return results[source]
    if source in inputs:
        return inputs[source]
    raise ConfigError(f"{where}: input {source!r} is neither an earlier result nor a given input "
                      f"(given: {', '.join(sorted(inputs)) or 'none'})", param=where)


def compute(config: Mapping[str, Mapping[str, Any]], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Run every entry of ``config`` in order and return ``{output key: value}``."""
    results: dict[str, Any] = {}
    for key, entry in config.items():
        if "metric" not in entry:
            raise ConfigError(f"config entry {key!r} has no 'metric'", param=key)
        fn = get_metric(entry["metric"])
        kwargs = {k: v for k, v in entry.items() if k not in ("metric", "inputs")}
        for param, source in (entry.get("inputs") or {}).items():
            kwargs[param] = _resolve(source, results, inputs, key)
        results[key] = fn(**kwargs)
    return results


# ----------------------------------------------------------------------------------- primitives

def _floats(values: Iterable[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{what}: no values")
    return out


@register("mean")
def mean(values: Sequence[float]) -> float:
    vals = _floats(values, "mean")
    return math.fsum(vals) / len(vals)


@register("hmean")
def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean, as ``scipy.stats.hmean``: 0 if any value is 0; negative values are an error."""
    vals = _floats(values, "hmean")
    if any(v < 0 or math.isnan(v) for v in vals):
        raise ValueError(f"hmean: values must be >= 0, got {vals}")
    if any(v == 0 for v in vals):
        return 0.0
    return len(vals) / math.fsum(1.0 / v for v in vals)


def rougeL_recall(prediction: str, reference: str) -> float:
    return rouge_recall(prediction, reference)[1]
