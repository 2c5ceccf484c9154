"""The OpenAI surface of issue #13 on the local engine, with the real default model: tools rendered
through the shipped template, a forced tool call, json_schema answers, log-probs, n, penalties and
logit_bias (the fields of ``SamplingParams``; the answer's tool calls through ``Intervention.answer``)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import torch

from classifiers.base import Verdict
from guard.engines.base import PromptInput, SamplingParams
from guard.engines.structured_output import output_constraint
from guard.interventions.base import GuardRequest, PassThrough
from tests.support.choices import choices, text_of

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city", "strict": True,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
PERSON_FORMAT = {"response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}}


async def answer(engine: Any, request: GuardRequest) -> dict[int, list[Any]]:
    return await choices(PassThrough().answer(request, Verdict(flagged=False), None, engine))


def test_tool_conversation_renders_through_the_shipped_template_with_spans(local_engine):
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    ]
    rendered = local_engine.render_chat(messages, tools=[WEATHER])
    assert "<tools>\n" + json.dumps(WEATHER, ensure_ascii=False) in rendered.text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in rendered.text
    assert "<tool_response>\nSunny, 21 C\n</tool_response>" in rendered.text
    by_text = {rendered.text[s.char_start:s.char_end]: s for s in rendered.spans}
    assert by_text["Sunny, 21 C"].role == "tool"
    assert by_text['{"city": "Paris"}'].role == "assistant"  # the call's arguments are content the model reads
    assert by_text[json.dumps(WEATHER, ensure_ascii=False)].role == "tools"
    span = by_text["Sunny, 21 C"]
    assert local_engine.tokenizer.decode(rendered.token_ids[span.token_start:span.token_end]).strip() == "Sunny, 21 C"
    # without tools the model's own template renders, byte for byte as before
    plain = local_engine.render_chat(QUESTION)
    assert plain.text == local_engine.tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)


async def test_forced_tool_call_is_parsed_into_a_valid_call(local_engine):
    body = {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    params = SamplingParams(max_tokens=40, temperature=0.0, constraint=output_constraint(body))
    got = await answer(local_engine, GuardRequest.chat(QUESTION, params, tools=[WEATHER], tool_choice=body["tool_choice"]))
    last = got[0][-1]
    assert text_of(got[0]) == "" and last.finish_reason == "stop"  # named: vLLM's "stop", no content
    (call,) = last.tool_calls
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER["function"]["parameters"])


async def test_required_tool_choice_gives_tool_calls_finish(local_engine):
    body = {"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False}
    params = SamplingParams(max_tokens=60, temperature=0.0, constraint=output_constraint(body))
    got = await answer(local_engine, GuardRequest.chat(QUESTION, params, tools=[WEATHER], tool_choice="required"))
    last = got[0][-1]
    assert last.finish_reason == "tool_calls" and [c.name for c in last.tool_calls] == ["get_weather"]


async def test_json_schema_answer_validates(local_engine):
    params = SamplingParams(max_tokens=60, temperature=0.0, constraint=output_constraint(PERSON_FORMAT))
    got = await answer(local_engine, GuardRequest.chat([{"role": "user", "content": "Invent a person."}], params))
    assert got[0][-1].finish_reason == "stop"
    jsonschema.validate(json.loads(text_of(got[0])), PERSON)


async def test_greedy_logprobs_are_the_models_own(local_engine):
    rendered = local_engine.render_chat(QUESTION)
    params = SamplingParams(max_tokens=6, temperature=0.0, logprobs=3)
    got = await choices(local_engine.generate(PromptInput(token_ids=rendered.token_ids), params))
    entries = [lp for c in got[0] for lp in c.logprobs]
    tokens = [t for c in got[0] for t in c.token_ids]
    assert [e.token_id for e in entries] == tokens and len(tokens) == 6
    with torch.no_grad():
        logits = local_engine.model(torch.tensor([rendered.token_ids + tokens])).logits[0]
    own = torch.log_softmax(logits.float(), -1)[len(rendered.token_ids) - 1:-1]
    for position, entry in enumerate(entries):
        assert entry.logprob == pytest.approx(float(own[position, entry.token_id]), abs=1e-4)
        assert entry.top[0].token_id == entry.token_id  # greedy: the best token was chosen
        assert [t.token_id for t in entry.top] == own[position].topk(3).indices.tolist()
        assert entry.token == local_engine.tokenizer.decode([entry.token_id])


async def test_n_gives_n_choices_each_finished(local_engine):
    rendered = local_engine.render_chat([{"role": "user", "content": "Tell me a story."}])
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=7, n=3)
    got = await choices(local_engine.generate(PromptInput(token_ids=rendered.token_ids), params))
    assert sorted(got) == [0, 1, 2]
    for chunks in got.values():
        last = chunks[-1]
        assert last.finish_reason in ("stop", "length") and last.completion_tokens == sum(len(c.token_ids) for c in chunks)
        assert all(c.finish_reason is None for c in chunks[:-1])
    assert len({text_of(c) for c in got.values()}) > 1  # independent samples


async def test_logit_bias_forces_and_forbids_tokens(local_engine):
    ids = local_engine.render_chat(QUESTION).token_ids
    forced = await choices(local_engine.generate(PromptInput(token_ids=ids),
                                                 SamplingParams(max_tokens=4, temperature=0.0, logit_bias=((504, 100.0),))))
    assert [t for c in forced[0] for t in c.token_ids] == [504] * 4  # "TheTheTheThe", as on vLLM
    plain = await choices(local_engine.generate(PromptInput(token_ids=ids), SamplingParams(max_tokens=1, temperature=0.0)))
    first = plain[0][0].token_ids[0]
    banned = await choices(local_engine.generate(PromptInput(token_ids=ids),
                                                 SamplingParams(max_tokens=1, temperature=0.0, logit_bias=((first, -100.0),))))
    assert banned[0][0].token_ids[0] != first


async def test_frequency_penalty_breaks_repetition(local_engine):
    ids = local_engine.tokenizer("cat cat cat cat cat cat cat cat")["input_ids"]  # a raw prompt the model repeats

    async def tokens(**extra: Any) -> list[int]:
        got = await choices(local_engine.generate(PromptInput(token_ids=ids), SamplingParams(max_tokens=24, temperature=0.0,
                                                                                             **extra)))
        return [t for c in got[0] for t in c.token_ids]

    plain, penalised = await tokens(), await tokens(frequency_penalty=2.0, presence_penalty=2.0)
    assert penalised != plain
    most = lambda seq: max(seq.count(t) for t in set(seq))
    assert most(penalised) < most(plain)


class _ForbidStop:
    """A method's processor that never lets the answer end (as a test probe or a careless method might)."""

    def __init__(self, stop_ids: list[int]) -> None:
        self._stop_ids = stop_ids

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, self._stop_ids] = float("-inf")
        return scores


async def test_a_finished_grammar_whose_stop_a_method_forbids_ends_the_answer(local_engine):
    """``{"type": "object"}`` sampled: after ``{}`` the grammar allows only the stop token; a method
    processor that forbids it left no token and sampling crashed on NaN (found by the Responses fuzz).
    Every sample must now end cleanly, the finished ones with ``{}`` and ``finish_reason: "stop"``."""
    ids = local_engine.render_chat([{"role": "user", "content": "00000"}]).token_ids
    constraint = output_constraint({"response_format": {"type": "json_schema", "json_schema": {"name": "", "schema": {"type": "object"}}}})
    stops = sorted(local_engine.stop_token_ids())
    ended = 0
    for seed in range(8):
        params = SamplingParams(max_tokens=4, temperature=1.0, seed=seed, n=2, constraint=constraint)
        got = await choices(local_engine.generate(PromptInput(token_ids=ids), params, [_ForbidStop(stops)]))
        for chunks in got.values():
            assert chunks[-1].finish_reason in ("stop", "length")
            if chunks[-1].finish_reason == "stop":
                ended += 1
                assert json.loads(text_of(chunks)) == {}
    assert ended  # seeds 0-7 give "{}" for most samples (checked): the dead end was reached
