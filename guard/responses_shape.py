"""The guard's own answers on ``/v1/responses``, in the shapes vLLM 0.32 writes them.

A Response (``object: "response"``) carries the request's settings back (``instructions``,
``tools``, ``temperature`` …) and an ``output`` list: a ``message`` item whose content is one
``output_text`` part, and/or ``function_call`` items for tool calls. A refusal the client must be
able to tell from JSON (``text.format`` asked for a schema) is a ``refusal`` content part, which the
SDK's ``responses.parse`` reads as such. ``max_output_tokens`` reached → ``status: "incomplete"``
with ``incomplete_details.reason: "max_output_tokens"``.

Streams are typed events (``event: <type>`` + ``data: <json>``, no ``[DONE]``), in vLLM's order:
``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta`` × n, ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, then ``response.completed``; every
event has its ``sequence_number``. Only the first choice exists here (the Responses API has no ``n``).

Log-probs (asked for with ``include: ["message.output_text.logprobs"]``, ``top_logprobs`` alternatives
per token: ``responses_protocol.chat_body``) are written where vLLM writes them
(``vllm/entrypoints/openai/responses/streaming_events.py``, ``serving.py``): the ``output_text``
part's ``logprobs`` (``token``, ``bytes``, ``logprob``, ``top_logprobs``; null when there are none,
as for a refusal), each ``response.output_text.delta``'s ``logprobs`` (its tokens, without bytes), and
``[]`` in ``content_part.added`` and ``output_text.done``. They are the log-probs of what the guard
sampled, under the method that answered (``guard.engines.base.TokenLogprob``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

from guard.engines.base import GenerationChunk, TokenLogprob
from guard.engines.sse import encode_json
from guard.response_shapes import AnswerShape, Choice, ResponseMeta


def _output_items(meta: ResponseMeta, choice: Choice, item_ids: "ItemIds") -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if choice.text or not choice.tool_calls:
        items.append(_message_item(meta, choice, item_ids.message, "completed"))
    for i, call in enumerate(choice.tool_calls):
        items.append({"arguments": call.arguments, "call_id": f"call_{item_ids.call(i)}", "name": call.name,
                      "type": "function_call", "id": f"fc_{item_ids.call(i)}", "status": "completed"})
    return items


LOGPROB_FLOOR = -9999.0  # vLLM's floor for Responses log-probs: a token the grammar forbids has -inf, JSON has no -inf


def _logprob_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "bytes": list(token.encode("utf-8", errors="replace")),
            "logprob": max(logprob, LOGPROB_FLOOR)}


def output_text_logprobs(entries: Sequence[TokenLogprob]) -> list[dict[str, Any]] | None:
    """An ``output_text`` part's ``logprobs`` (openai ``response_output_text.Logprob``), None when empty."""
    if not entries:
        return None
    return [{**_logprob_entry(e.token, e.logprob), "top_logprobs": [_logprob_entry(t.token, t.logprob) for t in e.top]}
            for e in entries]


def delta_logprobs(entries: Sequence[TokenLogprob]) -> list[dict[str, Any]]:
    """A ``response.output_text.delta`` event's ``logprobs`` (``response_text_delta_event.Logprob``: no bytes)."""
    return [{"token": e.token, "logprob": max(e.logprob, LOGPROB_FLOOR),
             "top_logprobs": [{"token": t.token, "logprob": max(t.logprob, LOGPROB_FLOOR)} for t in e.top]}
            for e in entries]


def _part(meta: ResponseMeta, choice: Choice, text: str, opening: bool = False) -> dict[str, Any]:
    """The message's one content part (``opening``: the empty part of ``content_part.added``)."""
    if choice.refusal and meta.refusal_field:
        return {"refusal": text, "type": "refusal"}
    logprobs = [] if opening else output_text_logprobs(choice.logprobs) if meta.logprobs else None
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": logprobs}


def _message_item(meta: ResponseMeta, choice: Choice, item_id: str, status: str,
                  with_content: bool = True) -> dict[str, Any]:
    content = [_part(meta, choice, choice.text)] if with_content else []
    return {"id": item_id, "content": content, "role": "assistant", "status": status, "type": "message"}


@dataclass
class ItemIds:
    """Ids of one answer's output items (the same in a stream's events and its final Response)."""

    message: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    calls: list[str] = field(default_factory=list)

    def call(self, i: int) -> str:
        while len(self.calls) <= i:
            self.calls.append(uuid.uuid4().hex)
        return self.calls[i]


def response_object(meta: ResponseMeta, choice: Choice | None, prompt_tokens: int, status: str,
                    item_ids: ItemIds | None = None) -> dict[str, Any]:
    """vLLM's ``ResponsesResponse`` (``choice`` None: the in-progress Response of a stream's start)."""
    echo = meta.echo
    incomplete = None
    output: list[dict[str, Any]] = []
    completion_tokens = 0
    if choice is not None:
        output = _output_items(meta, choice, item_ids or ItemIds())
        completion_tokens = choice.completion_tokens
        if choice.finish_reason == "length":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    usage = None if choice is None else {
        "input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens}
    return {"id": meta.id, "created_at": meta.created, "incomplete_details": incomplete,
            "instructions": echo.get("instructions"), "metadata": echo.get("metadata"), "model": meta.model,
            "object": "response", "output": output, "parallel_tool_calls": echo.get("parallel_tool_calls", True),
            "temperature": echo.get("temperature", 1.0), "tool_choice": echo.get("tool_choice", "auto"),
            "tools": echo.get("tools", []), "top_p": echo.get("top_p", 1.0), "background": False,
            "max_output_tokens": echo.get("max_output_tokens"), "max_tool_calls": None, "previous_response_id": None,
            "prompt": None, "reasoning": None, "service_tier": "auto", "status": status, "text": echo.get("text"),
            "top_logprobs": echo.get("top_logprobs"), "truncation": "disabled", "usage": usage,
            "user": echo.get("user")}


class ResponsesShape(AnswerShape):
    id_prefix, object, chunk_object = "resp", "response", "response"
    end_of_stream = b""  # a Responses stream ends with its response.completed event
    resumable = False  # its events carry item ids and sequence numbers

    def new_id(self) -> str:
        return f"resp_{uuid.uuid4().hex}"

    def encode_event(self, event: dict[str, Any]) -> bytes:
        kind = event.get("type", "error")
        return b"event: " + str(kind).encode() + b"\ndata: " + encode_json(event) + b"\n\n"

    def stream_shaper(self, meta: ResponseMeta, include_usage: bool) -> "ResponsesStreamShaper":
        return ResponsesStreamShaper(meta)

    def whole_answer(self, meta: ResponseMeta, choices: list[Choice], prompt_tokens: int) -> dict[str, Any]:
        return response_object(meta, choices[0] if choices else Choice(), prompt_tokens, "completed")


RESPONSES = ResponsesShape()


class ResponsesStreamShaper:
    """The typed events of a streamed Response (module docstring); same interface as
    ``guard.response_shapes.StreamShaper``."""

    def __init__(self, meta: ResponseMeta) -> None:
        self.meta = meta
        self.ids = ItemIds()
        self.choice = Choice()
        self._sequence = 0
        self._opened = False
        self._finish: GenerationChunk | None = None
        self._unsent_logprobs: list[TokenLogprob] = []  # of tokens whose text is still held (incomplete UTF-8)

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        response = response_object(self.meta, None, 0, "in_progress")
        return [self._event("response.created", response=response),
                self._event("response.in_progress", response=response)]

    def _text_kind(self) -> str:
        return "refusal" if self.choice.refusal and self.meta.refusal_field else "output_text"

    def feed(self, chunk: GenerationChunk) -> list[dict[str, Any]]:
        if chunk.index != 0 or self._finish is not None:
            return []
        out: list[dict[str, Any]] = []
        self.choice.logprobs.extend(chunk.logprobs)
        self._unsent_logprobs.extend(chunk.logprobs)
        if chunk.text:
            self.choice.refusal = self.choice.refusal or chunk.refusal
            if not self._opened:
                self._opened = True
                out.append(self._event("response.output_item.added", output_index=0,
                                       item=_message_item(self.meta, self.choice, self.ids.message, "in_progress",
                                                          with_content=False)))
                out.append(self._event("response.content_part.added", item_id=self.ids.message, output_index=0,
                                       content_index=0, part=_part(self.meta, self.choice, "", opening=True)))
            self.choice.text += chunk.text
            kind = self._text_kind()
            extra = {"logprobs": delta_logprobs(self._unsent_logprobs)} if kind == "output_text" else {}
            self._unsent_logprobs = []
            out.append(self._event(f"response.{kind}.delta", item_id=self.ids.message, output_index=0, content_index=0,
                                   delta=chunk.text, **extra))
        if chunk.tool_calls:
            self.choice.tool_calls = tuple(chunk.tool_calls)
        if chunk.finish_reason:
            self._finish = chunk
            self.choice.finish_reason = chunk.finish_reason
            self.choice.completion_tokens = chunk.completion_tokens
        return out

    def held(self) -> list[dict[str, Any]]:
        return []

    def end(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        choice = self.choice
        if self._opened:
            kind = self._text_kind()
            done_text = {"refusal": choice.text} if kind == "refusal" else {"text": choice.text, "logprobs": []}
            out.append(self._event(f"response.{kind}.done", item_id=self.ids.message, output_index=0,
                                   content_index=0, **done_text))
            out.append(self._event("response.content_part.done", item_id=self.ids.message, output_index=0,
                                   content_index=0, part=_part(self.meta, choice, choice.text)))
            out.append(self._event("response.output_item.done", output_index=0,
                                   item=_message_item(self.meta, choice, self.ids.message, "completed")))
        first_call = 1 if self._opened else 0
        for i, call in enumerate(choice.tool_calls):
            index = first_call + i
            item = {"arguments": call.arguments, "call_id": f"call_{self.ids.call(i)}", "name": call.name,
                    "type": "function_call", "id": f"fc_{self.ids.call(i)}", "status": "completed"}
            out.append(self._event("response.output_item.added", output_index=index,
                                   item={**item, "arguments": "", "status": "in_progress"}))
            out.append(self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                   delta=call.arguments))
            out.append(self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                   arguments=call.arguments, name=call.name))
            out.append(self._event("response.output_item.done", output_index=index, item=item))
        prompt_tokens = self._finish.prompt_tokens if self._finish is not None else 0
        final = response_object(self.meta, choice, prompt_tokens, "completed", self.ids)
        if not self._opened and not choice.tool_calls:
            final["output"] = []
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        out.append(self._event(kind, response=final))
        return out
