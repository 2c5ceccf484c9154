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

Local-engine answers use the same shape (with no fingerprint): it is a superset of OpenAI's.
Values that depend on the generation (token counts, ``stop_reason`` of a stop string, logprobs)
are not imitated.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from guard.engines.base import GenerationChunk


class AnswerShape:
    """What differs between a chat answer and a text completion, in vLLM's shapes. One instance per
    endpoint (``CHAT``, ``COMPLETION``); the request class names its shape (``guard.protocol``)."""

    id_prefix: str
    object: str
    chunk_object: str

    def message_choice(self, text: str, finish_reason: str) -> dict[str, Any]:
        raise NotImplementedError

    def answer_extras(self) -> dict[str, Any]:
        """Top-level nulls of a whole answer after ``usage``."""
        raise NotImplementedError

    def start_chunks(self, head: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks a stream sends before any text."""
        return []

    def delta_choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        raise NotImplementedError


class ChatShape(AnswerShape):
    id_prefix, object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def message_choice(self, text: str, finish_reason: str) -> dict[str, Any]:
        message = {"role": "assistant", "content": text, "refusal": None, "annotations": None, "audio": None,
                   "function_call": None, "reasoning": None}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason,
                "stop_reason": None, "token_ids": None, "routed_experts": None}

    def answer_extras(self) -> dict[str, Any]:
        return {"prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None, "kv_transfer_params": None,
                "ec_transfer_params": None, "metrics": None}

    def start_chunks(self, head: dict[str, Any]) -> list[dict[str, Any]]:
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return [{**head, "choices": [choice], "prompt_token_ids": None, "prompt_text": None}]

    def delta_choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish_reason}
        if finish_reason is not None:
            choice["stop_reason"] = None
        choice["token_ids"] = None
        return choice


class CompletionShape(AnswerShape):
    id_prefix, object, chunk_object = "cmpl", "text_completion", "text_completion"

    def message_choice(self, text: str, finish_reason: str) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None,
                "token_ids": None, "prompt_logprobs": None, "prompt_token_ids": None, "routed_experts": None}

    def answer_extras(self) -> dict[str, Any]:
        return {"kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}

    def delta_choice(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None,
                "prompt_token_ids": None, "token_ids": None}


CHAT = ChatShape()
COMPLETION = CompletionShape()


@dataclass
class ResponseMeta:
    """What every JSON object of one answer shares. ``model`` and ``system_fingerprint`` are what the
    engine's own answers carry (for vLLM: the upstream's served model name and its fingerprint)."""

    shape: AnswerShape
    model: str
    system_fingerprint: str | None = None
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            self.id = f"{self.shape.id_prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """``usage`` of a non-streamed answer (vLLM's ``UsageInfo`` field order, details null)."""
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens, "prompt_tokens_details": None,
            "completion_tokens_details": None}


def full_response(meta: ResponseMeta, text: str, finish_reason: str, prompt_tokens: int,
                  completion_tokens: int) -> dict[str, Any]:
    """A non-streamed answer (vLLM's ``ChatCompletionResponse`` / ``CompletionResponse``)."""
    head = {"id": meta.id, "object": meta.shape.object, "created": meta.created, "model": meta.model}
    tail = {"service_tier": None, "system_fingerprint": meta.system_fingerprint,
            "usage": usage(prompt_tokens, completion_tokens)}
    return {**head, "choices": [meta.shape.message_choice(text, finish_reason)], **tail, **meta.shape.answer_extras()}


class StreamShaper:
    """Turns the engine's ``GenerationChunk`` stream into vLLM's stream chunks.

    It holds back one text delta: when the next chunk ends the answer with ``length``, vLLM sends
    that last delta in the finish chunk itself; on ``stop`` it sends the delta, then a finish chunk
    with an empty one. The caller writes every dict it gets back as one SSE frame.
    """

    def __init__(self, meta: ResponseMeta, include_usage: bool) -> None:
        self.meta = meta
        self.include_usage = include_usage
        self._held: str | None = None
        self._finish: GenerationChunk | None = None

    def start(self) -> list[dict[str, Any]]:
        """The chunks sent before any text: the chat role chunk."""
        return self.meta.shape.start_chunks(self._head())

    def feed(self, chunk: GenerationChunk) -> list[dict[str, Any]]:
        """The chunks to send now for one engine chunk (the previous text delta, once it is known
        not to be the last)."""
        out: list[dict[str, Any]] = []
        if self._finish is not None:
            return out  # nothing follows a finish
        if chunk.text:
            if self._held is not None:
                out.append(self._text_chunk(self._held))
            self._held = chunk.text
        if chunk.finish_reason:
            self._finish = chunk
        return out

    def held(self) -> list[dict[str, Any]]:
        """The held-back delta as a text chunk, for a stream that ends in an error frame."""
        text, self._held = self._held, None
        return [] if text is None else [self._text_chunk(text)]

    def end(self) -> list[dict[str, Any]]:
        """The closing chunks: the held delta, the finish chunk and, if asked for, the usage chunk."""
        last = self._finish or GenerationChunk(finish_reason="stop")
        reason = last.finish_reason or "stop"
        out: list[dict[str, Any]] = []
        final_text = ""
        if self._held is not None:
            if reason == "length":
                final_text = self._held
            else:
                out.append(self._text_chunk(self._held))
            self._held = None
        out.append(self._finish_chunk(final_text, reason))
        if self.include_usage:
            out.append(self._usage_chunk(last.prompt_tokens, last.completion_tokens))
        return out

    # -- the chunk shapes -------------------------------------------------------------------------
    def _head(self) -> dict[str, Any]:
        meta = self.meta
        return {"id": meta.id, "object": meta.shape.chunk_object, "created": meta.created, "model": meta.model}

    def _text_chunk(self, text: str) -> dict[str, Any]:
        return {**self._head(), "choices": [self.meta.shape.delta_choice(text, None)]}

    def _finish_chunk(self, text: str, finish_reason: str) -> dict[str, Any]:
        chunk = {**self._head(), "choices": [self.meta.shape.delta_choice(text, finish_reason)]}
        if not self.include_usage and self.meta.system_fingerprint is not None:
            chunk["system_fingerprint"] = self.meta.system_fingerprint
        return chunk

    def _usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        chunk = {**self._head(), "choices": [], "usage": {"prompt_tokens": prompt_tokens,
                                                          "total_tokens": prompt_tokens + completion_tokens,
                                                          "completion_tokens": completion_tokens}}
        if self.meta.system_fingerprint is not None:
            chunk["system_fingerprint"] = self.meta.system_fingerprint
        return chunk
