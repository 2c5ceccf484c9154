"""The JSON of the guard's own answers, shaped exactly as vLLM writes its answers.

In vLLM mode a passed request is answered by vLLM itself, byte for byte. A flagged one is answered
by the guard (refusal, ECO, SPUL, ULD); if that answer had other keys, another key order, other
separators, another model name or another chunk structure, a client could tell that its request
was flagged, which tells it what the forget list holds. So every answer the guard writes follows
vLLM 0.32's pydantic models as its server serialises them (``model_dump_json``: compact separators,
non-ASCII as UTF-8; streams with ``exclude_unset``, the usage chunk also with ``exclude_none``),
as captured from a real server:

- non-streamed: the whole model, every optional field ``null`` (``message.refusal``, ``service_tier``,
  ``usage.prompt_tokens_details``, ``kv_transfer_params`` ...), ``system_fingerprint`` set;
- chat stream: a first chunk with ``delta {"role": "assistant", "content": ""}`` (and top-level
  ``prompt_token_ids``/``prompt_text`` nulls), one chunk per text delta, a finish chunk that carries
  the last delta when the answer ran out of tokens (``length``) and an empty one when it stopped
  (``stop``), ``system_fingerprint`` on the last chunk: the finish chunk, or the usage chunk when
  ``stream_options.include_usage`` asks for one;
- completion stream: the same without the role chunk, every choice with its ``stop_reason``,
  ``prompt_token_ids`` and ``token_ids`` nulls.

Issue #13 adds, in vLLM's shapes: ``n`` choices (chunks of different choices interleave in a stream,
each choice gets its own role chunk first, as vLLM sends them), ``tool_calls`` (``finish_reason``
``tool_calls``; streamed as one ``tool_calls`` delta with id, name and the whole arguments), log-probs
(chat: ``logprobs.content[]`` with ``token``/``logprob``/``bytes``/``top_logprobs``; completions:
``tokens``/``token_logprobs``/``text_offset``/``top_logprobs``) and the guard's refusal in
``message.refusal`` (content null) when the client asked for a ``response_format``: the OpenAI
SDK's ``.parse()`` then returns a message whose ``.refusal`` is set instead of failing to parse it.

Local-engine answers use the same shape (with no fingerprint): it is a superset of OpenAI's.
Values that depend on the generation (token counts, ``stop_reason`` of a stop string, logprobs)
are not imitated.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from guard.engines.base import GenerationChunk, TokenLogprob
from guard.engines.sse import DONE, frame
from guard.engines.tool_calls import ToolCall


@dataclass
class Choice:
    """One choice of an answer as it accumulates (or a streamed delta of it)."""

    index: int = 0
    text: str = ""
    refusal: bool = False
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    completion_tokens: int = 0


def tool_call_json(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    """A tool call as vLLM writes it (an id the guard makes, as vLLM makes its own)."""
    out: dict[str, Any] = {"id": f"chatcmpl-tool-{uuid.uuid4().hex}", "type": "function",
                           "function": {"name": call.name, "arguments": call.arguments}}
    return out if index is None else {"index": index, **out}


def _top_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """vLLM's ``ChatCompletionLogProbs``."""
    return {"content": [{**_top_entry(e.token, e.logprob), "top_logprobs": [_top_entry(t.token, t.logprob) for t in e.top]}
                        for e in entries]}


def completion_logprobs(entries: list[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """vLLM's ``CompletionLogProbs`` (the sampled token is among each position's entries)."""
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e.token)
    tops = []
    for e in entries:
        top = {t.token: t.logprob for t in e.top}
        top.setdefault(e.token, e.logprob)
        tops.append(top)
    return {"text_offset": offsets, "token_logprobs": [e.logprob for e in entries],
            "tokens": [e.token for e in entries], "top_logprobs": tops}


class AnswerShape:
    """What differs between a chat answer and a text completion, in vLLM's shapes. One instance per
    endpoint (``CHAT``, ``COMPLETION``); the request class names its shape (``guard.protocol``)."""

    id_prefix: str
    object: str
    chunk_object: str
    end_of_stream: bytes = DONE  # what a stream ends with
    # another generator's chunks may continue a stream already begun (no ids or sequence numbers tie them)
    resumable: bool = True

    def new_id(self) -> str:
        return f"{self.id_prefix}-{uuid.uuid4().hex}"

    def encode_event(self, event: dict[str, Any]) -> bytes:
        """One SSE frame."""
        return frame(event)

    def stream_shaper(self, meta: "ResponseMeta", include_usage: bool) -> "StreamShaper":
        return StreamShaper(meta, include_usage)

    def whole_answer(self, meta: "ResponseMeta", choices: list[Choice], prompt_tokens: int) -> dict[str, Any]:
        return full_answer(meta, choices, prompt_tokens)

    def message_choice(self, choice: Choice, meta: "ResponseMeta") -> dict[str, Any]:
        raise NotImplementedError

    def answer_extras(self) -> dict[str, Any]:
        """Top-level nulls of a whole answer after ``usage``."""
        raise NotImplementedError

    def start_chunks(self, head: dict[str, Any], n: int) -> list[dict[str, Any]]:
        """The chunks a stream sends before any text."""
        return []

    def delta_choice(self, delta: Choice, meta: "ResponseMeta") -> dict[str, Any]:
        raise NotImplementedError


class ChatShape(AnswerShape):
    id_prefix, object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def message_choice(self, choice: Choice, meta: "ResponseMeta") -> dict[str, Any]:
        as_refusal = choice.refusal and meta.refusal_field
        message: dict[str, Any] = {"role": "assistant", "content": None if as_refusal else choice.text,
                                   "refusal": choice.text if as_refusal else None, "annotations": None, "audio": None,
                                   "function_call": None}
        if choice.tool_calls:
            message["tool_calls"] = [tool_call_json(c) for c in choice.tool_calls]
        message["reasoning"] = None
        logprobs = chat_logprobs(choice.logprobs) if meta.logprobs and not as_refusal else None
        return {"index": choice.index, "message": message, "logprobs": logprobs,
                "finish_reason": choice.finish_reason or "stop", "stop_reason": None, "token_ids": None,
                "routed_experts": None}

    def answer_extras(self) -> dict[str, Any]:
        return {"prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None, "kv_transfer_params": None,
                "ec_transfer_params": None, "metrics": None}

    def start_chunks(self, head: dict[str, Any], n: int) -> list[dict[str, Any]]:
        return [{**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                      "finish_reason": None}], "prompt_token_ids": None, "prompt_text": None}
                for i in range(n)]

    def delta_choice(self, delta: Choice, meta: "ResponseMeta") -> dict[str, Any]:
        as_refusal = delta.refusal and meta.refusal_field
        body: dict[str, Any] = {"refusal": delta.text} if as_refusal else {"content": delta.text}
        if delta.tool_calls:
            body = {"tool_calls": [tool_call_json(c, i) for i, c in enumerate(delta.tool_calls)]}
        logprobs = chat_logprobs(delta.logprobs) if meta.logprobs and delta.logprobs else None
        choice: dict[str, Any] = {"index": delta.index, "delta": body, "logprobs": logprobs,
                                  "finish_reason": delta.finish_reason}
        if delta.finish_reason is not None:
            choice["stop_reason"] = None
        choice["token_ids"] = None
        return choice


class CompletionShape(AnswerShape):
    id_prefix, object, chunk_object = "cmpl", "text_completion", "text_completion"

    def message_choice(self, choice: Choice, meta: "ResponseMeta") -> dict[str, Any]:
        logprobs = completion_logprobs(choice.logprobs) if meta.logprobs else None
        return {"index": choice.index, "text": choice.text, "logprobs": logprobs,
                "finish_reason": choice.finish_reason or "stop", "stop_reason": None, "token_ids": None,
                "prompt_logprobs": None, "prompt_token_ids": None, "routed_experts": None}

    def answer_extras(self) -> dict[str, Any]:
        return {"kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}

    def delta_choice(self, delta: Choice, meta: "ResponseMeta") -> dict[str, Any]:
        logprobs = completion_logprobs(delta.logprobs) if meta.logprobs and delta.logprobs else None
        return {"index": delta.index, "text": delta.text, "logprobs": logprobs, "finish_reason": delta.finish_reason,
                "stop_reason": None, "prompt_token_ids": None, "token_ids": None}


CHAT = ChatShape()
COMPLETION = CompletionShape()


@dataclass
class ResponseMeta:
    """What every JSON object of one answer shares. ``model`` and ``system_fingerprint`` are what the
    engine's own answers carry (for vLLM: the upstream's served model name and its fingerprint).
    ``n``: choices; ``logprobs``: the client asked for log-probs; ``refusal_field``: the client asked
    for a structured answer (``response_format``), so a refusal goes into ``message.refusal``."""

    shape: AnswerShape
    model: str
    system_fingerprint: str | None = None
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    n: int = 1
    logprobs: bool = False
    refusal_field: bool = False
    echo: dict[str, Any] = field(default_factory=dict)  # request fields an answer repeats (Responses)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = self.shape.new_id()


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """``usage`` of a non-streamed answer (vLLM's ``UsageInfo`` field order, details null)."""
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens, "prompt_tokens_details": None,
            "completion_tokens_details": None}


def full_answer(meta: ResponseMeta, choices: list[Choice], prompt_tokens: int) -> dict[str, Any]:
    """A non-streamed answer (vLLM's ``ChatCompletionResponse`` / ``CompletionResponse``)."""
    head = {"id": meta.id, "object": meta.shape.object, "created": meta.created, "model": meta.model}
    tail = {"service_tier": None, "system_fingerprint": meta.system_fingerprint,
            "usage": usage(prompt_tokens, sum(c.completion_tokens for c in choices))}
    return {**head, "choices": [meta.shape.message_choice(c, meta) for c in sorted(choices, key=lambda c: c.index)],
            **tail, **meta.shape.answer_extras()}


def full_response(meta: ResponseMeta, text: str, finish_reason: str, prompt_tokens: int,
                  completion_tokens: int) -> dict[str, Any]:
    """A one-choice non-streamed answer."""
    return full_answer(meta, [Choice(text=text, finish_reason=finish_reason, completion_tokens=completion_tokens)],
                       prompt_tokens)


class AnswerCollector:
    """Accumulates a chunk stream (choices may interleave) into a whole answer."""

    def __init__(self, meta: ResponseMeta) -> None:
        self.meta = meta
        self.choices: dict[int, Choice] = {}
        self.prompt_tokens = 0

    def feed(self, chunk: GenerationChunk) -> None:
        choice = self.choices.setdefault(chunk.index, Choice(index=chunk.index))
        choice.text += chunk.text
        choice.refusal = choice.refusal or chunk.refusal
        choice.logprobs.extend(chunk.logprobs)
        if chunk.tool_calls:
            choice.tool_calls = tuple(chunk.tool_calls)
        if chunk.finish_reason:
            choice.finish_reason = chunk.finish_reason
            choice.completion_tokens = chunk.completion_tokens
            self.prompt_tokens = chunk.prompt_tokens or self.prompt_tokens

    def answer(self) -> dict[str, Any]:
        choices = [self.choices.get(i) or Choice(index=i) for i in range(max(self.meta.n, len(self.choices)))]
        return self.meta.shape.whole_answer(self.meta, choices, self.prompt_tokens)


class StreamShaper:
    """Turns the engine's ``GenerationChunk`` stream into vLLM's stream chunks.

    Per choice it holds back one text delta: when the next chunk ends that choice with ``length``,
    vLLM sends that last delta in the finish chunk itself; on ``stop`` it sends the delta, then a
    finish chunk with an empty one. The caller writes every dict it gets back as one SSE frame.
    """

    def __init__(self, meta: ResponseMeta, include_usage: bool) -> None:
        self.meta = meta
        self.include_usage = include_usage
        self._held: dict[int, Choice] = {}
        self._finished: dict[int, GenerationChunk] = {}

    def start(self) -> list[dict[str, Any]]:
        """The chunks sent before any text: the chat role chunk of every choice."""
        return self.meta.shape.start_chunks(self._head(), self.meta.n)

    def feed(self, chunk: GenerationChunk) -> list[dict[str, Any]]:
        """The chunks to send now for one engine chunk (the choice's previous text delta, once it is
        known not to be its last)."""
        out: list[dict[str, Any]] = []
        i = chunk.index
        if i in self._finished:
            return out  # nothing follows a choice's finish
        if chunk.text:
            held = self._held.pop(i, None)
            if held is not None:
                out.append(self._delta_chunk(held))
            self._held[i] = Choice(index=i, text=chunk.text, refusal=chunk.refusal, logprobs=list(chunk.logprobs))
        elif chunk.logprobs and i in self._held:
            self._held[i].logprobs.extend(chunk.logprobs)
        if chunk.finish_reason:
            self._finished[i] = chunk
            out.extend(self._finish_choice(i))
        return out

    def held(self) -> list[dict[str, Any]]:
        """The held-back deltas as text chunks, for a stream that ends in an error frame."""
        held, self._held = self._held, {}
        return [self._delta_chunk(c) for _, c in sorted(held.items())]

    def end(self) -> list[dict[str, Any]]:
        """The closing chunks: every unfinished choice's held delta and finish chunk and, if asked
        for, the usage chunk."""
        out: list[dict[str, Any]] = []
        for i in range(max(self.meta.n, 1)):
            if i not in self._finished:
                self._finished[i] = GenerationChunk(finish_reason="stop", index=i)
                out.extend(self._finish_choice(i))
        if self.include_usage:
            finishes = list(self._finished.values())
            prompt = next((f.prompt_tokens for f in finishes if f.prompt_tokens), 0)
            out.append(self._usage_chunk(prompt, sum(f.completion_tokens for f in finishes)))
        return out

    def _finish_choice(self, i: int) -> list[dict[str, Any]]:
        last = self._finished[i]
        reason = last.finish_reason or "stop"
        out: list[dict[str, Any]] = []
        final = Choice(index=i, finish_reason=reason)
        held = self._held.pop(i, None)
        if held is not None:
            if reason == "length" and not last.tool_calls:
                final.text, final.refusal, final.logprobs = held.text, held.refusal, held.logprobs
            else:
                out.append(self._delta_chunk(held))
        if last.tool_calls:
            out.append(self._delta_chunk(Choice(index=i, tool_calls=tuple(last.tool_calls))))
        out.append(self._finish_chunk(final))
        return out

    # -- the chunk shapes -------------------------------------------------------------------------
    def _head(self) -> dict[str, Any]:
        meta = self.meta
        return {"id": meta.id, "object": meta.shape.chunk_object, "created": meta.created, "model": meta.model}

    def _delta_chunk(self, delta: Choice) -> dict[str, Any]:
        return {**self._head(), "choices": [self.meta.shape.delta_choice(delta, self.meta)]}

    def _finish_chunk(self, final: Choice) -> dict[str, Any]:
        chunk = {**self._head(), "choices": [self.meta.shape.delta_choice(final, self.meta)]}
        last_choice = len(self._finished) >= max(self.meta.n, 1)
        if not self.include_usage and last_choice and self.meta.system_fingerprint is not None:
            chunk["system_fingerprint"] = self.meta.system_fingerprint
        return chunk

    def _usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        chunk = {**self._head(), "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                          "total_tokens": prompt_tokens + completion_tokens,
                                                          "completion_tokens": completion_tokens}}
        if self.meta.system_fingerprint is not None:
            chunk["system_fingerprint"] = self.meta.system_fingerprint
        return chunk
