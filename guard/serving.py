"""The generation endpoints' logic: validate -> screen -> decide -> forward or intervene -> respond.

Dependencies are passed in (engine, pipeline holder, metrics, settings); handlers in ``guard.api``
only pick the schema. Pass-through on a vLLM upstream forwards the client's bytes (re-serialised
only to add the guard's ``max_tokens`` or the upstream's model name) and sends the upstream's bytes
back untouched; everything else is produced from ``GenerationChunk`` streams.

Whichever path answers, the framing is the same, so a client cannot tell that its answer was
altered: JSON answers are sent whole with ``Content-Length``, streams as chunked SSE with the same
headers, and ids have one format (vLLM builds its id from the ``X-Request-Id`` the guard sends it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator

from aiohttp import web

from guard import app_keys as keys
from guard.config import Settings
from guard.engines.base import Engine, GenerationChunk
from guard.engines.sse import DONE, encode_json, frame
from guard.engines.vllm import VllmEngine
from guard.errors import ContextLengthExceeded, GuardError, NotFound, UpstreamError
from guard.interventions.base import GuardRequest
from guard.metrics import GuardMetrics
from guard.pipeline import Decision, PipelineHolder
from guard.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    parse_request,
    sampling_params,
)
from guard.response_shapes import ResponseMeta, StreamShaper, full_response

log = logging.getLogger(__name__)
audit_log = logging.getLogger("guard.audit")  # one JSON line per flagged request; no prompt text unless configured

DEFAULT_MAX_TOKENS = 512
PARSE_OFF_LOOP_BYTES = 64 << 10
_CLIENT_GONE = (ConnectionResetError, ConnectionError, asyncio.CancelledError)
_OPENAI_CONTENT_TYPES = ("application/json", "text/event-stream")


class GenerationService:
    def __init__(self, settings: Settings, engine: Engine, pipelines: PipelineHolder, metrics: GuardMetrics) -> None:
        self.settings = settings
        self.engine = engine
        self.pipelines = pipelines
        self.metrics = metrics

    async def handle(self, request: web.Request, kind: str, raw: bytes) -> web.StreamResponse:
        route = "chat" if kind == "chat" else "completions"
        started = time.perf_counter()
        action = "none"
        status = 500
        try:
            schema = ChatCompletionRequest if kind == "chat" else CompletionRequest
            # decoding and validating a large body is milliseconds of CPU per MiB: off the event loop
            req, body = (await asyncio.to_thread(parse_request, raw, schema) if len(raw) > PARSE_OFF_LOOP_BYTES
                         else parse_request(raw, schema))
            if req.model != self.engine.served_model_name:
                raise NotFound(f"model {req.model!r} does not exist; this guard serves {self.engine.served_model_name!r}",
                               param="model", code="model_not_found")
            params = sampling_params(req, min(DEFAULT_MAX_TOKENS, self.settings.max_tokens_limit),
                                     self.settings.max_tokens_limit)
            self._check_prompt_bound(req, kind)
            texts = req.screen_texts()
            decision = await self._decide(request, texts)
            action = decision.action
            self._record_decision(request, decision, texts)
            if action == "pass" and isinstance(self.engine, VllmEngine):
                response = await self._forward(request, kind, body, raw, params.max_tokens, route, started)
            else:
                guard_req = GuardRequest(kind=kind, params=params,
                                         messages=tuple(req.plain_messages()) if kind == "chat" else (),
                                         prompt=req.prompt_text if kind == "completion" else "")
                chunks = decision.intervention.stream(guard_req, decision.verdict, decision.target, self.engine)
                # the model name and fingerprint a passed answer would carry: flagged ones look the same
                meta = ResponseMeta(kind=kind, model=self.engine.answer_model_name,
                                    system_fingerprint=self.engine.system_fingerprint)
                headers = self._debug_headers(decision)
                if req.stream:
                    response = await self._stream(request, meta, chunks, req.include_usage, headers, route, action, started)
                else:
                    response = await self._collect(meta, chunks, headers)
            status = response.status
            return response
        except GuardError as exc:
            status = exc.status
            if isinstance(exc, ContextLengthExceeded) and exc.param is None:  # the engine's exact check
                exc.param = _prompt_field(kind)
            if isinstance(exc, UpstreamError):
                self.metrics.upstream_errors.labels(kind=type(exc).__name__).inc()
            raise
        except _CLIENT_GONE:
            status = 499
            raise
        finally:
            self.metrics.requests.labels(route=route, status=str(status), action=action).inc()
            self.metrics.latency.labels(route=route, action=action).observe(time.perf_counter() - started)

    def _check_prompt_bound(self, req: ChatCompletionRequest | CompletionRequest, kind: str) -> None:
        """Reject a prompt that cannot fit the model's context before screening or tokenising it (a
        lower bound on its tokens from its length); the engine checks the exact count later."""
        window = self.engine.context_window
        if window is None:
            return
        if isinstance(req, ChatCompletionRequest):
            chars = sum(len(m["content"]) for m in req.plain_messages())
        else:
            chars = len(req.prompt_text)
        window.check_chars(chars, _prompt_field(kind))

    async def _decide(self, request: web.Request, texts: list[str]) -> Decision:
        """The pipeline's decision; a request refused because it could not be screened (fail-closed:
        over the length limit or the budget, or the detector failed) is counted and audited too."""
        try:
            return await self.pipelines.current.decide(texts)
        except GuardError as exc:
            self.metrics.screening_failures.labels(outcome="refused_fail_closed").inc()
            audit_log.warning(json.dumps({"event": "unscreened", "request_id": request.get(keys.REQUEST_ID),
                                          "key": request.get(keys.KEY_NAME), "action": "refuse", "fail_mode": "closed",
                                          "reason": exc.param or exc.code or type(exc).__name__}))
            raise

    def _record_decision(self, request: web.Request, decision: Decision, texts: list[str]) -> None:
        self.metrics.detector_latency.observe(decision.screen_seconds)
        if decision.screening_failed:
            self.metrics.screening_failures.labels(outcome="passed_fail_open").inc()
            audit_log.warning(json.dumps({"event": "unscreened", "request_id": request.get(keys.REQUEST_ID),
                                          "key": request.get(keys.KEY_NAME), "action": "pass", "fail_mode": "open",
                                          "reason": decision.failure}))
        if decision.verdict.flagged:
            self.metrics.flagged.labels(action=decision.action).inc()
            record = {"event": "flagged", "request_id": request.get(keys.REQUEST_ID), "key": request.get(keys.KEY_NAME),
                      "target": decision.verdict.target_id, "action": decision.action,
                      "score": round(decision.verdict.score, 4)}
            if self.settings.audit_prompts:
                record["prompt"] = texts
            audit_log.info(json.dumps(record, ensure_ascii=False))

    def _debug_headers(self, decision: Decision) -> dict[str, str]:
        # X-Request-Id is set on every response by the request-id middleware.
        if not self.settings.debug:
            return {}
        return {"X-Guard-Action": decision.action, "X-Guard-Target": decision.verdict.target_id or "",
                "X-Guard-Score": f"{decision.verdict.score:.4f}"}

    # -- vLLM fast path ----------------------------------------------------------------------------
    async def _forward(self, request: web.Request, kind: str, body: dict[str, Any], raw: bytes, max_tokens: int,
                       route: str, started: float) -> web.StreamResponse:
        assert isinstance(self.engine, VllmEngine)
        upstream_model = await self.engine.ensure_model()
        patch: dict[str, Any] = {}
        if body.get("model") != upstream_model:
            patch["model"] = upstream_model
        if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            patch["max_tokens"] = max_tokens  # the guard's default, as on every other path, never above the limit
        if patch:
            raw = json.dumps({**body, **patch}).encode()
        path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        upstream = await self.engine.forward(path, raw, request_id=uuid.uuid4().hex)
        try:
            if upstream.status >= 500:
                text = (await upstream.text())[:500]
                raise UpstreamError(f"the upstream answered {upstream.status}: {text}")
            if upstream.content_type not in _OPENAI_CONTENT_TYPES:  # an HTML error page, a proxy's banner, ...
                raise UpstreamError(f"the upstream answered {upstream.status} with content type {upstream.content_type!r}, "
                                    "not an OpenAI response; is upstream.url a vLLM server?")
            if upstream.content_type != "text/event-stream":
                try:
                    data = await upstream.read()
                except Exception as exc:  # noqa: BLE001 - nothing was sent yet: a clean 502
                    self.metrics.upstream_errors.labels(kind="mid_stream").inc()
                    raise UpstreamError(f"the upstream closed the connection mid-response ({type(exc).__name__})") from None
                self.metrics.ttft.labels(route=route, action="pass").observe(time.perf_counter() - started)
                return json_answer(data, upstream.status)
            response = sse_answer(upstream.status)
            await response.prepare(request)
            first = True
            try:
                async for data in upstream.content.iter_any():
                    if first:
                        self.metrics.ttft.labels(route=route, action="pass").observe(time.perf_counter() - started)
                        first = False
                    await response.write(data)
            except _CLIENT_GONE:
                raise
            except Exception as exc:  # noqa: BLE001 - upstream died mid-stream: end the stream cleanly
                self.metrics.upstream_errors.labels(kind="mid_stream").inc()
                log.warning("upstream failed mid-response: %s", exc)
                err = UpstreamError("the upstream closed the connection mid-stream")
                await response.write(frame(err.to_openai()) + DONE)
            await response.write_eof()
            return response
        finally:
            upstream.release()

    # -- generated responses -----------------------------------------------------------------------
    async def _collect(self, meta: ResponseMeta, chunks: AsyncIterator[GenerationChunk],
                       headers: dict[str, str]) -> web.Response:
        parts: list[str] = []
        last = GenerationChunk(finish_reason="stop")
        async for chunk in chunks:
            parts.append(chunk.text)
            if chunk.finish_reason:
                last = chunk
        body = full_response(meta, "".join(parts), last.finish_reason or "stop", last.prompt_tokens, last.completion_tokens)
        return json_answer(encode_json(body), 200, headers)

    async def _stream(self, request: web.Request, meta: ResponseMeta, chunks: AsyncIterator[GenerationChunk],
                      include_usage: bool, headers: dict[str, str], route: str, action: str,
                      started: float) -> web.StreamResponse:
        iterator = chunks.__aiter__()
        # Pull the first chunk before committing to a 200, so an upstream that is down gets a 502.
        try:
            first_chunk: GenerationChunk | None = await iterator.__anext__()
        except StopAsyncIteration:
            first_chunk = None
        self.metrics.ttft.labels(route=route, action=action).observe(time.perf_counter() - started)
        response = sse_answer(200, headers)
        await response.prepare(request)
        shaper = StreamShaper(meta, include_usage)
        try:
            await _write_frames(response, shaper.start())
            chunk = first_chunk
            while chunk is not None:
                await _write_frames(response, shaper.feed(chunk))
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    chunk = None
            await _write_frames(response, shaper.end())
        except _CLIENT_GONE:
            raise
        except GuardError as exc:
            log.warning("stream ended by an error: %s", exc.message)
            await _write_frames(response, shaper.held())
            await response.write(frame(exc.to_openai()))
        except Exception:  # noqa: BLE001
            log.exception("stream failed")
            await response.write(frame({"error": {"message": "internal error while generating", "type": "internal_error",
                                                  "param": None, "code": None}}))
        finally:
            await _aclose(iterator)
        await response.write(DONE)
        await response.write_eof()
        return response


def json_answer(body: bytes, status: int, headers: dict[str, str] | None = None) -> web.Response:
    """A whole JSON answer (``Content-Length``), framed the same whether the guard or the upstream wrote it."""
    return web.Response(body=body, status=status, headers=headers, content_type="application/json", charset="utf-8")


def sse_answer(status: int, headers: dict[str, str] | None = None) -> web.StreamResponse:
    """A streamed answer (chunked SSE), framed the same whether the guard or the upstream wrote it."""
    response = web.StreamResponse(status=status, headers={"Cache-Control": "no-cache", **(headers or {})})
    response.content_type = "text/event-stream"
    response.charset = "utf-8"
    return response


async def _write_frames(response: web.StreamResponse, chunks: list[dict[str, Any]]) -> None:
    for chunk in chunks:  # one write per event, as vLLM sends them
        await response.write(frame(chunk))


def _prompt_field(kind: str) -> str:
    return "messages" if kind == "chat" else "prompt"


async def _aclose(iterator: Any) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # noqa: BLE001
            log.debug("closing a generation stream failed", exc_info=True)
