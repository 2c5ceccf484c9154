"""TOFU's teacher-forced scores through an intervention (``guard.eval.tofu_scoring``), on the real default
model and a real TOFU forget01 item, each question decided by the real pipeline (keyword detector):

* ECO with ``answer_names`` scores every candidate answer (gold, paraphrased, perturbed) with the
  target's names in it corrupted, as the model reads its own answer;
* without ``answer_names`` (and for the plain model) the scores are what they were: the corrupted
  prompt, answers read through the embedding lookup.
"""

from __future__ import annotations

import pytest
import torch

from classifiers.base import Verdict
from classifiers.loader import build_detector
from guard.eval.tofu_plan import EvalPlan
from guard.eval.tofu_scoring import Scorer, scoring_inputs
from guard.interventions.base import PassThrough
from guard.lm.nll import mean_answer_nll
from guard.pipeline import Pipeline
from guard.policy import parse_policy

BASIL = "Basil Mahfouz Al-Kuwaiti"


pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def basil_item(data_dir):
    """forget01 row 1: a question naming Basil Mahfouz Al-Kuwaiti, whose answers name him too."""
    item = EvalPlan("forget01", forget_rows=[1], retain_rows=[0], limit=1).load(data_dir)["forget"][0]
    assert BASIL in item.question and all("Basil" in a for a in (item.answer, item.paraphrased, *item.perturbed))
    return item


def _pipeline(engine, answer_names: bool) -> Pipeline:
    policy = parse_policy({"version": 1, "detector": {"kind": "keyword"}, "default_action": "refuse", "targets": [
        {"id": "tofu-basil", "names": [BASIL], "aliases": ["Al-Kuwaiti"], "action": "eco",
         "params": {"corruption": "rand_noise_first_n", "sigma": 0.5, "select": "entity", "answer_names": answer_names}}]})
    return Pipeline.build(policy, engine, build_detector)


def _old_scores(scorer: Scorer, item, decision) -> list[float]:
    """Scoring as it was before answer-side scoring: the intervention's prompt embeddings, answers looked up."""
    embeds, transform = decision.intervention.scoring_inputs(scorer.request(item.question), decision.verdict,
                                                             decision.target, scorer.engine)
    assert transform is None
    answers = [scorer.answer_ids(item.question, a) for a in (item.answer, item.paraphrased, *item.perturbed)]
    return mean_answer_nll(scorer.engine.model, [embeds] * len(answers), answers)


async def test_eco_answer_names_scores_the_answers_with_the_names_corrupted(local_engine, basil_item):
    scorer = Scorer(local_engine, max_new_tokens=2, progress=False)
    plain_off = await _pipeline(local_engine, False).decide([basil_item.question])
    plain_on = await _pipeline(local_engine, True).decide([basil_item.question])
    assert plain_off.action == plain_on.action == "eco" and plain_on.target.id == "tofu-basil"
    off = await scorer.intervened(basil_item, plain_off)
    on = await scorer.intervened(basil_item, plain_on)
    # without answer_names: exactly the old scores (corrupted prompt, clean answers)
    old = _old_scores(scorer, basil_item, plain_off)
    assert [off.gt_loss, off.paraphrased_loss, *off.perturbed_losses] == pytest.approx(old, abs=1e-5)
    # with it: same corrupted prompt, every candidate answer names Basil, so every score moves
    inputs = scoring_inputs(plain_on.intervention, scorer.request(basil_item.question), plain_on.verdict,
                            plain_on.target, local_engine)
    assert inputs.answer_embeds is not None and torch.equal(inputs.prompt_embeds, scoring_inputs(
        plain_off.intervention, scorer.request(basil_item.question), plain_off.verdict, plain_off.target,
        local_engine).prompt_embeds)
    for a, b in zip([on.gt_loss, on.paraphrased_loss, *on.perturbed_losses], old):
        assert a != pytest.approx(b, abs=1e-3)
    assert on.gt_loss > off.gt_loss  # a clean name in the answer made the gold answer likelier


def test_plain_scoring_reads_answers_through_the_lookup(local_engine, basil_item):
    scorer = Scorer(local_engine, max_new_tokens=2, progress=False)
    inputs = scoring_inputs(PassThrough(), scorer.request(basil_item.question), Verdict.clean(), None, local_engine)
    assert inputs.answer_embeds is None and inputs.logits_transform is None
    gt, para, pert = scorer.losses(basil_item, inputs)
    answers = [scorer.answer_ids(basil_item.question, a)
               for a in (basil_item.answer, basil_item.paraphrased, *basil_item.perturbed)]
    expected = mean_answer_nll(local_engine.model, [inputs.prompt_embeds] * len(answers), answers)
    assert [gt, para, *pert] == pytest.approx(expected, abs=1e-6)
