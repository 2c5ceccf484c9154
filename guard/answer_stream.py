"""Generated answers as streams: pulling the first chunk before a 200 is committed, collecting a whole
answer, shaping chunks into SSE frames (``shaped_frames``), closing iterators quietly. Shared by the
generation service and the output screen's replacement answers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator, Callable

from guard.engines.base import Engine, GenerationChunk
from guard.errors import GuardError
from guard.interventions.answers import finish_answer
from guard.interventions.base import ContractUnsupported, GuardRequest, Intervention
from guard.response_shapes import AnswerCollector, ResponseMeta

log = logging.getLogger(__name__)

CLIENT_GONE = (ConnectionResetError, ConnectionError, asyncio.CancelledError)


async def method_answer(request: GuardRequest, intervention: Intervention, verdict: Any, target: Any, engine: Engine,
                        refusal: Intervention, screen: Callable[[AsyncIterator[GenerationChunk]],
                                                                AsyncIterator[GenerationChunk]] | None = None
                        ) -> tuple[GenerationChunk | None, AsyncIterator[GenerationChunk]]:
    """An intervention's answer (tool calls read out of its text; wrapped by ``screen``) and its first
    chunk, pulled before anything is committed: an upstream that is down fails here. A method that
    cannot keep the client's contract on this engine says so before its first chunk
    (``ContractUnsupported``): ``refusal`` answers instead, in the client's shape, never the answer
    with the contract silently dropped."""
    try:
        chunks = finish_answer(request, intervention.stream(request, verdict, target, engine))
        return await pull_first(screen(chunks) if screen is not None else chunks)
    except ContractUnsupported as exc:
        log.info("%s cannot keep the client's contract (%s): refusing", exc.method, exc.param)
        return await pull_first(finish_answer(request, refusal.stream(request, verdict, target, engine)))


async def pull_first(chunks: AsyncIterator[GenerationChunk]) -> tuple[GenerationChunk | None, AsyncIterator[GenerationChunk]]:
    iterator = chunks.__aiter__()
    try:
        return await iterator.__anext__(), iterator
    except StopAsyncIteration:
        return None, iterator
    except BaseException:
        await aclose_quietly(iterator)
        raise


async def collect_answer(meta: ResponseMeta, first: GenerationChunk | None,
                         rest: AsyncIterator[GenerationChunk]) -> dict[str, Any]:
    """A whole answer from a chunk stream (``n`` choices, interleaved or not)."""
    collector = AnswerCollector(meta)
    if first is not None:
        collector.feed(first)
        async for chunk in rest:
            collector.feed(chunk)
    return collector.answer()


async def shaped_frames(meta: ResponseMeta, include_usage: bool, first: GenerationChunk | None,
                        rest: AsyncIterator[GenerationChunk], *, resume: bool = False) -> AsyncIterator[bytes]:
    """SSE frames of a generated stream, one per event as vLLM sends them, ending as the answer
    shape's streams end (``data: [DONE]``; nothing after ``response.completed`` for Responses); an
    error mid-stream becomes an error frame before it. ``resume``: the stream continues one whose
    opening frames (the chat role chunks) were already sent."""
    shape = meta.shape
    shaper = shape.stream_shaper(meta, include_usage)
    try:
        for event in ([] if resume else shaper.start()):
            yield shape.encode_event(event)
        chunk = first
        while chunk is not None:
            for event in shaper.feed(chunk):
                yield shape.encode_event(event)
            try:
                chunk = await rest.__anext__()
            except StopAsyncIteration:
                chunk = None
        for event in shaper.end():
            yield shape.encode_event(event)
    except CLIENT_GONE:
        raise
    except GuardError as exc:
        log.warning("stream ended by an error: %s", exc.message)
        for event in shaper.held():
            yield shape.encode_event(event)
        yield shape.encode_event(exc.to_openai())
    except Exception:  # noqa: BLE001
        log.exception("stream failed")
        yield shape.encode_event({"error": {"message": "internal error while generating", "type": "internal_error",
                                            "param": None, "code": None}})
    finally:
        await aclose_quietly(rest)
    if shape.end_of_stream:
        yield shape.end_of_stream


async def aclose_quietly(iterator: Any) -> None:
    """Close an async iterator if it can be closed (an async generator: runs its ``finally``)."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # noqa: BLE001
            log.debug("closing a generation stream failed", exc_info=True)
