"""Slow clients (issue 19, finding 5): a client that trickles its body holds a connection, never an
in-flight slot; it gets an OpenAI-shaped 408 after ``body_read_timeout_s`` and is disconnected; a
client that never finishes its headers is disconnected after ``header_timeout_s``.

The tricklers send ``Expect: 100-continue`` and wait for the guard's ``100 Continue``: the guard
answers it when the request has reached the app, so once the client has read it the guard is
waiting for the body (the server runs on the test's event loop). No sleeps, no timing assumptions.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from guard.models import DEFAULT_SERVED_NAME

MODEL = DEFAULT_SERVED_NAME
SMALL = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


async def _open_trickler(root: str, declared: int = 100_000) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A POST whose headers promise ``declared`` bytes, of which it sends 9; returns once the guard
    is reading the body."""
    url = aiohttp.client.URL(root)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {declared}\r\nExpect: 100-continue\r\n\r\n").encode())
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 100")
    assert await reader.readline() == b"\r\n"
    writer.write(b'{"model":')
    await writer.drain()
    return reader, writer


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status = int((await reader.readline()).split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


async def test_trickling_bodies_do_not_lock_out_requests(fake_engine, guard_server):
    base = await guard_server(fake_engine, max_inflight=2, body_read_timeout_s=300)
    root = base.removesuffix("/v1")
    tricklers = [await _open_trickler(root) for _ in range(6)]  # 3x max_inflight, all mid-body
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.post(f"{base}/chat/completions", json=SMALL) as r:
                    assert r.status == 200, await r.text()
                    assert "tok0" in (await r.json())["choices"][0]["message"]["content"]
    finally:
        for _, writer in tricklers:
            writer.close()


async def test_trickler_gets_openai_408_and_is_disconnected(fake_engine, guard_server):
    base = await guard_server(fake_engine, body_read_timeout_s=0.2)
    reader, writer = await _open_trickler(base.removesuffix("/v1"))
    try:
        status, headers, body = await asyncio.wait_for(_read_response(reader), 60)
        assert status == 408 and headers["connection"] == "close"
        assert headers["content-type"].startswith("application/json")
        error = json.loads(body)["error"]
        assert error["code"] == "request_timeout" and error["type"] == "invalid_request_error"
        assert "body_read_timeout_s" in error["message"]
        assert await asyncio.wait_for(reader.read(), 60) == b""  # the guard hung up
    finally:
        writer.close()


async def test_unfinished_headers_are_disconnected(fake_engine, guard_server):
    base = await guard_server(fake_engine, header_timeout_s=0.2)
    url = aiohttp.client.URL(base)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")  # and nothing more
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 60) == b""
    finally:
        writer.close()


async def test_normal_requests_still_work_with_tight_timeouts(fake_engine, guard_server):
    """The timeouts bound slow clients only: a request sent at once is answered, and a keep-alive
    connection is reused for the next one."""
    base = await guard_server(fake_engine, body_read_timeout_s=5, header_timeout_s=5)
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.post(f"{base}/chat/completions", json=SMALL) as r:
                assert r.status == 200
