"""One HTTP/1.1 request written byte for byte on a socket: for inputs an HTTP client library will not
send (non-ASCII header bytes, a Content-Encoding that does not match the body)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


async def raw_request(url: str, *, method: str = "POST", headers: Sequence[tuple[bytes, bytes]] = (),
                      body: bytes = b"", timeout_s: float = 60.0) -> RawResponse:
    """Send exactly these header bytes (plus Host, Content-Length and ``Connection: close``)."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = [f"{method} {target} HTTP/1.1".encode(), f"Host: {parts.netloc}".encode(),
            f"Content-Length: {len(body)}".encode(), b"Connection: close"]
    head += [name + b": " + value for name, value in headers]
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
    return _parse(raw)


def _parse(raw: bytes) -> RawResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return RawResponse(int(status_line.split()[1]), headers, body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return bytes(out)
