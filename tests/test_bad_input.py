"""Bad input never yields a 5xx: explicit cases, then a hypothesis fuzz against a running guard.

The upstream here is the fast fake from benchmarks/ (it isolates the guard's validation layer);
the real engines are exercised by the other API tests.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fake_upstream import build_fake_app
from guard.engines.vllm import VllmEngine
from guard.models import DEFAULT_SERVED_NAME
from tests.conftest import free_port

MODEL = DEFAULT_SERVED_NAME


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(params=["no-policy", "keyword-policy"])
async def fake_guard(request, default_model_path, guard_server):
    """The guard without a policy, and with a keyword policy behind the de-obfuscation (the screening
    path: NFKC, base64 decoding, sentence splitting must not fail on any input either)."""
    fake = TestServer(build_fake_app(tokens=4, delay_s=0), host="127.0.0.1", port=free_port())
    await fake.start_server()
    engine = VllmEngine(str(fake.make_url("")), default_model_path, MODEL, upstream_model=MODEL)
    await engine.start()
    policy = {"policy": str(FIXTURES / "refuse_keyword.yaml")} if request.param == "keyword-policy" else {}
    base = await guard_server(engine, max_body_bytes=256 * 1024, **policy)
    yield base
    await engine.close()
    await fake.close()


def _assert_openai_error(status: int, body: bytes) -> None:
    assert 400 <= status < 500, (status, body[:300])
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]


@pytest.mark.parametrize("body", [
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}] * 5000},
    {"model": MODEL, "messages": [{"role": "user", "content": ""}]},
    {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": {"nested": [[[]]]}}]}]},
    {"model": MODEL, "messages": [{"role": "user", "content": [[[[[[[["deep"]]]]]]]]}]},
    {"model": MODEL, "messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]},
    {"model": MODEL, "messages": [{"role": "function", "name": "f", "content": "42"}]},
    {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
    {"model": MODEL, "messages": "hello"},
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**30},
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": "yes please"},
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["a"] * 50},
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
    {"model": 42, "messages": [{"role": "user", "content": "hi"}]},
    {"messages": [{"role": "user", "content": "hi"}]},
])
async def test_bad_chat_bodies_are_4xx(fake_guard, body):
    async with aiohttp.ClientSession() as s, s.post(f"{fake_guard}/chat/completions", json=body) as r:
        _assert_openai_error(r.status, await r.read())


async def test_huge_body_is_413_and_server_stays_healthy(fake_guard):
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{fake_guard}/chat/completions", data=b"{" + b" " * (1024 * 1024) + b"}") as r:
            assert r.status == 413
        async with s.get(fake_guard.removesuffix("/v1") + "/health") as r:
            assert r.status == 200


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
_json = st.recursive(_json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                     max_leaves=20)
_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "", "USER"]),
                                  "content": st.one_of(st.text(max_size=40), _json)})
_chat_body = st.fixed_dictionaries(
    {"model": st.one_of(st.just(MODEL), _json_leaf), "messages": st.one_of(st.lists(_message, max_size=3), _json)},
    optional={"max_tokens": _json_leaf, "temperature": _json_leaf, "top_p": _json_leaf, "stream": _json_leaf,
              "stop": _json, "seed": _json_leaf, "n": _json_leaf, "stream_options": _json, "extra": _json})


# FUZZ_EXAMPLES=2000 for a longer run (the README's fuzz figure); 150 in the regular suite.
@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(_chat_body, _json), raw=st.binary(max_size=64), use_raw=st.booleans())
async def test_fuzz_never_5xx(fake_guard, body, raw, use_raw):
    payload = raw if use_raw else json.dumps(body).encode()
    async with aiohttp.ClientSession() as s:
        for route in ("chat/completions", "completions"):
            async with s.post(f"{fake_guard}/{route}", data=payload, headers={"Content-Type": "application/json"}) as r:
                content = await r.read()
                assert r.status < 500, (r.status, payload[:200], content[:300])
                if r.status >= 400:
                    _assert_openai_error(r.status, content)
