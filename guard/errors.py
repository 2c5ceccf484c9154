"""The guard's exception hierarchy. Every error a client can see maps to one OpenAI error object.

```
GuardError                      500  internal_error (never carries a traceback to the client)
├── ConfigError                 raised at start-up / policy load; names the field
├── RequestError                4xx  client's fault
│   ├── InvalidRequest          400  invalid_request_error (bad JSON, bad field, forbidden field)
│   │   └── ContextLengthExceeded   the prompt does not fit the served model's context
│   ├── AuthenticationError     401  authentication_error
│   ├── NotFound                404  not_found_error (unknown model, route)
│   ├── RequestTimeout          408  the client sent its body too slowly (the connection is closed)
│   ├── PayloadTooLarge         413  invalid_request_error
│   ├── UnsupportedMediaType    415  a Content-Encoding the guard does not decode
│   └── Overloaded              429  rate_limit_error (queue full; carries Retry-After)
├── ScreeningUnavailable        503  the detector failed and the policy is fail-closed
└── UpstreamError               502  upstream_error (refused, garbage, error status)
    ├── UpstreamTimeout         504  upstream_timeout
    └── UpstreamUnsupported     502  the upstream lacks a feature the action needs
```
"""

from __future__ import annotations

from typing import Any


class GuardError(Exception):
    status = 500
    type = "internal_error"
    code: str | None = None
    close_connection = False  # answer, then close the connection (a client that cannot be trusted to continue)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_openai(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {}


class ConfigError(GuardError):
    """A bad config, policy or artifact. Raised at load time; ``param`` names the field."""

    type = "configuration_error"

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message


class RequestError(GuardError):
    status = 400
    type = "invalid_request_error"


class InvalidRequest(RequestError):
    pass


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class AuthenticationError(RequestError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(RequestError):
    status = 404
    type = "not_found_error"


class RequestTimeout(RequestError):
    status = 408
    code = "request_timeout"
    close_connection = True


class PayloadTooLarge(RequestError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(RequestError):
    status = 415
    code = "unsupported_content_encoding"


class Overloaded(RequestError):
    status = 429
    type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ScreeningUnavailable(GuardError):
    status = 503
    type = "service_unavailable"
    code = "screening_unavailable"


class UpstreamError(GuardError):
    status = 502
    type = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    type = "upstream_timeout"


class UpstreamUnsupported(UpstreamError):
    code = "upstream_unsupported"
