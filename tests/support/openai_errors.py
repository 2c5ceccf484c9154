"""What a client-caused error must look like on the wire: an OpenAI error object whose type matches
the status, with a snake_case code (or none) and the offending field named in ``param``."""

from __future__ import annotations

import json
import re
from typing import Any

# the error type a well-behaved OpenAI server uses for each client-error status
TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}
_CODE = re.compile(r"[a-z][a-z0-9_]*")


def assert_openai_error(status: int, body: bytes, *, context: Any = None) -> dict[str, Any]:
    """Assert a 4xx with the OpenAI error shape; returns the ``error`` object."""
    where = f" for {context!r}"[:300] if context is not None else ""
    assert 400 <= status < 500, f"status {status}{where}: {body[:300]!r}"
    try:
        payload = json.loads(body)
    except ValueError:
        raise AssertionError(f"a {status} that is not JSON{where}: {body[:300]!r}") from None
    assert isinstance(payload, dict) and set(payload) == {"error"}, f"not an OpenAI error{where}: {payload!r}"
    err = payload["error"]
    assert isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}, f"error keys{where}: {err!r}"
    assert isinstance(err["message"], str) and err["message"].strip(), f"empty message{where}: {err!r}"
    assert err["type"] == TYPE_FOR_STATUS.get(status), f"type {err['type']!r} for a {status}{where}"
    assert err["param"] is None or (isinstance(err["param"], str) and err["param"]), f"param{where}: {err!r}"
    assert err["code"] is None or (isinstance(err["code"], str) and _CODE.fullmatch(err["code"])), f"code{where}: {err!r}"
    if err["code"] in ("forbidden_field", "unsupported_field"):
        assert err["param"] and err["param"] in err["message"], f"the error must name the field{where}: {err!r}"
    return err
