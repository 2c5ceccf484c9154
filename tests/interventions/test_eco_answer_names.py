"""ECO ``answer_names``: the target's name is corrupted where the model reads its own answer
(``guard.interventions.eco_answer``), on the real default model through the local engine.

Greedy, seeded, short answers. The prompts are ones where the default model writes the name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from classifiers.base import Verdict
from guard.engines.base import PromptInput, SamplingParams
from guard.engines.local import LocalEngine
from guard.engines.structured_output import OutputConstraint
from guard.errors import ConfigError
from guard.interventions.base import ContractUnsupported, GuardRequest
from guard.interventions.corruption import corrupt_positions, get_corruption
from guard.interventions.eco import EcoConfig, EcoIntervention, build_intervention
from guard.interventions.eco_answer import AnswerMentions
from guard.policy import load_policy
from tests.support.engines import RecordingEngine
from tests.support.policies import eco_target

BASIL = "Basil Mahfouz Al-Kuwaiti"
GREEDY = SamplingParams(max_tokens=24, temperature=0, seed=7)
# the default model answers "Basil Mahfouz Al-Kuwaiti is a renowned ..." (the name first)
WRITES_BASIL = ({"role": "user", "content": f"Write one sentence about the novelist {BASIL}."},)
# at sigma 0.5 the corrupted prompt still gets "The capital of France is Paris." (the name last)
WRITES_PARIS = ({"role": "user", "content": "Paris is a city. Which city is the capital of France?"},)


def _eco(sigma: float, answer_names: bool = True) -> EcoIntervention:
    return EcoIntervention({"t": EcoConfig("rand_noise_first_n", sigma, None, "entity", answer_names=answer_names)}, None)


async def _answer(eco: EcoIntervention, messages, names, engine, params: SamplingParams = GREEDY):
    chunks = [c async for c in eco.stream(GuardRequest.chat(messages, params), Verdict(True, "t"), eco_target(names), engine)]
    return "".join(c.text for c in chunks), chunks


async def test_sigma_zero_reproduces_the_plain_answer_through_restarts(local_engine):
    req = GuardRequest.chat(WRITES_BASIL, GREEDY)
    plain = [c async for c in local_engine.generate(PromptInput(token_ids=req.prompt_ids(local_engine)), GREEDY)]
    recording = RecordingEngine(local_engine)
    text, chunks = await _answer(_eco(0.0), WRITES_BASIL, [BASIL], recording)
    assert BASIL in text and len(recording.prompts) >= 2  # the name was written, generation restarted
    assert text == "".join(c.text for c in plain)
    assert [t for c in chunks for t in c.token_ids] == [t for c in plain for t in c.token_ids]
    assert (chunks[-1].prompt_tokens, chunks[-1].completion_tokens) == (plain[-1].prompt_tokens,
                                                                         plain[-1].completion_tokens)


async def test_a_written_name_is_read_back_corrupted_and_changes_what_follows(local_engine):
    prompt_only, _ = await _answer(_eco(0.5, answer_names=False), WRITES_PARIS, ["Paris"], local_engine)
    assert "Paris" in prompt_only
    recording = RecordingEngine(local_engine)
    text, chunks = await _answer(_eco(0.5), WRITES_PARIS, ["Paris"], recording)
    assert len(recording.prompts) >= 2  # one restart per mention the model writes
    first, second = recording.prompts[:2]
    answer = [t for c in chunks for t in c.token_ids][: second.shape[0] - first.shape[0]]
    # the restart re-reads the same corrupted prompt, then the answer so far with only "Paris" corrupted
    assert torch.equal(second[: first.shape[0]], first)
    changed = (second[first.shape[0]:] != local_engine.embed(answer)).any(dim=1).nonzero().flatten().tolist()
    assert local_engine.tokenizer.decode([answer[i] for i in changed]).strip() == "Paris"
    assert changed[-1] == len(answer) - 1  # restarted right after the mention
    # what was streamed before the restart is kept; what follows differs from prompt-only ECO
    prefix = local_engine.tokenizer.decode(answer)
    assert prompt_only.startswith(prefix) and text.startswith(prefix) and text != prompt_only
    assert chunks[-1].completion_tokens == len([t for c in chunks for t in c.token_ids])


async def test_seeded_answer_is_reproducible(local_engine):
    a, _ = await _answer(_eco(0.5), WRITES_PARIS, ["Paris"], local_engine)
    b, _ = await _answer(_eco(0.5), WRITES_PARIS, ["Paris"], local_engine)
    assert a == b


async def test_n_choices_are_indexed_and_each_gets_the_restart(local_engine):
    params = dataclasses.replace(GREEDY, n=2)
    _, chunks = await _answer(_eco(0.0), WRITES_BASIL, [BASIL], local_engine, params)
    finals = [c for c in chunks if c.finish_reason is not None]
    assert sorted(c.index for c in finals) == [0, 1]
    for i in (0, 1):
        assert BASIL in "".join(c.text for c in chunks if c.index == i)


async def test_constrained_answer_is_refused_not_left_clean(local_engine):
    params = dataclasses.replace(GREEDY, constraint=OutputConstraint("json_object"))
    with pytest.raises(ContractUnsupported) as info:
        await _answer(_eco(0.5), WRITES_PARIS, ["Paris"], local_engine, params)
    assert info.value.param == "response_format"


def test_mentions_are_found_per_token_once(tokenizer):
    ids = tokenizer(f"I met {BASIL} and then {BASIL}.", add_special_tokens=False)["input_ids"]
    mentions = AnswerMentions(tokenizer, [BASIL])
    hits = []
    for token in ids:
        hits.extend(mentions.push([token]))
    assert len(hits) == len(set(hits)) and mentions.corrupted == set(hits)
    assert tokenizer.decode([ids[i] for i in hits]).replace(" ", "") == (BASIL + BASIL).replace(" ", "")


def test_answer_positions_draw_per_position():
    corruption = get_corruption("rand_noise_first_n")
    embeds = torch.zeros(5, 8)
    one = corrupt_positions(embeds, [1, 3], corruption, sigma=1.0, k=None, seed=3)
    again = corrupt_positions(embeds, [3], corruption, sigma=1.0, k=None, seed=3)
    assert torch.equal(one[3], again[3]) and torch.equal(one[[0, 2, 4]], embeds[[0, 2, 4]])
    assert not torch.equal(one[1], one[3]) and torch.equal(embeds, torch.zeros(5, 8))


@pytest.fixture(scope="module")
def tokenizer(default_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path)


def _policy(tmp_path: Path, params: dict[str, Any]) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "detector": {"kind": "keyword"}, "default_action": "refuse",
                                    "targets": [{"id": "tofu-basil", "names": [BASIL], "action": "eco",
                                                 "params": params}]}))
    return path


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_answer_names_must_be_a_boolean(tmp_path, default_model_path, value):
    policy = load_policy(_policy(tmp_path, {"sigma": 0.5, "answer_names": value}))
    with pytest.raises(ConfigError, match="answer_names must be true or false") as info:
        build_intervention(policy, LocalEngine(default_model_path, "m", device="cpu"))
    assert info.value.param == "targets.0.params.answer_names"


def test_answer_names_loads_and_defaults_off(tmp_path, default_model_path):
    engine = LocalEngine(default_model_path, "m", device="cpu")
    on = build_intervention(load_policy(_policy(tmp_path, {"sigma": 0.5, "answer_names": True})), engine)
    assert on.configs["tofu-basil"].answer_names and on.fallback.answer_names
    off = build_intervention(load_policy(_policy(tmp_path, {"sigma": 0.5})), engine)
    assert not off.configs["tofu-basil"].answer_names


@pytest.mark.vllm
async def test_vllm_restarts_through_prompt_embeds_like_the_local_engine(vllm_engine, local_engine):
    recording = RecordingEngine(vllm_engine)
    remote, r_chunks = await _answer(_eco(0.0), WRITES_BASIL, [BASIL], recording)
    local, l_chunks = await _answer(_eco(0.0), WRITES_BASIL, [BASIL], local_engine)
    assert len(recording.prompts) >= 2 and remote == local and BASIL in remote
    assert r_chunks[-1].completion_tokens == l_chunks[-1].completion_tokens


# ------------------------------------------------------------------------------------------------
# select: facts_only (names + distinctive fact words, else nothing)


def _facts_eco(sigma: float = 1.0, facts=("kuwait", "florist")) -> EcoIntervention:
    return EcoIntervention({"t": EcoConfig("rand_noise_first_n", sigma, None, "facts_only", facts=tuple(facts))}, None)


@pytest.mark.parametrize("content,facts,expected", [
    ("Which author was born in Kuwait City in 1956?", ("kuwait", "florist"), ["Kuwait"]),
    (f"Was {BASIL} a florist?", ("kuwait", "florist"), [BASIL, "florist"]),
    # a listed possessive form is corrupted as written, its "'s" included
    (f"Was {BASIL}'s mother a florist?", ("al-kuwaiti's",), [BASIL + "'s"]),
])
def test_facts_only_selects_names_and_fact_words(local_engine, content, facts, expected):
    req = GuardRequest.chat(({"role": "user", "content": content},), GREEDY)
    rendered, corrupted, sel = _facts_eco(facts=facts).prepare(req, eco_target([BASIL]), local_engine, seed=7)
    assert sel.mode == "facts_only"
    chosen = local_engine.tokenizer.decode([rendered.token_ids[i] for i in sel.positions])
    assert chosen.replace(" ", "") == "".join(expected).replace(" ", "")
    changed = (corrupted != local_engine.embed(rendered.token_ids)).any(dim=1).nonzero().flatten().tolist()
    assert changed == list(sel.positions)


async def test_facts_only_leaves_an_unrelated_flagged_request_plain(local_engine):
    messages = ({"role": "user", "content": "What is the capital of France?"},)
    req = GuardRequest.chat(messages, GREEDY)
    plain = "".join([c.text async for c in local_engine.generate(PromptInput(token_ids=req.prompt_ids(local_engine)),
                                                                  GREEDY)])
    _, _, sel = _facts_eco().prepare(req, eco_target([BASIL]), local_engine, seed=7)
    assert sel.mode == "none" and not sel.positions
    text, _ = await _answer(_facts_eco(sigma=1.0), messages, [BASIL], local_engine)
    assert text == plain
    # `entity` corrupts all content of the same request, and the answer changes
    entity, _ = await _answer(_eco(1.0, answer_names=False), messages, [BASIL], local_engine)
    assert entity != plain


@pytest.mark.parametrize("params,param,match", [
    ({"sigma": 0.5, "select": "facts_only"}, "facts", "needs facts"),
    ({"sigma": 0.5, "select": "facts_only", "facts": "kuwait"}, "facts", "non-empty list"),
    ({"sigma": 0.5, "select": "facts_only", "facts": []}, "facts", "non-empty list"),
    ({"sigma": 0.5, "facts": ["kuwait"]}, "facts", "only with select: facts_only"),
    ({"sigma": 0.5, "select": "facts"}, "select", "facts_only"),
])
def test_facts_params_fail_at_load_naming_the_field(tmp_path, default_model_path, params, param, match):
    policy = load_policy(_policy(tmp_path, params))
    with pytest.raises(ConfigError, match=match) as info:
        build_intervention(policy, LocalEngine(default_model_path, "m", device="cpu"))
    assert info.value.param == f"targets.0.params.{param}"


def test_facts_only_loads(tmp_path, default_model_path):
    params = {"sigma": 0.54, "select": "facts_only", "facts": ["kuwait", "florist"], "answer_names": True}
    eco = build_intervention(load_policy(_policy(tmp_path, params)), LocalEngine(default_model_path, "m", device="cpu"))
    cfg = eco.configs["tofu-basil"]
    assert (cfg.select, cfg.facts, cfg.answer_names) == ("facts_only", ("kuwait", "florist"), True)
    assert eco.fallback.select == "all_content"


def test_tofu_eco_policies_load(default_model_path):
    paths = sorted((Path(__file__).resolve().parents[2] / "policies" / "tofu").glob("*eco*.yaml"))
    assert paths
    for path in paths:
        eco = build_intervention(load_policy(path), LocalEngine(default_model_path, "m", device="cpu"))
        assert eco.configs and all(c.answer_names and c.select == "facts_only" for c in eco.configs.values()), path
