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
METRICS_KEY = "metrics-key-123"


async def _metrics(base: str) -> str:
    headers = {"Authorization": f"Bearer {METRICS_KEY}"}
    async with aiohttp.ClientSession() as s, s.get(base.removesuffix("/v1") + "/metrics", headers=headers) as r:
        assert r.status == 200
        return await r.text()


class ExplodingDetector:
    def screen(self, texts, deadline=None):
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
    base = await guard_server(local_engine, policy=_policy(tmp_path, "open"), detector_factory=lambda p: ExplodingDetector(),
                              metrics_api_key=METRICS_KEY)
    resp = await sdk(base).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0)
    assert "Paris" in resp.choices[0].message.content
    assert 'guard_screening_failures_total{outcome="passed_fail_open"} 1.0' in await _metrics(base)


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


# ---------------------------------------------------------------- screening limits: budget and length


class GatedDetector:
    """Screens until its gate opens, checking the deadline between steps as a real detector does
    (no sleeps: it waits on the gate, which the test never opens while it expects a timeout)."""

    def __init__(self) -> None:
        import threading

        self.gate = threading.Event()
        self.started = threading.Event()
        self.stopped = threading.Event()
        self.checks = 0

    def screen(self, texts, deadline=None):
        self.started.set()
        try:
            while not self.gate.wait(0.005):
                self.checks += 1
                if deadline is not None:
                    deadline.check("gated test step")
            return Verdict.clean()
        finally:
            self.stopped.set()


def _limits_policy(tmp_path: Path, fail_mode: str, **detector: object) -> str:
    path = tmp_path / f"limits-{fail_mode}.yaml"
    path.write_text(json.dumps({"fail_mode": fail_mode, "detector": {"kind": "keyword", **detector},
                                "targets": [{"id": "a", "names": ["Alpha Centauri"]}]}))
    return str(path)


async def test_budget_overrun_fail_closed_is_503_naming_the_budget_and_stops_the_thread(local_engine, guard_server, sdk, tmp_path):
    gated = GatedDetector()
    base = await guard_server(local_engine, policy=_limits_policy(tmp_path, "closed", budget_ms=50),
                              detector_factory=lambda p: gated, metrics_api_key=METRICS_KEY)
    with pytest.raises(openai.APIStatusError) as info:
        await sdk(base).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
    assert info.value.status_code == 503 and info.value.body["code"] == "screening_unavailable"
    assert info.value.body["param"] == "detector.budget_ms" and "detector.budget_ms" in info.value.body["message"]
    # the worker thread noticed the deadline and stopped working (the gate was never opened)
    assert await asyncio.to_thread(gated.stopped.wait, 30) and not gated.gate.is_set()
    assert 'status="503"' in await _metrics(base)


async def test_budget_overrun_fail_open_passes_and_counts(local_engine, guard_server, sdk, tmp_path):
    gated = GatedDetector()
    base = await guard_server(local_engine, policy=_limits_policy(tmp_path, "open", budget_ms=50),
                              detector_factory=lambda p: gated, metrics_api_key=METRICS_KEY)
    resp = await sdk(base).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0)
    assert "Paris" in resp.choices[0].message.content
    assert await asyncio.to_thread(gated.stopped.wait, 30)
    assert 'guard_screening_failures_total{outcome="passed_fail_open"} 1.0' in await _metrics(base)


async def test_a_detector_without_deadline_support_is_still_bounded(local_engine, guard_server, sdk, tmp_path):
    """A detector that ignores the deadline it is given (the contract passes it to every detector) is
    no longer waited for once it has passed."""

    class Legacy:
        def __init__(self) -> None:
            self.gated = GatedDetector()

        def screen(self, texts, deadline=None):
            return self.gated.screen(texts)

    legacy = Legacy()
    base = await guard_server(local_engine, policy=_limits_policy(tmp_path, "closed", budget_ms=50),
                              detector_factory=lambda p: legacy)
    try:
        with pytest.raises(openai.APIStatusError) as info:
            await sdk(base).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
        assert info.value.status_code == 503 and info.value.body["param"] == "detector.budget_ms"
    finally:
        legacy.gated.gate.set()  # let the abandoned thread finish
    assert await asyncio.to_thread(legacy.gated.stopped.wait, 30)


async def test_screening_runs_off_the_event_loop(local_engine, guard_server, tmp_path):
    """While one request is being screened (held at a gate), the guard keeps answering others."""
    gated = GatedDetector()
    base = await guard_server(local_engine, policy=_limits_policy(tmp_path, "closed", budget_ms=60_000),
                              detector_factory=lambda p: gated)
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 2, "temperature": 0}
    async with aiohttp.ClientSession() as s:
        held = asyncio.ensure_future(s.post(f"{base}/chat/completions", json=body))
        assert await asyncio.to_thread(gated.started.wait, 30)
        async with s.get(base.removesuffix("/v1") + "/health") as r:
            assert r.status == 200
        assert not held.done() and not gated.stopped.is_set()  # still screening while /health answered
        gated.gate.set()
        async with await held as r:
            assert r.status == 200


class ThreadRecordingDetector:
    """The keyword screen behind de-obfuscation (what serves a keyword policy), recording on which
    thread each request was screened."""

    def __init__(self, policy) -> None:
        from guard.app import default_detector_factory

        self.inner = default_detector_factory(policy)
        self.inline_below_chars = self.inner.inline_below_chars
        self.threads: list[int] = []

    def screen(self, texts, deadline=None):
        import threading

        self.threads.append(threading.get_ident())
        return self.inner.screen(texts, deadline=deadline)


@pytest.mark.parametrize("inline, short_on_loop", [(None, True), (0, False)])
async def test_a_short_request_is_screened_on_the_event_loop_a_long_one_in_a_thread(local_engine, tmp_path, inline, short_on_loop):
    """The keyword screen declares 1,024 characters cheap enough for the loop (a thread hop costs more
    than screening them); ``detector.inline_below_chars: 0`` sends everything to a thread. Either
    way the request is screened: a target in it is flagged."""
    import threading

    from guard.pipeline import Pipeline
    from guard.policy import load_policy

    path = _limits_policy(tmp_path, "closed", **({} if inline is None else {"inline_below_chars": inline}))
    recording: list[ThreadRecordingDetector] = []
    pipeline = Pipeline.build(load_policy(Path(path)), local_engine,
                              lambda p: recording.append(ThreadRecordingDetector(p)) or recording[-1])
    assert pipeline.inline_below_chars == (1024 if inline is None else 0)
    loop_thread = threading.get_ident()
    short = await pipeline.decide(["Tell me about Alpha Centauri."])
    long = await pipeline.decide(["Some filler words here. " * 60 + "Tell me about Alpha Centauri."])
    assert short.action == long.action == "refuse"
    short_thread, long_thread = recording[0].threads
    assert (short_thread == loop_thread) is short_on_loop and long_thread != loop_thread


async def test_a_detector_that_declares_nothing_is_screened_in_a_thread(local_engine, tmp_path):
    from guard.pipeline import Pipeline, inline_chars
    from guard.policy import load_policy

    policy = load_policy(Path(_limits_policy(tmp_path, "closed")))
    assert inline_chars(policy, GatedDetector()) == 0 and inline_chars(policy, ExplodingDetector()) == 0
    forced = load_policy(Path(_limits_policy(tmp_path, "closed", inline_below_chars=64)))
    assert inline_chars(forced, GatedDetector()) == 64   # the policy's value wins when it is set
    assert Pipeline.build(policy, local_engine, lambda p: GatedDetector()).inline_below_chars == 0


async def test_the_budget_holds_for_a_request_screened_on_the_loop(local_engine, guard_server, sdk, tmp_path):
    """Screened inline, a detector that overruns ``detector.budget_ms`` stops at its next check and
    the request gets the fail mode, as in a thread."""
    gated = GatedDetector()
    base = await guard_server(local_engine, policy=_limits_policy(tmp_path, "closed", budget_ms=50, inline_below_chars=4096),
                              detector_factory=lambda p: gated)
    with pytest.raises(openai.APIStatusError) as info:
        await sdk(base).chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4)
    assert info.value.status_code == 503 and info.value.body["param"] == "detector.budget_ms"
    assert gated.stopped.is_set() and gated.checks >= 5 and not gated.gate.is_set()


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
async def test_input_over_max_screen_tokens_goes_to_the_fail_mode(local_engine, guard_server, sdk, tmp_path, fail_mode):
    base = await guard_server(local_engine, policy=_limits_policy(tmp_path, fail_mode, max_screen_tokens=20),
                              metrics_api_key=METRICS_KEY)
    long_question = [{"role": "user", "content": "Tell me about Alpha Centauri. " + "Please answer briefly and clearly. " * 10}]
    client = sdk(base)
    if fail_mode == "closed":
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model=MODEL, messages=long_question, max_tokens=4)
        assert info.value.body["param"] == "detector.max_screen_tokens" and info.value.body["code"] == "input_too_long_to_screen"
        assert "detector.max_screen_tokens" in info.value.body["message"]
    else:
        resp = await client.chat.completions.create(model=MODEL, messages=long_question, max_tokens=2, temperature=0)
        assert resp.choices[0].message.content is not None  # passed unscreened (the keyword detector would refuse it)
        assert 'guard_screening_failures_total{outcome="passed_fail_open"} 1.0' in await _metrics(base)
    # a short request under the same policy is screened as usual
    short = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Who is Alpha Centauri?"}],
                                                 max_tokens=6)
    assert "sorry" in short.choices[0].message.content.lower()
