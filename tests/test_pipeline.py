"""screen -> decide -> act: fail modes, reload, audit, backpressure (through the HTTP API)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import openai
import pytest

from classifiers.base import Verdict
from guard.models import DEFAULT_SERVED_NAME

MODEL = DEFAULT_SERVED_NAME
FIXTURES = Path(__file__).parent / "fixtures"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


class ExplodingDetector:
    def screen(self, texts):
        raise RuntimeError("index file vanished")


def _policy(tmp_path: Path, fail_mode: str) -> str:
    path = tmp_path / f"{fail_mode}.yaml"
    path.write_text(f"fail_mode: {fail_mode}\ntargets: [{{id: a, names: [Alpha]}}]\n")
    return str(path)


async def test_detector_failure_fail_closed_is_503(local_engine, guard_server, sdk, tmp_path):
    base = await guard_server(local_engine, policy=_policy(tmp_path, "closed"), detector_factory=lambda p: ExplodingDetector())
    with pytest.raises(openai.APIStatusError) as info:
        await sdk(base).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
    assert info.value.status_code == 503 and info.value.body["code"] == "screening_unavailable"
    assert "index file" not in info.value.body["message"]  # detector internals stay in the log


async def test_detector_failure_fail_open_passes_and_counts(local_engine, guard_server, sdk, tmp_path):
    base = await guard_server(local_engine, policy=_policy(tmp_path, "open"), detector_factory=lambda p: ExplodingDetector())
    resp = await sdk(base).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0)
    assert "Paris" in resp.choices[0].message.content
    async with aiohttp.ClientSession() as s, s.get(base.removesuffix("/v1") + "/metrics") as r:
        assert 'guard_screening_failures_total{outcome="passed_fail_open"} 1.0' in await r.text()


async def test_admin_reload_swaps_policy_and_keeps_old_on_error(local_engine, guard_server, sdk, tmp_path):
    policy = tmp_path / "live.yaml"
    policy.write_text("detector: {kind: keyword}\ntargets: [{id: a, names: [Alpha Centauri]}]\n")
    base = await guard_server(local_engine, policy=str(policy), admin_api_key="admin-secret-1")
    root = base.removesuffix("/v1")
    client = sdk(base)
    ask = [{"role": "user", "content": "Tell me about Zorblax the Great."}]
    before = await client.chat.completions.create(model=MODEL, messages=ask, max_tokens=6, temperature=0)
    assert "sorry" not in before.choices[0].message.content.lower()

    policy.write_text("detector: {kind: keyword}\ntargets: [{id: a, names: [Alpha Centauri]}, {id: z, names: [Zorblax]}]\n")
    headers = {"Authorization": "Bearer admin-secret-1"}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{root}/admin/reload") as r:
            assert r.status == 401
        async with s.post(f"{root}/admin/reload", headers=headers) as r:
            assert r.status == 200 and (await r.json())["targets"] == 2
    after = await client.chat.completions.create(model=MODEL, messages=ask, max_tokens=6)
    assert "sorry" in after.choices[0].message.content.lower()

    policy.write_text("targets: [{id: z, names: []}]\n")  # broken
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{root}/admin/reload", headers=headers) as r:
            err = await r.json()
            assert r.status == 400 and err["error"]["param"] == "targets.0.names"
        async with s.get(f"{root}/health") as r:
            assert "targets.0.names" in (await r.json())["policy"]["last_reload_error"]
    still = await client.chat.completions.create(model=MODEL, messages=ask, max_tokens=6)
    assert "sorry" in still.choices[0].message.content.lower()


async def test_admin_endpoints_disabled_without_admin_key(local_engine, guard_server):
    base = await guard_server(local_engine)
    async with aiohttp.ClientSession() as s, s.post(base.removesuffix("/v1") + "/admin/reload") as r:
        assert r.status == 404


async def test_audit_line_per_flagged_request_without_prompt(local_engine, guard_server, sdk, caplog):
    base = await guard_server(local_engine, policy=str(FIXTURES / "refuse_keyword.yaml"), api_keys=["ops:sk-ops-123456"])
    caplog.set_level(logging.INFO, logger="guard.audit")
    prompt = "Where was Basil Mahfouz Al-Kuwaiti born? secret-marker-42"
    resp = await sdk(base, api_key="sk-ops-123456").chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], extra_headers={"X-Request-Id": "req-abc.1"})
    assert resp.headers["x-request-id"] == "req-abc.1"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "guard.audit"]
    assert len(lines) == 1
    assert lines[0] | {} == {"event": "flagged", "request_id": "req-abc.1", "key": "ops", "target": "tofu-basil",
                             "action": "refuse", "score": 1.0}
    assert "secret-marker-42" not in caplog.text


async def test_inflight_limit_answers_429_with_retry_after(local_engine, guard_server):
    base = await guard_server(local_engine, max_inflight=1)
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 30, "temperature": 0, "stream": True}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/chat/completions", json=body) as first:
            await first.content.readline()
            async with s.post(f"{base}/chat/completions", json=body) as second:
                assert second.status == 429 and second.headers["Retry-After"] == "1"
                assert (await second.json())["error"]["type"] == "rate_limit_error"
            await first.read()
        async with s.post(f"{base}/chat/completions", json={**body, "max_tokens": 2}) as third:
            assert third.status == 200  # the slot was released
