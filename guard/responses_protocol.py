"""The ``/v1/responses`` request (OpenAI's Responses API, as vLLM 0.32 serves it).

Three jobs, each done once:

* **Validate** the Responses fields (``input`` as a string or items, ``instructions``,
  ``max_output_tokens``, ``tools`` in the flat Responses shape, ``tool_choice``, ``text.format``,
  ``top_logprobs``); the fields the SDK sends without behaviour are accepted; state-carrying fields
  get a 400 naming them, because vLLM keeps no responses (``previous_response_id``, ``conversation``,
  ``background``, ``prompt``: docs/api-surface.md).
* **Screen** what the model reads: ``guard.request_texts.responses_request_texts`` over the body
  (instructions, every item, tool definitions, the schema).
* **Answer when the guard generates** (the local engine, or a flagged request on any engine): the
  request converted to the chat request it means (``chat_body``: instructions → a system turn,
  ``function_call`` items → an assistant turn's ``tool_calls``, ``function_call_output`` → a
  ``tool`` turn, flat tools → chat tools, ``text.format`` → ``response_format``, ``include:
  ["message.output_text.logprobs"]`` + ``top_logprobs`` → ``logprobs`` + ``top_logprobs``), validated by
  ``ChatCompletionRequest`` itself; the answer is then shaped as a Response
  (``guard.responses_shape``). Unflagged requests on vLLM are forwarded to vLLM's own
  ``/v1/responses`` untouched.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from guard.engines.openai_sampling import SamplingControls, SamplingLimits
from guard.engines.structured_output import OutputConstraint
from guard.errors import InvalidRequest
from guard.interventions.prompts import ChatPrompt
from guard.protocol import ChatCompletionRequest
from guard.request_texts import RequestTexts, responses_request_texts
from guard.responses_shape import RESPONSES, ResponsesShape

# The ``include`` entry that asks for the answer's log-probs (``top_logprobs``: alternatives per token).
OUTPUT_LOGPROBS = "message.output_text.logprobs"
# What vLLM cannot serve because it stores no responses (fix: send the whole conversation as input items).
STATEFUL_FIELDS = ("previous_response_id", "conversation", "background", "prompt")


class ResponsesRequest(BaseModel):
    """A ``/v1/responses`` body. Serving reads it through the same members as the chat and
    completion requests (``route``, ``upstream_path``, ``to_prompt``, ``screen_texts`` …)."""

    model_config = ConfigDict(extra="forbid")

    route: ClassVar[str] = "responses"
    upstream_path: ClassVar[str] = "/v1/responses"
    prompt_field: ClassVar[str] = "input"
    max_tokens_field: ClassVar[str] = "max_output_tokens"
    answer_shape: ClassVar[ResponsesShape] = RESPONSES

    model: str = Field(min_length=1)
    input: str | Annotated[list[dict[str, Any]], Field(max_length=1024)]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    top_logprobs: int | None = Field(None, ge=0)
    include: list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = Field(None, max_length=256)
    # no behaviour (``guard.protocol.NO_BEHAVIOUR_FIELDS``) or fixed on vLLM
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = Field(None, max_length=256)
    prompt_cache_key: str | None = Field(None, max_length=256)
    truncation: Literal["disabled"] | None = None
    reasoning: None = None
    background: Literal[False] | None = None  # true is refused before validation (STATEFUL_FIELDS)

    _chat: ChatCompletionRequest | None = PrivateAttr(None)
    _chat_body: dict[str, Any] = PrivateAttr(default_factory=dict)
    _texts: RequestTexts | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _stateless(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in STATEFUL_FIELDS:
                if data.get(name) not in (None, False):
                    raise InvalidRequest(f"{name} is not supported: the server keeps no stored responses; send the "
                                         "whole conversation as input items instead", param=name,
                                         code="unsupported_field")
        return data

    @model_validator(mode="after")
    def _tools(self) -> "ResponsesRequest":
        for i, tool in enumerate(self.tools or ()):
            if tool.get("type") != "function":
                raise InvalidRequest(f"tools[{i}] has type {tool.get('type')!r}; only function tools are supported "
                                     "(the server runs no built-in tools)", param=f"tools.{i}.type")
        return self

    # -- the chat request it means ------------------------------------------------------------------
    def bind(self, body: dict[str, Any]) -> "ResponsesRequest":
        """Validate the body's items and build the chat request (errors name the Responses field)."""
        # shapes of input items, tools and text.format (400s name the path); kept: screening reads them
        self._texts = responses_request_texts(body)
        self._chat_body = chat_body(self)
        try:
            self._chat = ChatCompletionRequest.model_validate(self._chat_body)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise InvalidRequest(f"invalid request ({loc}): {err['msg'].removeprefix('Value error, ')}",
                                 param=_responses_param(loc), code="invalid_value") from None
        self._chat.output_constraint(self._chat_body)
        return self

    @property
    def chat(self) -> ChatCompletionRequest:
        if self._chat is None:
            raise RuntimeError("ResponsesRequest.bind(body) was not called")
        return self._chat

    # -- what serving reads --------------------------------------------------------------------------
    @property
    def max_new_tokens(self) -> int | None:
        return self.max_output_tokens

    @property
    def stop_list(self) -> tuple[str, ...]:
        return ()

    @property
    def seed(self) -> int | None:
        return None

    @property
    def include_usage(self) -> bool:
        return False

    @property
    def wants_structured_answer(self) -> bool:
        return self.chat.wants_structured_answer

    def to_prompt(self) -> ChatPrompt:
        return self.chat.to_prompt()

    @classmethod
    def request_texts(cls, body: dict[str, Any]) -> RequestTexts:
        return responses_request_texts(body)

    def screen_texts(self, body: dict[str, Any]) -> list[str]:
        """The texts ``bind`` read from this same body (walked once per request)."""
        texts = self._texts if self._texts is not None else self.request_texts(body)
        return texts.screen_texts()

    def output_constraint(self, body: dict[str, Any]) -> OutputConstraint | None:
        return self.chat.output_constraint(self._chat_body)

    def sampling_controls(self, body: dict[str, Any], limits: SamplingLimits) -> SamplingControls:
        return self.chat.sampling_controls(self._chat_body, limits)

    def echo(self) -> dict[str, Any]:
        """The request fields a Response repeats."""
        return {"instructions": self.instructions, "metadata": self.metadata, "max_output_tokens": self.max_output_tokens,
                "parallel_tool_calls": self.parallel_tool_calls is not False, "temperature": self.temperature,
                "tool_choice": self.tool_choice or "auto", "tools": self.tools or [], "top_p": self.top_p,
                "text": self.text, "top_logprobs": self.top_logprobs, "user": self.user}


def _responses_param(chat_loc: str) -> str:
    """The Responses field a chat validation error is about."""
    head = chat_loc.split(".", 1)[0]
    return {"messages": "input", "max_tokens": "max_output_tokens", "response_format": "text.format"}.get(head, head or "input")


def _content(content: Any) -> Any:
    """Responses content parts (``input_text`` / ``output_text``) as chat text parts."""
    if isinstance(content, list):
        return [{"type": "text", "text": p.get("text")} for p in content if isinstance(p, dict)]
    return content


def chat_body(req: ResponsesRequest) -> dict[str, Any]:
    """The chat completion request a Responses request means (see the module docstring)."""
    messages: list[dict[str, Any]] = []
    if req.instructions is not None:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        messages.append({"role": "user", "content": req.input})
    else:
        for item in req.input:
            kind = item.get("type", "message")
            if kind == "message":
                messages.append({"role": item.get("role"), "content": _content(item.get("content"))})
            elif kind == "function_call":
                call = {"id": item.get("call_id") or item.get("id") or "call", "type": "function",
                        "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"}}
                last = messages[-1] if messages else None
                if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                    last["tool_calls"].append(call)  # parallel calls: one assistant turn
                else:
                    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif kind == "function_call_output":
                messages.append({"role": "tool", "tool_call_id": item.get("call_id") or "call",
                                 "content": _content(item.get("output"))})
    body: dict[str, Any] = {"model": req.model, "messages": messages, "temperature": req.temperature, "top_p": req.top_p}
    if req.max_output_tokens is not None:
        body["max_tokens"] = req.max_output_tokens
    if req.tools:
        body["tools"] = [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters", "strict")
                                                           if t.get(k) is not None}} for t in req.tools]
    if isinstance(req.tool_choice, dict):
        body["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.get("name")}}
    elif req.tool_choice is not None:
        body["tool_choice"] = req.tool_choice
    if req.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    fmt = (req.text or {}).get("format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            k: fmt[k] for k in ("name", "description", "schema", "strict") if fmt.get(k) is not None}}
    elif isinstance(fmt, dict):
        body["response_format"] = {"type": fmt.get("type")}
    if OUTPUT_LOGPROBS in (req.include or ()):  # as vLLM: top_logprobs alone asks for nothing
        body["logprobs"], body["top_logprobs"] = True, req.top_logprobs or 0
    for name in ("presence_penalty", "frequency_penalty", "user"):
        if getattr(req, name) is not None:
            body[name] = getattr(req, name)
    return body
