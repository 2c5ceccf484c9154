"""Real clients against the guard on the LOCAL engine (the embedded default model, no vLLM): the
openai SDK's structured-output helpers (``.parse()``, ``.stream()``), LangChain ``ChatOpenAI``
(``bind_tools`` + a tool loop, ``with_structured_output(method="json_schema")``) and LiteLLM
(``acompletion`` with ``api_base``). Unflagged requests come back parsed; a flagged one (a forget
target's question) is answered by the policy's refusal or method in the shape the client asked for:
a refusal is ``message.refusal`` under a schema (the SDK's ``.parse()`` returns it, LangChain raises
its ``OpenAIRefusalError`` as for OpenAI's own refusals), a plain message under tools; an ECO answer
is schema-valid JSON. The same features against vLLM: ``test_vllm_frameworks.py``. One test (marked
``vllm``) checks that the local engine's greedy structured answers are vLLM's own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, Field

from guard.models import DEFAULT_SERVED_NAME
from tests.support.metrics import METRICS_KEY, scrape
from tests.support.policies import ECO_NOISE, method_policy

MODEL = DEFAULT_SERVED_NAME
POLICY = str(Path(__file__).parent.parent / "fixtures" / "refuse_keyword.yaml")
REFUSAL = "I'm sorry, but I can't share information about that."
FLAGGED = "Where was Basil Mahfouz Al-Kuwaiti born?"
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
    "additionalProperties": False}}}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


class Person(BaseModel):
    """The SDK's own example shape: no bounds on either field (the case that once ran to max_tokens)."""

    name: str
    age: int


class GetWeather(BaseModel):
    """Get the current weather in a city"""

    city: str = Field(max_length=20, description="City name")


@pytest.fixture
async def base_url(local_engine, guard_server) -> str:
    """A guard on the local engine with the refuse policy: only questions naming the target are flagged."""
    return await guard_server(local_engine, policy=POLICY)


@pytest.fixture
def chat(base_url):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=MODEL, base_url=base_url, api_key="unused", temperature=0, max_tokens=60,
                      max_retries=0, timeout=120)


def _schema_format(model: type[BaseModel]) -> dict[str, Any]:
    from openai.lib._pydantic import to_strict_json_schema

    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": to_strict_json_schema(model),
                                                   "strict": True}}


# -- the openai SDK ---------------------------------------------------------------------------------
async def test_sdk_parse_returns_a_validated_object(base_url, sdk):
    client = sdk(base_url)
    done = await client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Invent a person."}],
                                               response_format=Person, max_tokens=60, temperature=0)
    choice = done.choices[0]
    assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Person), choice.message.content
    assert choice.message.parsed == Person.model_validate_json(choice.message.content)
    flagged = await client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": FLAGGED}],
                                                  response_format=Person, max_tokens=60, temperature=0)
    assert flagged.choices[0].message.parsed is None and flagged.choices[0].message.refusal == REFUSAL


async def test_sdk_streams_with_response_format_give_valid_json(base_url, sdk):
    client = sdk(base_url)
    question = [{"role": "user", "content": "Extract the person: Alice is 31 years old."}]
    async with client.chat.completions.stream(model=MODEL, messages=question, response_format=Person, max_tokens=60,
                                              temperature=0) as stream:
        deltas = [e.delta async for e in stream if e.type == "content.delta"]
        final = await stream.get_final_completion()
    assert len(deltas) > 1 and final.choices[0].message.parsed == Person.model_validate_json("".join(deltas))
    raw = await client.chat.completions.create(model=MODEL, messages=question, response_format=_schema_format(Person),
                                               max_tokens=60, temperature=0, stream=True)
    text, finish = "", None
    async for chunk in raw:
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert finish == "stop" and json.loads(text) == final.choices[0].message.parsed.model_dump()


# -- LangChain --------------------------------------------------------------------------------------
async def test_langchain_tool_loop(chat):
    from langchain_core.messages import HumanMessage, ToolMessage

    question = HumanMessage("What is the weather in Paris?")
    ai = await chat.bind_tools([GetWeather], tool_choice="GetWeather", strict=True).ainvoke([question])
    (call,) = ai.tool_calls
    assert call["name"] == "GetWeather" and isinstance(GetWeather(**call["args"]), GetWeather)
    final = await chat.bind_tools([GetWeather], strict=True).ainvoke(
        [question, ai, ToolMessage("Sunny, 21 C", tool_call_id=call["id"])])
    assert final.content and not final.tool_calls


async def test_langchain_structured_output_whole_and_streamed(chat):
    structured = chat.with_structured_output(Person, method="json_schema")
    person = await structured.ainvoke("Invent a person.")
    assert isinstance(person, Person)
    streamed = [part async for part in structured.astream("Invent a person.")]
    assert streamed[-1] == person


async def test_langchain_flagged_requests_keep_the_shape(chat):
    from langchain_openai.chat_models.base import OpenAIRefusalError

    ai = await chat.bind_tools([GetWeather], tool_choice="GetWeather", strict=True).ainvoke(FLAGGED)
    assert ai.content == REFUSAL and not ai.tool_calls
    raw = await chat.with_structured_output(Person, method="json_schema", include_raw=True).ainvoke(FLAGGED)
    assert raw["parsed"] is None and raw["raw"].additional_kwargs["refusal"] == REFUSAL
    assert isinstance(raw["parsing_error"], OpenAIRefusalError)
    with pytest.raises(OpenAIRefusalError, match="can't share"):  # what LangChain does with OpenAI's own refusals
        await chat.with_structured_output(Person, method="json_schema").ainvoke(FLAGGED)


async def test_langchain_flagged_structured_output_under_eco_is_schema_valid(local_engine, guard_server, tmp_path):
    """A method (ECO, corrupted prompt embeddings) answers a flagged question under the client's schema."""
    from langchain_openai import ChatOpenAI

    base_url = await guard_server(local_engine, policy=method_policy(tmp_path, "eco", ECO_NOISE),
                                  metrics_api_key=METRICS_KEY)
    # the seed fixes ECO's noise (without one each request draws a fresh seed, and an unlucky draw
    # can spend the token budget on whitespace inside the JSON)
    chat = ChatOpenAI(model=MODEL, base_url=base_url, api_key="unused",
                      temperature=0, max_tokens=120, seed=0, max_retries=0, timeout=120)
    raw = await chat.with_structured_output(Person, method="json_schema", include_raw=True).ainvoke(
        "Invent a person like Basil Mahfouz Al-Kuwaiti.")
    assert isinstance(raw["parsed"], Person), raw
    assert raw["raw"].additional_kwargs.get("refusal") is None and raw["parsing_error"] is None
    assert 'guard_flagged_total{action="eco"} 1.0' in await scrape(base_url)


# -- LiteLLM ----------------------------------------------------------------------------------------
@pytest.fixture
def litellm(monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network: the bundled cost map
    import litellm

    return litellm


async def test_litellm_tool_call_and_structured_output(base_url, litellm):
    common = {"model": f"openai/{MODEL}", "api_base": base_url, "api_key": "unused", "temperature": 0,
              "max_tokens": 60, "num_retries": 0}
    called = await litellm.acompletion(messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                                       tools=[WEATHER_TOOL], tool_choice=NAMED, **common)
    (call,) = called.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_TOOL["function"]["parameters"])
    structured = await litellm.acompletion(messages=[{"role": "user", "content": "Invent a person."}],
                                           response_format=Person, **common)
    assert isinstance(Person.model_validate_json(structured.choices[0].message.content), Person)


async def test_litellm_flagged_requests_keep_the_shape(base_url, litellm):
    common = {"model": f"openai/{MODEL}", "api_base": base_url, "api_key": "unused", "temperature": 0,
              "max_tokens": 60, "num_retries": 0, "messages": [{"role": "user", "content": FLAGGED}]}
    called = await litellm.acompletion(tools=[WEATHER_TOOL], tool_choice=NAMED, **common)
    message = called.choices[0].message
    assert message.content == REFUSAL and not message.tool_calls and called.choices[0].finish_reason == "stop"
    structured = await litellm.acompletion(response_format=Person, **common)
    message = structured.choices[0].message
    assert message.content is None and message.refusal == REFUSAL


# -- the local engine's structured answers are vLLM's (greedy, the same grammar rule) ---------------
@pytest.mark.vllm
async def test_local_structured_answers_equal_vllm(vllm_url, local_engine, guard_server, sdk):
    """The local engine compiles the grammar as vLLM does (``StructuredOutputCompiler``), so a greedy
    structured answer or forced tool call is vLLM's own, token for token."""
    local, direct = sdk(await guard_server(local_engine)), sdk(f"{vllm_url}/v1")
    for question in ("Invent a person.", "Extract the person: Alice is 31 years old."):
        messages = [{"role": "user", "content": question}]
        a, b = [await c.chat.completions.parse(model=MODEL, messages=messages, response_format=Person, max_tokens=60,
                                               temperature=0) for c in (local, direct)]
        assert a.choices[0].message.content == b.choices[0].message.content and isinstance(a.choices[0].message.parsed, Person)
        assert a.usage.completion_tokens == b.usage.completion_tokens
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    a, b = [await c.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER_TOOL], tool_choice=NAMED,
                                            max_tokens=60, temperature=0) for c in (local, direct)]
    assert a.choices[0].message.tool_calls[0].function.arguments == b.choices[0].message.tool_calls[0].function.arguments
