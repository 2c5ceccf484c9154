"""What the output screen does for one request (issue #14): the ``OutputGuard`` the service wraps
every answer stream with, and how a hit is answered, audited and counted.

* A passed request's answer that reveals a target is re-answered through that target's method
  (``output.action: method``) or refused (``refuse``). The re-answer is itself screened; if it
  leaks too, the refusal replaces it.
* A flagged request's method answer is screened the same way; a hit there is refused.
* A refusal is not screened (it is the guard's own text).

A forwarded (vLLM) stream continues under the upstream's id (``forwarded_continuation``); a
forwarded Responses stream cannot be continued mid-response by another generator, so a hit there
ends it with an error event (documented in docs/output-screening.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator

from classifiers.base import Verdict
from guard.answer_stream import aclose_quietly, collect_answer, method_answer, pull_first, shaped_frames
from guard.engines.base import Engine, GenerationChunk
from guard.engines.sse import encode_json
from guard.interventions.answers import finish_answer
from guard.interventions.base import GuardRequest
from guard.metrics import GuardMetrics
from guard.output_guard import OutputGuard, Released, continuation, screened_chunks
from guard.output_screen import OutputHit
from guard.output_wire import answer_texts
from guard.pipeline import Pipeline
from guard.response_shapes import ResponseMeta

audit_log = logging.getLogger("guard.audit")

STOPPED_MESSAGE = "the answer was stopped by the guard's output screen"


@dataclass(frozen=True)
class OutputContext:
    """Everything a request's output screen needs to act on a hit."""

    pipeline: Pipeline
    engine: Engine
    request: GuardRequest
    metrics: GuardMetrics
    request_id: str | None = None
    key_name: str | None = None
    audit_text: bool = False
    whole: bool = False   # the answer is returned whole (not streamed): a hit replaces all of it
    # this request's output-screen hits, in order (``on_hit`` appends): the service's debug header
    # on a whole answer reads them once the answer is made (a method re-answer's hit is the second)
    hits: list[OutputHit] = field(default_factory=list, compare=False)


def output_guard(ctx: OutputContext, action: str) -> OutputGuard | None:
    """The guard for an answer produced under ``action`` (None: nothing to screen)."""
    screener = ctx.pipeline.output_screener
    if screener is None or not screener.active or action == "refuse":
        return None
    return OutputGuard(screener, lambda hit: _reanswer(ctx, hit, may_use_method=action == "pass"),
                       lambda hit: _record(ctx, hit, action),
                       hold_all=ctx.whole or ctx.request.params.constraint is not None)


def _record(ctx: OutputContext, hit: OutputHit, action: str) -> None:
    ctx.hits.append(hit)
    ctx.metrics.output_flagged.labels(reason=hit.reason, action=hit.action).inc()
    record: dict[str, Any] = {"event": "output_flagged", "request_id": ctx.request_id, "key": ctx.key_name,
                              "target": hit.target_id, "reason": hit.reason, "answered_by": action,
                              "then": hit.action, "char_offset": hit.char_offset, "token_offset": hit.token_offset,
                              "leaked_chars": hit.leaked_chars}
    if ctx.audit_text:
        record["matched"] = hit.text
    audit_log.info(json.dumps(record, ensure_ascii=False))


async def _reanswer(ctx: OutputContext, hit: OutputHit, *, may_use_method: bool) -> AsyncIterator[GenerationChunk]:
    """The replacement answer's chunks: the target's method (screened; a second hit is refused) or
    the refusal. A method that cannot keep the client's contract is the refusal too."""
    policy = ctx.pipeline.policy
    target = None
    if hit.target_id is not None:
        try:
            target = policy.target(hit.target_id)
        except KeyError:
            target = None
    verdict = Verdict(flagged=True, target_id=hit.target_id, score=1.0, detail={"output": hit.reason})
    method = ctx.pipeline.interventions.get(policy.action_for(hit.target_id))
    if may_use_method and hit.action == "method" and method is not None:
        again = output_guard(ctx, policy.action_for(hit.target_id))
        first, rest = await method_answer(ctx.request, method, verdict, target, ctx.engine, ctx.pipeline.refusal(),
                                          lambda chunks: screened_chunks(chunks, again))
        return _chain(first, rest)
    return finish_answer(ctx.request, ctx.pipeline.refusal().stream(ctx.request, verdict, target, ctx.engine))


async def _chain(first: GenerationChunk | None, rest: AsyncIterator[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
    try:
        if first is not None:
            yield first
            async for chunk in rest:
                yield chunk
    finally:
        await aclose_quietly(rest)


def continuation_meta(meta: ResponseMeta, head: dict[str, Any]) -> ResponseMeta:
    """``meta`` under a forwarded answer's own id, creation time, model and fingerprint."""
    changes: dict[str, Any] = {k: head[k] for k in ("id", "created", "model") if head.get(k) is not None}
    if "system_fingerprint" in head:
        changes["system_fingerprint"] = head["system_fingerprint"]
    return replace(meta, **changes)


def forwarded_continuation(guard: OutputGuard, meta: ResponseMeta, include_usage: bool):
    """``continue_with`` for ``guard.output_wire.screened_events``: the replacement's frames, as the
    rest of the forwarded stream (same id, no second role chunk, choices already finished skipped,
    a cut choice's new text after ``CUT_SEPARATOR``)."""

    async def continue_with(hit: OutputHit, head: dict[str, Any], released: Released) -> AsyncIterator[bytes]:
        shape = meta.shape
        if not shape.resumable:  # a Responses stream: no continuation mid-response
            yield shape.encode_event({"error": {"message": STOPPED_MESSAGE, "type": "output_screened",
                                                "param": None, "code": "output_screened"}})
            return
        chunks = await guard.reanswer(hit)
        first, rest = await pull_first(continuation(chunks, released))
        async for frame in shaped_frames(continuation_meta(meta, head), include_usage, first, rest, resume=True):
            yield frame

    return continue_with


async def screened_forwarded_json(guard: OutputGuard, meta: ResponseMeta, data: bytes) -> bytes | None:
    """A whole forwarded answer screened: None when it may be sent as is, else the replacement
    answer's body (under the upstream's id)."""
    try:
        answer = json.loads(data)
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    screener = guard.screener

    def first_hit() -> OutputHit | None:
        for text in answer_texts(answer):
            hit = screener.screen_text(text) if text else None
            if hit is not None:
                return hit
        return None

    hit = await asyncio.to_thread(first_hit) if guard.off_loop else first_hit()
    if hit is None:
        return None
    guard.on_hit(hit)
    chunks = await guard.reanswer(hit)
    first, rest = await pull_first(chunks)
    body = await collect_answer(continuation_meta(meta, answer), first, rest)
    return encode_json(body)
