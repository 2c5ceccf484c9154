"""HTTP routes and middlewares: the only module that speaks aiohttp.

The generation routes hand the body to ``guard.serving.GenerationService`` with the request's schema
and get an answer object back; ``send_answer`` turns it into the response: a whole JSON body with
``Content-Length``, or a chunked SSE stream written frame by frame (it always ends with
``data: [DONE]``; the stream object releases the generation when the client goes away). Exceptions
become OpenAI error objects in one place, ``errors_middleware``.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from typing import Awaitable, Callable

from aiohttp import web

from guard import app_keys as keys
from guard.errors import AuthenticationError, GuardError, InvalidRequest, NotFound, Overloaded
from guard.protocol import ChatCompletionRequest, CompletionRequest, GenerationRequest
from guard.request_body import BodyLimits, read_body
from guard.responses_protocol import ResponsesRequest
from guard.serving import Answer, Caller, JsonAnswer

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# What /health shows without the admin key: no upstream URLs, errors or model paths.
PUBLIC_ENGINE_HEALTH = ("ready", "engine", "prompt_embeds")


def error_response(exc: GuardError) -> web.Response:
    return web.json_response(exc.to_openai(), status=exc.status, headers=exc.headers())


async def _answer_and_hang_up(request: web.Request, exc: GuardError) -> web.Response:
    """Send the error now, then close the connection: aiohttp would otherwise keep reading (and
    discarding) the rest of a body for its lingering time, from a client already judged too slow."""
    response = error_response(exc)
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place where exceptions become OpenAI error objects. Never leaks a traceback."""
    try:
        return await handler(request)
    except GuardError as exc:
        return await _answer_and_hang_up(request, exc) if exc.close_connection else error_response(exc)
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
    if request.path == "/metrics":
        # Counters by action are an oracle (send a name, watch guard_flagged_total): never open.
        scrapers = [(name, key) for name, key in (("metrics", settings.metrics_api_key), ("admin", settings.admin_api_key)) if key]
        if not scrapers:
            raise NotFound("/metrics is disabled: set metrics_api_key (or admin_api_key) and scrape with it as the "
                           "bearer token", code="unknown_route")
        if _match_key(request, scrapers) is None:
            raise AuthenticationError("missing or invalid metrics key: send 'Authorization: Bearer <metrics_api_key>'")
    elif request.path.startswith("/v1/") and settings.api_keys:
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


def _is_generation(request: web.Request) -> bool:
    return request.method == "POST" and request.path.startswith("/v1/")


@web.middleware
async def body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Reads (and decodes) a generation request's body before it counts as in flight: a client that
    trickles its body holds a connection until ``body_read_timeout_s``, never a slot of ``max_inflight``."""
    if _is_generation(request):
        settings = request.app[keys.SETTINGS]
        request[keys.BODY] = await read_body(request, BodyLimits(settings.max_body_bytes, settings.body_read_timeout_s))
    return await handler(request)


@web.middleware
async def inflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Backpressure: beyond ``max_inflight`` generation requests, answer 429 instead of queueing."""
    if not _is_generation(request):
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
    # aiohttp hands non-UTF-8 header bytes over as surrogate escapes: keep them, they just never match
    supplied = token.strip().encode("utf-8", "surrogateescape")
    found = None
    for name, key in candidates:  # compare against every key: timing does not reveal which matched
        if hmac.compare_digest(supplied, key.encode()):
            found = name
    return found


def json_answer(body: bytes, status: int, headers: dict[str, str] | None = None) -> web.Response:
    """A whole JSON answer (``Content-Length``), framed the same whether the guard or the upstream wrote it."""
    return web.Response(body=body, status=status, headers=headers, content_type="application/json", charset="utf-8")


def sse_answer(status: int, headers: dict[str, str] | None = None) -> web.StreamResponse:
    """A streamed answer (chunked SSE), framed the same whether the guard or the upstream wrote it."""
    response = web.StreamResponse(status=status, headers={"Cache-Control": "no-cache", **(headers or {})})
    response.content_type = "text/event-stream"
    response.charset = "utf-8"
    return response


async def send_answer(request: web.Request, answer: Answer) -> web.StreamResponse:
    if isinstance(answer, JsonAnswer):
        return json_answer(answer.body, answer.status, answer.headers)
    response = sse_answer(answer.status, answer.headers)
    finished = False
    try:
        await response.prepare(request)
        async for event in answer:  # one write per event, as vLLM sends them
            await response.write(event)
        await response.write_eof()
        finished = True
    finally:
        await answer.aclose(finished)
    return response


async def _generate(request: web.Request, schema: type[GenerationRequest]) -> web.StreamResponse:
    caller = Caller(request_id=request.get(keys.REQUEST_ID), key_name=request.get(keys.KEY_NAME))
    answer = await request.app[keys.SERVICE].handle(schema, request[keys.BODY], caller)
    return await send_answer(request, answer)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, ChatCompletionRequest)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, CompletionRequest)


async def responses(request: web.Request) -> web.StreamResponse:
    return await _generate(request, ResponsesRequest)


async def stored_response(request: web.Request) -> web.Response:
    """``GET``/``DELETE /v1/responses/{id}`` and ``…/cancel``: nothing is stored (vLLM keeps no responses)."""
    raise InvalidRequest("stored responses are not supported: the server keeps no responses (response_id "
                         f"{request.match_info['response_id'][:64]!r}); keep the answer you received, and send the "
                         "whole conversation as input items", param="response_id", code="unsupported_field")


async def models(request: web.Request) -> web.Response:
    engine = request.app[keys.ENGINE]
    return web.json_response({"object": "list", "data": [
        {"id": engine.served_model_name, "object": "model", "created": request.app[keys.STARTED],
         "owned_by": "unlearning-guard"}]})


async def health(request: web.Request) -> web.Response:
    """Open to load balancers, so cheap and uniform: the engine's cached status (its own background
    checks, never a call upstream per request); no URLs, errors, paths, target names or counts unless
    debug or the admin key."""
    engine_health = await request.app[keys.ENGINE].health()
    holder = request.app[keys.PIPELINES]
    policy = holder.current.policy
    settings = request.app[keys.SETTINGS]
    privileged = settings.debug or bool(settings.admin_api_key and _match_key(request, [("admin", settings.admin_api_key)]))
    policy_info: dict = {"fail_mode": policy.fail_mode, "last_reload_error": _public_reload_error(holder)}
    if privileged:
        policy_info.update({"targets": len(policy.targets), "detector": policy.detector.kind,
                            "last_reload_error": holder.last_reload_error})
    body = {
        "status": "ok" if engine_health.get("ready") else "unavailable",
        "engine": engine_health if privileged else {k: engine_health[k] for k in PUBLIC_ENGINE_HEALTH if k in engine_health},
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
    app.router.add_post("/v1/responses", responses)
    app.router.add_get("/v1/responses/{response_id}", stored_response)
    app.router.add_delete("/v1/responses/{response_id}", stored_response)
    app.router.add_post("/v1/responses/{response_id}/cancel", stored_response)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/admin/reload", admin_reload)
