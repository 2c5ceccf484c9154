"""Reading a generated answer's chunks back per choice (``GenerationChunk.index``)."""

from __future__ import annotations

from typing import Any, AsyncIterator

from guard.engines.base import GenerationChunk


async def choices(chunks: AsyncIterator[GenerationChunk]) -> dict[int, list[GenerationChunk]]:
    """Every chunk of a stream, grouped by choice, in order."""
    out: dict[int, list[GenerationChunk]] = {}
    async for chunk in chunks:
        out.setdefault(chunk.index, []).append(chunk)
    return out


def text_of(chunks: list[Any]) -> str:
    return "".join(c.text for c in chunks)
