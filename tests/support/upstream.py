"""A recording fake vLLM server on a real port (``benchmarks.fake_upstream`` behind a ``TestServer``),
with the controls the fault and forwarding tests need: its request log, a stream gate, and a kill
that cuts the streams in flight and stops listening, as a crashed replica does."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp.test_utils import TestServer

from benchmarks.fake_upstream import MODEL, RequestLog, StreamGate, build_fake_app
from tests.conftest import free_port


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
    server = TestServer(build_fake_app(tokens, delay_s, model, log=log, gate=gate), host="127.0.0.1",
                        port=port or free_port())
    await server.start_server()
    return FakeUpstream(server, log, gate)
