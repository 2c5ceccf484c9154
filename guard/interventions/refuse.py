"""The refusal baseline: a fixed answer, no model call. Its chunks are marked ``refusal`` (the answer
shape puts them in ``message.refusal`` when the client asked for a structured answer); ``n`` choices
are n copies; log-probs are not invented (none: no model sampled this text)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from classifiers.base import Verdict
from guard.engines.base import Engine, GenerationChunk
from guard.interventions.base import GuardRequest, Intervention
from guard.policy import Target


def _usage(request: GuardRequest, engine: Engine, text: str) -> tuple[int, int]:
    """(prompt tokens, refusal tokens): what the client's usage reports, as if the model had answered."""
    return len(request.render(engine).token_ids), len(engine.tokenizer(text, add_special_tokens=False)["input_ids"])


class Refuse(Intervention):
    name = "refuse"

    def __init__(self, message: str) -> None:
        self.message = message

    async def stream(self, request: GuardRequest, verdict: Verdict, target: Target | None,
                     engine: Engine) -> AsyncIterator[GenerationChunk]:
        text = (target.params.get("refusal_message") if target else None) or self.message
        # the prompt is tokenised only to count it, in a thread: a flagged prompt of megabytes must
        # not hold the event loop (as GuardRequest.render_off_loop does)
        prompt_tokens, completion_tokens = await asyncio.to_thread(_usage, request, engine, text)
        for index in range(request.params.n):  # n choices, each the refusal (marked: message.refusal)
            yield GenerationChunk(text=text, index=index, refusal=True)
            yield GenerationChunk(finish_reason="stop", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                                  index=index, refusal=True)
