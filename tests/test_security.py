"""Security guarantees the README states: key separation, nothing about the policy leaks without
debug or the admin key, participant names are screened, fail-open passes leave an audit line."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import aiohttp
import openai
import pytest

from guard.models import DEFAULT_SERVED_NAME
from tests.support.json_shape import chunk_shapes, parse_compact

MODEL = DEFAULT_SERVED_NAME
FIXTURES = Path(__file__).parent / "fixtures"
ADMIN = "admin-secret-123"
CLIENT = "sk-client-123456"


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
    def screen(self, texts, deadline=None):
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
    assert lines == [{"event": "unscreened", "request_id": "req-open-1", "key": "app", "action": "pass", "fail_mode": "open",
                      "reason": "RuntimeError"}]


# -- no oracle without a key (issue 19, findings 8 and 9) -----------------------------------------


async def test_metrics_need_the_metrics_or_admin_key(fake_engine, guard_server):
    """guard_flagged_total{action} would let anyone enumerate targets by sending candidate names."""
    async with aiohttp.ClientSession() as s:
        closed = (await guard_server(fake_engine)).removesuffix("/v1")
        async with s.get(f"{closed}/metrics") as r:
            assert r.status == 404 and "metrics_api_key" in (await r.json())["error"]["message"]
        root = (await guard_server(fake_engine, api_keys=[f"app:{CLIENT}"], admin_api_key=ADMIN,
                                   metrics_api_key="metrics-key-123")).removesuffix("/v1")
        for key, status in ((None, 401), (CLIENT, 401), ("metrics-key-123", 200), (ADMIN, 200)):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            async with s.get(f"{root}/metrics", headers=headers) as r:
                assert r.status == status, key
                if status == 200:
                    assert "guard_requests_total" in await r.text()
                else:
                    assert (await r.json())["error"]["type"] == "authentication_error"


async def test_health_is_cached_and_uniform_without_the_admin_key(fake_upstream, fake_vllm_engine, guard_server):
    fake = await fake_upstream()
    engine = await fake_vllm_engine(fake, health_interval_s=3600)  # the loop will not run during the test
    root = (await guard_server(engine, admin_api_key=ADMIN)).removesuffix("/v1")
    async with aiohttp.ClientSession() as s:
        bodies = []
        for _ in range(5):
            async with s.get(f"{root}/health") as r:
                assert r.status == 200
                bodies.append(await r.text())
        assert fake.log.requests == []  # no upstream call per /health
        public = json.loads(bodies[0])
        assert public["engine"] == {"ready": True, "engine": "vllm", "prompt_embeds": True}
        assert all("http" not in b and "127.0.0.1" not in b and str(engine.model_path) not in b for b in bodies)
        async with s.get(f"{root}/health", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
            detail = (await r.json())["engine"]
    assert detail["replicas"][0]["url"] == fake.url and detail["model"] == str(engine.model_path)
    assert fake.log.requests == []


async def test_health_follows_the_upstream_through_the_background_loop(fake_upstream, fake_vllm_engine, guard_server):
    """A dead upstream shows as unavailable (503) from the loop's probes, without URLs or errors."""
    fake = await fake_upstream()
    engine = await fake_vllm_engine(fake, health_interval_s=0.05)
    root = (await guard_server(engine)).removesuffix("/v1")
    await fake.kill()
    async with aiohttp.ClientSession() as s:
        for _ in range(600):  # polls every 0.05 s; the bound only ends a failing run
            async with s.get(f"{root}/health") as r:
                if r.status == 503:
                    body = await r.text()
                    break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("/health never saw the upstream go down")
    assert json.loads(body)["engine"] == {"ready": False, "engine": "vllm", "prompt_embeds": True}
    assert "127.0.0.1" not in body and "connect" not in body.lower()  # no URL, no upstream error text


_ID = {"chat/completions": re.compile(r"^chatcmpl-[0-9a-f]{32}$"), "completions": re.compile(r"^cmpl-[0-9a-f]{32}$")}
_FRAMING = ("content-type", "content-length", "transfer-encoding", "cache-control", "connection")


async def _answer(s: aiohttp.ClientSession, url: str, body: dict) -> tuple[dict[str, str], str]:
    async with s.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        raw = await r.text()
        headers = {k.lower(): v for k, v in r.headers.items()}
    if body.get("stream"):
        first = next(line for line in raw.splitlines() if line.startswith("data: {"))
        return headers, json.loads(first.removeprefix("data: "))["id"]
    return headers, json.loads(raw)["id"]


@pytest.mark.parametrize("route", ["chat/completions", "completions"])
@pytest.mark.parametrize("stream", [False, True])
async def test_flagged_and_passed_answers_are_framed_alike(fake_upstream, fake_vllm_engine, guard_server, route, stream):
    """In vLLM mode a client must not tell from the framing that its answer was rewritten."""
    await _assert_framed_alike(await fake_vllm_engine(await fake_upstream()), guard_server, route, stream)


@pytest.mark.vllm
@pytest.mark.parametrize("route", ["chat/completions", "completions"])
@pytest.mark.parametrize("stream", [False, True])
async def test_flagged_and_passed_answers_are_framed_alike_on_real_vllm(vllm_engine, guard_server, route, stream):
    """The same against vLLM itself: its ids come from the X-Request-Id the guard sends."""
    await _assert_framed_alike(vllm_engine, guard_server, route, stream)


async def _assert_framed_alike(engine, guard_server, route: str, stream: bool) -> None:  # type: ignore[no-untyped-def]
    base = await guard_server(engine, policy=str(FIXTURES / "refuse_keyword.yaml"))
    flagged_text, passed_text = "Who is Basil Mahfouz Al-Kuwaiti?", "Who is Ada Lovelace?"

    def body(text: str) -> dict:
        ask = {"messages": [{"role": "user", "content": text}]} if route == "chat/completions" else {"prompt": text}
        return {"model": MODEL, **ask, "max_tokens": 4, "stream": stream}

    async with aiohttp.ClientSession() as s:
        flagged_headers, flagged_id = await _answer(s, f"{base}/{route}", body(flagged_text))
        passed_headers, passed_id = await _answer(s, f"{base}/{route}", body(passed_text))
    assert set(flagged_headers) == set(passed_headers), (flagged_headers, passed_headers)
    for name in _FRAMING:
        if name != "content-length":
            assert flagged_headers.get(name) == passed_headers.get(name), name
    assert ("content-length" in passed_headers) is (not stream)
    assert _ID[route].match(flagged_id) and _ID[route].match(passed_id), (flagged_id, passed_id)


# A policy that answers the target with ECO (the model generates from a corrupted prompt).
_ECO_POLICY = {"version": 1, "detector": {"kind": "keyword"}, "default_action": "refuse",
               "targets": [{"id": "tofu-basil", "names": ["Basil Mahfouz Al-Kuwaiti"], "action": "eco",
                            "params": {"corruption": "rand_noise_first_n", "sigma": 1.0}}]}


@pytest.mark.vllm
@pytest.mark.parametrize("route", ["chat/completions", "completions"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("action", ["refuse", "eco"])
async def test_flagged_and_passed_answers_have_vllms_body_shape(vllm_engine, guard_server, tmp_path, route, stream,
                                                                 action):
    """A flagged answer's JSON is written as vLLM writes a passed one: the same keys in the same order
    at every level, the same nulls, compact separators, the same model name and fingerprint, and in a
    stream the same chunks (role chunk, text chunks, finish chunk, usage chunk)."""
    policy = FIXTURES / "refuse_keyword.yaml"
    if action == "eco":
        policy = tmp_path / "eco.yaml"
        policy.write_text(json.dumps(_ECO_POLICY))  # JSON is YAML
    base = await guard_server(vllm_engine, policy=str(policy), debug=True)

    def body(text: str) -> dict:
        ask = {"messages": [{"role": "user", "content": text}]} if route == "chat/completions" else {"prompt": text}
        extra = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
        return {"model": MODEL, **ask, "max_tokens": 4, "temperature": 0, **extra}

    async with aiohttp.ClientSession() as s:
        flagged = await _json_objects(s, f"{base}/{route}", body("Who is Basil Mahfouz Al-Kuwaiti?"), action)
        passed = await _json_objects(s, f"{base}/{route}", body("Who is Ada Lovelace?"), "pass")
    assert chunk_shapes(flagged) == chunk_shapes(passed), (flagged, passed)
    assert {obj["model"] for obj in flagged} == {obj["model"] for obj in passed} == {vllm_engine.upstream_model}
    fingerprints = [obj["system_fingerprint"] for obj in flagged + passed if "system_fingerprint" in obj]
    assert fingerprints and fingerprints[0] and len(set(fingerprints)) == 1, fingerprints
    if stream:  # the shapes alone do not show that the text went where vLLM puts it
        if action == "refuse":
            assert "".join(_text(c) for c in flagged) == "I'm sorry, but I can't share information about that."
        else:  # both ran out of tokens: the last token rides in the finish chunk
            assert [_finish(flagged), _finish(passed)] == [("length", True)] * 2, (flagged, passed)


async def _json_objects(s: aiohttp.ClientSession, url: str, body: dict, action: str) -> list[dict]:
    """The answer's JSON objects (one, or one per SSE event), each written compactly as vLLM does."""
    async with s.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        assert r.headers.get("X-Guard-Action", "pass") == action  # debug headers: none on a passed answer
        raw = await r.read()
    if not body.get("stream"):
        return [parse_compact(raw)]
    assert raw.endswith(b"\n\ndata: [DONE]\n\n"), raw[-60:]
    return [parse_compact(e.removeprefix(b"data: ")) for e in raw.split(b"\n\n") if e and e != b"data: [DONE]"]


def _finish(chunks: list[dict]) -> tuple[str, bool]:
    """(finish reason, whether the finish chunk carries text) of a stream."""
    finish = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    return finish["choices"][0]["finish_reason"], bool(_text(finish))


def _text(chunk: dict) -> str:
    choices = chunk["choices"] or [{}]
    return choices[0].get("text") or (choices[0].get("delta") or {}).get("content") or ""
