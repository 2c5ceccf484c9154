"""The Intervention seam and the normalised request every intervention receives."""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator, Literal

import torch

from classifiers.base import Verdict
from guard.engines.base import Engine, GenerationChunk, PromptInput, RenderedPrompt, SamplingParams
from guard.engines.rendering import render_text_prompt
from guard.interventions.scoring import LogitsTransform
from guard.policy import Target


@dataclass(frozen=True)
class GuardRequest:
    """A chat or text-completion request, validated and normalised."""

    kind: Literal["chat", "completion"]
    params: SamplingParams
    messages: tuple[dict[str, str], ...] = ()
    prompt: str = ""

    def render(self, engine: Engine) -> RenderedPrompt:
        """The prompt exactly as the engine reads it, with each message's span and the tokens'
        character offsets: the chat template for chat requests, the raw prompt for completions."""
        if self.kind == "chat":
            return engine.render_chat(list(self.messages))
        return render_text_prompt(engine.tokenizer, self.prompt)

    def prompt_ids(self, engine: Engine) -> list[int]:
        return self.render(engine).token_ids

    async def render_off_loop(self, engine: Engine) -> RenderedPrompt:
        """``render`` in a worker thread. Templating and tokenising a long prompt (megabytes) is
        seconds of CPU: on the event loop it would stall every other request and ``/health``.
        Interventions render once per request, through this."""
        return await asyncio.to_thread(self.render, engine)


class Intervention(abc.ABC):
    """Answers a request. Never changes model weights; yields the same chunks whatever the method."""

    name: str

    @abc.abstractmethod
    def stream(self, request: GuardRequest, verdict: Verdict, target: Target | None,
               engine: Engine) -> AsyncIterator[GenerationChunk]: ...

    def describe(self) -> dict[str, Any]:
        return {"action": self.name}

    def scoring_inputs(self, request: GuardRequest, verdict: Verdict, target: Target | None,
                       engine: Engine) -> tuple[torch.Tensor, LogitsTransform | None]:
        """What a teacher-forced score (TOFU probabilities, truth ratios) sees under this
        intervention: the prompt embeddings ``[P, H]`` and an optional logits transform. Used with
        ``guard.interventions.scoring.answer_nll`` on the local engine. Default: the plain prompt."""
        return engine.embed(request.prompt_ids(engine)), None


class PassThrough(Intervention):
    """The unguarded answer: the plain prompt through the engine."""

    name = "pass"

    async def stream(self, request: GuardRequest, verdict: Verdict, target: Target | None,
                     engine: Engine) -> AsyncIterator[GenerationChunk]:
        rendered = await request.render_off_loop(engine)
        async for chunk in engine.generate(PromptInput(token_ids=rendered.token_ids), request.params):
            yield chunk
