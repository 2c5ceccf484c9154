"""The refusal baseline: a fixed answer, no model call."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from classifiers.base import Verdict
from guard.engines.base import Engine, GenerationChunk
from guard.interventions.base import GuardRequest, Intervention
from guard.policy import Target


def _refusal_pieces(request: GuardRequest, engine: Engine, text: str) -> tuple[int, list[str], bool]:
    """(prompt tokens, the refusal's text one token at a time, whether ``max_tokens`` cut it).

    A refusal is sent the way a model's answer is: token by token, never longer than the client's
    ``max_tokens`` (then with ``finish_reason: length``), and counted in the served model's tokens, so
    neither its usage nor its chunking tells the client that the guard answered."""
    prompt_tokens = len(request.render(engine).token_ids)
    ids = list(engine.tokenizer(text, add_special_tokens=False)["input_ids"])
    cut = len(ids) > request.params.max_tokens
    ids = ids[:request.params.max_tokens]
    pieces: list[str] = []
    done = ""
    for i in range(1, len(ids) + 1):
        decoded = engine.tokenizer.decode(ids[:i])
        if decoded.endswith("\ufffd"):  # part of a multi-byte character: wait for the rest of it
            pieces.append("")
            continue
        pieces.append(decoded[len(done):])
        done = decoded
    return prompt_tokens, pieces, cut


class Refuse(Intervention):
    name = "refuse"

    def __init__(self, message: str) -> None:
        self.message = message

    async def stream(self, request: GuardRequest, verdict: Verdict, target: Target | None,
                     engine: Engine) -> AsyncIterator[GenerationChunk]:
        text = (target.params.get("refusal_message") if target else None) or self.message
        # the prompt is tokenised only to count it, in a thread: a flagged prompt of megabytes must
        # not hold the event loop (GuardRequest.render_off_loop)
        prompt_tokens, pieces, cut = await asyncio.to_thread(_refusal_pieces, request, engine, text)
        for piece in pieces:
            if piece:
                yield GenerationChunk(text=piece)
        yield GenerationChunk(finish_reason="length" if cut else "stop", prompt_tokens=prompt_tokens,
                              completion_tokens=len(pieces))
