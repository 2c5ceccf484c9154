"""A recording fake vLLM server on a real port (``benchmarks.fake_upstream`` behind a ``TestServer``),
with the controls the fault and forwarding tests need: its request log, a stream gate, and a kill
that cuts the streams in flight and stops listening, as a crashed replica does. It also answers
``/v1/responses`` (a fixed Response, or its typed events when streamed), so what the guard forwards
there is recorded too: ``forwarded`` counts every generation request, Responses included."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from aiohttp import web
from aiohttp.test_utils import TestServer

from benchmarks.fake_upstream import MODEL, RecordedRequest, RequestLog, StreamGate, build_fake_app

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")


def forwarded(log: RequestLog) -> list[RecordedRequest]:
    """Every generation request the fake received (chat, completions and Responses)."""
    return [r for r in log.requests if r.method == "POST" and r.path in GENERATION_PATHS]


def _responses_handler(tokens: int, model: str):  # type: ignore[no-untyped-def]
    text = "".join(f" tok{i}" for i in range(tokens))

    async def respond(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        rid = f"resp_{uuid.uuid4().hex}"
        message = {"id": f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}
        response = {"id": rid, "object": "response", "created_at": int(time.time()), "model": model, "status": "completed",
                    "output": [message], "usage": {"input_tokens": 10, "output_tokens": tokens, "total_tokens": 10 + tokens}}
        if not body.get("stream"):
            return web.json_response(response)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for seq, event in enumerate([{"type": "response.created", "response": {**response, "status": "in_progress",
                                                                                "output": []}},
                                     {"type": "response.output_text.delta", "item_id": message["id"], "output_index": 0,
                                      "content_index": 0, "delta": text},
                                     {"type": "response.completed", "response": response}]):
            event["sequence_number"] = seq
            await resp.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        await resp.write_eof()
        return resp

    return respond


@dataclass
class FakeUpstream:
    server: TestServer
    log: RequestLog
    gate: StreamGate | None = None

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def kill(self) -> None:
        """Streams in flight are cut mid-response; new connections are refused."""
        self.log.abort_in_flight()
        await self.server.close()

    async def close(self) -> None:
        if self.gate is not None:
            self.gate.open()  # let held streams finish so the server can shut down
        await self.server.close()


async def start_fake_upstream(*, tokens: int = 4, delay_s: float = 0.0, gate: StreamGate | None = None,
                              port: int | None = None, model: str = MODEL) -> FakeUpstream:
    log = RequestLog()
    # handler_cancellation (TestServer's default, as in `guard serve`): a handler ends when its peer hangs up
    app = build_fake_app(tokens, delay_s, model, log=log, gate=gate)
    app.router.add_post("/v1/responses", _responses_handler(tokens, model))
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    return FakeUpstream(server, log, gate)
