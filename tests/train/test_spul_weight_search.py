"""``guard-train spul --search-w-forget``: one soft prompt per forget weight, each trained exactly as
``--w-forget W`` alone, the epoch rule applied over all of them, the choice written with its trace.
Real tofu-micro-target, real TOFU rows."""

from __future__ import annotations

import json

import pytest

from guard.cli_train import main as guard_train
from guard.errors import ConfigError
from guard.interventions.spul import load_soft_prompt
from guard.train.spul import SpulConfig
from guard.train.spul_objective import Weights
from guard.train.spul_weight_search import check_search, choose_candidate, parse_candidates
from tests.train.test_spul_counterfactual import micro_policy

HOLDOUT_ROWS = "360:364"


def _row(w: float, epoch: int, rouge: float, ks_d: float) -> dict:
    return {"w_forget": w, "epoch": epoch, "rouge": rouge, "ks_d": ks_d}


def test_the_rule_over_weights_is_the_epoch_rule_with_ties_to_the_smaller_weight():
    rows = [_row(2, 8, 0.40, 0.10), _row(3, 8, 0.26, 0.125), _row(4, 6, 0.30, 0.125)]
    assert choose_candidate(rows, 0.295, 0.1)["w_forget"] == 3  # 2 is outside the band; 3 and 4 tie on KS
    assert choose_candidate(rows, 0.295, 0.2)["w_forget"] == 2  # a wider band lets 2 in, with the smallest KS
    assert choose_candidate([_row(2, 3, 0.9, 0.0), _row(4, 5, 0.6, 0.5)], 0.295, 0.1)["w_forget"] == 4  # closest ROUGE


def test_weights_and_settings_are_checked_before_any_model_loads(tmp_path, data_dir, capsys):
    assert parse_candidates("4, 2,3,2") == (2.0, 3.0, 4.0)
    for bad in ("", "2,x", "0,3", "nan"):
        with pytest.raises(ConfigError) as err:
            parse_candidates(bad)
        assert err.value.param == "search_w_forget"
    with pytest.raises(ConfigError, match="--choose-epoch never-seen"):
        check_search(SpulConfig(weights=Weights(truth_ratio=1.0), truth_ratio_holdout="x"), (2.0,))
    rc = guard_train(["spul", "--policy", str(micro_policy(tmp_path, data_dir)), "--model", "tofu-micro-target",
                      "--w-truth-ratio", "1", "--holdout", str(data_dir / "tofu" / "retain_perturbed.json"),
                      "--search-w-forget", "2,3", "--out", str(tmp_path / "x")])
    assert rc != 0 and "--choose-epoch never-seen" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_trains_each_weight_as_alone_and_writes_the_rules_choice(tmp_path, data_dir):
    policy = micro_policy(tmp_path, data_dir)
    common = ["spul", "--policy", str(policy), "--model", "tofu-micro-target", "--w-truth-ratio", "10",
              "--holdout", str(data_dir / "tofu" / "retain_perturbed.json"), "--holdout-rows", HOLDOUT_ROWS,
              "--choose-epoch", "never-seen", "--choose-from-epoch", "1", "--choose-max-new-tokens", "16",
              "--epochs", "2", "--n-tokens", "4", "--val-fraction", "0", "--w-retain", "0", "--w-kl", "0", "--lr", "0.1",
              "--no-eval", "--no-progress", "--threads", "1"]
    assert guard_train([*common, "--search-w-forget", "0.5,4", "--out", str(tmp_path / "search")]) == 0
    manifest = json.loads((tmp_path / "search" / "manifest.json").read_text())
    found = manifest["w_forget_search"]
    assert found["candidates"] == [0.5, 4.0] and [r["w_forget"] for r in found["per_candidate"]] == [0.5, 4.0]
    assert all([t["epoch"] for t in r["trace"]] == [1, 2] for r in found["per_candidate"])
    chosen = choose_candidate(found["per_candidate"], found["rouge_level"], found["rouge_band"])
    assert found["chosen"] == {k: v for k, v in chosen.items() if k != "trace"}
    assert manifest["hyperparameters"]["weights"]["forget"] == found["chosen"]["w_forget"]
    assert manifest["epoch_choice"]["chosen"]["epoch"] == found["chosen"]["epoch"]
    # the chosen candidate is the soft prompt `--w-forget W` alone trains: same vectors, same trace
    w = found["chosen"]["w_forget"]
    assert guard_train([*common, "--w-forget", f"{w:g}", "--out", str(tmp_path / "alone")]) == 0
    alone = json.loads((tmp_path / "alone" / "manifest.json").read_text())["epoch_choice"]
    assert alone["trace"] == next(r["trace"] for r in found["per_candidate"] if r["w_forget"] == w)
    assert load_soft_prompt(tmp_path / "alone").vectors.equal(load_soft_prompt(tmp_path / "search").vectors)
