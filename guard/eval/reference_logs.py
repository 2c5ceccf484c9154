"""Read TOFU's official per-item eval logs into :class:`~guard.eval.tofu_metrics.SplitScores`.

The legacy locuslab/tofu code writes ``eval_log_aggregated.json`` with one section per eval split
(``eval_log_forget.json``, ``eval_log.json``, ``eval_real_author_wo_options.json``,
``eval_real_world_wo_options.json``); each section maps a field (``avg_gt_loss``,
``avg_paraphrased_loss``, ``average_perturb_loss``, ``rougeL_recall``, ...) to
``{item index as a string: value}``. Loading those into the same per-item arrays that our own
evaluation produces lets one aggregation (:func:`~guard.eval.tofu_metrics.aggregate_tofu`) serve both.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from guard.errors import ConfigError
from guard.eval.tofu_metrics import SplitScores

LOG_FILE = "eval_log_aggregated.json"
SECTIONS = {
    "forget": "eval_log_forget.json",
    "retain": "eval_log.json",
    "real": "eval_real_author_wo_options.json",
    "world": "eval_real_world_wo_options.json",
}
REQUIRED_FIELDS = ("avg_gt_loss", "avg_paraphrased_loss", "average_perturb_loss", "rougeL_recall")


def split_scores_from_section(section: Mapping[str, Mapping[str, Any]], name: str = "section") -> SplitScores:
    """One section of an official log -> :class:`SplitScores` (items in index order)."""
    missing = [f for f in REQUIRED_FIELDS if f not in section]
    if missing:
        raise ConfigError(f"{name}: missing field(s) {', '.join(missing)}", param=name)
    ids = sorted(section["avg_gt_loss"], key=lambda k: (int(k) if str(k).isdigit() else float("inf"), str(k)))
    for f in REQUIRED_FIELDS:
        if set(section[f]) != set(ids):
            raise ConfigError(f"{name}: field {f} covers different items than avg_gt_loss", param=name)

    def col(f: str) -> list[Any] | None:
        return [section[f][i] for i in ids] if f in section else None

    generated = section.get("generated_text")
    return SplitScores(
        gt_loss=[float(v) for v in col("avg_gt_loss")],
        paraphrased_loss=[float(v) for v in col("avg_paraphrased_loss")],
        perturbed_losses=[[float(x) for x in v] for v in col("average_perturb_loss")],
        rougeL_recall=[float(v) for v in col("rougeL_recall")],
        rouge1_recall=[float(v) for v in col("rouge1_recall")] if "rouge1_recall" in section else None,
        # generated_text is [prompt, generation, ground truth]
        generations=[generated[i][1] for i in ids] if generated is not None and set(generated) == set(ids) else None,
        ids=ids,
        extra={f: col(f) for f in ("truth_ratio", "generated_text", "num_token_gt") if f in section},
    )


def load_reference_log(path: Path | str) -> dict[str, SplitScores]:
    """``{"forget", "retain", "real", "world"} -> SplitScores`` from an official log.

    ``path`` is the JSON file or a folder holding ``eval_log_aggregated.json`` (searched recursively,
    e.g. ``<model>/eval_results/ds_size300/``).
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(path.rglob(LOG_FILE))
        if not found:
            raise ConfigError(f"no {LOG_FILE} under {path}", param="path")
        path = found[0]
    if not path.is_file():
        raise ConfigError(f"TOFU eval log not found: {path}", param="path")
    with path.open(encoding="utf-8") as fh:
        data = json.load(fh)
    missing = [s for s in SECTIONS.values() if s not in data]
    if missing:
        raise ConfigError(f"{path}: missing section(s) {', '.join(missing)}; found {', '.join(data)}", param="path")
    return {split: split_scores_from_section(data[section], f"{path.name}:{section}")
            for split, section in SECTIONS.items()}


def model_tag(folder_name: str) -> str:
    """``ft_epoch5_lr1e-05_llama2-7b_retain90_wd0.01`` -> ``retain90`` (else the name unchanged)."""
    m = re.search(r"_(full|retain\d+)_wd", folder_name)
    return m.group(1) if m else folder_name


def discover_reference_logs(root: Path | str) -> dict[str, Path]:
    """Every official log under ``root``, keyed by :func:`model_tag` of its model folder."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"reference log folder not found: {root}", param="reference_logs")
    out: dict[str, Path] = {}
    for log in sorted(root.rglob(LOG_FILE)):
        model_dir = log.relative_to(root).parts[0] if log.parent != root else root.name
        tag = model_tag(model_dir)
        if tag in out:
            tag = model_dir
        out[tag] = log
    return out
