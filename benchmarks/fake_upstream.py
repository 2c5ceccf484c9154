"""A fake OpenAI/vLLM server for isolating the proxy in benchmarks and tests: answers every chat or
text completion with a fixed N-token answer, streamed at a steady pace (or instantly).

    python benchmarks/fake_upstream.py --port 8090 --tokens 64 --delay-ms 5

Tests give it a ``RequestLog`` to observe what reached it (method, path, headers, the raw body
bytes, the bytes it answered, and whether the peer hung up mid-stream), and a ``StreamGate`` to
hold streams at a known point instead of relying on timing. Both belong to one app instance.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal

from aiohttp import web

MODEL = "SmolLM2-135M-Instruct"

Outcome = Literal["in_flight", "completed", "peer_closed"]


@dataclass
class RecordedRequest:
    """One request as it arrived, and what the fake did with it."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    response_body: bytearray = field(default_factory=bytearray)
    chunks_written: int = 0
    outcome: Outcome = "in_flight"
    held: bool = False  # waiting at the StreamGate
    transport: asyncio.BaseTransport | None = field(default=None, repr=False)

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)


@dataclass
class RequestLog:
    """Every request one fake app received, in arrival order. Waiting on it (``wait_until``) is
    how a test synchronises with the fake without sleeping."""

    requests: list[RecordedRequest] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition, repr=False)

    def generations(self) -> list[RecordedRequest]:
        """The chat/text completion requests (not model listings or health probes)."""
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("completions")]

    def in_flight(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.outcome == "in_flight"]

    def clear(self) -> None:
        self.requests.clear()

    def abort_in_flight(self) -> None:
        """Cut every connection with a request in progress, as a crashed server would."""
        for record in self.in_flight():
            if record.transport is not None:
                record.transport.abort()

    async def changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[RequestLog], bool], timeout_s: float = 30.0) -> None:
        """Until ``predicate(self)`` holds; ``TimeoutError`` after ``timeout_s`` (a failing test's bound,
        not a timing assumption: a passing run returns as soon as the event happens)."""
        async with asyncio.timeout(timeout_s):
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self))


@dataclass
class StreamGate:
    """Holds every stream after ``after_chunks`` content chunks until ``open()`` is called. One gate
    may serve several fakes (replicas): ``until_waiting(n)`` is when n streams, on any of them, are held."""

    after_chunks: int = 1
    waiting: int = 0
    _opened: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition, repr=False)

    def open(self) -> None:
        self._opened.set()

    async def hold(self) -> None:
        """Called by a stream at the gate: returns once the gate is open."""
        async with self._changed:
            self.waiting += 1
            self._changed.notify_all()
        try:
            await self._opened.wait()
        finally:
            self.waiting -= 1

    async def until_waiting(self, n: int, timeout_s: float = 30.0) -> None:
        async with asyncio.timeout(timeout_s):
            async with self._changed:
                await self._changed.wait_for(lambda: self.waiting >= n)


_RECORD: web.RequestKey[RecordedRequest] = web.RequestKey("fake_upstream_record")


def _recording_middleware(log: RequestLog) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def record(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers)  # lossless
        entry = RecordedRequest(method=request.method, path=request.path, headers=headers, body=await request.read(),
                                transport=request.transport)
        request[_RECORD] = entry
        log.requests.append(entry)
        await log.changed()
        try:
            response = await handler(request)
        except (asyncio.CancelledError, ConnectionError):
            entry.outcome = "peer_closed"
            await asyncio.shield(log.changed())
            raise
        if isinstance(response, web.Response) and response.body is not None:
            entry.response_body += bytes(response.body)
        if entry.outcome == "in_flight":
            entry.outcome = "completed"
        await log.changed()
        return response

    return record


def build_fake_app(tokens: int, delay_s: float, model: str = MODEL, *, log: RequestLog | None = None,
                   gate: StreamGate | None = None) -> web.Application:
    words = [f" tok{i}" for i in range(tokens)]

    def chunk(kind: str, text: str | None, finish: str | None, rid: str) -> bytes:
        if kind == "chat":
            delta = {} if text is None else {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        body = {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [choice]}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    async def complete(request: web.Request) -> web.StreamResponse:
        kind = "chat" if request.path.endswith("chat/completions") else "text"
        body = json.loads(await request.read())
        # vLLM's id: the caller's X-Request-Id if it sent one, else 16 random hex digits
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + (request.headers.get("X-Request-Id") or uuid.uuid4().hex[:16])
        if not body.get("stream"):
            if delay_s:
                await asyncio.sleep(delay_s * tokens)
            text = "".join(words)
            choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                      if kind == "chat" else {"index": 0, "text": text, "finish_reason": "length"})
            return web.json_response({"id": rid, "object": "chat.completion" if kind == "chat" else "text_completion",
                                      "created": int(time.time()), "model": model, "choices": [choice],
                                      "usage": {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens}})
        record = request.get(_RECORD)  # set when the app records (a RequestLog was given)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(data: bytes) -> None:
            await resp.write(data)
            if record is not None:
                record.response_body += data
                record.chunks_written += 1

        # Tokens are due at fixed times after the first, as a GPU server emits them: a late wake-up
        # (another process holding the core) does not push every later token back too.
        start = time.monotonic()
        for i, word in enumerate(words, 1):
            if gate is not None and i == gate.after_chunks + 1:
                if record is not None and log is not None:
                    record.held = True
                    await log.changed()  # a test may be waiting for streams to reach the gate
                await gate.hold()
                if record is not None:
                    record.held = False
                start = time.monotonic() - (i - 1) * delay_s
            if delay_s:
                await asyncio.sleep(max(0.0, start + i * delay_s - time.monotonic()))
            await send(chunk(kind, word, None, rid))
        await send(chunk(kind, None, "length", rid))
        await send(b"data: [DONE]\n\n")
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model"}]})

    app = web.Application(middlewares=[_recording_middleware(log)] if log is not None else [])
    app.router.add_post("/v1/chat/completions", complete)
    app.router.add_post("/v1/completions", complete)
    app.router.add_get("/v1/models", models)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    args = parser.parse_args()
    web.run_app(build_fake_app(args.tokens, args.delay_ms / 1000), host="127.0.0.1", port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
