"""An upstream's answer to a forwarded request, handed back byte for byte (the pass path).

The engine checks what makes an answer not an OpenAI answer (a 5xx, an HTML error page) before
handing it over; the caller either reads it whole (JSON) or streams its bytes (SSE) and releases it.
"""

from __future__ import annotations

from typing import AsyncIterator

from guard.engines.upstreams import UpstreamResponse

OPENAI_CONTENT_TYPES = ("application/json", "text/event-stream")


class ForwardedAnswer:
    """The upstream's status and bytes; ``release`` (idempotent) frees the connection and its replica."""

    def __init__(self, response: UpstreamResponse) -> None:
        self._response = response
        self.status: int = response.status

    @property
    def streamed(self) -> bool:
        return self._response.content_type == "text/event-stream"

    async def read(self) -> bytes:
        """The whole body (raises the transport's exception if the upstream breaks off)."""
        return await self._response.read()

    def iter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives, unchanged (raises the transport's exception if the upstream breaks off)."""
        return self._response.content.iter_any()  # aiohttp's own iterator: no extra layer per chunk

    def release(self) -> None:
        self._response.release()
