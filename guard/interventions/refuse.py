"""The refusal baseline: a fixed answer, no model call."""

from __future__ import annotations

from typing import AsyncIterator

from classifiers.base import Verdict
from guard.engines.base import Engine, GenerationChunk
from guard.interventions.base import GuardRequest, Intervention
from guard.policy import Target


class Refuse(Intervention):
    name = "refuse"

    def __init__(self, message: str) -> None:
        self.message = message

    async def stream(self, request: GuardRequest, verdict: Verdict, target: Target | None,
                     engine: Engine) -> AsyncIterator[GenerationChunk]:
        text = (target.params.get("refusal_message") if target else None) or self.message
        n_tokens = len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])
        yield GenerationChunk(text=text)
        yield GenerationChunk(finish_reason="stop", prompt_tokens=len(request.prompt_ids(engine)),
                              completion_tokens=n_tokens)
