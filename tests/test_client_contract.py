"""A flagged request keeps the client's contract (issue #13), checked with the real openai SDK: with a
``response_format`` the refusal is ``message.refusal`` (content null), so ``.parse()`` returns a
message with ``.refusal`` set and never raises; with tools it is a plain assistant message; ``n``
gives n choices; streams carry the same shapes; ``/v1/responses`` answers in its own shape. The
request surface's refusals (``previous_response_id``, stored responses, ``tools`` on
``/v1/completions``, image parts) are 400s naming the field. And ``/v1/responses`` on the local
engine answers what the same chat request answers."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from pydantic import BaseModel

from guard.models import DEFAULT_SERVED_NAME
from tests.support.openai_errors import assert_openai_error

MODEL = DEFAULT_SERVED_NAME
POLICY = str(Path(__file__).parent / "fixtures" / "refuse_keyword.yaml")
REFUSAL = "I'm sorry, but I can't share information about that."
FLAGGED = [{"role": "user", "content": "Where was Basil Mahfouz Al-Kuwaiti born?"}]
TOOLS = [{"type": "function", "function": {"name": "lookup", "strict": True, "parameters": {
    "type": "object", "properties": {"who": {"type": "string"}}, "required": ["who"], "additionalProperties": False}}}]


class Birthplace(BaseModel):
    city: str


@pytest.fixture
async def flagged_client(fake_engine, guard_server, sdk):
    """An SDK client on a guard (refuse policy) in front of a recording fake vLLM."""
    return sdk(await guard_server(fake_engine, policy=POLICY))


async def test_parse_returns_the_refusal_and_never_raises(flagged_client):
    done = await flagged_client.chat.completions.parse(model=MODEL, messages=FLAGGED, response_format=Birthplace)
    message = done.choices[0].message
    assert message.refusal == REFUSAL and message.content is None and message.parsed is None
    assert done.choices[0].finish_reason == "stop"
    async with flagged_client.chat.completions.stream(model=MODEL, messages=FLAGGED, response_format=Birthplace) as stream:
        events = [e.type async for e in stream]
        final = await stream.get_final_completion()
    assert "refusal.delta" in events and final.choices[0].message.refusal == REFUSAL
    assert final.choices[0].message.parsed is None


async def test_tools_get_a_plain_assistant_message(flagged_client):
    for choice in ("auto", "required", {"type": "function", "function": {"name": "lookup"}}):
        done = await flagged_client.chat.completions.create(model=MODEL, messages=FLAGGED, tools=TOOLS, tool_choice=choice)
        message = done.choices[0].message
        assert message.content == REFUSAL and not message.tool_calls and done.choices[0].finish_reason == "stop"


async def test_n_choices_whole_and_streamed(flagged_client):
    done = await flagged_client.chat.completions.create(model=MODEL, messages=FLAGGED, n=3, temperature=0.8,
                                                        logprobs=True, top_logprobs=2)
    assert [c.index for c in done.choices] == [0, 1, 2]
    assert {c.message.content for c in done.choices} == {REFUSAL}
    assert done.usage.completion_tokens > 0 and done.usage.completion_tokens % 3 == 0
    stream = await flagged_client.chat.completions.create(model=MODEL, messages=FLAGGED, n=3, temperature=0.8, stream=True)
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert texts == {0: REFUSAL, 1: REFUSAL, 2: REFUSAL} and finishes == {0: "stop", 1: "stop", 2: "stop"}
    completion = await flagged_client.completions.create(model=MODEL, prompt="Basil Mahfouz Al-Kuwaiti was born in",
                                                         n=2, temperature=0.5, logprobs=2)
    assert [c.text for c in completion.choices] == [REFUSAL, REFUSAL]


async def test_responses_refusal_whole_and_streamed(flagged_client):
    done = await flagged_client.responses.create(model=MODEL, input="Where was Basil Mahfouz Al-Kuwaiti born?")
    assert done.output_text == REFUSAL and done.status == "completed" and done.usage.output_tokens > 0
    stream = await flagged_client.responses.create(model=MODEL, input=FLAGGED[0]["content"], stream=True)
    events = [e async for e in stream]
    assert [e.type for e in events][:4] == ["response.created", "response.in_progress", "response.output_item.added",
                                            "response.content_part.added"]
    assert events[-1].type == "response.completed" and events[-1].response.output_text == REFUSAL
    assert [e.sequence_number for e in events] == list(range(len(events)))
    parsed = await flagged_client.responses.parse(model=MODEL, input=FLAGGED[0]["content"], text_format=Birthplace)
    assert parsed.output_parsed is None
    assert parsed.output[0].content[0].type == "refusal" and parsed.output[0].content[0].refusal == REFUSAL


@pytest.mark.parametrize("path, body, param", [
    ("responses", {"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ("responses", {"input": "hi", "background": True}, "background"),
    ("responses", {"input": "hi", "tools": [{"type": "web_search"}]}, "tools.0.type"),
    ("completions", {"prompt": "hi", "tools": TOOLS}, "tools"),
    ("chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content"),
    ("chat/completions", {"messages": FLAGGED, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ("chat/completions", {"messages": FLAGGED, "tool_choice": "required"}, "tool_choice"),
    ("chat/completions", {"messages": FLAGGED, "n": 2, "temperature": 0.7}, "n"),  # above max_n (1 here)
    ("chat/completions", {"messages": FLAGGED, "functions": [{"name": "f"}]}, "functions"),
    ("chat/completions", {"messages": FLAGGED, "top_logprobs": 2}, "top_logprobs"),
    ("chat/completions", {"messages": FLAGGED, "presence_penalty": 2.5}, "presence_penalty"),
])
async def test_unsupported_fields_are_400s_naming_the_field(fake_engine, guard_server, path, body, param):
    base = await guard_server(fake_engine, policy=POLICY, max_n=1)
    async with aiohttp.ClientSession() as s, s.post(f"{base}/{path}", json={"model": MODEL, **body}) as r:
        err = assert_openai_error(r.status, await r.read(), context=body)
    assert r.status == 400 and err["param"] == param, err


async def test_stored_responses_are_a_400_naming_the_id(fake_engine, guard_server):
    base = await guard_server(fake_engine)
    async with aiohttp.ClientSession() as s, s.get(f"{base}/responses/resp_123") as r:
        err = assert_openai_error(r.status, await r.read())
    assert r.status == 400 and err["param"] == "response_id"


async def test_responses_on_the_local_engine_answer_as_the_chat_request(local_engine, guard_server, sdk):
    client = sdk(await guard_server(local_engine))
    chat = await client.chat.completions.create(
        model=MODEL, max_tokens=12, temperature=0,
        messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"}])
    done = await client.responses.create(model=MODEL, instructions="Answer briefly.", max_output_tokens=12, temperature=0,
                                         input=[{"role": "user", "content": [{"type": "input_text",
                                                                               "text": "What is the capital of France?"}]}])
    assert done.output_text == chat.choices[0].message.content and done.output_text
    assert done.id.startswith("resp_")
    assert done.usage.input_tokens == chat.usage.prompt_tokens
    stream = await client.responses.create(model=MODEL, instructions="Answer briefly.", max_output_tokens=12,
                                           temperature=0, input="What is the capital of France?", stream=True)
    deltas, final = [], None
    async for event in stream:
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        final = event
    assert "".join(deltas) == done.output_text and final.response.output_text == done.output_text
    assert final.type in ("response.completed", "response.incomplete")


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
                                            "strict": True, "parameters": {
                                                "type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                                                "required": ["city"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


async def test_sdk_tools_logprobs_n_and_responses_on_the_local_engine(local_engine, guard_server, sdk):
    """The SDK's application features served in-process (unflagged): a named tool call whole and as
    streamed deltas, log-probs, n choices, and a Responses function call."""
    client = sdk(await guard_server(local_engine))
    named = {"type": "function", "function": {"name": "get_weather"}}
    done = await client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=named,
                                                max_tokens=30, temperature=0)
    (call,) = done.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
    stream = await client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=named,
                                                  max_tokens=30, temperature=0, stream=True)
    names, arguments = [], ""
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                names += [delta.function.name] if delta.function.name else []
                arguments += delta.function.arguments or ""
    assert names == ["get_weather"] and json.loads(arguments) == json.loads(call.function.arguments)
    scored = await client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=3, temperature=0,
                                                  logprobs=True, top_logprobs=2)
    content = scored.choices[0].logprobs.content
    assert len(content) == 3 and all(p.token == p.top_logprobs[0].token for p in content)
    three = await client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=3, temperature=1.0, n=3, seed=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    response = await client.responses.create(model=MODEL, input=ASK[0]["content"], max_output_tokens=60, temperature=0,
                                             tool_choice="required", parallel_tool_calls=False,
                                             tools=[{"type": "function", **WEATHER["function"]}])
    (item,) = [o for o in response.output if o.type == "function_call"]
    assert item.name == "get_weather" and "city" in json.loads(item.arguments)
