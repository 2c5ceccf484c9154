"""The memorisation report of a fine-tuned twin (``guard_eval.json`` and the manifest's ``eval``):
ROUGE-L and NLL on its forget and retain rows, truth ratios on the forget rows, and forget quality
(the KS test of the target twin's truth ratios against the retain twin's, ``guard.eval.tofu_metrics``)."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from guard.atomic import write_json
from guard.errors import ConfigError
from guard.eval.tofu_metrics import ks_test
from guard.train import tofu_recipes as R
from guard.train.finetune_plan import EVAL_FILE, MANIFEST, RunOptions, TwinPlan, read_manifest

log = logging.getLogger(__name__)


def eval_sets(data_dir: Path, preset: str, limit: int | None = None) -> dict[str, Any]:
    """Forget and retain evaluation items: QA pairs (+ truth-ratio items for the forget set)."""
    from guard.data.tofu import load_rows
    from guard.train.memorisation import TruthItem

    full = load_rows(data_dir, "full")
    cache: dict[str, list[dict[str, Any]]] = {}

    def perturbed(row: int) -> dict[str, Any] | None:
        src = R.perturbed_source(row)
        if src is None:
            return None
        split, idx = src
        if split not in cache:
            cache[split] = load_rows(data_dir, split)
        item = cache[split][idx]
        if item["question"] != full[row]["question"]:
            raise ConfigError(f"{split}[{idx}] does not match full[{row}]; is the TOFU data intact?", param="data")
        return item

    forget = R.forget_rows(preset)[:limit] if limit else R.forget_rows(preset)
    retain = R.retain_eval_rows(preset)[:limit] if limit else R.retain_eval_rows(preset)
    truth = []
    for row in forget:
        item = perturbed(row)
        if item is not None:
            truth.append((row, TruthItem(item["question"], item["paraphrased_answer"], list(item["perturbed_answer"]))))
    return {
        "forget": [(row, full[row]["question"], full[row]["answer"]) for row in forget],
        "retain": [(row, full[row]["question"], full[row]["answer"]) for row in retain],
        "forget_truth": truth,
    }


def store_eval(plan: TwinPlan, summary: dict[str, Any], details: dict[str, Any]) -> None:
    write_json(plan.path / EVAL_FILE, details)
    manifest = read_manifest(plan.path) or {}
    manifest["eval"] = summary
    write_json(plan.path / MANIFEST, manifest)


def evaluate_model(model: Any, tokenizer: Any, plan: TwinPlan, data_dir: Path, device: str,
                   opts: RunOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """Memorisation of the forget rows and of a retain sample; truth ratios on the forget rows."""
    import statistics

    from guard.train.memorisation import memorisation_report, truth_ratios

    recipe = plan.recipe
    sets = eval_sets(data_dir, plan.preset, recipe.eval_limit)
    bs = opts.eval_batch_size or (32 if device.startswith("cuda") else 8)
    t0 = time.monotonic()
    # scoring never truncates what training might have (paraphrased/perturbed answers can be longer)
    common = dict(max_length=max(recipe.max_length, 512), batch_size=bs, system_prompt=recipe.system_prompt,
                  progress=opts.progress)
    reports = {}
    for key in ("forget", "retain"):
        items = sets[key]
        reports[key] = memorisation_report(
            model, tokenizer, [(q, a) for _, q, a in items], ids=[row for row, _, _ in items],
            max_new_tokens=recipe.eval_max_new_tokens, **common,
        )
    truth = sets["forget_truth"]
    ratios = truth_ratios(model, tokenizer, [t for _, t in truth], **common) if truth else []
    elapsed = time.monotonic() - t0
    summary: dict[str, Any] = {
        "forget": {"split": R.DATA[plan.preset].forget_split, "n": reports["forget"]["n"],
                   "rouge_l_recall": _r(reports["forget"]["rouge_l_recall"]), "nll": _r(reports["forget"]["nll"]),
                   "truth_ratio_mean": _r(statistics.fmean(ratios)) if ratios else None},
        "retain": {"split": "retain_perturbed", "n": reports["retain"]["n"],
                   "rouge_l_recall": _r(reports["retain"]["rouge_l_recall"]), "nll": _r(reports["retain"]["nll"])},
        "max_new_tokens": recipe.eval_max_new_tokens,
        "time_s": round(elapsed, 1),
    }
    details = {
        "forget": reports["forget"]["items"],
        "retain": reports["retain"]["items"],
        "forget_truth_ratio": {"rows": [row for row, _ in truth], "values": ratios,
                               "definition": "P(perturbed)/P(paraphrased), per-token normalised (open-unlearning)"},
    }
    log.info("%s: forget ROUGE-L %.3f NLL %.3f | retain ROUGE-L %.3f NLL %.3f (%.0f s)", plan.name,
             summary["forget"]["rouge_l_recall"], summary["forget"]["nll"], summary["retain"]["rouge_l_recall"],
             summary["retain"]["nll"], elapsed)
    return summary, details


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def update_forget_quality(target: Path, retain: Path) -> dict[str, Any] | None:
    """KS test of the target's forget truth ratios against the retain twin's; stored in both manifests."""
    try:
        t_eval = json.loads((target / EVAL_FILE).read_text())
        r_eval = json.loads((retain / EVAL_FILE).read_text())
    except (OSError, ValueError):
        return None
    t_tr, r_tr = t_eval["forget_truth_ratio"], r_eval["forget_truth_ratio"]
    if not t_tr["values"] or t_tr["rows"] != r_tr["rows"]:
        return None
    p_value, statistic = ks_test(t_tr["values"], r_tr["values"])
    fq = {"forget_quality": p_value, "ks_statistic": statistic}
    t_man, r_man = read_manifest(target) or {}, read_manifest(retain) or {}
    result = {**{k: float(f"{v:.6g}") for k, v in fq.items()}, "n": len(t_tr["values"]),
              "target": target.name, "retain": retain.name,
              "target_recipe_hash": t_man.get("recipe_hash"), "retain_recipe_hash": r_man.get("recipe_hash")}
    for path, man in ((target, t_man), (retain, r_man)):
        man.setdefault("eval", {})["forget_quality"] = result
        write_json(path / MANIFEST, man)
    return result
