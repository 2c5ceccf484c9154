"""OpenAI request schemas and validation for /v1/chat/completions and /v1/completions (the answers'
shapes are in ``guard.response_shapes``).

Validation happens before anything else: a request the guard cannot screen is never forwarded.
Fields are allow-listed; upstream-internal fields (``prompt_embeds``, ``vllm_xargs`` …) are
refused by name, other unknown fields are refused as unsupported.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guard.engines.base import SamplingParams
from guard.errors import InvalidRequest
from guard.interventions.prompts import ChatPrompt, Prompt, TextPrompt
from guard.response_shapes import CHAT, COMPLETION, AnswerShape
from guard.screened_text import join_parts

# Fields that steer vLLM's internals. A client must never reach them through the guard:
# prompt_embeds would bypass screening, vllm_xargs would switch logits processors, etc.
INTERNAL_FIELDS = frozenset({
    "prompt_embeds", "vllm_xargs", "kv_transfer_params", "return_tokens_as_token_ids", "return_token_ids",
    "cache_salt", "priority", "request_id", "mm_processor_kwargs", "chat_template", "chat_template_kwargs",
    "add_special_tokens", "add_generation_prompt", "continue_final_message", "echo", "prompt_logprobs",
    "allowed_token_ids", "bad_words", "logits_processors", "guided_json", "guided_regex", "guided_choice",
    "guided_grammar", "guided_decoding_backend", "structured_outputs", "documents", "tools", "tool_choice",
    "functions", "function_call", "logit_bias",
})

ROLES = ("system", "developer", "user", "assistant")


class GenerationRequest(BaseModel):
    """What both endpoints accept. Each subclass says what differs: its route (metrics label),
    upstream path, prompt field, answer shape, and how its prompt reads (``prompt()``)."""

    model_config = ConfigDict(extra="forbid")

    route: ClassVar[str]  # the metrics label
    upstream_path: ClassVar[str]  # the same endpoint on a vLLM upstream
    prompt_field: ClassVar[str]  # the field errors about the prompt name
    answer_shape: ClassVar[AnswerShape]

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="the guard generates one choice per request")
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1, description="int64, as vLLM and torch accept")
    user: str | None = Field(None, max_length=256)

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

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.get("include_usage"))

    def to_prompt(self) -> Prompt:
        """What the model reads, built from the request (each call builds it anew: call it once)."""
        raise NotImplementedError

    def screen_texts(self) -> list[str]:
        return self.to_prompt().screen_texts()


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=64)

    @field_validator("role")
    @classmethod
    def _role(cls, value: str) -> str:
        if value not in ROLES:
            raise ValueError(f"role {value!r} is not supported; use one of {', '.join(ROLES)} (tool calls are not supported)")
        return value

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value: Any) -> Any:
        if isinstance(value, list):
            for i, part in enumerate(value):
                if isinstance(part, dict) and part.get("type") not in (None, "text"):
                    raise ValueError(f"content[{i}] has type {part.get('type')!r}; only text parts are supported")
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

    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _last_not_empty(self) -> "ChatCompletionRequest":
        if not any(m.text.strip() for m in self.messages if m.role in ("user", "system", "developer")):
            raise ValueError("messages contain no non-empty user, system or developer content")
        return self

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def plain_messages(self) -> list[dict[str, str]]:
        """Messages as the chat template wants them (``developer`` is a system message for these
        models), with the participant ``name`` where given, as vLLM hands it to the template."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text,
                 **({"name": m.name} if m.name else {})} for m in self.messages]

    def to_prompt(self) -> ChatPrompt:
        """Every role's text as the model reads it, with names; it screens itself (``guard.screened_text``)."""
        return ChatPrompt(tuple(self.plain_messages()))


class CompletionRequest(GenerationRequest):
    route: ClassVar[str] = "completions"
    upstream_path: ClassVar[str] = "/v1/completions"
    prompt_field: ClassVar[str] = "prompt"
    answer_shape: ClassVar[AnswerShape] = COMPLETION

    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)

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


def parse_request(raw: bytes, schema: type[GenerationRequest]) -> tuple[GenerationRequest, dict[str, Any]]:
    """Decode and validate; returns the model and the decoded JSON (for forwarding decisions)."""
    try:
        # decoded strictly first: json.loads(bytes) would let UTF-8-encoded surrogates (ED A0 80) through
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError:  # an integer beyond Python's 4,300-digit conversion limit
        raise InvalidRequest("the request body contains a number too long to read; send numbers of at most "
                             "4,300 digits") from None
    except RecursionError:
        raise InvalidRequest("the request body is nested too deeply; no field of this API nests more than a few levels") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw):  # only escapes can smuggle one in: encoded surrogates are not UTF-8
        where = _lone_surrogate_path(body)
        if where is not None:
            raise InvalidRequest(f"field {where!r} contains a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
                                 "escape), which is not text; send valid Unicode", param=where, code="invalid_value")
    internal = sorted(INTERNAL_FIELDS & set(body))
    if internal:
        raise InvalidRequest(f"field {internal[0]!r} is not accepted by the guard; remove it from the request",
                             param=internal[0], code="forbidden_field")
    try:
        return schema.model_validate(body), body
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            raise InvalidRequest(f"unsupported field {loc!r}; remove it from the request", param=loc, code="unsupported_field") from None
        msg = err["msg"].removeprefix("Value error, ")
        raise InvalidRequest(f"invalid value for {loc!r}: {msg}", param=loc or None, code="invalid_value") from None


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins valid pairs, so any left is unpaired


def _lone_surrogate_path(body: Any) -> str | None:
    """The dotted path (``messages.0.content``) of the first string or key holding a lone surrogate."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if _LONE_SURROGATE.search(value):
                return ".".join(str(p) for p in path) or "(body)"
        elif isinstance(value, dict):
            for key in reversed(list(value)):
                if _LONE_SURROGATE.search(key):
                    return ".".join(str(p) for p in path + (key.encode("utf-8", "backslashreplace").decode(),))
                stack.append((path + (key,), value[key]))
        elif isinstance(value, list):
            stack.extend((path + (i,), item) for i, item in reversed(list(enumerate(value))))
    return None


def sampling_params(req: GenerationRequest, default_max_tokens: int, max_tokens_limit: int) -> SamplingParams:
    max_tokens = req.max_new_tokens or default_max_tokens
    if max_tokens > max_tokens_limit:
        field_name = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
        raise InvalidRequest(f"{field_name} is {max_tokens}, above this server's limit of {max_tokens_limit}",
                             param=field_name, code="invalid_value")
    return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                          stop=req.stop_list, seed=req.seed)
