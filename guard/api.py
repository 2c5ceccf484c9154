"""HTTP routes and middlewares. Thin: parsing and business logic live in ``guard.serving``."""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from typing import Awaitable, Callable

from aiohttp import web

from guard import app_keys as keys
from guard.errors import AuthenticationError, GuardError, InvalidRequest, NotFound, Overloaded, PayloadTooLarge

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: GuardError) -> web.Response:
    return web.json_response(exc.to_openai(), status=exc.status, headers=exc.headers())


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place where exceptions become OpenAI error objects. Never leaks a traceback."""
    try:
        return await handler(request)
    except GuardError as exc:
        return error_response(exc)
    except web.HTTPNotFound:
        return error_response(NotFound(f"no route {request.method} {request.path}", code="unknown_route"))
    except web.HTTPMethodNotAllowed as exc:
        err = InvalidRequest(f"method {request.method} not allowed on {request.path}; use {', '.join(sorted(exc.allowed_methods))}")
        err.status = 405
        return error_response(err)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(GuardError("internal error; see the guard's log"))


_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request gets an id (the client's ``X-Request-Id`` if well-formed), echoed in the response."""
    supplied = request.headers.get("X-Request-Id", "")
    request[keys.REQUEST_ID] = supplied if _REQUEST_ID_RE.match(supplied) else uuid.uuid4().hex
    return await handler(request)


async def echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: works for streamed responses too (headers go out at prepare)."""
    request_id = request.get(keys.REQUEST_ID)
    if request_id:
        response.headers["X-Request-Id"] = request_id


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[keys.SETTINGS]
    if request.path.startswith("/v1/") and settings.api_keys:
        name = _match_key(request, [(k.name, k.key) for k in settings.api_keys])
        if name is None:
            raise AuthenticationError("missing or invalid API key: send 'Authorization: Bearer <key>'")
        request[keys.KEY_NAME] = name
    elif request.path.startswith("/admin/"):
        admin = settings.admin_api_key
        if not admin:
            raise NotFound("admin endpoints are disabled: set admin_api_key to enable them", code="unknown_route")
        if _match_key(request, [("admin", admin)]) is None:
            raise AuthenticationError("missing or invalid admin key: send 'Authorization: Bearer <admin key>'")
    return await handler(request)


@web.middleware
async def inflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Backpressure: beyond ``max_inflight`` generation requests, answer 429 instead of queueing."""
    if request.method != "POST" or not request.path.startswith("/v1/"):
        return await handler(request)
    gate = request.app[keys.INFLIGHT]
    if gate.count >= request.app[keys.SETTINGS].max_inflight:
        raise Overloaded(f"the guard is at its limit of {gate.count} requests in flight; retry shortly")
    gate.count += 1
    try:
        return await handler(request)
    finally:
        gate.count -= 1


def _match_key(request: web.Request, candidates: list[tuple[str, str]]) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    supplied = token.strip().encode()
    found = None
    for name, key in candidates:  # compare against every key: timing does not reveal which matched
        if hmac.compare_digest(supplied, key.encode()):
            found = name
    return found


async def _read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[keys.SETTINGS].max_body_bytes
        raise PayloadTooLarge(f"request body too large: the limit is {limit} bytes (max_body_bytes)") from None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await request.app[keys.SERVICE].handle(request, "chat", await _read_body(request))


async def completions(request: web.Request) -> web.StreamResponse:
    return await request.app[keys.SERVICE].handle(request, "completion", await _read_body(request))


async def models(request: web.Request) -> web.Response:
    engine = request.app[keys.ENGINE]
    return web.json_response({"object": "list", "data": [
        {"id": engine.served_model_name, "object": "model", "created": request.app[keys.STARTED],
         "owned_by": "unlearning-guard"}]})


async def health(request: web.Request) -> web.Response:
    engine_health = await request.app[keys.ENGINE].health()
    holder = request.app[keys.PIPELINES]
    policy = holder.current.policy
    settings = request.app[keys.SETTINGS]
    # Open to load balancers: no target names, counts or detector details unless debug or the admin key.
    privileged = settings.debug or bool(settings.admin_api_key and _match_key(request, [("admin", settings.admin_api_key)]))
    policy_info: dict = {"fail_mode": policy.fail_mode, "last_reload_error": _public_reload_error(holder)}
    if privileged:
        policy_info.update({"targets": len(policy.targets), "detector": policy.detector.kind,
                            "last_reload_error": holder.last_reload_error})
    body = {
        "status": "ok" if engine_health.get("ready") else "unavailable",
        "engine": engine_health,
        "policy": policy_info,
        "uptime_s": round(time.time() - request.app[keys.STARTED], 1),
    }
    # actions that need prompt embeddings on an upstream that refuses them: say so (still serving the rest)
    embed_actions = sorted({"eco", "spul"} & set(holder.current.interventions))
    if embed_actions and engine_health.get("prompt_embeds") is False:
        body["status"] = "degraded"
        body["warnings"] = [f"the policy uses {', '.join(embed_actions)} but the upstream does not accept prompt "
                            "embeddings: flagged requests get 502 until vLLM runs with --enable-prompt-embeds"]
    return web.json_response(body, status=200 if engine_health.get("ready") else 503)


def _public_reload_error(holder) -> str | None:  # type: ignore[no-untyped-def]
    """The last failed reload, naming the policy field but not its content (which may name targets)."""
    if holder.last_reload_error is None:
        return None
    where = f" (field {holder.last_reload_param})" if holder.last_reload_param else ""
    return (f"the last policy reload failed{where}; the previous policy is still serving. The full error is in the "
            "guard's log and in the answer to POST /admin/reload")


async def metrics(request: web.Request) -> web.Response:
    payload, content_type = request.app[keys.METRICS].exposition()
    return web.Response(body=payload, headers={"Content-Type": content_type})


async def admin_reload(request: web.Request) -> web.Response:
    holder = request.app[keys.PIPELINES]
    started = time.perf_counter()
    try:
        pipeline = await holder.reload()
    except GuardError as exc:
        raise InvalidRequest(f"policy reload failed, still serving the previous policy: {exc}", param=exc.param) from None
    return web.json_response({"status": "reloaded", "targets": len(pipeline.policy.targets),
                              "seconds": round(time.perf_counter() - started, 3)})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/admin/reload", admin_reload)
