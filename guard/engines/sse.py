"""Server-sent events, OpenAI flavour: ``data: <json>\\n\\n`` frames ending with ``data: [DONE]``."""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import aiohttp

DONE = b"data: [DONE]\n\n"


def encode_json(obj: Any) -> bytes:
    """JSON as vLLM's server writes it (pydantic ``model_dump_json``): no spaces, non-ASCII as UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def frame(obj: Any) -> bytes:
    return b"data: " + encode_json(obj) + b"\n\n"


async def iter_sse_data(stream: aiohttp.StreamReader) -> AsyncIterator[str]:
    """The ``data:`` payloads of an SSE stream (multi-line data joined with newlines)."""
    lines: list[str] = []
    async for raw in stream:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        if line.startswith("data:"):
            lines.append(line[5:].lstrip(" "))
    if lines:
        yield "\n".join(lines)
