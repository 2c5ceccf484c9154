"""What the model reads for a request, and that prompt rendered for a method.

A request's prompt is a ``ChatPrompt`` (messages, rendered with the served model's chat template)
or a ``TextPrompt`` (a raw completion prompt). Every difference between the two lives in these two
classes: how they render, what is screened, their length, where a soft prompt goes. Callers never
ask which one they hold.

``render_for_method`` is the one way a method turns a prompt into what the engine generates from
(``MethodPrompt``): plain token ids, the input embeddings (optionally transformed: ECO's
corruption), or embeddings with soft-prompt vectors inserted (SPUL).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from guard.engines.base import PromptInput, RenderedPrompt
from guard.engines.rendering import render_text_prompt

if TYPE_CHECKING:
    from guard.engines.base import Engine

POSITIONS = ("user", "assistant")  # where soft-prompt vectors go (guard.interventions.spul)


def insertion_index(rendered: RenderedPrompt, position: str) -> int:
    """Token index in a templated ``rendered`` before which the soft prompt is inserted: before the
    last user message's content (``user``; the end when there is none) or at the end (``assistant``)."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    if position == "user":
        users = [s for s in rendered.spans if s.role == "user"]
        if users:
            return users[-1].token_start
    return len(rendered.token_ids)


def completion_insertion_index(token_ids: Sequence[int], position: str, bos_token_id: int | None) -> int:
    """For a raw (untemplated) prompt: after a leading BOS (``user``) or at the end (``assistant``)."""
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    if position == "assistant":
        return len(token_ids)
    return 1 if token_ids and bos_token_id is not None and token_ids[0] == bos_token_id else 0


@dataclass(frozen=True)
class ChatPrompt:
    """Chat messages as the template wants them (``{"role", "content", "name"?}``, content parts
    already joined as the model reads them; assistant ``tool_calls`` and ``tool`` messages with
    ``tool_call_id`` as the client sent them), the request's ``tools`` (rendered into the prompt,
    with ``tool_choice: "none"`` too, as vLLM does) and its ``tool_choice`` (whether the answer's
    hermes tool calls are read back: ``guard.interventions.answers``)."""

    messages: tuple[dict[str, Any], ...]
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: Any = None

    def render(self, engine: "Engine") -> RenderedPrompt:
        return engine.render_chat(list(self.messages), tools=self.tools)

    @property
    def chars(self) -> int:
        return sum(len(m.get("content") or "") for m in self.messages)

    @property
    def reads_tool_calls(self) -> bool:
        """Auto tool choice: the answer's ``<tool_call>`` blocks become tool calls."""
        return bool(self.tools) and self.tool_choice in (None, "auto")

    def soft_prompt_index(self, rendered: RenderedPrompt, position: str, tokenizer: Any) -> int:
        return insertion_index(rendered, position)


@dataclass(frozen=True)
class TextPrompt:
    """A text-completion prompt: no template, the whole text is the user's."""

    text: str

    def render(self, engine: "Engine") -> RenderedPrompt:
        return render_text_prompt(engine.tokenizer, self.text)

    reads_tool_calls = False  # completions take no tools

    @property
    def chars(self) -> int:
        return len(self.text)

    def soft_prompt_index(self, rendered: RenderedPrompt, position: str, tokenizer: Any) -> int:
        return completion_insertion_index(rendered.token_ids, position, getattr(tokenizer, "bos_token_id", None))


Prompt = ChatPrompt | TextPrompt


def insert_soft_prompt(embeds: torch.Tensor, index: int, soft: torch.Tensor) -> torch.Tensor:
    """``embeds[:index] ++ soft ++ embeds[index:]`` along the sequence axis (``[P, H]`` -> ``[P+n, H]``).

    Differentiable in ``soft`` (training uses the same function)."""
    if embeds.shape[-1] != soft.shape[-1]:
        raise ValueError(f"soft prompt width {soft.shape[-1]} != embedding width {embeds.shape[-1]}")
    if not 0 <= index <= embeds.shape[0]:
        raise ValueError(f"insertion index {index} outside a prompt of {embeds.shape[0]} tokens")
    soft = soft.to(device=embeds.device, dtype=embeds.dtype)
    return torch.cat([embeds[:index], soft, embeds[index:]], dim=0)


@dataclass(frozen=True)
class SoftPromptSpec:
    """Soft-prompt vectors ``[n, hidden]`` and where they go (``POSITIONS``)."""

    vectors: torch.Tensor
    position: str


EmbeddingTransform = Callable[[RenderedPrompt, torch.Tensor], torch.Tensor]
"""(the rendered prompt, its input embeddings ``[P, H]``) -> embeddings ``[P, H]`` (ECO's corruption)."""


@dataclass(frozen=True)
class MethodPrompt:
    """A prompt rendered for a method: what the engine generates from, and what usage reports."""

    rendered: RenderedPrompt
    input: PromptInput  # token ids, or embeddings (transformed, or with soft-prompt vectors)
    prompt_tokens: int  # the client's tokens: virtual soft-prompt vectors are not counted

    def embeds(self, engine: "Engine") -> torch.Tensor:
        """The input embeddings ``[P, H]`` (looked up when the input is token ids): teacher-forced scoring's input."""
        return self.input.embeds if self.input.embeds is not None else engine.embed(self.rendered.token_ids)


def render_for_method(prompt: Prompt, engine: "Engine", *, transform: EmbeddingTransform | None = None,
                      soft_prompt: SoftPromptSpec | None = None) -> MethodPrompt:
    """Render ``prompt`` as the engine reads it, then as the method needs it: plain token ids (no
    option), embeddings passed through ``transform``, or embeddings with ``soft_prompt`` inserted.
    CPU work proportional to the prompt: callers on the event loop run it in a thread."""
    rendered = prompt.render(engine)
    n = len(rendered.token_ids)
    if transform is None and soft_prompt is None:
        return MethodPrompt(rendered, PromptInput(token_ids=rendered.token_ids), n)
    embeds = engine.embed(rendered.token_ids)
    if transform is not None:
        embeds = transform(rendered, embeds)
    if soft_prompt is not None:
        index = prompt.soft_prompt_index(rendered, soft_prompt.position, engine.tokenizer)
        embeds = insert_soft_prompt(embeds, index, soft_prompt.vectors)
    return MethodPrompt(rendered, PromptInput(embeds=embeds), n)
