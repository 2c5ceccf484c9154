"""Upstream faults, with fakes (no vLLM needed, so ``-m "not vllm"`` runs them): an upstream that is
down, hangs, answers 5xx or a 200 that is not an OpenAI response, dies mid-stream, sends a malformed
stream chunk, goes away and comes back."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from benchmarks.fake_upstream import StreamGate
from guard.engines.base import PromptInput, SamplingParams
from guard.engines.vllm import VllmEngine
from guard.errors import UpstreamError
from guard.models import DEFAULT_SERVED_NAME
from tests.support.ports import RefusedPort

MODEL = DEFAULT_SERVED_NAME
ASK = [{"role": "user", "content": "What is the capital of France?"}]


async def _serve(app: web.Application, port: int | None = None) -> TestServer:
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    return server


def _app(handler) -> web.Application:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_post("/v1/completions", handler)
    return app


@pytest.fixture
async def guard_on(default_model_path, guard_server):
    """``await guard_on(handler, **engine_kwargs)`` -> guard base URL in front of a one-handler fake."""
    opened: list[tuple[VllmEngine, TestServer]] = []

    async def start(handler, **engine_kwargs) -> str:  # type: ignore[no-untyped-def]
        fake = await _serve(_app(handler))
        engine = VllmEngine(str(fake.make_url("")), default_model_path, MODEL, upstream_model=MODEL, **engine_kwargs)
        await engine.start()
        opened.append((engine, fake))
        return await guard_server(engine)

    yield start
    for engine, fake in opened:
        await engine.close()
        await fake.close()


async def test_upstream_down_is_502_and_health_says_so(default_model_path, guard_server, sdk):
    down = RefusedPort()
    engine = VllmEngine(down.url, default_model_path, MODEL, upstream_model=MODEL)
    await engine.start()
    try:
        base = await guard_server(engine)
        with pytest.raises(openai.APIStatusError) as info:
            await sdk(base).chat.completions.create(model=MODEL, messages=ASK)
        assert info.value.status_code == 502 and "cannot connect" in info.value.body["message"]
        async with aiohttp.ClientSession() as s, s.get(base.removesuffix("/v1") + "/health") as r:
            assert r.status == 503 and (await r.json())["engine"]["ready"] is False
    finally:
        await engine.close()


async def test_upstream_timeout_is_504(guard_on, sdk):
    async def hang(request: web.Request) -> web.Response:
        await asyncio.Event().wait()  # never answers (cancelled when the guard gives up and hangs up)
        raise AssertionError("unreachable")

    base = await guard_on(hang, read_timeout_s=0.5)
    with pytest.raises(openai.APIStatusError) as info:
        await sdk(base).chat.completions.create(model=MODEL, messages=ASK)
    assert info.value.status_code == 504 and info.value.body["type"] == "upstream_timeout"


async def test_upstream_dying_mid_stream_ends_the_stream_cleanly(guard_on):
    async def die(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n')
        request.transport.close()
        return resp

    base = await guard_on(die)
    body = {"model": MODEL, "messages": ASK, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(f"{base}/chat/completions", json=body) as r:
        raw = await r.text()
    assert "Hel" in raw and '"upstream_error"' in raw and raw.endswith("data: [DONE]\n\n")


async def test_upstream_5xx_is_reported_as_502(guard_on, sdk):
    async def boom(request: web.Request) -> web.Response:
        return web.Response(status=500, text="engine crashed")

    base = await guard_on(boom)
    with pytest.raises(openai.APIStatusError) as info:
        await sdk(base).chat.completions.create(model=MODEL, messages=ASK)
    assert info.value.status_code == 502 and "engine crashed" in info.value.body["message"]


async def test_non_openai_200_is_502(guard_on, sdk):
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>captive portal</html>", content_type="text/html")

    base = await guard_on(html)
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as info:
            await sdk(base).chat.completions.create(model=MODEL, messages=ASK, stream=stream)
        assert info.value.status_code == 502 and "text/html" in info.value.body["message"]


async def test_malformed_stream_chunk_is_an_upstream_error(default_model_path):
    async def garbage(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: {not json at all\n\n")
        return resp

    fake = await _serve(_app(garbage))
    engine = VllmEngine(str(fake.make_url("")), default_model_path, MODEL, upstream_model=MODEL)
    await engine.start()
    try:
        with pytest.raises(UpstreamError, match="malformed"):
            async for _ in engine.generate(PromptInput(token_ids=[1, 2, 3]), SamplingParams(max_tokens=4)):
                pass
    finally:
        await engine.close()
        await fake.close()


async def test_single_upstream_down_then_back(fake_upstream, fake_vllm_engine, guard_server, sdk):
    fake = await fake_upstream()
    port = fake.server.port
    base = await guard_server(await fake_vllm_engine(fake))
    client = sdk(base)
    assert "tok0" in (await client.chat.completions.create(model=MODEL, messages=ASK)).choices[0].message.content
    await fake.kill()
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model=MODEL, messages=ASK)
    assert info.value.status_code == 502
    back = await fake_upstream(port=port)
    # one replica: no health loop; the next request tries it again (a refused connection sent nothing)
    resp = await client.chat.completions.create(model=MODEL, messages=ASK)
    assert "tok0" in resp.choices[0].message.content and len(back.log.generations()) == 1
    async with aiohttp.ClientSession() as s, s.get(base.removesuffix("/v1") + "/health") as r:
        assert r.status == 200


async def test_upstream_killed_mid_stream_gives_the_client_an_error_frame(fake_upstream, fake_vllm_engine, guard_server):
    """The single upstream crashes while the stream is in flight: the client gets what was streamed, an
    OpenAI error frame and ``[DONE]``, never a truncated stream without an explanation."""
    fake = await fake_upstream(tokens=8, gate=StreamGate(after_chunks=2))
    base = await guard_server(await fake_vllm_engine(fake))
    body = {"model": MODEL, "messages": ASK, "max_tokens": 8, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(f"{base}/chat/completions", json=body) as r:
        await fake.log.wait_until(lambda log: any(rec.held for rec in log.requests))
        await fake.kill()
        raw = await r.text()
    assert r.status == 200 and " tok0" in raw and " tok1" in raw and " tok2" not in raw
    assert '"upstream_error"' in raw and raw.endswith("data: [DONE]\n\n")
