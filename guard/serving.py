"""The generation services: a parsed request -> screen -> decide -> forward or intervene -> an answer.

``GenerationService.handle`` takes the request's schema (``ChatCompletionRequest`` or
``CompletionRequest``: every chat/completion difference lives on those classes and on the prompt
types they build) and its body, and returns an answer object: a ``JsonAnswer`` (a whole body) or a
``StreamAnswer`` (SSE frames that always end with ``data: [DONE]``). Only ``guard.api`` turns
answers into HTTP responses; nothing here knows aiohttp.

Pass-through on an engine that forwards (vLLM) sends the client's bytes upstream (re-serialised only
to add the guard's ``max_tokens`` or the upstream's model name) and hands the upstream's bytes back
untouched. Everything else is produced from the intervention's ``GenerationChunk`` stream, shaped
as vLLM shapes its answers (``guard.response_shapes``), so a client cannot tell which path answered.

Output screening (issue #14): every answer is wrapped by the request's ``OutputGuard``
(``guard.output_response``): a generated answer at its ``GenerationChunk`` stream
(``guard.output_guard.screened_chunks``), a forwarded one at its SSE events or whole body
(``guard.output_wire``); nothing of a stream reaches the client before it is screened.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

from guard.answer_stream import CLIENT_GONE, aclose_quietly, collect_answer, method_answer, shaped_frames
from guard.config import Settings
from guard.engines.base import Engine
from guard.engines.forwarding import ForwardedAnswer
from guard.engines.openai_sampling import SamplingLimits
from guard.engines.sse import DONE, encode_json, frame
from guard.errors import ContextLengthExceeded, GuardError, NotFound, UpstreamError
from guard.interventions.base import GuardRequest, Intervention
from guard.metrics import GuardMetrics
from guard.output_guard import OutputGuard, screened_chunks
from guard.output_response import OutputContext, forwarded_continuation, output_guard, screened_forwarded_json
from guard.output_screen import OutputHit
from guard.output_wire import screened_events
from guard.pipeline import Decision, Pipeline, PipelineHolder
from guard.protocol import GenerationRequest, parse_request, sampling_params
from guard.responses_protocol import ResponsesRequest
from guard.response_shapes import ResponseMeta

log = logging.getLogger(__name__)
audit_log = logging.getLogger("guard.audit")  # one JSON line per flagged request; no prompt text unless configured

DEFAULT_MAX_TOKENS = 512
PARSE_OFF_LOOP_BYTES = 64 << 10


@dataclass(frozen=True)
class Caller:
    """Who sent the request, for the audit log (set by the API's middlewares)."""

    request_id: str | None = None
    key_name: str | None = None


@dataclass
class JsonAnswer:
    """A whole JSON answer, sent with ``Content-Length``."""

    body: bytes
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


class StreamAnswer:
    """A streamed answer: complete SSE frames (bytes), the last one ``data: [DONE]``.

    Whoever sends it calls ``aclose(finished)`` exactly once, sent or not: that releases what the
    stream holds (the upstream response, the generation) even if it never started, and accounts
    for the request (``finished`` false: the client went away)."""

    def __init__(self, frames: AsyncIterator[bytes], *, status: int = 200, headers: dict[str, str] | None = None,
                 release: Callable[[], Awaitable[None]] | None = None) -> None:
        self.frames = frames
        self.status = status
        self.headers = headers or {}
        self._release = release
        self._on_close: Callable[[bool], None] | None = None

    def when_closed(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(finished)`` once the stream is closed."""
        self._on_close = callback

    def __aiter__(self) -> "StreamAnswer":
        return self

    async def __anext__(self) -> bytes:
        return await self.frames.__anext__()

    async def aclose(self, finished: bool) -> None:
        try:
            await aclose_quietly(self.frames)
            if self._release is not None:
                await self._release()
        finally:
            self._release = None
            if self._on_close is not None:
                self._on_close(finished)
                self._on_close = None


Answer = JsonAnswer | StreamAnswer
ServedRequest = GenerationRequest | ResponsesRequest  # what handle() takes: each says its route, shape and prompt


class GenerationService:
    def __init__(self, settings: Settings, engine: Engine, pipelines: PipelineHolder, metrics: GuardMetrics) -> None:
        self.settings = settings
        self.engine = engine
        self.pipelines = pipelines
        self.metrics = metrics

    async def handle(self, schema: type[ServedRequest], raw: bytes, caller: Caller) -> Answer:
        route = schema.route
        started = time.perf_counter()
        action = "none"
        status = 500
        try:
            # decoding and validating a large body is milliseconds of CPU per MiB: off the event loop
            req, body = (await asyncio.to_thread(parse_request, raw, schema) if len(raw) > PARSE_OFF_LOOP_BYTES
                         else parse_request(raw, schema))
            if req.model != self.engine.served_model_name:
                raise NotFound(f"model {req.model!r} does not exist; this guard serves {self.engine.served_model_name!r}",
                               param="model", code="model_not_found")
            controls = req.sampling_controls(body, SamplingLimits(vocab_size=self.engine.vocab_size,
                                                                  max_n=self.settings.max_n))
            params = sampling_params(req, min(DEFAULT_MAX_TOKENS, self.settings.max_tokens_limit),
                                     self.settings.max_tokens_limit, controls, req.output_constraint(body))
            prompt = req.to_prompt()  # the request's text, joined once: bound check and rendering share it
            self._check_prompt_bound(req, prompt.chars)
            texts = req.screen_texts(body)  # every text the model reads: tools, tool results, schemas too
            pipeline = self.pipelines.current  # the request's whole life: one policy, even across a reload
            decision = await self._decide(caller, texts, pipeline)
            action = decision.action
            self._record_decision(caller, decision, texts)
            request = GuardRequest(prompt, params)
            output = OutputContext(pipeline, self.engine, request, self.metrics, caller.request_id,
                                   caller.key_name, self.settings.audit_prompts, whole=not req.stream)
            guard = output_guard(output, action)
            forward = action == "pass" and self.engine.capabilities.forwarding
            # the model name and fingerprint a passed answer would carry: flagged ones look the same
            meta = (ResponseMeta(shape=req.answer_shape, model=self.engine.answer_model_name,
                                 system_fingerprint=self.engine.system_fingerprint, n=params.n,
                                 logprobs=params.logprobs is not None, refusal_field=req.wants_structured_answer,
                                 echo=req.echo())
                    if guard is not None or not forward else None)
            if forward:
                answer = await self._forward(req, body, raw, params.max_tokens, started, guard, meta)
            else:
                assert meta is not None
                answer = await self._generated_answer(req, meta, request, decision, action, started, guard,
                                                      pipeline.refusal())
            status = answer.status
            if guard is not None and isinstance(answer, JsonAnswer) and answer.status == 200:
                answer.headers.update(self._output_debug_headers(output.hits))  # screened whole by now
            if isinstance(answer, StreamAnswer):  # counted when the stream ends
                sent = str(answer.status)
                answer.when_closed(lambda finished: self._count(route, sent if finished else "499", action, started))
                status = 0
            return answer
        except GuardError as exc:
            status = exc.status
            if isinstance(exc, ContextLengthExceeded) and exc.param is None:  # the engine's exact check
                exc.param = schema.prompt_field
            if isinstance(exc, UpstreamError):
                self.metrics.upstream_errors.labels(kind=type(exc).__name__).inc()
            raise
        except CLIENT_GONE:
            status = 499
            raise
        finally:
            if status:
                self._count(route, str(status), action, started)

    def _count(self, route: str, status: str, action: str, started: float) -> None:
        self.metrics.requests.labels(route=route, status=status, action=action).inc()
        self.metrics.latency.labels(route=route, action=action).observe(time.perf_counter() - started)

    def _check_prompt_bound(self, req: ServedRequest, chars: int) -> None:
        """Reject a prompt that cannot fit the model's context before screening or tokenising it (a
        lower bound on its tokens from its length); the engine checks the exact count later."""
        window = self.engine.context_window
        if window is not None:
            window.check_chars(chars, req.prompt_field)

    async def _decide(self, caller: Caller, texts: list[str], pipeline: Pipeline) -> Decision:
        """The pipeline's decision; a request refused because it could not be screened (fail-closed:
        over the length limit or the budget, or the detector failed) is counted and audited too."""
        try:
            return await pipeline.decide(texts)
        except GuardError as exc:
            self.metrics.screening_failures.labels(outcome="refused_fail_closed").inc()
            audit_log.warning(json.dumps({"event": "unscreened", "request_id": caller.request_id,
                                          "key": caller.key_name, "action": "refuse", "fail_mode": "closed",
                                          "reason": exc.param or exc.code or type(exc).__name__}))
            raise

    def _record_decision(self, caller: Caller, decision: Decision, texts: list[str]) -> None:
        self.metrics.detector_latency.observe(decision.screen_seconds)
        if decision.screening_failed:
            self.metrics.screening_failures.labels(outcome="passed_fail_open").inc()
            audit_log.warning(json.dumps({"event": "unscreened", "request_id": caller.request_id,
                                          "key": caller.key_name, "action": "pass", "fail_mode": "open",
                                          "reason": decision.failure}))
        if decision.verdict.flagged:
            self.metrics.flagged.labels(action=decision.action).inc()
            record = {"event": "flagged", "request_id": caller.request_id, "key": caller.key_name,
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

    def _output_debug_headers(self, hits: list[OutputHit]) -> dict[str, str]:
        """What the output screen did to a whole (non-streamed) answer, with ``debug`` only:
        ``X-Guard-Output: pass`` (screened, nothing hit) or ``flagged`` with the first hit's target
        and reason (a streamed answer's headers leave before its text is screened: none there)."""
        if not self.settings.debug:
            return {}
        if not hits:
            return {"X-Guard-Output": "pass"}
        return {"X-Guard-Output": "flagged", "X-Guard-Output-Target": hits[0].target_id or "",
                "X-Guard-Output-Reason": hits[0].reason}

    # -- the pass path: the upstream's bytes -------------------------------------------------------
    async def _forward(self, req: ServedRequest, body: dict[str, Any], raw: bytes, max_tokens: int,
                       started: float, guard: OutputGuard | None, meta: ResponseMeta | None) -> Answer:
        """The upstream's answer; with an output screen, a whole answer is screened before it is
        returned and a stream is held back by the window and screened as it goes."""
        # the guard's default length goes in this endpoint's own field (/v1/responses: max_output_tokens)
        upstream = await self.engine.forward_request(req.upstream_path, body, raw, max_tokens,
                                                     limit_field=req.max_tokens_field)
        if not upstream.streamed:
            try:
                data = await upstream.read()
            except Exception as exc:  # noqa: BLE001 - nothing was sent yet: a clean 502
                self.metrics.upstream_errors.labels(kind="mid_stream").inc()
                raise UpstreamError(f"the upstream closed the connection mid-response ({type(exc).__name__})") from None
            finally:
                upstream.release()
            self.metrics.ttft.labels(route=req.route, action="pass").observe(time.perf_counter() - started)
            if guard is not None and meta is not None and upstream.status == 200:
                data = await screened_forwarded_json(guard, meta, data) or data
            return JsonAnswer(data, upstream.status)

        async def release() -> None:
            upstream.release()

        frames = self._forwarded_frames(upstream, req.route, started)
        if guard is not None and meta is not None and upstream.status == 200:
            frames = screened_events(frames, guard, forwarded_continuation(guard, meta, req.include_usage))
        return StreamAnswer(frames, status=upstream.status, release=release)

    async def _forwarded_frames(self, upstream: ForwardedAnswer, route: str, started: float) -> AsyncIterator[bytes]:
        """The upstream's bytes as they arrive (its own ``data: [DONE]`` included); an upstream that
        dies mid-stream ends the stream with an error frame and ``[DONE]``."""
        first = True
        try:
            async for data in upstream.iter_bytes():
                if first:
                    self.metrics.ttft.labels(route=route, action="pass").observe(time.perf_counter() - started)
                    first = False
                yield data
        except CLIENT_GONE:
            raise
        except Exception as exc:  # noqa: BLE001 - upstream died mid-stream: end the stream cleanly
            self.metrics.upstream_errors.labels(kind="mid_stream").inc()
            log.warning("upstream failed mid-response: %s", exc)
            yield frame(UpstreamError("the upstream closed the connection mid-stream").to_openai()) + DONE
        finally:
            upstream.release()

    # -- generated answers: the intervention's chunks, shaped as vLLM shapes them ---------------------
    async def _generated_answer(self, req: ServedRequest, meta: ResponseMeta, request: GuardRequest,
                                decision: Decision, action: str, started: float, guard: OutputGuard | None,
                                refusal: Intervention) -> Answer:
        headers = self._debug_headers(decision)
        # pulled before a 200 is committed: an upstream that is down gets a 502
        first, iterator = await method_answer(request, decision.intervention, decision.verdict, decision.target,
                                              self.engine, refusal, lambda chunks: screened_chunks(chunks, guard))
        if not req.stream:
            try:
                return JsonAnswer(encode_json(await collect_answer(meta, first, iterator)), 200, headers)
            finally:
                await aclose_quietly(iterator)

        self.metrics.ttft.labels(route=req.route, action=action).observe(time.perf_counter() - started)

        async def release() -> None:
            await aclose_quietly(iterator)

        return StreamAnswer(shaped_frames(meta, req.include_usage, first, iterator), headers=headers, release=release)
