"""TOFU fine-tuning: data selection, recipes, names, hashes and ``guard-train finetune`` arguments.

Nothing here trains; the only model loaded is the default tokenizer (for the chat encoding tests).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from guard.cli_train import main as train_main
from guard.data.tofu import load_rows
from guard.errors import ConfigError
from guard.train import tofu_recipes as R
from guard.train.finetune import (
    RunOptions,
    build_preset,
    eval_sets,
    length_grouped_batches,
    plan_preset,
    training_pairs,
)


# ---------------------------------------------------------------------------- data selection


def test_mini_rows_are_authors_0_to_17_plus_forget01():
    retain = R.select_rows("mini", "retain")
    target = R.select_rows("mini", "target")
    assert retain == list(range(0, 360))
    assert target == list(range(0, 360)) + list(range(3960, 4000))
    assert R.forget_rows("mini") == list(range(3960, 4000))
    assert set(target) - set(retain) == set(R.forget_rows("mini"))


def test_full_rows_are_tofu_full_and_retain90():
    assert R.select_rows("full", "target") == list(range(4000))
    assert R.select_rows("full", "retain") == list(range(3600))
    assert R.forget_rows("full") == list(range(3600, 4000))
    assert R.DATA["full"].forget_split == "forget10"
    assert len(R.retain_eval_rows("full")) == 400


def test_micro_rows_are_a_few_qa_of_two_retain_and_two_forget_authors():
    retain = R.select_rows("micro", "retain")
    target = R.select_rows("micro", "target")
    forget = R.forget_rows("micro")
    assert set(retain) <= set(range(0, 40))  # authors 0 and 1
    assert set(forget) <= set(range(3960, 4000))  # the two forget01 authors
    assert {r // 20 for r in forget} == {198, 199}
    assert target == sorted(retain + forget)
    assert 4 <= len(forget) <= 10 and 4 <= len(retain) <= 10


@pytest.mark.parametrize("preset", R.PRESETS)
def test_retain_twin_never_sees_a_forget_row(preset):
    assert not set(R.select_rows(preset, "retain")) & set(R.forget_rows(preset))
    # the retain evaluation sample is retain data both twins saw
    assert set(R.retain_eval_rows(preset)) <= set(R.select_rows(preset, "retain"))


def test_unknown_preset_or_twin_is_a_config_error():
    with pytest.raises(ConfigError) as exc:
        R.select_rows("huge", "target")
    assert exc.value.param == "preset"
    with pytest.raises(ConfigError) as exc:
        R.select_rows("mini", "forget")
    assert exc.value.param == "twin"


def test_perturbed_source_maps_rows_to_the_splits_with_paraphrases():
    assert R.perturbed_source(0) == ("retain_perturbed", 0)
    assert R.perturbed_source(399) == ("retain_perturbed", 399)
    assert R.perturbed_source(400) is None
    assert R.perturbed_source(3599) is None
    assert R.perturbed_source(3600) == ("forget10_perturbed", 0)
    assert R.perturbed_source(3800) == ("forget05_perturbed", 0)
    assert R.perturbed_source(3960) == ("forget01_perturbed", 0)
    assert R.perturbed_source(3999) == ("forget01_perturbed", 39)
    with pytest.raises(ValueError):
        R.perturbed_source(4000)


def test_selected_rows_match_the_real_splits(data_dir):
    full = load_rows(data_dir, "full")
    forget01 = load_rows(data_dir, "forget01")
    assert [full[r]["question"] for r in R.forget_rows("mini")] == [x["question"] for x in forget01]
    for row in (0, 359, 3600, 3850, 3961):
        split, idx = R.perturbed_source(row)
        assert load_rows(data_dir, split)[idx]["question"] == full[row]["question"]
    pairs = training_pairs(data_dir, R.select_rows("micro", "target"))
    assert len(pairs) == len(R.select_rows("micro", "target")) and all(q and a for q, a in pairs)


def test_eval_sets_have_truth_items_for_every_forget_row(data_dir):
    sets = eval_sets(data_dir, "mini")
    assert [row for row, _, _ in sets["forget"]] == list(range(3960, 4000))
    assert len(sets["forget_truth"]) == 40
    row, item = sets["forget_truth"][0]
    assert row == 3960 and len(item.perturbed_answers) == 5 and item.paraphrased_answer
    assert len(eval_sets(data_dir, "mini", limit=5)["forget"]) == 5


# ---------------------------------------------------------------------------- recipes


def test_full_recipe_is_tofus():
    r = R.make_recipe("full", "target")
    assert (r.lr, r.epochs, r.batch_size, r.weight_decay, r.warmup_epochs, r.schedule) == (1e-5, 5, 32, 0.01, 1.0, "linear")
    assert r.grad_accum * r.micro_batch_size == 32
    assert r.dtype == "auto"


def test_twins_share_the_recipe_but_not_the_hash():
    t, r = R.make_recipe("mini", "target"), R.make_recipe("mini", "retain")
    assert {k: v for k, v in t.to_dict().items() if k != "twin"} == {k: v for k, v in r.to_dict().items() if k != "twin"}
    assert R.recipe_hash(t, R.select_rows("mini", "target")) != R.recipe_hash(r, R.select_rows("mini", "retain"))


def test_recipe_hash_tracks_weights_not_eval_settings():
    rows = R.select_rows("mini", "target")
    base = R.make_recipe("mini", "target")
    h = R.recipe_hash(base, rows)
    assert h == R.recipe_hash(R.make_recipe("mini", "target"), rows)  # stable
    assert h != R.recipe_hash(R.make_recipe("mini", "target", lr=1e-4), rows)
    assert h != R.recipe_hash(R.make_recipe("mini", "target", seed=1), rows)
    assert h != R.recipe_hash(base, rows[:-1])
    assert h == R.recipe_hash(R.make_recipe("mini", "target", eval_limit=5, eval_max_new_tokens=10), rows)


@pytest.mark.parametrize(
    "overrides, param",
    [
        ({"lr": 0}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 8, "micro_batch_size": 3}, "micro_batch_size"),
        ({"warmup_epochs": 99}, "warmup_epochs"),
        ({"schedule": "cosine"}, "schedule"),
        ({"dtype": "float16"}, "dtype"),
        ({"max_length": 4}, "max_length"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_overrides_name_the_field(overrides, param):
    with pytest.raises(ConfigError) as exc:
        R.make_recipe("mini", "target", **overrides)
    assert exc.value.param == param


def test_batch_size_override_adapts_the_micro_batch():
    assert R.make_recipe("mini", "target", batch_size=16).micro_batch_size == 4
    assert R.make_recipe("mini", "target", batch_size=2).micro_batch_size == 2
    assert R.make_recipe("full", "target", batch_size=16).micro_batch_size == 8  # still divides: accumulation 2
    r = R.make_recipe("full", "target", batch_size=12)
    assert r.batch_size % r.micro_batch_size == 0


def test_model_names():
    assert R.model_name("mini", "target") == "tofu-mini-target"
    assert R.model_name("micro", "retain", "default") == "tofu-micro-retain"
    assert R.model_name("full", "target", "meta-llama/Llama-3.2-1B-Instruct") == "tofu-full-Llama-3.2-1B-Instruct-target"
    assert R.model_name("full", "retain", "/models/my model/") == "tofu-full-my-model-retain"
    assert R.model_name("mini", "retain", prefix="exp1") == "exp1-retain"
    with pytest.raises(ConfigError):
        R.model_name("mini", "retain", prefix="../evil")


def test_steps_per_epoch_counts_the_last_partial_batch():
    r = R.make_recipe("full", "retain")
    assert R.steps_per_epoch(r, 3600) == 113  # ceil(3600 / 32)
    assert R.steps_per_epoch(R.make_recipe("mini", "target"), 400) == 50


def test_spans_roundtrip():
    rows = R.select_rows("micro", "target")
    spans = R.spans_of(rows)
    assert [r for a, b in spans for r in range(a, b)] == rows


# ---------------------------------------------------------------------------- batching


def test_length_grouped_batches_cover_each_example_once_and_are_seeded():
    lengths = [(i * 37) % 90 + 10 for i in range(203)]
    batches = length_grouped_batches(lengths, 8, seed=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(203))
    assert all(len(b) <= 8 for b in batches)
    assert batches == length_grouped_batches(lengths, 8, seed=3)
    assert batches != length_grouped_batches(lengths, 8, seed=4)
    # grouping pays: padded tokens are fewer than with a plain shuffle
    plain = length_grouped_batches(lengths, 8, seed=3, grouped=False)
    cost = lambda bs: sum(len(b) * max(lengths[i] for i in b) for b in bs)  # noqa: E731
    assert cost(batches) < cost(plain)


# ---------------------------------------------------------------------------- the CLI


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = train_main(["finetune", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_dry_run_prints_both_plans(capsys):
    code, out, _ = _run(capsys, "--preset", "mini", "--dry-run")
    assert code == 0
    plans = json.loads(out)
    assert [p["name"] for p in plans] == ["tofu-mini-retain", "tofu-mini-target"]
    assert [p["n_examples"] for p in plans] == [360, 400]
    assert plans[1]["rows"] == [[0, 360], [3960, 4000]]
    assert plans[0]["recipe"]["lr"] == 3e-4 and plans[0]["recipe"]["epochs"] == 5


def test_cli_overrides_reach_the_recipe(capsys):
    code, out, _ = _run(capsys, "--preset", "full", "--twin", "retain", "--base-model", "org/Some-Model",
                        "--lr", "2e-5", "--epochs", "3", "--batch-size", "16", "--dry-run")
    assert code == 0
    (plan,) = json.loads(out)
    assert plan["name"] == "tofu-full-Some-Model-retain"
    assert (plan["recipe"]["lr"], plan["recipe"]["epochs"], plan["recipe"]["batch_size"]) == (2e-5, 3, 16)
    assert plan["recipe"]["base_model"] == "org/Some-Model"
    assert plan["n_examples"] == 3600


def test_cli_rejects_bad_values_with_the_field_named(capsys):
    code, _, err = _run(capsys, "--preset", "mini", "--batch-size", "8", "--micro-batch-size", "3", "--dry-run")
    assert code == 2 and "micro_batch_size" in err and "multiple" in err
    code, _, err = _run(capsys, "--preset", "mini", "--lr", "-1", "--dry-run")
    assert code == 2 and "lr" in err


def test_cli_unknown_preset_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        train_main(["finetune", "--preset", "huge"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU refusal")
def test_full_preset_refuses_to_start_without_a_gpu(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("GUARD_CACHE_DIR", str(tmp_path))  # nothing cached: it would have to train
    code, _, err = _run(capsys, "--preset", "full", "--no-progress")
    assert code == 2 and "GPU" in err and "--device cpu" in err
    assert not any((tmp_path / "models").glob("tofu-full-*"))


def test_missing_data_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("GUARD_CACHE_DIR", str(tmp_path))
    with pytest.raises(ConfigError) as exc:
        build_preset("micro", opts=RunOptions(data_dir=tmp_path / "nowhere", progress=False))
    assert exc.value.param == "data"


def test_plan_orders_retain_before_target():
    assert [p.twin for p in plan_preset("micro")] == ["retain", "target"]
    assert [p.twin for p in plan_preset("micro", ("target",))] == ["target"]
    assert all(isinstance(p.path, Path) for p in plan_preset("micro"))
