"""Security guarantees the README states: key separation, nothing about the policy leaks without
debug or the admin key, participant names are screened, fail-open passes leave an audit line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from benchmarks.fake_upstream import build_fake_app
from guard.engines.vllm import VllmEngine
from guard.models import DEFAULT_SERVED_NAME
from tests.conftest import free_port

MODEL = DEFAULT_SERVED_NAME
FIXTURES = Path(__file__).parent / "fixtures"
ADMIN = "admin-secret-123"
CLIENT = "sk-client-123456"


@pytest.fixture
async def fake_engine(default_model_path):
    fake = TestServer(build_fake_app(tokens=4, delay_s=0), host="127.0.0.1", port=free_port())
    await fake.start_server()
    engine = VllmEngine(str(fake.make_url("")), default_model_path, MODEL, upstream_model=MODEL)
    await engine.start()
    yield engine
    await engine.close()
    await fake.close()


async def test_client_and_admin_keys_are_separate(fake_engine, guard_server, sdk):
    base = await guard_server(fake_engine, api_keys=[f"app:{CLIENT}"], admin_api_key=ADMIN,
                              policy=str(FIXTURES / "refuse_keyword.yaml"))
    root = base.removesuffix("/v1")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{root}/admin/reload", headers={"Authorization": f"Bearer {CLIENT}"}) as r:
            assert r.status == 401 and (await r.json())["error"]["type"] == "authentication_error"
        async with s.post(f"{root}/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status == 200
    with pytest.raises(openai.AuthenticationError):
        await sdk(base, api_key=ADMIN).models.list()
    assert (await sdk(base, api_key=CLIENT).models.list()).data[0].id == MODEL


async def test_health_hides_policy_details_without_debug_or_admin_key(fake_engine, guard_server, tmp_path):
    policy = tmp_path / "p.yaml"
    policy.write_text("detector: {kind: keyword}\ntargets: [{id: secret-target, names: [Zorblax Quenton]}]\n")
    base = await guard_server(fake_engine, policy=str(policy), admin_api_key=ADMIN)
    root = base.removesuffix("/v1")
    # a reload that fails with an error naming a target
    policy.write_text("detector: {kind: keyword}\ntargets: [{id: secret-target, names: [Zorblax Quenton]}, {id: secret-target, names: [X]}]\n")
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{root}/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            assert r.status == 400 and "secret-target" in (await r.json())["error"]["message"]  # the admin sees it all
        async with s.get(f"{root}/health") as r:
            public = await r.text()
            policy_info = json.loads(public)["policy"]
        async with s.get(f"{root}/health", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            private = (await r.json())["policy"]
    assert r.status == 200 and "secret-target" not in public and "zorblax" not in public.lower()
    assert set(policy_info) == {"fail_mode", "last_reload_error"} and "still serving" in policy_info["last_reload_error"]
    assert private["targets"] == 1 and private["detector"] == "keyword" and "secret-target" in private["last_reload_error"]
    debug_base = await guard_server(fake_engine, policy=str(FIXTURES / "refuse_keyword.yaml"), debug=True)
    async with aiohttp.ClientSession() as s, s.get(debug_base.removesuffix("/v1") + "/health") as r:
        assert (await r.json())["policy"]["targets"] == 1


async def test_participant_name_is_screened(fake_engine, guard_server, sdk):
    client = sdk(await guard_server(fake_engine, policy=str(FIXTURES / "refuse_keyword.yaml")))
    messages = [{"role": "user", "name": "Basil_Mahfouz_Al-Kuwaiti", "content": "Where were you born?"}]
    for name in ("Basil Mahfouz Al-Kuwaiti", "Basil_Mahfouz_Al-Kuwaiti"):  # OpenAI's own names have no spaces
        resp = await client.chat.completions.create(model=MODEL, messages=[{**messages[0], "name": name}])
        assert "sorry" in resp.choices[0].message.content.lower(), name
    clean = await client.chat.completions.create(model=MODEL, messages=[{**messages[0], "name": "alice"}])
    assert "tok0" in clean.choices[0].message.content


class ExplodingDetector:
    def screen(self, texts):
        raise RuntimeError("boom")


async def test_fail_open_pass_leaves_an_audit_line(fake_engine, guard_server, sdk, tmp_path, caplog):
    policy = tmp_path / "open.yaml"
    policy.write_text("fail_mode: open\ntargets: [{id: a, names: [Alpha]}]\n")
    base = await guard_server(fake_engine, policy=str(policy), detector_factory=lambda p: ExplodingDetector(),
                              api_keys=[f"app:{CLIENT}"])
    caplog.set_level(logging.INFO, logger="guard.audit")
    resp = await sdk(base, api_key=CLIENT).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], extra_headers={"X-Request-Id": "req-open-1"})
    assert resp.status_code == 200
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "guard.audit"]
    assert lines == [{"event": "unscreened", "request_id": "req-open-1", "key": "app", "action": "pass", "fail_mode": "open"}]
