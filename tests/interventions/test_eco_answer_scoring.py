"""ECO ``answer_names`` in teacher-forced scoring (``EcoIntervention.scoring_answer_embeds``): a given
answer is read with the target's name positions corrupted, exactly as generation re-reads the model's
own answer, and nothing else changes. Real default model, local engine."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from classifiers.base import Verdict
from guard.engines.base import SamplingParams
from guard.interventions.base import GuardRequest
from guard.interventions.eco import EcoConfig, EcoIntervention
from guard.lm.chat_format import encode_qa
from guard.lm.nll import label_positions
from tests.support.engines import RecordingEngine
from tests.support.policies import eco_target

BASIL = "Basil Mahfouz Al-Kuwaiti"
QUESTION = f"Where was {BASIL} born?"
# names the target twice (once in a possessive), plus words of its facts that are not names
ANSWER = f"{BASIL} was born in Kuwait City, and {BASIL}'s father was a florist."
PARAMS = SamplingParams(max_tokens=24, temperature=0, seed=7)
# at sigma 0.5 the corrupted prompt still gets "The capital of France is Paris." (the name last)
WRITES_PARIS = ({"role": "user", "content": "Paris is a city. Which city is the capital of France?"},)


def _eco(*, answer_names: bool, select: str = "entity", facts: tuple[str, ...] = ()) -> EcoIntervention:
    return EcoIntervention({"t": EcoConfig("rand_noise_first_n", 0.5, None, select, answer_names=answer_names,
                                           facts=facts)}, None)


def _request(content: str = QUESTION) -> GuardRequest:
    return GuardRequest.chat(({"role": "user", "content": content},), PARAMS)


def _name_token_positions(tokenizer: Any, text: str, name: str) -> list[int]:
    """Tokens of ``text`` whose characters overlap a literal occurrence of ``name`` (the expectation,
    found without the detector's matcher that the code under test uses)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = [(m.start(), m.end()) for m in re.finditer(re.escape(name), text)]
    return [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and any(a < e and b > s for s, e in spans)]


@pytest.mark.parametrize("select,facts", [("entity", ()), ("facts_only", ("kuwait", "florist"))])
def test_scoring_corrupts_exactly_the_answers_name_positions(local_engine, select, facts):
    tok = local_engine.tokenizer
    ids = label_positions(encode_qa(tok, QUESTION, ANSWER, max_length=512)["labels"].tolist())
    assert tok.decode(ids[:-1]) == ANSWER and ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    read = _eco(answer_names=True, select=select, facts=facts).scoring_answer_embeds(
        _request(), Verdict(True, "t"), eco_target([BASIL]), local_engine)
    assert read is not None
    clean = local_engine.embed(ids)
    corrupted = read(ids)
    assert corrupted.shape == clean.shape
    changed = (corrupted != clean).any(dim=1).nonzero().flatten().tolist()
    expected = _name_token_positions(tok, ANSWER, BASIL)
    # both mentions, every one of their tokens, and nothing else: not "Kuwait"/"florist" (fact words
    # are corrupted in the prompt only, as in generation), not the end-of-turn token
    assert changed == expected and len(expected) >= 2 * 4
    unchanged = [i for i in range(len(ids)) if i not in expected]
    assert torch.equal(corrupted[unchanged], clean[unchanged])
    assert torch.equal(read(ids), corrupted)  # seeded: the same answer reads the same


def test_without_answer_names_or_a_target_the_answer_is_read_plain(local_engine):
    verdict = Verdict(True, "t")
    assert _eco(answer_names=False).scoring_answer_embeds(_request(), verdict, eco_target([BASIL]), local_engine) is None
    fallback = EcoIntervention({}, EcoConfig("rand_noise_first_n", 0.5, None, "all_content", answer_names=True))
    assert fallback.scoring_answer_embeds(_request(), verdict, None, local_engine) is None


async def test_scoring_reads_an_answer_as_generation_re_reads_it(local_engine):
    """The answer part of generation's restart prompt equals what scoring feeds for the same answer."""
    eco, target = _eco(answer_names=True), eco_target(["Paris"])
    request = GuardRequest.chat(WRITES_PARIS, PARAMS)
    recording = RecordingEngine(local_engine)
    chunks = [c async for c in eco.stream(request, Verdict(True, "t"), target, recording)]
    assert len(recording.prompts) >= 2  # the model wrote "Paris": generation restarted
    first, second = recording.prompts[:2]
    answer = [t for c in chunks for t in c.token_ids][: second.shape[0] - first.shape[0]]
    read = eco.scoring_answer_embeds(request, Verdict(True, "t"), target, local_engine)
    assert torch.equal(read(answer).to(second.dtype), second[first.shape[0]:])
    assert not torch.equal(read(answer), local_engine.embed(answer))
