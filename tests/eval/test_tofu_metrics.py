"""TOFU metrics: hand-computed values, then the official reference logs (Llama-2-7b TOFU models)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import hmean as scipy_hmean

from guard.errors import ConfigError
from guard.eval import metrics
from guard.eval.metrics import compute, get_metric, harmonic_mean, rouge_recall
from guard.eval.reference_logs import discover_reference_logs, load_reference_log, model_tag
from guard.eval.tofu_metrics import (
    LEGACY_NAMES, TOFU_CONFIG, UTILITY_KEYS, SplitScores, aggregate_tofu, closer_to_1_better, ks_test,
    model_utility, probabilities, probabilities_with_options, true_better, truth_ratios,
)
from guard.paths import default_data_dir

LN2, LN4 = math.log(2), math.log(4)


def scores(gt, para, pert, rouge=None) -> SplitScores:
    return SplitScores(gt_loss=gt, paraphrased_loss=para, perturbed_losses=pert,
                       rougeL_recall=rouge if rouge is not None else [1.0] * len(gt))


# ----------------------------------------------------------------------------- hand values

def test_probability_is_exp_of_minus_average_loss():
    assert probabilities([0.0, LN2, LN4]) == pytest.approx([1.0, 0.5, 0.25])
    assert get_metric("probability")(scores([0.0, LN2], [0, 0], [[1], [1]])) == pytest.approx(0.75)


def test_probability_with_options_normalises_over_the_options():
    # p(gt)=0.5, options 0.25 and 0.25 -> 0.5 / 1.0
    assert probabilities_with_options([LN2], [[LN4, LN4]]) == pytest.approx([0.5])
    # p(gt)=0.25, options 0.5, 0.25 -> 0.25 / 1.0 ; and equal losses -> 1 / (1 + k)
    assert probabilities_with_options([LN4, 3.0], [[LN2, LN4], [3.0, 3.0, 3.0]]) == pytest.approx([0.25, 0.25])


def test_probability_with_options_does_not_underflow():
    # exp(-900) is 0 in float64; the naive formula would give 0/0
    assert probabilities_with_options([900.0], [[901.0, 902.0]])[0] == pytest.approx(
        1 / (1 + math.exp(-1) + math.exp(-2)))


def test_truth_ratio_is_perturbed_over_paraphrased_probability():
    # exp(para - mean(perturbed)) = exp(1 - 3)
    assert truth_ratios([1.0], [[2.0, 4.0]]) == pytest.approx([math.exp(-2)])
    # = geometric mean of the perturbed probabilities over the paraphrased probability
    p_para, p_pert = 0.5, [0.25, 0.125]
    r = truth_ratios([-math.log(p_para)], [[-math.log(p) for p in p_pert]])[0]
    assert r == pytest.approx(math.sqrt(p_pert[0] * p_pert[1]) / p_para)


def test_truth_ratio_aggregators():
    assert true_better([0.5, 2.0]) == pytest.approx(0.25)          # mean(max(0, 1 - R))
    assert closer_to_1_better([0.5, 2.0]) == pytest.approx(0.5)    # mean(min(R, 1/R))
    assert closer_to_1_better([1.0, 1.0]) == pytest.approx(1.0)
    assert true_better([0.0]) == 1.0 and closer_to_1_better([0.0]) == 0.0
    assert closer_to_1_better([float("inf")]) == 0.0
    s = scores([0, 0], [1.0, 1.0], [[1.0 + LN2], [1.0 - LN2]])     # R = 0.5 and 2
    assert get_metric("truth_ratio")(s, aggregator="true_better") == pytest.approx(0.25)
    assert get_metric("truth_ratio")(s) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unknown aggregator"):
        get_metric("truth_ratio")(s, aggregator="nope")


def test_ks_identical_distributions_give_p_value_one():
    x = [0.1, 0.5, 0.7, 1.2, 3.0]
    p, stat = ks_test(x, list(x))
    assert p == 1.0 and stat == 0.0
    p_far, stat_far = ks_test([0.1] * 30, [5.0] * 30)
    assert stat_far == 1.0 and p_far < 1e-10


def test_harmonic_mean():
    assert harmonic_mean([1.0, 2.0, 4.0]) == pytest.approx(12 / 7)
    assert harmonic_mean([0.3, 0.3]) == pytest.approx(0.3)
    assert harmonic_mean([0.5, 0.0, 1.0]) == 0.0
    vals = [0.98, 0.99, 0.47, 0.45, 0.93, 0.59, 0.41, 0.88, 0.53]
    assert harmonic_mean(vals) == pytest.approx(float(scipy_hmean(vals)), rel=1e-12)
    assert model_utility(vals) == pytest.approx(float(scipy_hmean(vals)), rel=1e-12)
    with pytest.raises(ValueError):
        harmonic_mean([-1.0, 1.0])
    with pytest.raises(ValueError):
        model_utility([0.5] * 8)


def test_rouge_recall_on_hand_examples():
    r1, rl = rouge_recall("the cat sat", "The cat sat on the mat")
    assert (r1, rl) == pytest.approx((0.5, 0.5))              # 3 of 6 reference tokens
    assert rouge_recall("running dogs", "run dog") == pytest.approx((1.0, 1.0))  # Porter stemming
    r1, rl = rouge_recall("mat the on", "the cat sat on the mat")
    assert r1 == pytest.approx(3 / 6) and rl == pytest.approx(2 / 6)  # LCS "the ... on": order matters for L
    assert rouge_recall("", "anything") == (0.0, 0.0)
    # recall is over the *reference*: a long answer that contains it scores 1
    assert rouge_recall("The author's name is Jaime Vasquez, born in Chile.", "Jaime Vasquez")[1] == 1.0


def test_split_scores_validation():
    with pytest.raises(ValueError, match="no items"):
        scores([], [], [])
    with pytest.raises(ValueError, match="paraphrased_loss has 1"):
        scores([1.0, 2.0], [1.0], [[1.0], [1.0]])
    with pytest.raises(ValueError, match="no perturbed"):
        scores([1.0], [1.0], [[]])
    with pytest.raises(ValueError, match="non-finite"):
        scores([float("nan")], [1.0], [[1.0]])


def test_aggregate_on_hand_scores():
    forget = scores([LN2, LN2], [1.0, 1.0], [[1.0 + LN2], [1.0 - LN2]], rouge=[0.0, 1.0])
    good = scores([0.0], [1.0], [[1.0 + LN2]], rouge=[1.0])     # p=1, R=0.5
    res = aggregate_tofu(forget, good, good, good)
    assert res["forget_Q_A_Prob"] == pytest.approx(0.5)
    assert res["forget_Q_A_ROUGE"] == pytest.approx(0.5)
    assert res["forget_truth_ratio"] == pytest.approx(0.5)
    assert res["retain_Q_A_Prob"] == 1.0 and res["retain_Truth_Ratio"] == pytest.approx(0.5)
    # with options: p(gt)=1, p(opt)=exp(-1-ln2)
    p_opt = 1 / (1 + math.exp(-1 - LN2))
    assert res["ra_Q_A_Prob_normalised"] == pytest.approx(p_opt)
    assert res["model_utility"] == pytest.approx(harmonic_mean([1, 1, 0.5] + [p_opt, 1, 0.5] * 2))
    assert res["forget_quality"] is None and res["forget_ks_statistic"] is None
    res = aggregate_tofu(forget, good, good, good, retain_model_forget=forget)
    assert res["forget_quality"] == 1.0
    assert set(LEGACY_NAMES) == set(TOFU_CONFIG)


def test_config_composition_and_errors():
    s = scores([0.0, LN2], [1.0, 1.0], [[1.0], [1.0]])
    out = compute({"p": {"metric": "probability", "inputs": {"split": "x"}},
                   "both": {"metric": "hmean", "inputs": {"values": ["p", "p"]}}}, {"x": s})
    assert out == {"p": pytest.approx(0.75), "both": pytest.approx(0.75)}
    with pytest.raises(ConfigError, match="unknown metric 'nope'"):
        compute({"a": {"metric": "nope"}}, {})
    with pytest.raises(ConfigError, match="input 'y'"):
        compute({"a": {"metric": "probability", "inputs": {"split": "y"}}}, {"x": s})
    with pytest.raises(ValueError, match="already registered"):
        metrics.register("probability")(lambda split: 0.0)
    assert {"probability", "probability_w_options", "rouge", "truth_ratio", "forget_quality", "hmean",
            "rwku_rouge_l", "triviaqa_em", "fluency_entropy"} <= set(metrics.METRICS)


# --------------------------------------------------------------------- official reference logs

REF_ROOT = default_data_dir() / "tofu" / "reference_eval_logs"
needs_logs = pytest.mark.skipif(not REF_ROOT.is_dir(), reason=f"TOFU reference logs not at {REF_ROOT}")

# recomputed with the legacy aggregate_eval_stat.py formulas (shared/data/README.md)
EXPECTED_UTILITY = {"full": 0.6227, "retain90": 0.6137, "retain95": 0.6006, "retain99": 0.6207}


@pytest.fixture(scope="module")
def logs():
    paths = discover_reference_logs(REF_ROOT)
    return {tag: load_reference_log(path) for tag, path in paths.items()}


@needs_logs
def test_discovers_all_reference_models(logs):
    assert set(logs) == set(EXPECTED_UTILITY)
    assert model_tag("ft_epoch5_lr1e-05_llama2-7b_retain90_wd0.01") == "retain90"
    sizes = {tag: {k: len(v) for k, v in splits.items()} for tag, splits in logs.items()}
    assert sizes["full"] == {"forget": 300, "retain": 300, "real": 100, "world": 117}
    assert sizes["retain95"]["forget"] == 200 and sizes["retain99"]["forget"] == 40


@needs_logs
@pytest.mark.parametrize("tag", sorted(EXPECTED_UTILITY))
def test_model_utility_reproduces_official_logs(logs, tag):
    res = aggregate_tofu(**logs[tag])
    assert res["model_utility"] == pytest.approx(EXPECTED_UTILITY[tag], abs=1e-3)
    assert res["model_utility"] == pytest.approx(model_utility([res[k] for k in UTILITY_KEYS]))


@needs_logs
def test_component_numbers_of_the_full_model(logs):
    res = aggregate_tofu(**logs["full"])
    expected = {"retain_Q_A_Prob": 0.9895, "retain_Q_A_ROUGE": 0.9857, "retain_Truth_Ratio": 0.4747,
                "ra_Q_A_Prob_normalised": 0.4555, "ra_Q_A_ROUGE": 0.9330, "ra_Truth_Ratio": 0.5962,
                "wf_Q_A_Prob_normalised": 0.4186, "wf_Q_A_ROUGE": 0.8825, "wf_Truth_Ratio": 0.5390,
                "forget_Q_A_Prob": 0.9909, "forget_Q_A_ROUGE": 0.9854, "forget_truth_ratio": 0.5160}
    for key, value in expected.items():
        assert res[key] == pytest.approx(value, abs=1e-4), key


@needs_logs
def test_forget_quality_full_vs_retain90_on_forget10(logs):
    res = aggregate_tofu(**logs["full"], retain_model_forget=logs["retain90"]["forget"])
    assert res["forget_quality"] == pytest.approx(1.83e-21, rel=0.05)
    assert res["forget_ks_statistic"] == pytest.approx(119 / 300, abs=1e-9)
    same = aggregate_tofu(**logs["retain90"], retain_model_forget=logs["retain90"]["forget"])
    assert same["forget_quality"] == 1.0


@needs_logs
def test_truth_ratio_formula_matches_the_logged_per_item_values(logs):
    for tag, splits in logs.items():
        for name, s in splits.items():
            logged = np.asarray(s.extra["truth_ratio"], dtype=np.float64)
            assert truth_ratios(s.paraphrased_loss, s.perturbed_losses) == pytest.approx(logged, rel=1e-5), (tag, name)


@needs_logs
def test_option_probability_matches_logged_normalized_gt_loss():
    import json

    path = discover_reference_logs(REF_ROOT)["full"]
    raw = json.loads(path.read_text(encoding="utf-8"))
    for section, split in (("eval_real_author_wo_options.json", "real"), ("eval_real_world_wo_options.json", "world")):
        sec = raw[section]
        s = load_reference_log(path)[split]
        logged = np.asarray([sec["normalized_gt_loss"][i] for i in s.ids], dtype=np.float64)
        ours = -np.log(probabilities_with_options(s.gt_loss, s.perturbed_losses))
        assert ours == pytest.approx(logged, rel=1e-6)


@needs_logs
def test_rouge_recall_reproduces_the_logged_scores(logs):
    s = logs["retain90"]["forget"]  # the retain model's answers on forget10: many partial matches
    generated = s.extra["generated_text"]
    partial = 0
    for (_prompt, generation, truth), r1, rl in zip(generated, s.rouge1_recall, s.rougeL_recall):
        ours = rouge_recall(generation, truth)
        assert ours == pytest.approx((r1, rl), abs=1e-12)
        partial += 0 < rl < 1
    assert partial > 100


def test_forget_quality_on_the_even_and_odd_rows_reads_only_those_items():
    from guard.eval.tofu_metrics import SplitScores, aggregate_tofu, forget_quality_rows

    n = 10
    twin = SplitScores(gt_loss=[1.0] * n, paraphrased_loss=[1.0] * n, perturbed_losses=[[1.0, 1.0]] * n,
                       rougeL_recall=[0.5] * n)
    # the even items are the twin's, the odd ones far from it
    method = SplitScores(gt_loss=[1.0] * n, paraphrased_loss=[1.0 if i % 2 == 0 else 0.0 for i in range(n)],
                         perturbed_losses=[[1.0, 1.0]] * n, rougeL_recall=[0.5] * n)
    assert forget_quality_rows(method, twin, every=2, offset=0) == pytest.approx(1.0)
    assert forget_quality_rows(method, twin, every=2, offset=1) < 0.05
    assert forget_quality_rows(method, None) is None
    got = aggregate_tofu(method, twin, twin, twin, retain_model_forget=twin)
    assert got["forget_quality_even_rows"] == pytest.approx(1.0) and got["forget_quality_odd_rows"] < 0.05


def test_forget_quality_rows_follow_the_item_ids_when_items_were_not_scored():
    from guard.eval.tofu_metrics import SplitScores, forget_quality_rows

    twin = SplitScores(gt_loss=[1.0] * 6, paraphrased_loss=[1.0, 0.0] * 3, perturbed_losses=[[1.0]] * 6,
                       rougeL_recall=[0.5] * 6, ids=[str(i) for i in range(6)])
    # items 1 and 3 were refused (not scored): the remaining odd item is 5, like the twin's odd items
    method = SplitScores(gt_loss=[1.0] * 4, paraphrased_loss=[1.0, 1.0, 1.0, 0.0], perturbed_losses=[[1.0]] * 4,
                         rougeL_recall=[0.5] * 4, ids=["0", "2", "4", "5"])
    assert forget_quality_rows(method, twin, every=2, offset=0) == pytest.approx(1.0)
    assert forget_quality_rows(method, twin, every=2, offset=1) == pytest.approx(1.0)
