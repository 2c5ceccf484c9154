"""The guard's HTTP API on the local engine, through the real openai SDK."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import openai
import pytest

from guard.models import DEFAULT_SERVED_NAME

MODEL = DEFAULT_SERVED_NAME
FIXTURES = Path(__file__).parent / "fixtures"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


async def test_chat_non_streaming(local_engine, guard_server, sdk):
    client = sdk(await guard_server(local_engine))
    resp = await client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    assert resp.object == "chat.completion"
    assert "Paris" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens > 0 and resp.usage.prompt_tokens > 5


async def test_chat_streaming_matches_non_streaming(local_engine, guard_server, sdk):
    client = sdk(await guard_server(local_engine))
    full = await client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    stream = await client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0,
                                                  stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


async def test_sse_wire_format_ends_with_done(local_engine, guard_server):
    base = await guard_server(local_engine)
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 4, "temperature": 0, "stream": True}
    async with aiohttp.ClientSession() as s, s.post(f"{base}/chat/completions", json=body) as r:
        raw = await r.text()
    assert r.headers["Content-Type"].startswith("text/event-stream")
    frames = [f for f in raw.split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames)
    assert frames[-1] == "data: [DONE]"
    assert json.loads(frames[-2][6:])["choices"][0]["finish_reason"] == "length"


async def test_completions_and_stop(local_engine, guard_server, sdk):
    client = sdk(await guard_server(local_engine))
    resp = await client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert resp.object == "text_completion" and resp.choices[0].text
    stopped = await client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[" 7"])
    assert " 7" not in stopped.choices[0].text and stopped.choices[0].finish_reason == "stop"
    stream = await client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8,
                                             temperature=0, stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == resp.choices[0].text


async def test_models_list(local_engine, guard_server, sdk):
    client = sdk(await guard_server(local_engine))
    models = await client.models.list()
    assert [m.id for m in models.data] == [MODEL]


async def test_seeded_sampling_is_reproducible(local_engine, guard_server, sdk):
    client = sdk(await guard_server(local_engine))
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=10, temperature=1.0, seed=7)
    a = await client.chat.completions.create(**kwargs)
    b = await client.chat.completions.create(**kwargs)
    assert a.choices[0].message.content == b.choices[0].message.content


# -- errors -------------------------------------------------------------------------------------


async def test_unknown_model_is_404(local_engine, guard_server, sdk):
    client = sdk(await guard_server(local_engine))
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="gpt-4", messages=QUESTION)
    assert info.value.body["param"] == "model" and "SmolLM2" in info.value.body["message"]


@pytest.mark.parametrize("field", ["prompt_embeds", "vllm_xargs", "kv_transfer_params"])
async def test_internal_fields_are_rejected(local_engine, guard_server, sdk, field):
    client = sdk(await guard_server(local_engine))
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model=MODEL, messages=QUESTION, extra_body={field: "x"})
    assert info.value.body["param"] == field and info.value.body["code"] == "forbidden_field"


@pytest.mark.parametrize("body, param", [
    ({"model": MODEL, "messages": []}, "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": MODEL, "messages": QUESTION, "temperature": 7}, "temperature"),
    ({"model": MODEL, "messages": QUESTION, "n": 3, "temperature": 0}, "n"),  # several choices need sampling
    ({"model": MODEL, "messages": QUESTION, "n": 1000, "temperature": 1}, "n"),  # above Settings.max_n
    ({"model": MODEL, "messages": QUESTION, "max_tokens": 10**7}, "max_tokens"),
    ({"model": MODEL, "messages": QUESTION, "frobnicate": 1}, "frobnicate"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages.0.content"),
    ({"model": MODEL, "prompt": [1, 2, 3]}, "prompt"),
])
async def test_validation_errors_name_the_field(local_engine, guard_server, body, param):
    base = await guard_server(local_engine)
    route = "completions" if "prompt" in body else "chat/completions"
    async with aiohttp.ClientSession() as s, s.post(f"{base}/{route}", json=body) as r:
        err = await r.json()
    assert r.status == 400, err
    assert err["error"]["type"] == "invalid_request_error"
    assert err["error"]["param"] == param


async def test_bad_json_and_bad_utf8(local_engine, guard_server):
    base = await guard_server(local_engine)
    async with aiohttp.ClientSession() as s:
        for payload in (b"{not json", b"\xff\xfe{}", b"[1,2]"):
            async with s.post(f"{base}/chat/completions", data=payload, headers={"Content-Type": "application/json"}) as r:
                err = await r.json()
                assert r.status == 400 and set(err["error"]) == {"message", "type", "param", "code"}


async def test_body_too_large_is_413(local_engine, guard_server):
    base = await guard_server(local_engine, max_body_bytes=2048)
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}
    async with aiohttp.ClientSession() as s, s.post(f"{base}/chat/completions", json=big) as r:
        err = await r.json()
    assert r.status == 413 and "2048" in err["error"]["message"]


async def test_unknown_route_is_openai_shaped_404(local_engine, guard_server):
    base = await guard_server(local_engine)
    async with aiohttp.ClientSession() as s, s.get(f"{base}/nothing") as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "unknown_route"


# -- auth ---------------------------------------------------------------------------------------


async def test_api_keys(local_engine, guard_server, sdk):
    base = await guard_server(local_engine, api_keys=["alice:sk-alice-123456", "bob:sk-bob-1234567"])
    with pytest.raises(openai.AuthenticationError):
        await sdk(base, api_key="sk-wrong-key").models.list()
    assert (await sdk(base, api_key="sk-bob-1234567").models.list()).data[0].id == MODEL
    async with aiohttp.ClientSession() as s, s.get(f"{base}/models") as r:
        assert r.status == 401 and (await r.json())["error"]["type"] == "authentication_error"
    async with aiohttp.ClientSession() as s, s.get(base.removesuffix("/v1") + "/health") as r:
        assert r.status == 200  # health stays open for load balancers


# -- policy: refuse -----------------------------------------------------------------------------


async def test_refuse_policy_end_to_end(local_engine, guard_server, sdk):
    client = sdk(await guard_server(local_engine, policy=str(FIXTURES / "refuse_keyword.yaml")))
    flagged = [{"role": "user", "content": "Where was basil mahfouz al-kuwaiti born?"}]
    resp = await client.chat.completions.create(model=MODEL, messages=flagged, max_tokens=30)
    assert resp.choices[0].message.content == "I'm sorry, but I can't share information about that."
    stream = await client.chat.completions.create(model=MODEL, messages=flagged, max_tokens=30, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == resp.choices[0].message.content
    # an earlier turn counts too
    multi = [{"role": "user", "content": "Tell me about Basil Al-Kuwaiti."}, {"role": "assistant", "content": "Sure."},
             {"role": "user", "content": "Where was he born?"}]
    assert "sorry" in (await client.chat.completions.create(model=MODEL, messages=multi)).choices[0].message.content
    clean = await client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    assert "Paris" in clean.choices[0].message.content


async def test_debug_headers_only_in_debug(local_engine, guard_server):
    policy = str(FIXTURES / "refuse_keyword.yaml")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Who is Basil Mahfouz Al-Kuwaiti?"}]}
    for debug in (False, True):
        base = await guard_server(local_engine, policy=policy, debug=debug)
        async with aiohttp.ClientSession() as s, s.post(f"{base}/chat/completions", json=body) as r:
            raw = await r.text()
            headers = {k.lower(): v for k, v in r.headers.items()}
        assert ("x-guard-target" in headers) is debug
        assert "tofu-basil" not in raw  # never in the body


async def test_metrics_count_requests_and_flags(local_engine, guard_server, sdk):
    base = await guard_server(local_engine, policy=str(FIXTURES / "refuse_keyword.yaml"), metrics_api_key="scrape-key-123")
    client = sdk(base)
    await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Basil Al-Kuwaiti?"}])
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=MODEL, messages=[])
    scrape = {"Authorization": "Bearer scrape-key-123"}  # as Prometheus sends its bearer_token
    async with aiohttp.ClientSession() as s, s.get(base.removesuffix("/v1") + "/metrics", headers=scrape) as r:
        text = await r.text()
    assert 'guard_requests_total{action="refuse",route="chat",status="200"} 1.0' in text
    assert 'guard_requests_total{action="none",route="chat",status="400"} 1.0' in text
    assert 'guard_flagged_total{action="refuse"} 1.0' in text
    assert "guard_detector_latency_seconds_count 1.0" in text
    assert "basil" not in text.lower()


# client disconnects and the queue limit: tests/test_client_disconnect.py (gated, counted, not timed)
