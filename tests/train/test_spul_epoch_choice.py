"""``guard-train spul --choose-epoch never-seen``: the epoch whose forget answers look most like a model
that never saw the target (forget ROUGE-L near the frozen model's on never-seen QA, then the truth ratios'
KS statistic against the term's level) is the soft prompt written, with every scored epoch in the
manifest. Real tofu-micro-target, real TOFU rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from guard.cli_train import main as guard_train
from guard.errors import ConfigError
from guard.interventions.spul import load_soft_prompt
from guard.lm.nll import supports_logits_to_keep
from guard.policy import load_policy
from guard.train.cli_args import holdout_source
from guard.train.spul import SpulConfig, load_frozen_model
from guard.train.spul_epoch_choice import MAX_GENERATION_BATCH, choose, generation_batch
from guard.train.spul_objective import Weights
from guard.train.spul_truth_ratio import (
    TruthRatioTerm, describe_log_truth_ratios, forget_truth_ratio_items, log_truth_ratios, plan_truth_ratio,
)
from tests.train.test_spul_counterfactual import micro_policy

HOLDOUT_ROWS = "360:364"


def _row(epoch: int, rouge: float, ks_d: float) -> dict:
    return {"epoch": epoch, "rouge": rouge, "ks_d": ks_d}


def test_the_rule_reads_rouge_first_then_the_ks_statistic_then_the_earlier_epoch():
    rows = [_row(3, 0.60, 0.05), _row(4, 0.38, 0.30), _row(5, 0.30, 0.20), _row(6, 0.22, 0.20), _row(7, 0.10, 0.0)]
    # epoch 3 has the best KS but answers far more than the level; 7 is past it: in the band, KS, then the earlier
    assert choose(rows, 0.3, 0.1)["epoch"] == 5
    assert choose(rows, 0.3, 0.05)["epoch"] == 5  # 4 and 6 leave the band
    # nothing within the band: the ROUGE closest to the level
    assert choose([_row(3, 0.9, 0.0), _row(4, 0.7, 0.5)], 0.3, 0.1)["epoch"] == 4
    with pytest.raises(ValueError):
        choose([], 0.3, 0.1)


def test_greedy_batches_are_as_few_as_the_cap_allows_and_evenly_filled():
    for n in (1, 8, 20, 32, 33, 40, 65, 100):
        size = generation_batch(n)
        batches = -(-n // size)
        assert size <= MAX_GENERATION_BATCH and batches == -(-n // MAX_GENERATION_BATCH)
        assert n - (batches - 1) * size >= size - batches  # the last batch is nearly full


def test_the_choice_needs_the_truth_ratio_term_and_sane_settings(tmp_path, data_dir, capsys):
    with pytest.raises(ConfigError) as err:
        SpulConfig(choose_epoch="never-seen").validate()
    assert err.value.param == "choose_epoch" and "--w-truth-ratio" in str(err.value)
    for bad in ({"rouge_band": 0.0}, {"choose_from_epoch": 0}, {"choose_epoch": "best"}):
        with pytest.raises(ConfigError):
            SpulConfig(weights=Weights(truth_ratio=1.0), truth_ratio_holdout="x",
                       **{"choose_epoch": "never-seen", **bad}).validate()
    rc = guard_train(["spul", "--policy", str(micro_policy(tmp_path, data_dir)), "--model", "tofu-micro-target",
                      "--choose-epoch", "never-seen", "--out", str(tmp_path / "x")])
    assert rc != 0 and "--w-truth-ratio" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_writes_the_chosen_epochs_soft_prompt_and_the_trace(tmp_path, data_dir, tofu_micro):
    out = tmp_path / "soft"
    policy = micro_policy(tmp_path, data_dir)
    holdout = data_dir / "tofu" / "retain_perturbed.json"
    rc = guard_train(["spul", "--policy", str(policy), "--model", "tofu-micro-target",
                      "--w-truth-ratio", "10", "--holdout", str(holdout), "--holdout-rows", HOLDOUT_ROWS,
                      "--choose-epoch", "never-seen", "--choose-from-epoch", "2", "--choose-max-new-tokens", "16",
                      "--out", str(out), "--epochs", "3", "--n-tokens", "4", "--val-fraction", "0", "--w-retain", "0",
                      "--w-kl", "0", "--lr", "0.1", "--no-eval", "--no-progress", "--threads", "1"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    found = manifest["epoch_choice"]
    assert [r["epoch"] for r in found["trace"]] == [2, 3] and found["n_items"] == 2
    assert 0.0 <= found["rouge_level"] <= 1.0 and found["max_new_tokens"] == 16
    assert found["chosen"] == choose(found["trace"], found["rouge_level"], found["rouge_band"])
    assert manifest["metrics"]["best_epoch"] == found["chosen"]["epoch"]
    # the written vectors are the chosen epoch's: they reproduce its row's truth ratios
    path = tofu_micro["target"]
    model, tokenizer = load_frozen_model(path, "cpu"), AutoTokenizer.from_pretrained(path)
    cfg = SpulConfig(n_tokens=4)
    term = TruthRatioTerm(holdout_source(holdout, HOLDOUT_ROWS), every=2)
    plan = plan_truth_ratio(model, tokenizer, cfg, term, forget_truth_ratio_items(load_policy(policy), None))
    soft = load_soft_prompt(out).vectors
    log_tr = log_truth_ratios(model, soft, [g for _, g, _ in plan.tuned], keep_ok=supports_logits_to_keep(model))
    again = describe_log_truth_ratios(log_tr, plan.level)
    assert again["ks_d"] == pytest.approx(found["chosen"]["ks_d"], abs=1e-6)
    assert again["mean_log_truth_ratio"] == pytest.approx(found["chosen"]["mean_log_truth_ratio"], abs=1e-4)
    assert np.isfinite(manifest["metrics"]["best_val"])
