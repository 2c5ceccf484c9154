"""Upstream faults the vLLM-marked suite does not cover, with fakes (no vLLM needed): a 200 that is
not an OpenAI response, a malformed stream chunk on the intervention path, a single upstream that
goes away and comes back."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from benchmarks.fake_upstream import build_fake_app
from guard.engines.base import PromptInput, SamplingParams
from guard.engines.vllm import VllmEngine
from guard.errors import UpstreamError
from guard.models import DEFAULT_SERVED_NAME
from tests.conftest import free_port

MODEL = DEFAULT_SERVED_NAME
ASK = [{"role": "user", "content": "What is the capital of France?"}]


async def _serve(app: web.Application, port: int | None = None) -> TestServer:
    server = TestServer(app, host="127.0.0.1", port=port or free_port())
    await server.start_server()
    return server


def _app(handler) -> web.Application:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    app.router.add_post("/v1/completions", handler)
    return app


async def test_non_openai_200_is_502(default_model_path, guard_server, sdk):
    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>captive portal</html>", content_type="text/html")

    fake = await _serve(_app(html))
    engine = VllmEngine(str(fake.make_url("")), default_model_path, MODEL, upstream_model=MODEL)
    await engine.start()
    try:
        base = await guard_server(engine)
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as info:
                await sdk(base).chat.completions.create(model=MODEL, messages=ASK, stream=stream)
            assert info.value.status_code == 502 and "text/html" in info.value.body["message"]
    finally:
        await engine.close()
        await fake.close()


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


async def test_single_upstream_down_then_back(default_model_path, guard_server, sdk):
    port = free_port()
    fake = await _serve(build_fake_app(tokens=4, delay_s=0), port)
    engine = VllmEngine(f"http://127.0.0.1:{port}", default_model_path, MODEL, upstream_model=MODEL)
    await engine.start()
    try:
        base = await guard_server(engine)
        client = sdk(base)
        assert "tok0" in (await client.chat.completions.create(model=MODEL, messages=ASK)).choices[0].message.content
        await fake.close()
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model=MODEL, messages=ASK)
        assert info.value.status_code == 502
        fake = await _serve(build_fake_app(tokens=4, delay_s=0), port)
        for _ in range(100):  # the health loop brings it back (probes every few seconds)
            try:
                resp = await client.chat.completions.create(model=MODEL, messages=ASK)
                break
            except openai.APIStatusError:
                await asyncio.sleep(0.2)
        else:
            raise AssertionError("the guard did not recover when the upstream came back")
        assert "tok0" in resp.choices[0].message.content
        async with aiohttp.ClientSession() as s, s.get(base.removesuffix("/v1") + "/health") as r:
            assert r.status == 200
    finally:
        await engine.close()
        await fake.close()
