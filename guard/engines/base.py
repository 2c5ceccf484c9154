"""The Engine seam.

An engine owns the served model's tokenizer and chat template, and can

* render chat messages to token ids, with the token span of each message's content
  (interventions use the spans to target the user's tokens);
* look up input embeddings for token ids;
* generate, streaming, from token ids **or** from prompt embeddings;
* give the top-k next-token log-probs for a token prefix (step-wise ULD);
* say how long a prompt the model reads (``context_window``), and refuse a longer one with a 400.

The vLLM engine additionally forwards untouched requests (the fast path); see ``VllmEngine.forward``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Sequence

import torch

from guard.engines.context import ContextWindow

# vLLM's rule (SamplingParams.__post_init__): 0 < temperature < 0.01 is raised to 0.01; below that the
# logits divided by the temperature overflow and the probabilities turn into NaN.
MIN_SAMPLING_TEMPERATURE = 1e-2


@dataclass(frozen=True)
class MessageSpan:
    """Where one message's *content* sits in the rendered prompt."""

    role: str
    token_start: int
    token_end: int  # exclusive
    char_start: int  # offsets into RenderedPrompt.text
    char_end: int


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    token_ids: list[int]
    spans: tuple[MessageSpan, ...]
    offsets: tuple[tuple[int, int], ...] = ()  # per-token character offsets into text


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if 0.0 < self.temperature < MIN_SAMPLING_TEMPERATURE:
            object.__setattr__(self, "temperature", MIN_SAMPLING_TEMPERATURE)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class PromptInput:
    """Exactly one of token ids or embeddings ``[seq, hidden]`` (fp32, on CPU)."""

    token_ids: list[int] | None = None
    embeds: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.token_ids is None) == (self.embeds is None):
            raise ValueError("PromptInput needs exactly one of token_ids or embeds")

    @property
    def length(self) -> int:
        return len(self.token_ids) if self.token_ids is not None else int(self.embeds.shape[0])


@dataclass
class GenerationChunk:
    """A streamed delta. The last chunk carries ``finish_reason`` ('stop' or 'length') and usage."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Engine(abc.ABC):
    """One served model. Created by the app factory, started/closed by its cleanup context."""

    kind: str
    served_model_name: str
    context_window: ContextWindow | None = None  # set by start(); None: unknown, nothing is checked
    # what this engine's own answers carry as system_fingerprint (vLLM's, learned from its answers)
    system_fingerprint: str | None = None

    @property
    def answer_model_name(self) -> str:
        """The ``model`` this engine's own answers carry; the guard's answers carry the same."""
        return self.served_model_name

    def check_prompt_length(self, prompt_tokens: int) -> None:
        """The exact check, where the prompt's tokens are known: 400 when it leaves no room for an answer."""
        if self.context_window is not None:
            self.context_window.check_tokens(prompt_tokens)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources (load the model, open connections)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Any: ...

    @abc.abstractmethod
    def render_chat(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> RenderedPrompt: ...

    @abc.abstractmethod
    def embed(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Input embeddings ``[len, hidden]`` of the served model (fp32, CPU)."""

    @abc.abstractmethod
    def generate(self, prompt: PromptInput, params: SamplingParams) -> AsyncIterator[GenerationChunk]:
        """Stream the completion. Closing the iterator early cancels the generation."""

    @abc.abstractmethod
    async def top_logprobs(self, token_ids: Sequence[int], k: int) -> list[tuple[int, float]]:
        """The k most likely next tokens after ``token_ids`` with their log-probs, best first."""

    @abc.abstractmethod
    async def health(self) -> dict[str, Any]:
        """``{"ready": bool, ...}``; never raises."""

    def stop_token_ids(self) -> set[int]:
        tok = self.tokenizer
        ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        for special in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            tid = tok.convert_tokens_to_ids(special)
            if isinstance(tid, int) and tid != tok.unk_token_id and tid >= 0:
                ids.add(tid)
        return ids
