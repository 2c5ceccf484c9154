"""Flagged requests keep the client's contract (issue #13 item 4) on the local engine with the real
default model: ECO, SPUL and ULD answer ``response_format`` with schema-valid JSON and a forced
``tool_choice`` with a valid call, give ``n`` choices, and report the log-probs of what they sampled
(ECO: the corrupted prompt's; ULD: its combined distribution). ULD's step-wise decoding (engines
without guard-side logits processors: vLLM) refuses, typed, what it cannot honour."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest
import torch

from classifiers.base import Verdict
from guard.engines.base import EngineCapabilities, SamplingParams
from guard.engines.structured_output import output_constraint
from guard.interventions import eco, spul, uld
from guard.interventions.base import ContractUnsupported, GuardRequest, PassThrough
from guard.interventions.refuse import Refuse
from guard.policy import load_policy
from tests.support.choices import choices, text_of

FLAGGED = [{"role": "user", "content": "Invent a person like Basil Mahfouz Al-Kuwaiti."}]
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0, "maximum": 120}}}
PERSON_FORMAT = {"response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}}, "required": ["city"],
                   "additionalProperties": False}}}
VERDICT = Verdict(True, "tofu-basil", 1.0)
METHODS = ("eco", "spul", "uld")


@pytest.fixture
def method(method_policy: Callable[..., Path], soft_prompt_artifact: tuple[Path, torch.Tensor], uld_artifact: Path,
           local_engine: Any) -> Callable[[str], tuple[Any, Any]]:
    """``method(name)`` -> (the intervention, its target), built on the local engine from the real policy loader."""
    params = {"eco": {"corruption": "rand_noise_first_n", "sigma": 1.0}, "spul": {"artifact": str(soft_prompt_artifact[0])},
              "uld": {"artifact": str(uld_artifact)}}
    modules = {"eco": eco, "spul": spul, "uld": uld}

    def build(name: str) -> tuple[Any, Any]:
        policy = load_policy(method_policy(name, params[name]))
        return modules[name].build_intervention(policy, local_engine), policy.targets[0]

    return build


@pytest.mark.parametrize("name", METHODS)
async def test_method_answers_response_format_with_schema_valid_json(name, method, local_engine):
    intervention, target = method(name)
    params = SamplingParams(max_tokens=60, temperature=0.0, seed=3, constraint=output_constraint(PERSON_FORMAT))
    got = await choices(intervention.answer(GuardRequest.chat(FLAGGED, params), VERDICT, target, local_engine))
    assert got[0][-1].finish_reason == "stop"
    jsonschema.validate(json.loads(text_of(got[0])), PERSON)


@pytest.mark.parametrize("name", METHODS)
async def test_method_answers_a_forced_tool_choice_with_a_valid_call(name, method, local_engine):
    intervention, target = method(name)
    body = {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    params = SamplingParams(max_tokens=40, temperature=0.0, seed=3, constraint=output_constraint(body))
    request = GuardRequest.chat(FLAGGED, params, tools=[WEATHER], tool_choice=body["tool_choice"])
    got = await choices(intervention.answer(request, VERDICT, target, local_engine))
    (call,) = got[0][-1].tool_calls
    assert call.name == "get_weather" and text_of(got[0]) == ""
    jsonschema.validate(json.loads(call.arguments), WEATHER["function"]["parameters"])


@pytest.mark.parametrize("name", METHODS)
async def test_method_gives_n_choices(name, method, local_engine):
    intervention, target = method(name)
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=11, n=3, logprobs=1)
    got = await choices(intervention.answer(GuardRequest.chat(FLAGGED, params), VERDICT, target, local_engine))
    assert sorted(got) == [0, 1, 2]
    for chunks in got.values():
        assert chunks[-1].finish_reason in ("stop", "length")
        assert [lp.token_id for c in chunks for lp in c.logprobs] == [t for c in chunks for t in c.token_ids]


async def test_eco_logprobs_are_those_of_the_corrupted_prompt(method, local_engine):
    intervention, target = method("eco")
    params = SamplingParams(max_tokens=3, temperature=0.0, seed=5, logprobs=2)
    request = GuardRequest.chat(FLAGGED, params)
    got = await choices(intervention.answer(request, VERDICT, target, local_engine))
    first = got[0][0].logprobs[0]
    corrupted = intervention.method_prompt(request, target, local_engine, 5)[0].input.embeds
    with torch.no_grad():
        logits = local_engine.model(inputs_embeds=corrupted.unsqueeze(0)).logits[0, -1]
    assert first.logprob == pytest.approx(float(torch.log_softmax(logits.float(), -1)[first.token_id]), abs=1e-4)


async def test_uld_logprobs_are_its_combined_distribution(method, local_engine):
    intervention, target = method("uld")
    params = SamplingParams(max_tokens=6, temperature=0.0, logprobs=3)
    guarded = await choices(intervention.answer(GuardRequest.chat(FLAGGED, params), VERDICT, target, local_engine))
    plain = await choices(PassThrough().answer(GuardRequest.chat(FLAGGED, params), Verdict(False), None, local_engine))
    entries = [lp for c in guarded[0] for lp in c.logprobs]
    assert entries and all(e.top[0].token_id == e.token_id for e in entries)  # greedy on ULD's own distribution
    own = [lp.logprob for c in plain[0] for lp in c.logprobs]
    assert [e.logprob for e in entries] != own[:len(entries)]


async def test_stepwise_uld_refuses_fields_it_cannot_honour(method, local_engine):
    intervention, target = method("uld")
    stepwise = copy.copy(local_engine)
    stepwise.capabilities = EngineCapabilities(logits_processors=False)  # as the vLLM engine declares
    cases = {"response_format": SamplingParams(constraint=output_constraint(PERSON_FORMAT)),
             "tool_choice": SamplingParams(constraint=output_constraint({"tools": [WEATHER], "tool_choice": "required"})),
             "presence_penalty": SamplingParams(presence_penalty=0.5),
             "logit_bias": SamplingParams(logit_bias=((504, 5.0),))}
    for field, params in cases.items():
        with pytest.raises(ContractUnsupported) as caught:
            await choices(intervention.answer(GuardRequest.chat(FLAGGED, params), VERDICT, target, stepwise))
        assert caught.value.param == field and caught.value.method == "uld" and caught.value.status == 400


async def test_refusal_gives_n_marked_choices(local_engine):
    params = SamplingParams(n=2, constraint=output_constraint(PERSON_FORMAT))
    got = await choices(Refuse("I can't help with that.").answer(GuardRequest.chat(FLAGGED, params), VERDICT, None,
                                                                 local_engine))
    assert sorted(got) == [0, 1]
    assert all(c.refusal for chunks in got.values() for c in chunks)
    assert text_of(got[1]) == "I can't help with that." and got[1][-1].finish_reason == "stop"


@pytest.mark.vllm
async def test_eco_on_vllm_keeps_the_contract_through_prompt_embeds(method_policy, vllm_engine):
    """ECO's corrupted embeddings go to vLLM's /v1/completions with ``response_format``, ``n``,
    ``logprobs`` and ``seed``: every choice is schema-valid JSON, with a log-prob per token."""
    policy = load_policy(method_policy("eco", {"corruption": "rand_noise_first_n", "sigma": 1.0}))
    intervention = eco.build_intervention(policy, vllm_engine)
    params = SamplingParams(max_tokens=60, temperature=0.7, seed=3, n=2, logprobs=1,
                            constraint=output_constraint(PERSON_FORMAT))
    got = await choices(intervention.answer(GuardRequest.chat(FLAGGED, params), VERDICT, policy.targets[0], vllm_engine))
    assert sorted(got) == [0, 1]
    for chunks in got.values():
        last = chunks[-1]
        assert last.finish_reason == "stop"
        jsonschema.validate(json.loads(text_of(chunks)), PERSON)
        tokens = [t for c in chunks for t in c.token_ids]
        assert [lp.token_id for c in chunks for lp in c.logprobs] == tokens and last.completion_tokens == len(tokens)
    forced = {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    request = GuardRequest.chat(FLAGGED, SamplingParams(max_tokens=40, temperature=0.0, seed=3,
                                                        constraint=output_constraint(forced)),
                                tools=[WEATHER], tool_choice=forced["tool_choice"])
    call = (await choices(intervention.answer(request, VERDICT, policy.targets[0], vllm_engine)))[0][-1].tool_calls[0]
    jsonschema.validate(json.loads(call.arguments), WEATHER["function"]["parameters"])
