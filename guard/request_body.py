"""Reading a request body the way an adversary cannot abuse: bounded in time, in size on the wire and
in size after decompression, every failure an OpenAI error.

aiohttp's own decompression is switched off (``auto_decompress=False`` in ``guard.app``): its errors
for an unknown or broken ``Content-Encoding`` are plain-text 400s written before any middleware
runs. Here ``gzip`` and ``deflate`` are decoded with a cap on the output (a gzip bomb gets 413),
anything else gets 415 naming what is accepted.
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass

from aiohttp import web

from guard.errors import InvalidRequest, PayloadTooLarge, RequestTimeout, UnsupportedMediaType

_GZIP = ("gzip", "x-gzip")
_DEFLATE = ("deflate",)
_ACCEPTED = "identity, gzip or deflate"


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int  # on the wire and after decompression
    read_timeout_s: float  # the whole body, from the end of the headers


async def read_body(request: web.Request, limits: BodyLimits) -> bytes:
    """The decoded body, or a ``RequestError`` (408 too slow, 413 too large, 400/415 bad encoding)."""
    coding = _content_coding(request.headers.get("Content-Encoding", ""))
    try:
        raw = await asyncio.wait_for(request.read(), limits.read_timeout_s)  # (asyncio.timeout needs 3.11)
    except asyncio.TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {limits.read_timeout_s:g} s "
                             "(body_read_timeout_s); send it at once") from None
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limits.max_bytes) from None
    return _decompress(raw, coding, limits.max_bytes) if coding else raw


def _content_coding(header: str) -> str | None:
    codings = [c.strip().lower() for c in header.split(",") if c.strip() and c.strip().lower() != "identity"]
    if not codings:
        return None
    if len(codings) > 1:
        raise UnsupportedMediaType(f"Content-Encoding {header!r} stacks several codings; send one of {_ACCEPTED}",
                                   param="Content-Encoding")
    if codings[0] not in _GZIP + _DEFLATE:
        raise UnsupportedMediaType(f"Content-Encoding {codings[0]!r} is not supported; send the body as {_ACCEPTED}",
                                   param="Content-Encoding")
    return codings[0]


def _decompress(raw: bytes, coding: str, max_bytes: int) -> bytes:
    if coding in _GZIP:
        wbits = 16 + zlib.MAX_WBITS
    else:  # RFC 9110 deflate is the zlib format; some clients send raw deflate: accept both, as aiohttp does
        wbits = zlib.MAX_WBITS if raw[:1] and raw[0] & 0x0F == 8 else -zlib.MAX_WBITS
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(raw, max_bytes + 1)
    except zlib.error:
        raise InvalidRequest(f"the request body is not valid {coding} data, as its Content-Encoding says",
                             param="Content-Encoding") from None
    if len(out) > max_bytes:
        raise _too_large(max_bytes, " after decompression")
    if not decoder.eof:
        raise InvalidRequest(f"the request body is truncated {coding} data", param="Content-Encoding")
    return out


def _too_large(limit: int, where: str = "") -> PayloadTooLarge:
    return PayloadTooLarge(f"request body too large{where}: the limit is {limit} bytes (max_body_bytes)")
