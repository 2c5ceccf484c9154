"""``guard-train spul --search-w-forget W1,W2,...``: the ULD (forget) weight chosen inside the trainer by the
rule that chooses the epoch (``guard.train.spul_epoch_choice``), over every candidate weight.

Why: the forget weight and the length of training both set how much a soft prompt forgets (docs/spul.md:
w_forget 4 → forget ROUGE 0.201, 3 → 0.308, 2 → 0.385). ``--choose-epoch never-seen`` chooses the epoch
for one weight; this trains one soft prompt per weight on the same loaded model and data (each exactly
as ``guard-train spul --w-forget W`` would: same seed, split and teacher) and applies the same rule to
all their scored epochs: forget ROUGE-L within the band of the never-seen level, then the smallest KS
statistic, ties to the smaller weight (the least intervention), then the earlier epoch.

Each candidate's own choice is the best of its epochs under that rule, so choosing among the
candidates' choices equals choosing among all their epochs. The cost is one training per weight: on
this 2-core CPU about 15 minutes each for the TOFU-mini preset, so the preset's command names one
weight and this search is for a deployer with the time.

The manifest's ``w_forget_search`` holds the candidates, every candidate's ``epoch_choice`` trace and
training time, and the choice; the written soft prompt is the chosen candidate's.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

from guard.errors import ConfigError

RULE = ("every candidate weight's scored epochs under the epoch rule: forget ROUGE-L within the band of the "
        "never-seen level, then the smallest KS statistic, ties to the smaller w_forget, then the earlier epoch")


def _check_weights(values: Sequence[float]) -> None:
    if not values or any(not (math.isfinite(float(v)) and float(v) > 0) for v in values):
        raise ConfigError("--search-w-forget needs one or more finite weights > 0", param="search_w_forget")


def parse_candidates(text: str) -> tuple[float, ...]:
    """``"2,3,4"`` → ``(2.0, 3.0, 4.0)``: finite, > 0, at least one (the error names ``search_w_forget``)."""
    try:
        values = tuple(sorted({float(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        raise ConfigError(f"--search-w-forget takes comma-separated numbers, got {text!r}", param="search_w_forget") from None
    _check_weights(values)
    return values


def check_search(cfg: Any, candidates: Sequence[float]) -> None:
    """The search needs the epoch rule (it is the rule applied over weights) and weights > 0."""
    if cfg.choose_epoch != "never-seen":
        raise ConfigError("--search-w-forget applies the epoch rule to every weight: it needs --choose-epoch never-seen",
                          param="search_w_forget")
    _check_weights(candidates)


def choose_candidate(chosen_rows: Sequence[dict[str, Any]], level: float, band: float) -> dict[str, Any]:
    """The candidate row (``w_forget``, ``epoch``, ``rouge``, ``ks_d``) the module's rule picks: the epoch
    rule with ties to the smaller weight, then the earlier epoch."""
    from guard.train.spul_epoch_choice import choose

    if not chosen_rows:
        raise ValueError("no candidate was trained")
    return choose(chosen_rows, level, band, ties=("w_forget", "epoch"))


def search_w_forget(run: Any, cfg: Any, candidates: Sequence[float], fit: Callable[..., dict[str, Any]], *,
                    progress: bool = True, say: Callable[[str], None] = lambda m: None
                    ) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Train one soft prompt per weight with ``fit`` (``guard.train.spul.fit``; ``cfg.choose_epoch`` must be
    ``never-seen``); returns (the chosen candidate's training result, its config, the manifest's
    ``w_forget_search``)."""
    import torch

    check_search(cfg, candidates)
    if run.epoch_scorer is None:
        raise ConfigError("--search-w-forget needs the run's epoch scorer (prepare_run with --choose-epoch never-seen)",
                          param="search_w_forget")
    started = time.perf_counter()
    fits: list[tuple[dict[str, Any], Any]] = []
    rows: list[dict[str, Any]] = []
    for n, w in enumerate(candidates, 1):
        cand = dataclasses.replace(cfg, weights=dataclasses.replace(cfg.weights, forget=float(w)))
        say(f"candidate {n}/{len(candidates)}: training with --w-forget {w:g}")
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        result = fit(run, cand, progress=progress)
        choice = result["epoch_choice"]
        rows.append({"w_forget": float(w), **choice["chosen"], "train_time_s": round(time.perf_counter() - t0, 1),
                     "trace": choice["trace"]})
        fits.append((result, cand))
        say(f"w_forget {w:g}: epoch {choice['chosen']['epoch']}, forget ROUGE-L {choice['chosen']['rouge']:.3f}, "
            f"KS D {choice['chosen']['ks_d']:.3f}")
    scorer = run.epoch_scorer
    chosen = choose_candidate(rows, scorer.rouge_level, scorer.band)
    at = rows.index(chosen)
    record = {"rule": RULE, "candidates": [float(w) for w in candidates], "rouge_level": round(scorer.rouge_level, 6),
              "rouge_band": scorer.band, "per_candidate": rows,
              "chosen": {k: v for k, v in chosen.items() if k != "trace"},
              "time_s": round(time.perf_counter() - started, 1)}
    return fits[at][0], fits[at][1], record
