"""The Intervention seam and the normalised request every intervention receives."""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping, Sequence

import torch

from classifiers.base import Verdict
from guard.engines.base import Engine, GenerationChunk, RenderedPrompt, SamplingParams
from guard.errors import InvalidRequest
from guard.interventions.answers import finish_answer
from guard.interventions.prompts import ChatPrompt, MethodPrompt, Prompt, TextPrompt, render_for_method
from guard.interventions.scoring import LogitsTransform
from guard.lm.nll import AnswerEmbeds
from guard.policy import Target


@dataclass(frozen=True)
class GuardRequest:
    """A chat or text-completion request, validated and normalised: its prompt (``ChatPrompt`` or
    ``TextPrompt``, which carry every chat/completion difference) and its sampling parameters."""

    prompt: Prompt
    params: SamplingParams

    @classmethod
    def chat(cls, messages: Sequence[Mapping[str, Any]], params: SamplingParams, *,
             tools: Sequence[Mapping[str, Any]] = (), tool_choice: Any = None) -> "GuardRequest":
        return cls(ChatPrompt(tuple(dict(m) for m in messages), tuple(dict(t) for t in tools), tool_choice), params)

    @classmethod
    def completion(cls, prompt: str, params: SamplingParams) -> "GuardRequest":
        return cls(TextPrompt(prompt), params)

    def render(self, engine: Engine) -> RenderedPrompt:
        """The prompt exactly as the engine reads it, with each message's span and the tokens'
        character offsets: the chat template for chat requests, the raw prompt for completions."""
        return self.prompt.render(engine)

    def prompt_ids(self, engine: Engine) -> list[int]:
        return self.render(engine).token_ids

    async def render_off_loop(self, engine: Engine, **method: Any) -> MethodPrompt:
        """``render_for_method`` in a worker thread. Templating and tokenising a long prompt (megabytes)
        is seconds of CPU: on the event loop it would stall every other request and ``/health``.
        Interventions render once per request, through this."""
        return await asyncio.to_thread(render_for_method, self.prompt, engine, **method)


class ContractUnsupported(InvalidRequest):
    """A method cannot honour a request field on this engine (e.g. ULD's step-wise decoding on vLLM
    with ``response_format``): raised before the method's first chunk, so the serving layer can
    answer the policy's way instead (a refusal in the client's shape by default); uncaught, it is a
    400 naming the field. Never a silent downgrade."""

    def __init__(self, message: str, *, param: str, method: str) -> None:
        super().__init__(message, param=param)
        self.method = method


class Intervention(abc.ABC):
    """Answers a request. Never changes model weights; yields the same chunks whatever the method."""

    name: str

    def answer(self, request: GuardRequest, verdict: Verdict, target: Target | None,
               engine: Engine) -> AsyncIterator[GenerationChunk]:
        """``stream`` as the client's answer: tool calls read out of the text (``answers.finish_answer``)."""
        return finish_answer(request, self.stream(request, verdict, target, engine))

    @abc.abstractmethod
    def stream(self, request: GuardRequest, verdict: Verdict, target: Target | None,
               engine: Engine) -> AsyncIterator[GenerationChunk]: ...

    def describe(self) -> dict[str, Any]:
        return {"action": self.name}

    def release(self) -> None:  # noqa: B027 - optional hook
        """Drop what this intervention holds (models, caches): its pipeline was replaced by a reload."""

    def scoring_inputs(self, request: GuardRequest, verdict: Verdict, target: Target | None,
                       engine: Engine) -> tuple[torch.Tensor, LogitsTransform | None]:
        """What a teacher-forced score (TOFU probabilities, truth ratios) sees under this
        intervention: the prompt embeddings ``[P, H]`` and an optional logits transform. Used with
        ``guard.interventions.scoring.answer_nll`` on the local engine. Default: the plain prompt."""
        return render_for_method(request.prompt, engine).embeds(engine), None

    def scoring_answer_embeds(self, request: GuardRequest, verdict: Verdict, target: Target | None,
                              engine: Engine) -> AnswerEmbeds | None:
        """How a teacher-forced score reads the answer tokens under this intervention (ECO
        ``answer_names`` reads the target's names in them corrupted). Default None: as the plain
        model reads them."""
        return None


class PassThrough(Intervention):
    """The unguarded answer: the plain prompt through the engine."""

    name = "pass"

    async def stream(self, request: GuardRequest, verdict: Verdict, target: Target | None,
                     engine: Engine) -> AsyncIterator[GenerationChunk]:
        prompt = await request.render_off_loop(engine)
        async for chunk in engine.generate(prompt.input, request.params):
            yield chunk
