"""Several upstream replicas: least-outstanding balancing, failover, health checks, recovery."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp.test_utils import TestServer

from benchmarks.fake_upstream import StreamGate, build_fake_app
from guard.engines.vllm import VllmEngine
from guard.models import DEFAULT_SERVED_NAME
from tests.support.ports import RefusedPort

MODEL = DEFAULT_SERVED_NAME
ADMIN_KEY = "admin-key-for-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}  # /health details (replicas) are for the admin
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True}


async def _fake(port: int | None = None, delay_s: float = 0.01) -> TestServer:
    server = TestServer(build_fake_app(tokens=8, delay_s=delay_s), host="127.0.0.1", port=port)
    await server.start_server()
    return server


async def _run(base: str, n: int) -> list[int]:
    async with aiohttp.ClientSession() as s:
        async def one() -> int:
            async with s.post(f"{base}/chat/completions", json=BODY) as r:
                body = await r.read()
                assert body.endswith(b"data: [DONE]\n\n")
                return r.status
        return await asyncio.gather(*(one() for _ in range(n)))


async def test_least_outstanding_spreads_concurrent_load(default_model_path, guard_server):
    a, b = await _fake(), await _fake()
    engine = VllmEngine([str(a.make_url("")), str(b.make_url("/v1"))], default_model_path, MODEL, upstream_model=MODEL)
    await engine.start()
    try:
        base = await guard_server(engine)
        assert await _run(base, 40) == [200] * 40
        served = [r.served for r in engine.pool.replicas]
        assert sum(served) == 40 and min(served) >= 15, served
        assert all(r.outstanding == 0 for r in engine.pool.replicas)
    finally:
        await engine.close()
        await a.close()
        await b.close()


async def test_failover_health_and_recovery(default_model_path, guard_server):
    alive = await _fake()
    closed_port = RefusedPort()
    engine = VllmEngine([closed_port.url, str(alive.make_url(""))], default_model_path, MODEL,
                        upstream_model=MODEL, health_interval_s=0.2)
    await engine.start()
    revived = None
    try:
        base = await guard_server(engine, admin_api_key=ADMIN_KEY)
        assert await _run(base, 10) == [200] * 10  # every request lands, the dead replica is skipped
        dead, live = engine.pool.replicas
        assert not dead.healthy and dead.served == 0 and live.served == 10
        async with aiohttp.ClientSession() as s, s.get(base.removesuffix("/v1") + "/health", headers=ADMIN) as r:
            health = await r.json()
        assert r.status == 200 and [x["healthy"] for x in health["engine"]["replicas"]] == [False, True]

        revived = await _fake(port=closed_port.release())
        for _ in range(300):  # polls every 0.1 s; the bound only ends a failing run
            if dead.healthy:
                break
            await asyncio.sleep(0.1)
        assert dead.healthy, "the health loop did not bring the replica back"
        await _run(base, 20)
        assert dead.served > 0
    finally:
        await engine.close()
        await alive.close()
        if revived:
            await revived.close()


async def test_all_replicas_down_is_502(default_model_path, guard_server):
    down_a, down_b = RefusedPort(), RefusedPort()
    engine = VllmEngine([down_a.url, down_b.url], default_model_path,
                        MODEL, upstream_model=MODEL)
    await engine.start()
    try:
        base = await guard_server(engine)
        async with aiohttp.ClientSession() as s, s.post(f"{base}/chat/completions", json=BODY) as r:
            assert r.status == 502 and (await r.json())["error"]["type"] == "upstream_error"
    finally:
        await engine.close()


async def _stream_as(session: aiohttp.ClientSession, base: str, user: str) -> tuple[int, str]:
    async with session.post(f"{base}/chat/completions", json={**BODY, "user": user}) as r:
        return r.status, await r.text()


def _users(fake) -> set[str]:  # type: ignore[no-untyped-def]
    return {rec.json()["user"] for rec in fake.log.generations()}


async def test_replica_killed_while_serving(fake_upstream, fake_vllm_engine, guard_server):
    """Streams in flight on both replicas; one replica crashes. Only its streams in flight fail, each with
    an OpenAI error frame and [DONE]; the survivor's streams finish; later requests all land on the
    survivor; /health shows the dead one down."""
    gate = StreamGate(after_chunks=2)  # one gate for both replicas: streams on either are held mid-answer
    a, b = await fake_upstream(tokens=8, gate=gate), await fake_upstream(tokens=8, gate=gate)
    engine = await fake_vllm_engine(a, b)
    base = await guard_server(engine, admin_api_key=ADMIN_KEY)
    async with aiohttp.ClientSession() as s:
        first = {f"first-{i}": asyncio.create_task(_stream_as(s, base, f"first-{i}")) for i in range(8)}
        await gate.until_waiting(8)
        on_a, on_b = _users(a), _users(b)
        assert on_a and on_b and on_a | on_b == set(first), (on_a, on_b)

        await a.kill()
        gate.open()
        later = await asyncio.gather(*(_stream_as(s, base, f"later-{i}") for i in range(8)))
        results = {user: await task for user, task in first.items()}

        async with s.get(base.removesuffix("/v1") + "/health", headers=ADMIN) as r:
            health = await r.json()

    for user, (status, raw) in results.items():
        assert status == 200 and raw.endswith("data: [DONE]\n\n"), (user, raw[-300:])
        if user in on_a:  # cut mid-answer: what was streamed, then an error frame
            assert " tok1" in raw and " tok2" not in raw and '"upstream_error"' in raw, (user, raw)
        else:
            assert raw.count(" tok") == 8 and '"error"' not in raw, (user, raw)
    for status, raw in later:
        assert status == 200 and raw.count(" tok") == 8 and '"error"' not in raw, raw[-300:]
    assert _users(b) == on_b | {f"later-{i}" for i in range(8)}
    assert _users(a) == on_a
    assert r.status == 200 and [x["healthy"] for x in health["engine"]["replicas"]] == [False, True], health
    assert all(rep.outstanding == 0 for rep in engine.pool.replicas)
