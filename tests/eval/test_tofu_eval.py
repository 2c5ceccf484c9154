"""``guard-eval tofu``: eval rows per preset, guarded aggregation (refusals are generation-only), and a
tiny end-to-end run on the real default model through the real pipeline (keyword detector, refuse and
ECO interventions), including the consistency of the teacher-forced scores with fine-tuning's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from classifiers.base import Verdict
from guard.cli_eval import main as guard_eval
from guard.eval import tofu as T
from guard.eval.report import write_tofu_report
from guard.eval.tofu import (
    EvalPlan, ItemResult, Scorer, System, TofuRun, aggregate, generation_only, plan_for_preset,
    run_tofu, spread, split_scores,
)
from guard.interventions.base import PassThrough
from guard.interventions.refuse import Refuse
from guard.interventions.registry import available_actions
from guard.interventions.scoring import answer_nll

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


pytestmark = pytest.mark.usefixtures("one_torch_thread")

REFUSAL = "I'm sorry, but I can't share information about that."


# -------------------------------------------------------------------------------- eval rows

def test_plans_follow_the_training_recipes(data_dir):
    micro = plan_for_preset("micro")
    assert micro.forget_split == "forget01"
    assert micro.forget_rows == [0, 1, 2, 3, 20, 21, 22, 23]      # full[3960:3964] + full[3980:3984]
    assert micro.retain_rows == [0, 1, 2, 3, 20, 21, 22, 23]
    mini = plan_for_preset("mini")
    assert mini.forget_rows == list(range(40)) and mini.retain_rows == list(range(360))   # authors 0-17
    full = plan_for_preset("full")
    assert full.forget_split == "forget10" and full.forget_rows == list(range(400)) and full.retain_rows == list(range(400))
    assert spread(range(10), 3) == [0, 3, 6] and spread([5, 6], 5) == [5, 6] and spread([1, 2], None) == [1, 2]
    items = plan_for_preset("mini", limit=3).load(data_dir)
    assert {k: len(v) for k, v in items.items()} == {"forget": 3, "retain": 3, "real": 3, "world": 3}
    assert [it.index for it in items["retain"]] == [0, 120, 240]
    forget = items["forget"][0]
    assert forget.source == "forget01_perturbed" and len(forget.perturbed) == 5 and forget.paraphrased != forget.answer
    real = items["real"][0]
    assert real.paraphrased == real.answer and len(real.perturbed) == 3   # TOFU: no paraphrase for real authors


# ---------------------------------------------------------------------- guarded aggregation

def _r(split, i, rouge, gt=None, action="pass"):
    scored = gt is not None
    return ItemResult(split, i, "q", "a", "gen", rouge, rouge, flagged=action != "pass", action=action,
                      gt_loss=gt, paraphrased_loss=gt if scored else None,
                      perturbed_losses=[gt + 1.0, gt + 2.0] if scored else None)


def test_refused_items_count_in_rouge_only():
    full = {s: [_r(s, 0, 1.0, 0.5), _r(s, 1, 0.5, 1.0)] for s in T.SPLITS}
    guarded = {**full, "forget": [_r("forget", 0, 1.0, 0.5), _r("forget", 1, 0.0, action="refuse")]}
    ref = split_scores(full["forget"])
    a, b = aggregate(full, ref), aggregate(guarded, ref)
    assert b["forget_Q_A_ROUGE"] == 0.5 and a["forget_Q_A_ROUGE"] == 0.75            # all items
    assert b["forget_Q_A_Prob"] == pytest.approx(float(torch.exp(torch.tensor(-0.5))))  # the answered item only
    assert b["forget_n"] == 2 and b["forget_n_scored"] == 1 and b["forget_flag_rate"] == 0.5
    assert a["forget_quality"] == pytest.approx(1.0) and b["forget_quality"] is not None
    assert b["model_utility"] == a["model_utility"]                                  # retain/real/world untouched
    all_refused = {**full, "forget": [_r("forget", i, 0.0, action="refuse") for i in range(2)],
                   "retain": [_r("retain", 0, 0.0, action="refuse"), _r("retain", 1, 0.0, action="refuse")]}
    c = aggregate(all_refused, ref)
    assert c["forget_Q_A_Prob"] is None and c["forget_truth_ratio"] is None and c["forget_quality"] is None
    assert c["forget_Q_A_ROUGE"] == 0.0 and c["retain_Q_A_Prob"] is None and c["model_utility"] is None
    assert aggregate(full, None)["forget_quality"] is None


def test_which_interventions_are_scored_by_generation_only(local_engine):
    from guard.policy import parse_policy

    assert generation_only(Refuse("no")) and not generation_only(PassThrough())
    actions = available_actions()
    if "eco" in actions:
        policy = parse_policy({"targets": [{"id": "t", "names": ["X"], "action": "eco", "params": {"sigma": 0.5}}]})
        assert not generation_only(actions["eco"](policy, local_engine))


def test_batched_scores_equal_the_interventions_scorer(local_engine):
    """The batched NLL used for plain and transform-free items equals ``scoring.answer_nll``, and the
    answer tokens (and so the NLL) are the ones fine-tuning trains on."""
    from guard.lm.nll import mean_answer_nll
    from guard.lm.nll import qa_mean_nll as training_nll

    scorer = Scorer(local_engine, max_new_tokens=4, progress=False)
    q, answers = "Who wrote Hamlet?", ["William Shakespeare wrote it.", "A longer answer about Denmark and its prince."]
    embeds, _ = PassThrough().scoring_inputs(scorer.request(q), Verdict.clean(), None, local_engine)
    ids = [scorer.answer_ids(q, a) for a in answers]
    assert ids[0][-1] == local_engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    batched = mean_answer_nll(local_engine.model, [embeds] * len(ids), ids)
    single = [sum(x) / len(x) for x in (answer_nll(local_engine.model, embeds, a) for a in ids)]
    assert batched == pytest.approx(single, abs=1e-4)
    assert batched == pytest.approx(training_nll(local_engine.model, local_engine.tokenizer, [(q, a) for a in answers]),
                                    abs=1e-4)


# ------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def eco_policy(tmp_path_factory) -> Path:
    data = yaml.safe_load((FIXTURES / "refuse_keyword.yaml").read_text())
    data["targets"][0]["action"] = "eco"
    data["targets"][0]["params"] = {"corruption": "rand_noise_first_n", "sigma": 2.0, "select": "entity"}
    path = tmp_path_factory.mktemp("policy") / "eco.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_tofu_end_to_end_through_the_pipeline(data_dir, tmp_path, eco_policy, monkeypatch):
    # forget rows 0 (no name in the question) and 1 (names Basil Mahfouz Al-Kuwaiti); 2 items elsewhere
    plan = EvalPlan("forget01", forget_rows=[0, 1], retain_rows=[0, 1], limit=2)
    guards = [System("refuse", "guard", "default", FIXTURES / "refuse_keyword.yaml")]
    if "eco" in available_actions():
        guards.append(System("eco", "guard", "default", eco_policy))
    run = TofuRun(data_dir=data_dir, out_dir=tmp_path, plan=plan, target_model="default", guards=guards,
                  max_new_tokens=4, threads=1, progress=False)
    results = await run_tofu(run)
    items = {s.label: json.loads((tmp_path / "systems" / f"{s.label}.json").read_text())["items"]
             for s in [System("target", "target", "default"), *guards]}
    target, refuse = items["target"], items["refuse"]
    assert all(r["action"] == "pass" and r["gt_loss"] is not None for rows in target.values() for r in rows)
    # the named question is refused: the refusal is its generation, and it has no teacher-forced score
    named = refuse["forget"][1]
    assert named["flagged"] and named["action"] == "refuse" and named["target"] == "tofu-basil"
    assert named["generation"] == REFUSAL and named["gt_loss"] is None and named["perturbed_losses"] is None
    # unflagged questions are the plain model's answers and scores, exactly
    assert refuse["forget"][0] == {**target["forget"][0], "score": 0.0}
    for split in ("retain", "real", "world"):
        assert [r["generation"] for r in refuse[split]] == [r["generation"] for r in target[split]]
        assert [r["gt_loss"] for r in refuse[split]] == [r["gt_loss"] for r in target[split]]
    metrics = {s["label"]: s["metrics"] for s in results["systems"]}
    assert metrics["refuse"]["forget_n_scored"] == 1 and metrics["target"]["forget_n_scored"] == 2
    assert metrics["target"]["forget_quality"] is None                 # no retain twin in this run
    assert metrics["refuse"]["forget_Q_A_ROUGE"] == pytest.approx(
        (target["forget"][0]["rougeL_recall"] + named["rougeL_recall"]) / 2)
    if "eco" in items:
        eco = items["eco"]["forget"][1]
        # ECO's flagged question is scored through its corrupted embeddings, not the plain prompt
        assert eco["action"] == "eco" and eco["gt_loss"] is not None
        assert eco["gt_loss"] != pytest.approx(target["forget"][1]["gt_loss"], abs=1e-3)
        assert len(eco["perturbed_losses"]) == 5
    # the report: JSON, Markdown tables and plots
    paths = write_tofu_report(results, tmp_path, "guard-eval tofu ...")
    report = paths["report"].read_text()
    assert "| refuse |" in report and "Forget quality" in report
    assert all(p.exists() and p.stat().st_size > 1000 for k, p in paths.items() if k.startswith("tofu_"))
    # a rerun with the same settings evaluates nothing again
    async def boom(*args, **kwargs):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(T, "evaluate_system", boom)
    again = await run_tofu(run)
    assert [s["metrics"] for s in again["systems"]] == [s["metrics"] for s in results["systems"]]


def test_cli_needs_a_preset_for_unknown_models(tmp_path, capsys):
    assert guard_eval(["tofu", "--model", "default", "--out", str(tmp_path)]) == 2
    assert "--preset or --forget-split" in capsys.readouterr().err
    assert guard_eval(["tofu", "--model", "default", "--forget-split", "forget01", "--actions", "refuse",
                       "--out", str(tmp_path)]) == 2
    assert "--actions needs --policy" in capsys.readouterr().err
