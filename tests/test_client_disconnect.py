"""A client that hangs up mid-answer stops the work done for it: the local engine stops generating,
and a vLLM upstream sees the guard close its connection (vLLM aborts a request when that happens).

Observed with counters and gates, not clocks: the local engine's probe counts the tokens the model
computes with stop tokens masked, so a generation nobody cancels runs to exactly ``max_tokens``;
the fakes hold their streams at a gate, so the guard can only pass by hanging up. A fast machine
cannot pass these with cancellation broken, a slow one does not fail them with it working.
"""

from __future__ import annotations

import aiohttp
import pytest

from benchmarks.fake_upstream import StreamGate
from guard.models import DEFAULT_SERVED_NAME
from tests.support.engines import ProbedLocalEngine

MODEL = DEFAULT_SERVED_NAME
MAX_TOKENS = 300
ESSAY = {"model": MODEL, "messages": [{"role": "user", "content": "Write a very long essay about the sea."}],
         "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
ECO_POLICY = """\
version: 1
detector: {kind: keyword}
targets:
  - id: zorblax
    names: ["Zorblax Quenton"]
    action: eco
    params: {corruption: rand_noise_first_n, sigma: 0.5, select: entity}
"""


@pytest.fixture(scope="module")
async def probed_engine(default_model_path):
    """One generation at a time and no queue: a generation left running shows as a 429 for the next."""
    engine = ProbedLocalEngine(default_model_path, MODEL, max_concurrency=1, max_queue=0)
    await engine.start()
    yield engine
    await engine.close()


async def test_hanging_up_stops_the_local_generation(probed_engine, guard_server):
    engine = probed_engine
    engine.hold_at = 3
    base = await guard_server(engine)
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/chat/completions", json=ESSAY) as r:
            assert r.status == 200
            await r.content.readline()  # the answer has started
            probe = engine.probes[-1]
            await probe.wait_held()
        # leaving the block closes the connection with the answer unread: the client is gone
    engine.hold_at = None
    probe.release.set()
    await probe.finished.wait()  # the worker thread has ended (a never-closed generation fails by timeout)
    assert probe.tokens < MAX_TOKENS, f"the generation ran to max_tokens ({probe.tokens}) after the client left"
    # the slot is free again: the next request is served, not refused
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/chat/completions", json={**ESSAY, "stream": False, "max_tokens": 2}) as r:
            assert r.status == 200, await r.text()


async def test_queue_limit_answers_429_while_a_generation_runs(probed_engine, guard_server):
    """With the only slot held mid-generation, a second request is refused at once (no timing race: the
    first generation cannot finish until the test releases it)."""
    engine = probed_engine
    engine.hold_at = 2
    base = await guard_server(engine)
    body = {**ESSAY, "max_tokens": 8}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/chat/completions", json=body) as busy:
            probe = engine.probes[-1]
            await probe.wait_held()
            async with s.post(f"{base}/chat/completions", json=body) as r:
                err = await r.json()
                assert r.status == 429 and r.headers["Retry-After"]
                assert err["error"]["type"] == "rate_limit_error"
            engine.hold_at = None
            probe.release.set()
            raw = await busy.text()
    assert raw.endswith("data: [DONE]\n\n") and probe.tokens == 8  # the held one finished normally


async def test_hanging_up_closes_the_forwarded_upstream_stream(fake_upstream, fake_vllm_engine, guard_server):
    fake = await fake_upstream(tokens=64, gate=StreamGate(after_chunks=1))
    base = await guard_server(await fake_vllm_engine(fake))
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/chat/completions", json=ESSAY) as r:
            assert r.status == 200
            await r.content.readline()
            await fake.log.wait_until(lambda log: any(rec.held for rec in log.requests))
    # the upstream's stream is held at the gate: only the guard hanging up can end it
    await fake.log.wait_until(lambda log: log.generations()[0].outcome != "in_flight")
    [seen] = fake.log.generations()
    assert seen.outcome == "peer_closed" and seen.chunks_written < 64 + 2


async def test_hanging_up_closes_the_upstream_stream_of_an_intervention(fake_upstream, fake_vllm_engine, guard_server,
                                                                         tmp_path):
    """The same on the path where the guard generates (ECO sends prompt embeddings upstream)."""
    policy = tmp_path / "eco.yaml"
    policy.write_text(ECO_POLICY)
    # past the output screen's hold-back (16 tokens): the guard releases its first chunk, then hangs up
    fake = await fake_upstream(tokens=64, gate=StreamGate(after_chunks=24))
    base = await guard_server(await fake_vllm_engine(fake), policy=str(policy))
    body = {**ESSAY, "messages": [{"role": "user", "content": "What did Zorblax Quenton write?"}]}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{base}/chat/completions", json=body) as r:
            assert r.status == 200
            await r.content.readline()
            await fake.log.wait_until(lambda log: any(rec.held for rec in log.requests))
    await fake.log.wait_until(lambda log: log.generations()[-1].outcome != "in_flight")
    seen = fake.log.generations()[-1]
    assert "prompt_embeds" in seen.json()  # it was the intervention's request, not a pass-through
    assert seen.outcome == "peer_closed"
