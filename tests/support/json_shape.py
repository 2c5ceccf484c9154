"""The shape of an answer's JSON, to compare the guard's answers with vLLM's: keys in order at every
level, leaves reduced to their JSON type (values such as texts and token counts may differ)."""

from __future__ import annotations

import json
from typing import Any


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [shape(item) for item in value]
    return "int" if isinstance(value, int) and not isinstance(value, bool) else type(value).__name__


def chunk_shapes(objects: list[dict[str, Any]]) -> list[Any]:
    """The objects' shapes, runs of alike ones (text chunks, as many as there are tokens) merged."""
    shapes: list[Any] = []
    for obj in objects:
        this = shape(obj)
        if not shapes or shapes[-1] != this:
            shapes.append(this)
    return shapes


def parse_compact(event: bytes | str) -> dict[str, Any]:
    """One JSON object, asserted to be written as vLLM's pydantic serialiser writes it: no spaces
    between tokens, non-ASCII as UTF-8."""
    text = event.decode() if isinstance(event, bytes) else event
    obj = json.loads(text)
    assert json.dumps(obj, separators=(",", ":"), ensure_ascii=False) == text, text
    return obj
