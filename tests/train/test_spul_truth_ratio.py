"""``guard-train spul --w-truth-ratio``: the forget items' log truth ratios are trained toward the frozen
model's on never-seen QA. The term's truth ratios are the ones ``guard-eval tofu`` scores; the targets
are the level's quantiles in the items' own order; only every n-th forget item reaches the term (the
rest is its held-out half, reported, never trained on); the CLI records both halves and the term falls."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from guard.cli_train import main as guard_train
from guard.errors import ConfigError
from guard.lm.nll import mean_answer_nll
from guard.policy import load_policy
from guard.train.cli_args import holdout_source
from guard.train.spul import SpulConfig, collect_data, load_frozen_model
from guard.train.spul_objective import TR_EXAMPLES, TR_TARGET, Weights, group_log_truth_ratios, spul_losses
from guard.train.spul_truth_ratio import (
    TruthRatioTerm, attach_truth_ratio, encode_group, forget_truth_ratio_items, plan_truth_ratio, rank_matched_targets,
    truth_ratio_report,
)
from tests.train.test_spul_counterfactual import micro_policy

HOLDOUT_ROWS = "360:364"


@pytest.fixture(scope="module")
def micro(tofu_micro):
    path = tofu_micro["target"]
    return load_frozen_model(path, "cpu"), AutoTokenizer.from_pretrained(path), path


def test_targets_are_the_level_quantiles_in_the_items_order():
    level = np.array([-2.0, -1.0, 0.0, 1.0])
    initial = np.array([0.3, -5.0, 0.1, 9.0])
    goal = rank_matched_targets(initial, level)
    assert list(np.argsort(goal)) == list(np.argsort(initial))  # the order is kept
    assert goal.min() >= level.min() and goal.max() <= level.max()
    assert np.allclose(np.sort(goal), np.quantile(level, [0.125, 0.375, 0.625, 0.875]))


def test_the_term_reads_the_truth_ratio_guard_eval_scores(tmp_path, data_dir, micro):
    model, tokenizer, _ = micro
    cfg = SpulConfig()
    item = forget_truth_ratio_items(load_policy(micro_policy(tmp_path, data_dir)), None)[0]
    group = encode_group(tokenizer, item, cfg)
    assert len(group) == 1 + len(item.perturbed)
    got = float(group_log_truth_ratios(model, None, [group])[0])
    # the scorer's path: prompt embeddings then each answer's ids, token-mean NLL
    emb = model.get_input_embeddings()
    prompt = emb(torch.tensor(group[0].prompt_ids))
    nll = mean_answer_nll(model, [prompt] * len(group), [list(ex.answer_ids) for ex in group])
    assert got == pytest.approx(nll[0] - np.mean(nll[1:]), abs=1e-4)


def test_only_every_nth_item_gets_a_target_and_the_term_has_a_gradient(tmp_path, data_dir, micro):
    model, tokenizer, _ = micro
    policy = load_policy(micro_policy(tmp_path, data_dir))
    cfg = SpulConfig(val_fraction=0.0)
    term = TruthRatioTerm(holdout_source(data_dir / "tofu" / "retain_perturbed.json", HOLDOUT_ROWS), every=2)
    items = forget_truth_ratio_items(policy, None)
    plan = plan_truth_ratio(model, tokenizer, cfg, term, items)
    assert [it.row for it, _, _ in plan.tuned] == [it.row for it in items[::2]]
    assert [it.row for it, _ in plan.held_out] == [it.row for it in items[1::2]]
    assert len(plan.level) == 4 and np.all(np.isfinite(plan.level))
    data = collect_data(policy, tokenizer, cfg)
    taught, n = attach_truth_ratio(data.forget_train, plan)
    assert n == len(plan.tuned)
    held_questions = {it.question for it, _ in plan.held_out}
    for ex in taught:
        assert (TR_EXAMPLES in ex.meta) == (ex.question not in held_questions)
    # the held-out half's wrong answers never reach the trainer
    wrong = {a for it, _ in plan.held_out for a in (it.paraphrased, *it.perturbed)}
    assert not any(g.answer in wrong for ex in taught for g in ex.meta.get(TR_EXAMPLES, ()))
    soft = torch.zeros(2, model.get_input_embeddings().weight.shape[1], requires_grad=True)
    parts = spul_losses(model, soft, taught, [], Weights(retain=0, kl=0, truth_ratio=1.0))
    assert float(parts["truth_ratio"].detach()) > 0 and float(parts["total"].detach()) == pytest.approx(
        float(parts["forget_ce"].detach()) + float(parts["truth_ratio"].detach()), rel=1e-5)
    parts["truth_ratio"].backward()
    assert soft.grad is not None and float(soft.grad.abs().sum()) > 0
    # an item already at its target costs nothing
    empty = torch.zeros(0, soft.shape[1])
    at_target = [type(ex)(ex.prompt_ids, ex.answer_ids, ex.insert_at, ex.question, ex.answer, ex.gold,
                          {**ex.meta, TR_TARGET: float(group_log_truth_ratios(model, empty, [ex.meta[TR_EXAMPLES]])[0])})
                 for ex in taught if TR_EXAMPLES in ex.meta]
    assert float(spul_losses(model, empty, at_target, [], Weights(retain=0, kl=0, truth_ratio=1.0))["truth_ratio"]) < 1e-6


def test_the_term_needs_its_level(tmp_path, data_dir, capsys):
    with pytest.raises(ConfigError, match="--holdout") as err:
        SpulConfig(weights=Weights(truth_ratio=1.0)).validate()
    assert err.value.param == "holdout"
    with pytest.raises(ConfigError) as err:
        SpulConfig(weights=Weights(truth_ratio=1.0), truth_ratio_holdout="x", truth_ratio_every=1).validate()
    assert err.value.param == "truth_ratio_every"
    # the term alone may make the model forget; without it, --w-forget 0 is refused
    SpulConfig(weights=Weights(forget=0.0, truth_ratio=1.0), truth_ratio_holdout="x").validate()
    with pytest.raises(ConfigError) as err:
        SpulConfig(weights=Weights(forget=0.0)).validate()
    assert err.value.param == "w_forget"
    # --holdout with neither --w-truth-ratio nor a counterfactual search to feed is refused, naming the fix
    rc = guard_train(["spul", "--policy", str(micro_policy(tmp_path, data_dir)), "--model", "tofu-micro-target",
                      "--holdout", str(data_dir / "tofu" / "retain_perturbed.json"), "--out", str(tmp_path / "x")])
    assert rc != 0 and "--w-truth-ratio" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_trains_the_truth_ratios_toward_the_level_and_reports_both_halves(tmp_path, data_dir, micro):
    out = tmp_path / "soft"
    rc = guard_train(["spul", "--policy", str(micro_policy(tmp_path, data_dir)), "--model", "tofu-micro-target",
                      "--w-truth-ratio", "10", "--holdout", str(data_dir / "tofu" / "retain_perturbed.json"),
                      "--holdout-rows", HOLDOUT_ROWS, "--out", str(out), "--epochs", "3", "--n-tokens", "4",
                      "--val-fraction", "0", "--w-retain", "0", "--w-kl", "0", "--lr", "0.1",
                      "--no-eval", "--no-progress", "--threads", "1"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hyperparameters"]["weights"]["truth_ratio"] == 10
    assert manifest["data"]["truth_ratio"]["tuned_train"] == 2 and manifest["data"]["truth_ratio"]["held_out"] == 2
    report = manifest["truth_ratio"]
    assert report["held_out_half"]["after"]["n"] == 2 and report["level"]["n"] == 4
    items = report["tuned_half"]["items"]

    def miss(key: str) -> float:
        return float(np.mean([(it[key] - it["target"]) ** 2 for it in items]))

    assert miss("after") < miss("before"), "the tuned items move toward their targets"
    history = manifest["metrics"]["history"]
    assert history[-1]["train"]["truth_ratio"] < history[0]["train"]["truth_ratio"]


def test_the_shared_prompt_reading_equals_full_sequences(tmp_path, data_dir, micro):
    model, tokenizer, _ = micro
    cfg = SpulConfig()
    item = forget_truth_ratio_items(load_policy(micro_policy(tmp_path, data_dir)), None)[1]
    group = encode_group(tokenizer, item, cfg)
    soft = torch.randn(3, model.get_input_embeddings().weight.shape[1]) * 0.02
    shared = group_log_truth_ratios(model, soft, [group], keep_ok=True)
    full = group_log_truth_ratios(model, soft, [group], keep_ok=False)
    assert float(shared[0]) == pytest.approx(float(full[0]), abs=1e-4)


def test_swapped_answers_train_every_forget_item_and_read_tofu_apart(tmp_path, data_dir, micro):
    model, tokenizer, _ = micro
    policy = load_policy(micro_policy(tmp_path, data_dir))
    cfg = SpulConfig(val_fraction=0.0)
    term = TruthRatioTerm(holdout_source(data_dir / "tofu" / "retain_perturbed.json", HOLDOUT_ROWS), every=1,
                          answers="swapped")
    items = forget_truth_ratio_items(policy, None)
    retain = [json.loads(line)["answer"] for line in (data_dir / "tofu" / "full.json").read_text().splitlines()[:40]]
    plan = plan_truth_ratio(model, tokenizer, cfg, term, items, pool_answers=retain)
    assert plan.tuned and not plan.held_out
    tofu_wrong = {p for it in items for p in it.perturbed}
    for it, group, _ in plan.tuned:
        assert it.paraphrased == it.answer  # the true answer against its swapped copies
        assert not tofu_wrong & set(it.perturbed)  # never the evaluation's perturbed answers
    assert plan.readout is not None and len(plan.readout) == len(items) and plan.readout_level is not None
    report = truth_ratio_report(model, torch.zeros(1, model.get_input_embeddings().weight.shape[1]), plan)
    assert set(report["tofu_readout"]) >= {"all", "even_rows", "odd_rows", "level"}
    with pytest.raises(ConfigError) as err:
        TruthRatioTerm(term.holdout, every=1).validate()  # TOFU's answers keep a share out
    assert err.value.param == "truth_ratio_every"
