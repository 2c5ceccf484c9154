"""OpenAI request schemas and validation for /v1/chat/completions and /v1/completions (the answers'
shapes are in ``guard.response_shapes``; /v1/responses is ``guard.responses_protocol``).

Validation happens before anything else: a request the guard cannot screen is never forwarded.
Fields are allow-listed; upstream-internal fields (``prompt_embeds``, ``vllm_xargs`` …) are
refused by name, other unknown fields are refused as unsupported.

The application surface vLLM serves is accepted (issue #13, facts in docs/api-surface.md): tools and
``tool_choice``, ``response_format``, log-probs, ``n`` (up to ``Settings.max_n``), penalties,
``logit_bias``; message content as a string or text parts, assistant ``tool_calls`` and ``tool``
messages. Their semantics are checked as vLLM checks them, by the same functions the engines use
(``structured_output.output_constraint``, ``openai_sampling.sampling_controls``), so a request
either gets the answer vLLM would give or a 400 naming the field. Fields the SDKs send that carry
no behaviour (``metadata``, ``store``, ``service_tier`` …: ``NO_BEHAVIOUR_FIELDS``) are accepted
and forwarded as sent; the model never reads them. Every text the model reads is screened, from the
body (``screen_texts``, ``guard.request_texts``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guard.engines.base import SamplingParams
from guard.engines.openai_sampling import SamplingControls, SamplingLimits, sampling_controls
from guard.engines.structured_output import OutputConstraint, output_constraint
from guard.errors import InvalidRequest
from guard.interventions.prompts import ChatPrompt, Prompt, TextPrompt
from guard.request_json import decode_request_json
from guard.request_texts import RequestTexts, chat_request_texts, completion_request_texts
from guard.response_shapes import CHAT, COMPLETION, AnswerShape
from guard.screened_text import join_parts

# Fields that steer vLLM's internals. A client must never reach them through the guard:
# prompt_embeds would bypass screening, vllm_xargs would switch logits processors, etc.
INTERNAL_FIELDS = frozenset({
    "prompt_embeds", "vllm_xargs", "kv_transfer_params", "return_tokens_as_token_ids", "return_token_ids",
    "cache_salt", "priority", "request_id", "mm_processor_kwargs", "chat_template", "chat_template_kwargs",
    "add_special_tokens", "add_generation_prompt", "continue_final_message", "echo", "prompt_logprobs",
    "allowed_token_ids", "bad_words", "logits_processors", "guided_json", "guided_regex", "guided_choice",
    "guided_grammar", "guided_decoding_backend", "structured_outputs", "documents", "functions", "function_call",
})
# How to do what a refused field asked for, where there is a supported way.
FIELD_FIXES = {
    "functions": "send the functions as tools ([{\"type\": \"function\", \"function\": {...}}])",
    "function_call": "use tool_choice",
    "structured_outputs": "use response_format", "guided_json": "use response_format",
    "guided_regex": "use response_format", "guided_choice": "use response_format", "guided_grammar": "use response_format",
}
# Sent by the OpenAI SDKs and frameworks, no effect on the answer: accepted, forwarded as sent, never read by the model.
NO_BEHAVIOUR_FIELDS = ("metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key")

ROLES = ("system", "developer", "user", "assistant", "tool")
TOOL_CHOICE_MODES = ("none", "auto", "required")


class GenerationRequest(BaseModel):
    """What both endpoints accept. Each subclass says what differs: its route (metrics label),
    upstream path, prompt field, answer shape, and how its prompt reads (``prompt()``)."""

    model_config = ConfigDict(extra="forbid")

    route: ClassVar[str]  # the metrics label
    upstream_path: ClassVar[str]  # the same endpoint on a vLLM upstream
    prompt_field: ClassVar[str]  # the field errors about the prompt name
    max_tokens_field: ClassVar[str] = "max_tokens"
    answer_shape: ClassVar[AnswerShape]

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, description="choices; at most Settings.max_n, and only when sampling (as vLLM)")
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="int64, as vLLM and torch accept")
    user: str | None = Field(None, max_length=256)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None
    # no behaviour (NO_BEHAVIOUR_FIELDS)
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = Field(None, max_length=256)
    prompt_cache_key: str | None = Field(None, max_length=256)

    chat_logprobs: ClassVar[bool]  # logprobs is a bool + top_logprobs (chat) or an integer (completions)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        if any(not s for s in items):
            raise ValueError("stop sequences must be non-empty strings")
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        unknown = set(value) - {"include_usage", "continuous_usage_stats"}
        if unknown:
            raise ValueError(f"unknown stream_options key(s): {', '.join(sorted(unknown))}")
        for key in ("include_usage", "continuous_usage_stats"):
            if key in value and not isinstance(value[key], bool):
                raise ValueError(f"stream_options.{key} must be a boolean")
        return value

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def echo(self) -> dict[str, Any]:
        """Request fields the answer repeats (none for chat and completions)."""
        return {}

    @property
    def wants_structured_answer(self) -> bool:
        """A JSON ``response_format``: a refusal then goes into ``message.refusal`` (never content
        that would not parse)."""
        return bool(self.response_format and self.response_format.get("type") in ("json_object", "json_schema"))

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.get("include_usage"))

    def to_prompt(self) -> Prompt:
        """What the model reads, built from the request (each call builds it anew: call it once)."""
        raise NotImplementedError

    @classmethod
    def request_texts(cls, body: dict[str, Any]) -> RequestTexts:
        """Every text the model reads, from the validated body (``guard.request_texts``)."""
        raise NotImplementedError

    def screen_texts(self, body: dict[str, Any]) -> list[str]:
        """What screening reads: the body's texts as the model reads them (the body is what is forwarded)."""
        return self.request_texts(body).screen_texts()

    def bind(self, body: dict[str, Any]) -> "GenerationRequest":
        """Checks that need the body as sent: a named tool_choice not in tools, a malformed
        response_format (a 400 now, before screening)."""
        self.output_constraint(body)
        return self

    def output_constraint(self, body: dict[str, Any]) -> OutputConstraint | None:
        """The structured output the answer must keep (forced tool choice or ``response_format``), validated."""
        return output_constraint(body)

    def sampling_controls(self, body: dict[str, Any], limits: SamplingLimits) -> SamplingControls:
        """``n``, log-probs, penalties and ``logit_bias``, validated as vLLM validates them."""
        return sampling_controls(body, limits, chat=self.chat_logprobs, greedy=self.temperature == 0)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionCall(_Strict):
    name: str = Field(min_length=1, max_length=64)
    arguments: str = Field(description="a JSON text, as the model wrote it")


class ToolCall(_Strict):
    """An earlier assistant turn's call (read by the model, so screened)."""

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(_Strict):
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedToolChoice(_Strict):
    """``{"type": "function", "function": {"name": ...}}``: the function must be among the tools."""

    type: Literal["function"]
    function: dict[Literal["name"], str]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=64)
    tool_calls: list[ToolCall] | None = Field(None, max_length=128)
    tool_call_id: str | None = Field(None, min_length=1, max_length=256)
    # what the SDKs echo back when an application appends a returned message: no text the model reads
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: None = None
    function_call: None = None
    reasoning: None = None
    reasoning_content: None = None

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        if value not in ROLES:
            raise ValueError(f"role {value!r} is not supported; use one of {', '.join(ROLES)}")
        return value

    @model_validator(mode="after")
    def _tool_fields(self) -> "ChatMessage":
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"tool_calls is only allowed on assistant messages, not on role {self.role!r}")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs tool_call_id: the id of the assistant's call it answers")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("tool_call_id is only allowed on tool messages")
        return self

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, part in enumerate(value):
                if isinstance(part, dict) and part.get("type") not in (None, "text"):
                    raise ValueError(f"content[{i}] has type {part.get('type')!r}; only text parts are supported "
                                     "(the served model reads text only): send {\"type\": \"text\", \"text\": ...}")
        return value

    @property
    def text(self) -> str:
        """The content as the model reads it: text parts joined as vLLM joins them (a newline)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return join_parts(p.text for p in self.content)


class ChatCompletionRequest(GenerationRequest):
    route: ClassVar[str] = "chat"
    upstream_path: ClassVar[str] = "/v1/chat/completions"
    prompt_field: ClassVar[str] = "messages"
    answer_shape: ClassVar[AnswerShape] = CHAT

    chat_logprobs: ClassVar[bool] = True

    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[ToolDefinition] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    @model_validator(mode="after")
    def _last_not_empty(self) -> "ChatCompletionRequest":
        if not any(m.text.strip() for m in self.messages if m.role in ("user", "system", "developer")):
            raise ValueError("messages contain no non-empty user, system or developer content")
        return self

    @model_validator(mode="after")
    def _tool_choice_needs_tools(self) -> "ChatCompletionRequest":
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise InvalidRequest("tool_choice forces a tool call but no tools are sent; send tools or drop tool_choice",
                                 param="tool_choice", code="invalid_value")
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def plain_messages(self) -> list[dict[str, Any]]:
        """Messages as the chat template wants them (``developer`` is a system message for these
        models), with the participant ``name`` where given, as vLLM hands it to the template, and an
        assistant's ``tool_calls`` / a tool result's ``tool_call_id`` (rendered by the tool template)."""
        out: list[dict[str, Any]] = []
        for m in self.messages:
            message: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text}
            if m.name:
                message["name"] = m.name
            if m.tool_calls:
                message["tool_calls"] = [c.model_dump() for c in m.tool_calls]
            if m.tool_call_id is not None:
                message["tool_call_id"] = m.tool_call_id
            out.append(message)
        return out

    def tool_definitions(self) -> tuple[dict[str, Any], ...]:
        """The tools as sent (``{"type": "function", "function": {...}}``), for the template."""
        return tuple(t.model_dump(exclude_none=True) for t in self.tools or ())

    def to_prompt(self) -> ChatPrompt:
        """Every role's text as the model reads it, with names, tool calls and tool results, and the tools."""
        choice = self.tool_choice.model_dump() if isinstance(self.tool_choice, BaseModel) else self.tool_choice
        return ChatPrompt(tuple(self.plain_messages()), self.tool_definitions(), choice)

    @classmethod
    def request_texts(cls, body: dict[str, Any]) -> RequestTexts:
        return chat_request_texts(body)


class CompletionRequest(GenerationRequest):
    route: ClassVar[str] = "completions"
    upstream_path: ClassVar[str] = "/v1/completions"
    prompt_field: ClassVar[str] = "prompt"
    answer_shape: ClassVar[AnswerShape] = COMPLETION

    chat_logprobs: ClassVar[bool] = False

    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = None
    tools: Any = Field(None, description="refused with a fix: vLLM ignores tools on /v1/completions")

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("tools are not read on /v1/completions (vLLM ignores them silently); "
                             "send tool requests to /v1/chat/completions")
        return value

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, list):
            if value and all(isinstance(v, int) for v in value) or value and isinstance(value[0], list):
                raise ValueError("token-id prompts cannot be screened; send the prompt as text")
            if len(value) != 1:
                raise ValueError("send exactly one prompt string per request")
        return value

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    def to_prompt(self) -> TextPrompt:
        return TextPrompt(self.prompt_text)

    @classmethod
    def request_texts(cls, body: dict[str, Any]) -> RequestTexts:
        return completion_request_texts(body)


def parse_request(raw: bytes, schema: type[Any]) -> tuple[Any, dict[str, Any]]:
    """Decode and validate; returns the model and the decoded JSON (for forwarding decisions)."""
    body = decode_request_json(raw)
    internal = sorted(INTERNAL_FIELDS & set(body))
    if internal:
        fix = FIELD_FIXES.get(internal[0], "remove it from the request")
        raise InvalidRequest(f"field {internal[0]!r} is not accepted by the guard; {fix}",
                             param=internal[0], code="forbidden_field")
    try:
        req = schema.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise InvalidRequest(f"unsupported field {loc!r}; remove it from the request", param=loc, code="unsupported_field") from None
        msg = err["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"invalid value for {loc!r}: {msg}", param=loc or None, code="invalid_value") from None
    return req.bind(body), body


def sampling_params(req: GenerationRequest, default_max_tokens: int, max_tokens_limit: int,
                    controls: SamplingControls | None = None, constraint: OutputConstraint | None = None) -> SamplingParams:
    """The engine's sampling parameters: the request's, its validated controls (``n``, log-probs,
    penalties, ``logit_bias``) and the structured output it must keep."""
    max_tokens = req.max_new_tokens or default_max_tokens
    if max_tokens > max_tokens_limit:
        field_name = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else req.max_tokens_field
        raise InvalidRequest(f"{field_name} is {max_tokens}, above this server's limit of {max_tokens_limit}",
                             param=field_name, code="invalid_value")
    return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                          stop=req.stop_list, seed=req.seed, constraint=constraint,
                          **(controls.params_fields() if controls is not None else {}))
