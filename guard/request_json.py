"""A request body's bytes decoded as the strict JSON object the API takes, or an OpenAI-shaped 400.

Strict where parsers disagree, so that what the guard screens is what any upstream reads:
invalid UTF-8 (``json.loads(bytes)`` would let UTF-8-encoded surrogates through), a lone UTF-16
surrogate escape (not text), a key repeated in one object (Python and vLLM keep the last copy, other
parsers the first), numbers beyond Python's conversion limit and nesting beyond the recursion limit.
"""

from __future__ import annotations

import json
import re
from typing import Any

from guard.errors import InvalidRequest

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins valid pairs, so any left is unpaired


def decode_request_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; every way it can be malformed is a 400 naming what and where."""
    try:
        body = json.loads(raw.decode("utf-8"), object_pairs_hook=_object_without_duplicate_keys)
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError:  # an integer beyond Python's 4,300-digit conversion limit
        raise InvalidRequest("the request body contains a number too long to read; send numbers of at most "
                             "4,300 digits") from None
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply; no field of this API nests more than a few levels") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw):  # only escapes can smuggle one in: encoded surrogates are not UTF-8
        where = _lone_surrogate_path(body)
        if where is not None:
            raise InvalidRequest(f"field {where!r} contains a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
                                 "escape), which is not text; send valid Unicode", param=where, code="invalid_value")
    return body


def _object_without_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refused when a key repeats: a parser difference between the guard and an
    upstream must never decide what gets screened."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidRequest(f"the request body has the key {key!r} twice in one JSON object; which copy counts "
                                 "differs between parsers, so send each key once", param=key, code="duplicate_key")
        obj[key] = value
    return obj


def _lone_surrogate_path(body: Any) -> str | None:
    """The dotted path (``messages.0.content``) of the first string or key holding a lone surrogate."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _LONE_SURROGATE.search(value):
                return ".".join(str(p) for p in path) or "(body)"
        elif isinstance(value, dict):
            for key in reversed(list(value)):
                if _LONE_SURROGATE.search(key):
                    return ".".join(str(p) for p in path + (key.encode("utf-8", "backslashreplace").decode(),))
                stack.append((path + (key,), value[key]))
        elif isinstance(value, list):
            stack.extend((path + (i,), item) for i, item in reversed(list(enumerate(value))))
    return None
