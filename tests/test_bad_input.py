"""Bad input never yields a 5xx, every 4xx is an OpenAI error naming what is wrong, and nothing a
refused request carries reaches the model: explicit cases, then hypothesis fuzzes against a running
guard.

The guard runs in front of the recording fake vLLM (what reaches the upstream is read off its log)
and on the real local engine (whose probe counts the generations that started). Whatever is valid
generates at most ``LIMIT`` tokens, so passing requests stay cheap.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from guard.engines.vllm import VllmEngine
from guard.models import DEFAULT_SERVED_NAME
from guard.protocol import INTERNAL_FIELDS
from tests.support.engines import ProbedLocalEngine
from tests.support.openai_errors import assert_openai_error
from tests.support.raw_http import raw_request
from tests.support.upstream import forwarded, start_fake_upstream

MODEL = DEFAULT_SERVED_NAME
LIMIT = 4  # max_tokens_limit of every guard here
FIXTURES = Path(__file__).parent / "fixtures"
ROUTES = ("chat/completions", "completions")
API_KEY, ADMIN_KEY = "client-key-for-tests", "admin-key-for-tests"
FUZZ = int(os.environ.get("FUZZ_EXAMPLES", "150"))  # FUZZ_EXAMPLES=2000 for the README's longer run
FUZZ_SETTINGS = settings(deadline=None, max_examples=FUZZ,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                HealthCheck.data_too_large])
FEWER = settings(FUZZ_SETTINGS, max_examples=max(FUZZ // 3, 20))  # the narrower fuzzes


@dataclass
class Guarded:
    """A running guard and what its model side saw."""

    base: str
    generations: Callable[[], int]  # generations started (local engine) or forwarded (fake upstream) so far
    forwarded: Callable[[int], list[bytes]]  # bodies the upstream received after the n-th (fake only)

    async def post(self, route: str, payload: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{self.base}/{route}", data=payload,
                              headers={"Content-Type": "application/json", **(headers or {})}) as r:
                return r.status, await r.read()

    def check(self, before: int, status: int, content: bytes, sent: object) -> None:
        """The invariants of any answer to any input."""
        assert status < 500, (status, repr(sent)[:300], content[:300])
        if status >= 400:
            assert_openai_error(status, content, context=repr(sent)[:200])
            assert self.generations() == before, f"a refused request ({status}) reached the model: {repr(sent)[:200]}"
            return
        for body in self.forwarded(before):
            forwarded = json.loads(body)
            assert not INTERNAL_FIELDS & set(forwarded), forwarded
            for field in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
                assert forwarded.get(field) is None or forwarded[field] <= LIMIT, forwarded


@pytest.fixture(scope="module")
async def probed_local(default_model_path):
    engine = ProbedLocalEngine(default_model_path, MODEL, max_concurrency=1, max_queue=8)
    await engine.start()
    yield engine
    await engine.close()


@pytest.fixture(scope="module")
async def fake_and_engine(default_model_path):
    """One recording fake and its engine for the module (each test reads the log from where it starts)."""
    fake = await start_fake_upstream(tokens=LIMIT)
    engine = VllmEngine([fake.url], default_model_path, MODEL, upstream_model=MODEL)
    await engine.start()
    yield fake, engine
    await engine.close()
    await fake.close()


async def _on_fake(fake_and_engine, guard_server, **settings) -> Guarded:
    fake, engine = fake_and_engine
    base = await guard_server(engine, max_tokens_limit=LIMIT, max_body_bytes=256 * 1024, **settings)
    return Guarded(base, lambda: len(forwarded(fake.log)), lambda n: [r.body for r in forwarded(fake.log)[n:]])


@pytest.fixture(params=["fake", "fake+keyword-policy", "local+keyword-policy"])
async def guarded(request, fake_and_engine, guard_server, probed_local) -> Guarded:
    """The guard without a policy and with a keyword policy behind the de-obfuscation (NFKC, base64
    decoding, sentence splitting must not fail on any input either), on the fake and the local engine."""
    policy = {"policy": str(FIXTURES / "refuse_keyword.yaml")} if "keyword" in request.param else {}
    if request.param.startswith("fake"):
        return await _on_fake(fake_and_engine, guard_server, **policy)
    engine = probed_local
    base = await guard_server(engine, max_tokens_limit=LIMIT, max_body_bytes=256 * 1024, **policy)
    return Guarded(base, lambda: len(engine.probes), lambda n: [])


@pytest.fixture
async def keyed(fake_and_engine, guard_server) -> Guarded:
    """On the fake, with client API keys and an admin key: the header paths that compare keys."""
    return await _on_fake(fake_and_engine, guard_server, api_keys=[f"alice:{API_KEY}"], admin_api_key=ADMIN_KEY)


def _chat(**extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **extra}


# -- explicit cases -------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}] * 5000},
    {"model": MODEL, "messages": [{"role": "user", "content": ""}]},
    {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": {"nested": [[[]]]}}]}]},
    {"model": MODEL, "messages": [{"role": "user", "content": [[[[[[[["deep"]]]]]]]]}]},
    {"model": MODEL, "messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]},
    {"model": MODEL, "messages": [{"role": "function", "name": "f", "content": "42"}]},
    {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
    {"model": MODEL, "messages": "hello"},
    _chat(max_tokens=-1), _chat(max_tokens=10**30), _chat(max_tokens=LIMIT + 1), _chat(max_completion_tokens=LIMIT + 1),
    _chat(stream="yes please"), _chat(stop=["a"] * 50), _chat(tools=[{"type": "function"}]), _chat(n=2, temperature=0),
    _chat(n=10**6), _chat(temperature=float("inf")), _chat(seed=2**70), _chat(seed=-(2**70)), _chat(top_logprobs=2),
    _chat(logprobs="yes"), _chat(logit_bias={"not-a-token": 1}), _chat(logit_bias={"504": 101}),
    _chat(tool_choice="required"), _chat(response_format={"type": "xml"}), _chat(frequency_penalty=-3),
    _chat(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice={"type": "function", "function": {"name": "g"}}),
    _chat(messages=[{"role": "user", "content": "hi", "tool_calls": []}]),
    _chat(messages=[{"role": "assistant", "content": None, "tool_calls": [{"id": "1", "function": {"name": "f"}}]}]),
    {"model": 42, "messages": [{"role": "user", "content": "hi"}]},
    {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
    {"messages": [{"role": "user", "content": "hi"}]},
], ids=lambda body: json.dumps(body)[:60])
async def test_bad_chat_bodies_are_4xx_and_never_reach_the_model(guarded, body):
    before = guarded.generations()
    status, content = await guarded.post("chat/completions", json.dumps(body).encode())
    assert 400 <= status < 500
    guarded.check(before, status, content, body)


_ASK = b'"messages":[{"role":"user","content":"hi"}]'
_M = f'"model":"{MODEL}"'.encode()
# bodies a JSON library would not write: (body, the status the chat route must answer; None: any but 5xx)
RAW_BODIES = {
    "deep-array": (b"[" * 100_000 + b"]" * 100_000, 400),
    "deep-object": (b'{"a":' * 20_000 + b"1" + b"}" * 20_000, 400),
    "deep-content": (b"{" + _M + b',"messages":[{"role":"user","content":' + b"[" * 5000 + b"]" * 5000 + b"}]}", 400),
    "deep-stream-options": (b"{" + _M + b"," + _ASK + b',"stream_options":' + b'{"a":' * 5000 + b"1" + b"}" * 5001, 400),
    "huge-max-tokens": (b"{" + _M + b"," + _ASK + b',"max_tokens":' + b"9" * 5000 + b"}", 400),
    "huge-negative-seed": (b"{" + _M + b"," + _ASK + b',"seed":-' + b"1" * 4400 + b"}", 400),
    "huge-exponent": (b"{" + _M + b"," + _ASK + b',"temperature":1e400,"top_p":1e-400}', 400),
    "tiny-temperature": (b"{" + _M + b"," + _ASK + b',"temperature":1e-300}', None),
    "lone-high-surrogate": (b"{" + _M + b',"messages":[{"role":"user","content":"hi \\ud800 there"}]}', 400),
    "lone-low-surrogate": (b"{" + _M + b',"messages":[{"role":"user","content":"\\udfff"}]}', 400),
    "reversed-pair": (b"{" + _M + b',"messages":[{"role":"user","content":"\\ude00\\ud83d"}]}', 400),
    "surrogate-in-key": (b"{" + _M + b"," + _ASK + b',"\\ud800":1}', 400),
    "surrogate-in-model": (b'{"model":"\\ud800",' + _ASK + b"}", 400),
    "surrogate-in-stop": (b"{" + _M + b"," + _ASK + b',"stop":["\\udbff"]}', 400),
    "surrogate-in-name": (b"{" + _M + b',"messages":[{"role":"user","content":"hi","name":"\\ud800"}]}', 400),
    "surrogate-in-part": (b"{" + _M + b',"messages":[{"role":"user","content":[{"type":"text","text":"\\ud800"}]}]}', 400),
    "valid-pair": (b"{" + _M + b',"messages":[{"role":"user","content":"\\ud83d\\ude00"}]}', 200),
    # json.loads(bytes) would decode these UTF-8-encoded surrogate bytes with 'surrogatepass'
    "raw-surrogate-bytes": (b"{" + _M + b',"messages":[{"role":"user","content":"\xed\xa0\x80"}]}', 400),
    "not-utf8": (b"{" + _M + b',"messages":[{"role":"user","content":"\xff\xfe"}]}', 400),
    "nan-and-infinity": (b"{" + _M + b"," + _ASK + b',"temperature":NaN,"top_p":Infinity}', 400),
    "nul-in-content": (b"{" + _M + b',"messages":[{"role":"user","content":"a\\u0000b"}]}', 200),
    "empty": (b"", 400),
    "bom": (b"\xef\xbb\xbf{" + _M + b"," + _ASK + b"}", None),
}


@pytest.mark.parametrize("name", sorted(RAW_BODIES))
async def test_hostile_raw_bodies(guarded, name):
    payload, expected = RAW_BODIES[name]
    for route in ROUTES:
        before = guarded.generations()
        status, content = await guarded.post(route, payload)
        guarded.check(before, status, content, name)
        if route == "completions":  # these are chat bodies: a 4xx here, whatever the cause
            assert 400 <= status < 500
        elif expected is not None:
            assert status == expected, (name, status, content[:300])


BAD_ENCODINGS = {  # Content-Encoding, body
    "gzip-on-plain-json": ("gzip", json.dumps(_chat()).encode()),
    "deflate-on-garbage": ("deflate", b"\x00\x01garbage"),
    "truncated-gzip": ("gzip", gzip.compress(json.dumps(_chat()).encode())[:-12]),
    "br": ("br", b"\x1b\x00\x00"),
    "zstd": ("zstd", b"\x28\xb5\x2f\xfd"),
    "stacked": ("gzip, gzip", gzip.compress(gzip.compress(json.dumps(_chat()).encode()))),
    "unknown": ("x-made-up", json.dumps(_chat()).encode()),
    "gzip-bomb": ("gzip", gzip.compress(b" " * (8 * 1024 * 1024))),
}


@pytest.mark.parametrize("name", sorted(BAD_ENCODINGS))
async def test_bad_content_encodings_are_openai_errors(guarded, name):
    coding, body = BAD_ENCODINGS[name]
    before = guarded.generations()
    status, content = await guarded.post("chat/completions", body, headers={"Content-Encoding": coding})
    assert 400 <= status < 500, (status, content[:300])
    guarded.check(before, status, content, name)


@pytest.mark.parametrize("coding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_compressed_body_is_screened_and_forwarded_decoded(fake_upstream, fake_vllm_engine, guard_server,
                                                                  coding, compress):
    fake = await fake_upstream(tokens=LIMIT)
    base = await guard_server(await fake_vllm_engine(fake), policy=str(FIXTURES / "refuse_keyword.yaml"))
    ask = json.dumps(_chat(max_tokens=2)).encode()
    flagged = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Who is Basil Mahfouz Al-Kuwaiti?"}]})
    async with aiohttp.ClientSession() as s:
        for payload in (ask, flagged.encode()):
            async with s.post(f"{base}/chat/completions", data=compress(payload),
                              headers={"Content-Type": "application/json", "Content-Encoding": coding}) as r:
                assert r.status == 200, await r.text()
    [seen] = fake.log.generations()  # the flagged one was refused by the guard
    assert seen.body == ask and seen.header("Content-Encoding") in (None, "identity")


NON_ASCII_HEADERS = {  # (method, path, header name, raw value)
    "authorization-v1": ("POST", "/v1/chat/completions", b"Authorization", b"Bearer \xff\xfe"),
    "authorization-utf8": ("POST", "/v1/chat/completions", b"Authorization", "Bearer clé-été".encode()),
    "authorization-health": ("GET", "/health", b"Authorization", b"Bearer \xff"),
    "authorization-admin": ("POST", "/admin/reload", b"Authorization", b"Bearer \xff"),
    "authorization-metrics": ("GET", "/metrics", b"Authorization", b"Bearer \xc3\x28"),
    "request-id": ("POST", "/v1/chat/completions", b"X-Request-Id", b"\xff\xfe-id"),
    "content-type": ("POST", "/v1/chat/completions", b"Content-Type", b"application/json; charset=\xff"),
    "content-encoding": ("POST", "/v1/chat/completions", b"Content-Encoding", b"gz\xffip"),
    "user-agent": ("POST", "/v1/chat/completions", b"User-Agent", b"\x80\x81\x82"),
}


@pytest.mark.parametrize("name", sorted(NON_ASCII_HEADERS))
async def test_non_ascii_header_bytes(keyed, name):
    method, path, header, value = NON_ASCII_HEADERS[name]
    headers = [(header, value)]
    if header != b"Authorization":
        headers.append((b"Authorization", f"Bearer {API_KEY}".encode()))
    if header != b"Content-Type":
        headers.append((b"Content-Type", b"application/json"))
    before = keyed.generations()
    body = json.dumps(_chat(max_tokens=2)).encode() if method == "POST" else b""
    resp = await raw_request(keyed.base.removesuffix("/v1") + path, method=method, headers=headers, body=body)
    assert resp.status < 500, (resp.status, resp.body[:300])
    if path == "/health":
        assert resp.status == 200 and "replicas" not in json.loads(resp.body)["engine"]  # not privileged
    elif header == b"Authorization":
        assert resp.status == 401
    if resp.status >= 400:
        keyed.check(before, resp.status, resp.body, name)
    assert all(ord(c) < 128 for c in resp.headers.get("x-request-id", ""))


async def test_huge_body_is_413_and_server_stays_healthy(guarded):
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{guarded.base}/chat/completions", data=b"{" + b" " * (1024 * 1024) + b"}") as r:
            assert_openai_error(r.status, await r.read())
            assert r.status == 413
        async with s.get(guarded.base.removesuffix("/v1") + "/health") as r:
            assert r.status == 200


# -- fuzz -----------------------------------------------------------------------------------------

_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
_json = st.recursive(_json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                     max_leaves=20)
_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "", "USER"]),
                                  "content": st.one_of(st.text(max_size=40), _json)},
                                 optional={"name": st.one_of(st.text(max_size=10), _json_leaf)})
_chat_body = st.fixed_dictionaries(
    {"model": st.one_of(st.just(MODEL), _json_leaf), "messages": st.one_of(st.lists(_message, max_size=3), _json)},
    optional={"max_tokens": _json_leaf, "temperature": _json_leaf, "top_p": _json_leaf, "stream": _json_leaf,
              "stop": _json, "seed": _json_leaf, "n": _json_leaf, "stream_options": _json, "extra": _json,
              "max_completion_tokens": _json_leaf, "prompt": _json,
              **{field: _json for field in sorted(INTERNAL_FIELDS)[:8]}})


@FUZZ_SETTINGS
@given(body=st.one_of(_chat_body, _json), raw=st.binary(max_size=64), use_raw=st.booleans())
async def test_fuzz_json_bodies(guarded, body, raw, use_raw):
    payload = raw if use_raw else json.dumps(body).encode()
    for route in ROUTES:
        before = guarded.generations()
        status, content = await guarded.post(route, payload)
        guarded.check(before, status, content, payload)


_text = st.text(max_size=16)
_schema = st.recursive(
    st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "number", "boolean", "null", "strin"])},
                                    optional={"description": _text, "enum": st.lists(_text, max_size=3),
                                              "maxLength": st.integers(-1, 30), "title": _text}),
              st.just({}), _json_leaf),
    lambda inner: st.one_of(
        st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(_text, inner, max_size=3)},
                              optional={"required": st.lists(_text, max_size=2), "additionalProperties": st.booleans(),
                                        "description": _text}),
        st.fixed_dictionaries({"type": st.just("array"), "items": inner}, optional={"maxItems": st.integers(0, 3)}),
        st.fixed_dictionaries({"anyOf": st.lists(inner, max_size=3)})),
    max_leaves=8)
_tool = st.one_of(st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "function", "web_search"]),
     "function": st.fixed_dictionaries({"name": st.one_of(st.sampled_from(["f", "get_weather"]), _text)},
                                       optional={"description": _text, "parameters": _schema,
                                                 "strict": st.one_of(st.booleans(), _json_leaf)})}), _json)
_part = st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_text"]), "text": _text}), _json)
_call = st.one_of(st.fixed_dictionaries({"id": _text, "type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["f", "get_weather", ""]), "arguments": st.one_of(_text, _json.map(json.dumps))})}), _json)
_app_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "developer"]),
                           "content": st.one_of(_text, st.lists(_part, max_size=3))}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": st.one_of(st.none(), _text)},
                          optional={"tool_calls": st.one_of(st.lists(_call, max_size=2), _json)}),
    st.fixed_dictionaries({"role": st.just("tool"), "content": st.one_of(_text, st.lists(_part, max_size=2))},
                          optional={"tool_call_id": st.one_of(_text, _json_leaf)}))
_tool_choice = st.one_of(st.sampled_from(["auto", "none", "required", "any"]),
                         st.fixed_dictionaries({"type": st.just("function"),
                                                "function": st.fixed_dictionaries({"name": st.sampled_from(["f", "g"])})}),
                         _json)
_response_format = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
                          optional={"json_schema": st.fixed_dictionaries({"name": _text}, optional={
                              "schema": _schema, "strict": st.booleans(), "description": _text})}), _json)
_app_fields = {"tools": st.one_of(st.lists(_tool, max_size=3), _json), "tool_choice": _tool_choice,
               "parallel_tool_calls": _json_leaf, "response_format": _response_format,
               "logprobs": st.one_of(st.booleans(), _json_leaf), "top_logprobs": st.one_of(st.integers(-1, 60), _json_leaf),
               "n": st.one_of(st.integers(0, 12), _json_leaf), "presence_penalty": _json_leaf,
               "frequency_penalty": _json_leaf, "logit_bias": st.one_of(st.dictionaries(
                   st.one_of(st.integers(-5, 60_000).map(str), _text), st.one_of(st.floats(-150, 150), _json_leaf),
                   max_size=3), _json),
               "temperature": st.sampled_from([0, 0.7, 1.0]), "metadata": _json, "store": _json_leaf,
               "service_tier": _json_leaf, "user": _json_leaf}
_app_chat = st.fixed_dictionaries({"model": st.just(MODEL), "messages": st.lists(_app_message, min_size=1, max_size=4)},
                                  optional=_app_fields)
_item = st.one_of(
    st.fixed_dictionaries({"type": st.just("message"), "role": st.sampled_from(["user", "assistant", "system", "x"]),
                           "content": st.one_of(_text, st.lists(_part, max_size=2))}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": _text, "name": st.sampled_from(["f", ""]),
                           "arguments": st.one_of(_text, _json_leaf)}),
    st.fixed_dictionaries({"type": st.sampled_from(["function_call_output", "reasoning"]), "call_id": _text,
                           "output": st.one_of(_text, _json)}), _json)
_responses_body = st.fixed_dictionaries(
    {"model": st.just(MODEL), "input": st.one_of(_text, st.lists(_item, max_size=4), _json_leaf)},
    optional={"instructions": st.one_of(_text, _json_leaf), "max_output_tokens": st.one_of(st.integers(-1, LIMIT + 2), _json_leaf),
              "stream": st.booleans(), "tools": st.one_of(st.lists(st.fixed_dictionaries(
                  {"type": st.sampled_from(["function", "file_search"]), "name": st.sampled_from(["f", ""])},
                  optional={"parameters": _schema, "strict": st.booleans(), "description": _text}), max_size=2), _json),
              "tool_choice": st.one_of(st.sampled_from(["auto", "required", "none"]),
                                       st.fixed_dictionaries({"type": st.just("function"), "name": st.sampled_from(["f", "g"])})),
              "text": st.one_of(st.fixed_dictionaries({"format": _json}), st.fixed_dictionaries({"format": st.fixed_dictionaries(
                  {"type": st.sampled_from(["json_schema", "text", "json_object"]), "name": _text},
                  optional={"schema": _schema, "strict": st.booleans()})})),
              "previous_response_id": _json_leaf, "background": _json_leaf, "store": _json_leaf,
              "top_logprobs": _json_leaf, "temperature": st.sampled_from([0, 1.0]), "truncation": _json_leaf})


@FEWER
@given(body=_app_chat, stream=st.booleans())
async def test_fuzz_tools_schemas_and_parts(guarded, body, stream):
    """Random tools, tool calls, tool results, schemas, content parts and sampling controls (issue #13)."""
    payload = json.dumps({**body, "stream": stream, "max_tokens": LIMIT}).encode()
    before = guarded.generations()
    status, content = await guarded.post("chat/completions", payload)
    guarded.check(before, status, content, payload)
    before = guarded.generations()
    status, content = await guarded.post("completions", json.dumps({**{k: v for k, v in body.items() if k != "messages"},
                                                                    "prompt": "hi", "max_tokens": LIMIT}).encode())
    guarded.check(before, status, content, body)


@FEWER
@given(body=st.one_of(_responses_body, _json))
@example(body={"model": MODEL, "input": "00000", "text": {"format": {"type": "json_schema", "name": ""}}})  # was a 500 (NaN)
async def test_fuzz_responses_bodies(guarded, body):
    before = guarded.generations()
    status, content = await guarded.post("responses", json.dumps(body).encode())
    guarded.check(before, status, content, body)


def _nested(depth: int, opener: str) -> bytes:
    closer = {"[": "]", '{"a":': "}"}[opener]
    return (opener * depth + "0" + closer * depth).encode()


_numbers = st.one_of(st.text("0123456789", min_size=4000, max_size=6000).map(lambda d: ("1" + d).encode()),
                     st.integers(min_value=2**63 - 2, max_value=2**200).map(lambda n: str(n).encode()),
                     st.integers(min_value=-(2**200), max_value=-(2**63) + 1).map(lambda n: str(n).encode()),
                     st.sampled_from([b"1e-300", b"1e400", b"-1e400", b"4.9e-324", b"1.0000000000000002", b"-0.0"]))
_escapes = st.lists(st.one_of(st.integers(0xD800, 0xDFFF).map(lambda c: f"\\u{c:04x}"),
                              st.text(max_size=3).map(lambda t: json.dumps(t)[1:-1])), min_size=1, max_size=6)
_hostile_value = st.one_of(
    st.builds(_nested, st.integers(1, 30_000), st.sampled_from(["[", '{"a":'])),
    _numbers,
    _escapes.map(lambda parts: ('"' + "".join(parts) + '"').encode()),
)
_slot = st.sampled_from(["max_tokens", "max_completion_tokens", "seed", "temperature", "top_p", "n", "stop", "model",
                         "user", "content", "name", "stream_options", "prompt"])


def _body_with(route: str, slot: str, value: bytes) -> bytes:
    """A valid request for ``route`` with ``value`` (raw JSON text) in one field."""
    if route == "completions":
        ask = b'"prompt":' + value if slot in ("content", "name", "prompt") else b'"prompt":"hi"'
    elif slot == "content":
        ask = b'"messages":[{"role":"user","content":' + value + b"}]"
    elif slot == "name":
        ask = b'"messages":[{"role":"user","content":"hi","name":' + value + b"}]"
    else:
        ask = _ASK
    fields = [b'"model":' + (value if slot == "model" else f'"{MODEL}"'.encode()), ask]
    if slot not in ("model", "content", "name", "prompt"):
        fields.append(b'"' + slot.encode() + b'":' + value)
    return b"{" + b",".join(fields) + b"}"


@FEWER
@given(slot=_slot, value=_hostile_value)
async def test_fuzz_deep_nesting_huge_numbers_and_surrogates(guarded, slot, value):
    for route in ROUTES:
        payload = _body_with(route, slot, value)
        before = guarded.generations()
        status, content = await guarded.post(route, payload)
        guarded.check(before, status, content, payload[:200])


# field-vchar, SP and HTAB (RFC 9110), obs-text included: control bytes are malformed HTTP, which aiohttp's
# parser answers with its own plain-text 400 before the guard sees the request
_header_value = st.binary(min_size=1, max_size=24).map(
    lambda b: bytes(c for c in b if c == 9 or 32 <= c <= 126 or c >= 128)).filter(bool)


@FEWER
@given(name=st.sampled_from([b"Authorization", b"X-Request-Id", b"Content-Type", b"Content-Encoding", b"Accept",
                             b"User-Agent", b"X-Anything"]),
       value=_header_value, prefix=st.sampled_from([b"", b"Bearer "]),
       route=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/health", "/admin/reload", "/metrics"]))
async def test_fuzz_header_bytes(keyed, name, value, prefix, route):
    headers = [(name, prefix + value.strip())] if (prefix + value.strip()) else []
    if name != b"Authorization":
        headers.append((b"Authorization", f"Bearer {API_KEY}".encode()))
    method = "GET" if route in ("/health", "/metrics") else "POST"
    before = keyed.generations()
    resp = await raw_request(keyed.base.removesuffix("/v1") + route, method=method, headers=headers,
                             body=json.dumps(_chat(max_tokens=2)).encode() if method == "POST" else b"")
    assert resp.status < 500, (resp.status, headers, resp.body[:300])
    if resp.status >= 400:
        keyed.check(before, resp.status, resp.body, headers)


@FEWER
@given(coding=st.one_of(st.sampled_from(["gzip", "x-gzip", "deflate", "br", "zstd", "compress", "identity", "GZIP",
                                         "gzip, deflate", "identity, gzip", "*"]),
                        st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)),
       body=st.one_of(st.binary(max_size=64), st.just(json.dumps(_chat(max_tokens=2)).encode())),
       compress_it=st.sampled_from([None, gzip.compress, zlib.compress]))
async def test_fuzz_content_encodings(guarded, coding, body, compress_it):
    payload = compress_it(body) if compress_it else body
    before = guarded.generations()
    status, content = await guarded.post("chat/completions", payload, headers={"Content-Encoding": coding})
    guarded.check(before, status, content, (coding, payload[:100]))
