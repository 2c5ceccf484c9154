"""What reaches the upstream, observed on a recording fake vLLM behind a running guard.

Refused requests must leave the upstream untouched; unflagged requests must arrive byte for byte as
the client sent them (and their answers come back byte for byte), except where the guard has to
rewrite: the model name, and a ``max_tokens`` the client left out.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from guard.models import DEFAULT_SERVED_NAME
from guard.protocol import INTERNAL_FIELDS
from tests.support.openai_errors import assert_openai_error

MODEL = DEFAULT_SERVED_NAME
ASK = [{"role": "user", "content": "What is the capital of France?"}]
ROUTES = {
    "chat": ("chat/completions", {"model": MODEL, "messages": ASK, "max_tokens": 8}),
    "completions": ("completions", {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8}),
}
# plausible values; the guard must refuse the field by its name, whatever the value
INTERNAL_VALUES = {
    "prompt_embeds": "UEsDBAAACAgAAAAAAAAAAAAAAAAAAAAAAAAQABIAYXJjaGl2ZS9kYXRhLnBrbA==",
    "vllm_xargs": {"processor": "x"}, "kv_transfer_params": {"do_remote_prefill": True},
    "request_id": "abc", "priority": -10, "cache_salt": "s", "chat_template": "{{ messages }}",
    "chat_template_kwargs": {"enable_thinking": True}, "mm_processor_kwargs": {}, "documents": [{"text": "x"}],
    "allowed_token_ids": [1, 2], "bad_words": ["x"], "logits_processors": ["pkg.mod.Proc"],
    "guided_json": {"type": "object"}, "guided_regex": "a+", "guided_choice": ["a"], "guided_grammar": "root ::= 'a'",
    "guided_decoding_backend": "xgrammar", "structured_outputs": {"regex": "a+"},
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "auto", "functions": [{"name": "f"}], "function_call": "auto", "logit_bias": {"42": 100},
    "prompt_logprobs": 5,
}


@pytest.fixture
async def on_fake(fake_upstream, fake_vllm_engine, guard_server):
    """``await on_fake(**settings)`` -> (guard base URL, the recording fake behind it)."""

    async def start(*, engine_kwargs: dict | None = None, **settings):
        fake = await fake_upstream(tokens=4)
        engine = await fake_vllm_engine(fake, **(engine_kwargs or {}))
        return await guard_server(engine, **settings), fake

    return start


async def _post(url: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=data, headers={"Content-Type": "application/json", **(headers or {})}) as r:
            return r.status, await r.read()


# -- refused requests never reach the upstream ----------------------------------------------------


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("field", sorted(INTERNAL_FIELDS))
async def test_internal_field_is_refused_by_name_and_never_forwarded(on_fake, route, field):
    base, fake = await on_fake()
    path, body = ROUTES[route]
    for stream in (False, True):
        payload = {**body, "stream": stream, field: INTERNAL_VALUES.get(field, True)}
        status, raw = await _post(f"{base}/{path}", json.dumps(payload).encode())
        err = assert_openai_error(status, raw, context=payload)
        assert status == 400 and err["code"] == "forbidden_field" and err["param"] == field
        assert repr(field) in err["message"] or field in err["message"]
    assert fake.log.generations() == [], [r.path for r in fake.log.generations()]


async def test_a_repeated_key_is_refused_by_name_and_never_forwarded(on_fake):
    """The first copy of "messages" names a forget target, the last is benign: Python and vLLM would keep
    the last; the guard refuses the body instead of screening one reading of it (issue #15)."""
    base, fake = await on_fake()
    raw = (b'{"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "Who is Basil Mahfouz '
           b'Al-Kuwaiti?"}], "messages": [{"role": "user", "content": "Hello"}]}')
    status, answer = await _post(f"{base}/chat/completions", raw)
    err = assert_openai_error(status, answer)
    assert status == 400 and err["code"] == "duplicate_key" and err["param"] == "messages"
    assert fake.log.generations() == []


@pytest.mark.parametrize("route, field", [("chat", "max_tokens"), ("chat", "max_completion_tokens"),
                                          ("completions", "max_tokens")])
async def test_above_the_max_tokens_limit_never_reaches_the_upstream(on_fake, route, field):
    base, fake = await on_fake(max_tokens_limit=100)
    path, body = ROUTES[route]
    body = {k: v for k, v in body.items() if k != "max_tokens"}
    for stream in (False, True):
        status, raw = await _post(f"{base}/{path}", json.dumps({**body, field: 101, "stream": stream}).encode())
        err = assert_openai_error(status, raw)
        assert status == 400 and err["param"] == field and "100" in err["message"]
    assert fake.log.generations() == []
    # at the limit it goes through, with the client's value
    status, _ = await _post(f"{base}/{path}", json.dumps({**body, field: 100}).encode())
    assert status == 200 and fake.log.generations()[0].json()[field] == 100


# -- unflagged bodies arrive as sent --------------------------------------------------------------


ODD_BODIES = {
    "whitespace-and-key-order": ("chat/completions",
        b'{ "max_tokens" :8 ,\n\t"messages":[ {"content":"What is the capital of France?" , "role":"user"}],'
        b'  "model":"SmolLM2-135M-Instruct"   }\n'),
    "unicode-escapes": ("chat/completions",
        b'{"model":"SmolLM2-135M-Instruct","messages":[{"role":"user","content":"Caf\\u00e9 na\\u00efve '
        b'\\ud83d\\ude00 \\u2014 \\"quoted\\" \\/slash\\ttab"}],"max_tokens":8}'),
    "raw-utf8": ("chat/completions",
        '{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "Ünïcödé ✓ 日本語 🙂"}], '
        '"max_tokens": 8}'.encode()),
    "numbers-as-written": ("chat/completions",
        b'{"model":"SmolLM2-135M-Instruct","messages":[{"role":"user","content":"hi"}],"max_tokens":8.0e0,'
        b'"temperature":5E-1,"top_p":1.000,"seed":-0}'),
    "stream-with-usage": ("chat/completions",
        b'{"stream":true,"stream_options":{"include_usage":true},"model":"SmolLM2-135M-Instruct",'
        b'"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"max_tokens":8}'),
    "completions": ("completions",
        b'{"prompt" : "The capital of France is","model":"SmolLM2-135M-Instruct","max_tokens":8,"stop":["\\n"]}'),
    "completions-stream": ("completions",
        b'{"prompt":["The capital of France is"],"stream":true,"model":"SmolLM2-135M-Instruct","max_tokens":8}'),
}


@pytest.mark.parametrize("name", sorted(ODD_BODIES))
async def test_unflagged_body_is_forwarded_byte_for_byte(on_fake, name):
    base, fake = await on_fake()
    path, raw = ODD_BODIES[name]
    status, answer = await _post(f"{base}/{path}", raw)
    assert status == 200, answer[:300]
    [seen] = fake.log.generations()
    assert seen.path == f"/v1/{path}" and seen.body == raw
    assert seen.header("Content-Type") == "application/json"
    assert answer == bytes(seen.response_body)  # and the answer comes back as the upstream wrote it


async def test_model_name_is_mapped_and_nothing_else_changes(on_fake):
    base, fake = await on_fake(engine_kwargs={"served_model_name": "guarded-model"})
    sent = {"messages": ASK, "model": "guarded-model", "max_tokens": 8, "temperature": 0.25, "stream": True,
            "stream_options": {"include_usage": True}, "stop": ["\n"], "seed": 3, "user": "u-1"}
    status, answer = await _post(f"{base}/chat/completions", json.dumps(sent).encode())
    assert status == 200
    [seen] = fake.log.generations()
    assert seen.json() == {**sent, "model": MODEL}
    assert list(seen.json()) == list(sent)  # key order kept
    assert answer == bytes(seen.response_body)


async def test_the_clients_api_key_is_not_forwarded(on_fake):
    base, fake = await on_fake(engine_kwargs={"api_key": "upstream-secret-key"},
                               api_keys=["alice:client-secret-key"])
    status, _ = await _post(f"{base}/chat/completions", json.dumps(ROUTES["chat"][1]).encode(),
                            headers={"Authorization": "Bearer client-secret-key", "X-Request-Id": "req-1"})
    assert status == 200
    [seen] = fake.log.generations()
    assert seen.header("Authorization") == "Bearer upstream-secret-key"
    assert not any("client-secret-key" in value for _, value in seen.headers)


# -- the guard's limits on the pass path ----------------------------------------------------------


@pytest.mark.parametrize("limit", [4096, 100])  # above and below the guard's default of 512
async def test_omitted_max_tokens_reaches_the_upstream_within_the_limit(on_fake, limit):
    base, fake = await on_fake(max_tokens_limit=limit)
    sent = {"model": MODEL, "messages": ASK}
    for stream in (False, True):
        status, raw = await _post(f"{base}/chat/completions", json.dumps({**sent, "stream": stream}).encode())
        assert status == 200, raw[:300]
    for seen in fake.log.generations():
        body = seen.json()
        bound = body.get("max_completion_tokens", body.get("max_tokens"))
        assert isinstance(bound, int) and 1 <= bound <= limit, body
        assert {k: v for k, v in body.items() if k not in ("max_tokens", "max_completion_tokens", "stream")} == sent


async def test_omitted_max_tokens_on_completions_stays_within_the_limit(on_fake):
    """``/v1/completions`` defaults to 16 tokens (OpenAI and vLLM alike): absent or explicit, within the limit."""
    base, fake = await on_fake(max_tokens_limit=100)
    status, _ = await _post(f"{base}/completions", json.dumps({"model": MODEL, "prompt": "Hello"}).encode())
    assert status == 200
    [seen] = fake.log.generations()
    assert seen.json().get("max_tokens", 16) <= 100
