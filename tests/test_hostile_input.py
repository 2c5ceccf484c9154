"""Hostile inputs (issue 19, findings 6 and 7): each is a 4xx with an OpenAI error object naming the
field, never a 500 or a traceback, against a running guard on the local engine (the real default
model), sent as raw bytes so nothing on the client side cleans them up."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import zlib

import aiohttp
import pytest

from guard.models import DEFAULT_SERVED_NAME

MODEL = DEFAULT_SERVED_NAME
ADMIN = "admin-secret-123"
CLIENT = "sk-client-123456"
HELLO = [{"role": "user", "content": "Say hi."}]


def _chat(**extra) -> bytes:
    return json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 2, "temperature": 0, **extra}).encode()


@pytest.fixture
async def guard(local_engine, guard_server, caplog):
    """(base URL, root URL); fails the test if the guard logged an unhandled error."""
    caplog.set_level(logging.ERROR)
    base = await guard_server(local_engine, admin_api_key=ADMIN)
    yield base, base.removesuffix("/v1")
    unhandled = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not unhandled, unhandled


async def _post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.post(url, data=body, headers={"Content-Type": "application/json", **(headers or {})}) as r:
            assert r.content_type == "application/json", await r.text()
            return r.status, await r.json()


def _assert_error(status: int, body: dict, expected_status: int, param: str | None, code: str | None = None) -> dict:
    assert status == expected_status, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error


NESTED = b'{"model": "m", "messages": [], "stream_options": ' + b"[" * 1000 + b"]" * 1000 + b"}"
HUGE_INT = b'{"model": "m", "messages": [], "max_tokens": 1' + b"0" * 5000 + b"}"


@pytest.mark.parametrize("raw, param, needle", [
    (NESTED, None, "nested too deeply"),
    (HUGE_INT, None, "number too long"),
    (_chat(seed=2**70), "seed", "seed"),
    (_chat(seed=-(2**63) - 1), "seed", "seed"),
    (_chat(stream_options={"include_usage": True, "continuous_usage_stats": [[[[1]]]]}, stream=True),
     "stream_options", "continuous_usage_stats"),
    (b'{"model": "%s", "messages": [{"role": "user", "content": "hi \\ud800 there"}]}' % MODEL.encode(),
     "messages.0.content", "surrogate"),
    (b'{"model": "%s", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}'
     % MODEL.encode(), "messages.0.content.0.text", "surrogate"),
    (b'{"model": "%s", "prompt": "x\\udc00"}' % MODEL.encode(), "prompt", "surrogate"),
], ids=["nested-1000", "int-5000-digits", "seed-2^70", "seed-below-int64", "deep-stream-options",
        "lone-high-surrogate", "lone-low-surrogate-in-part", "surrogate-in-prompt"])
async def test_malformed_bodies_are_400_naming_the_field(guard, raw, param, needle):
    base, _ = guard
    route = "completions" if b'"prompt"' in raw else "chat/completions"
    status, body = await _post(f"{base}/{route}", raw)
    error = _assert_error(status, body, 400, param)
    assert needle in error["message"]


async def test_valid_surrogate_pairs_and_int64_seeds_are_accepted(guard):
    base, _ = guard
    emoji = b'{"model": "%s", "messages": [{"role": "user", "content": "hi \\ud83d\\ude00"}], "max_tokens": 2, ' \
            b'"seed": 9223372036854775807}' % MODEL.encode()
    status, body = await _post(f"{base}/chat/completions", emoji)
    assert status == 200, body


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-6, 0.005])
async def test_tiny_temperatures_sample_like_vllm(guard, temperature):
    """vLLM raises 0 < temperature < 0.01 to 0.01; dividing by 1e-300 would give NaN probabilities."""
    base, _ = guard
    status, body = await _post(f"{base}/chat/completions", _chat(temperature=temperature, max_tokens=3, seed=1))
    assert status == 200, body
    assert body["choices"][0]["message"]["content"]


async def _raw_request(root: str, request: bytes) -> tuple[int, dict]:
    url = aiohttp.client.URL(root)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(request)
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        assert headers["content-type"].startswith("application/json"), headers
        return status, json.loads(await reader.readexactly(int(headers["content-length"])))
    finally:
        writer.close()


@pytest.mark.parametrize("method, path, expected", [
    ("GET", "/v1/models", 401), ("POST", "/admin/reload", 401), ("GET", "/metrics", 401), ("GET", "/health", 200),
])
async def test_non_utf8_authorization_header_is_not_a_500(local_engine, guard_server, method, path, expected):
    base = await guard_server(local_engine, admin_api_key=ADMIN, api_keys=[f"app:{CLIENT}"])
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n".encode()
    status, body = await _raw_request(base.removesuffix("/v1"), head + b"Authorization: Bearer \xff\xfe-key\r\n\r\n")
    assert status == expected, body
    if expected == 401:
        assert body["error"]["type"] == "authentication_error"
    else:
        assert body["status"] == "ok" and "model" not in body["engine"]  # the public view


async def test_gzip_body_is_decoded_and_screened(local_engine, guard_server):
    from pathlib import Path

    policy = Path(__file__).parent / "fixtures" / "refuse_keyword.yaml"
    base = await guard_server(local_engine, policy=str(policy))
    ask = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Who is Basil Mahfouz Al-Kuwaiti?"}]})
    for coding, data in (("gzip", gzip.compress(ask.encode())), ("deflate", zlib.compress(ask.encode()))):
        status, body = await _post(f"{base}/chat/completions", data, {"Content-Encoding": coding})
        assert status == 200 and "sorry" in body["choices"][0]["message"]["content"].lower(), (coding, body)


@pytest.mark.parametrize("coding, data, expected", [
    ("gzip", b'{"model": "x"}', 400),  # says gzip, is not
    ("deflate", b"not deflate at all", 400),
    ("gzip", gzip.compress(_chat())[:-12], 400),  # truncated
    ("br", b"\x0b\x02\x80{}\x03", 415),
    ("zstd", b"(\xb5/\xfd\x00X\x11\x00\x00{}", 415),
    ("gzip, br", b"{}", 415),
])
async def test_bad_content_encodings_are_openai_errors(guard, coding, data, expected):
    base, _ = guard
    status, body = await _post(f"{base}/chat/completions", data, {"Content-Encoding": coding})
    _assert_error(status, body, expected, "Content-Encoding")


async def test_gzip_bomb_is_413(guard):
    base, _ = guard
    bomb = gzip.compress(b" " * (64 * 1024 * 1024))  # 64 MiB of spaces in ~64 KB
    status, body = await _post(f"{base}/chat/completions", bomb, {"Content-Encoding": "gzip"})
    error = _assert_error(status, body, 413, None, "payload_too_large")
    assert "after decompression" in error["message"]


# -- prompt length against the model's context (finding 6) ----------------------------------------


async def test_engine_reports_its_context_window(local_engine):
    window = local_engine.context_window
    assert window is not None and window.tokens == local_engine.model.config.max_position_embeddings
    assert window.max_chars_per_token and window.max_chars_per_token < 1000


@pytest.mark.parametrize("route, field", [("chat/completions", "messages"), ("completions", "prompt")])
async def test_prompt_far_over_the_context_is_refused_before_tokenising(guard, local_engine, route, field):
    """Cheap bound: so many characters that no tokenisation could fit them; refused at once."""
    base, _ = guard
    window = local_engine.context_window
    text = "a" * (window.tokens * window.max_chars_per_token + 10)
    payload = {"model": MODEL, "messages": [{"role": "user", "content": text}]} if field == "messages" else \
        {"model": MODEL, "prompt": text}
    status, body = await _post(f"{base}/{route}", json.dumps(payload).encode())
    error = _assert_error(status, body, 400, field, "context_length_exceeded")
    assert str(window.tokens) in error["message"] and "at least" in error["message"]


@pytest.mark.parametrize("route, field", [("chat/completions", "messages"), ("completions", "prompt")])
async def test_prompt_just_over_the_context_is_refused_exactly(guard, local_engine, route, field):
    """Under the cheap bound, over the context once tokenised: the engine's exact check answers."""
    base, _ = guard
    window = local_engine.context_window
    text = " hello" * (window.tokens + 50)  # one token per word
    assert window.min_tokens(len(text)) < window.tokens  # passes the cheap bound
    payload = {"model": MODEL, "messages": [{"role": "user", "content": text}]} if field == "messages" else \
        {"model": MODEL, "prompt": text}
    status, body = await _post(f"{base}/{route}", json.dumps({**payload, "max_tokens": 2}).encode())
    error = _assert_error(status, body, 400, field, "context_length_exceeded")
    assert str(window.tokens) in error["message"]


async def test_utf8_encoded_surrogates_are_not_utf8(guard):
    """json.loads(bytes) would decode ED A0 80 (an encoded lone surrogate) with 'surrogatepass'."""
    base, _ = guard
    raw = b'{"model": "%s", "messages": [{"role": "user", "content": "hi \xed\xa0\x80"}]}' % MODEL.encode()
    status, body = await _post(f"{base}/chat/completions", raw)
    assert "UTF-8" in _assert_error(status, body, 400, None)["message"]
