"""ECO's ``answer_names``: the target's name is corrupted in the model's own answer too.

Prompt-only ECO leaves a hole: once the model writes the target's name, every later token reads it
clean, and the memorised facts follow (measured on tofu-mini, docs/eval.md "Toward retain-twin
level": forget quality 0.054 prompt-only vs 0.405 with the answer's names corrupted as well, same σ).

How, through the Engine contract only (``generate`` from prompt embeddings, ``embed``), so the same
code runs on the local engine and on vLLM (``prompt_embeds``): generation streams from the corrupted
prompt; after each streamed chunk the answer so far is searched for a *new* mention of the target's
names (``find_mentions``, the detector's own matcher, on the answer's text with per-token offsets).
On one, the stream is closed (the engine cancels the generation) and restarted from
``corrupted prompt ⊕ embed(answer so far)`` with every mention token of the answer corrupted
(``corrupt_positions``: one seeded draw per answer position, so a re-read position is corrupted
identically), ``max_tokens`` reduced by what was already generated. The text already streamed is a
prefix of the final answer: nothing is withdrawn from the client. Cost: one extra prefill per name
mention in the answer (1-2 on TOFU).

Limits (docs/eval.md): detection is per streamed chunk (one token per chunk on the local engine;
vLLM may pack several, then the tokens after the mention in that chunk were generated reading it
clean); a ``stop`` string split across a restart is not matched; a constrained answer
(``response_format`` / a forced ``tool_choice``) cannot be restarted mid-grammar, so it is refused
with ``ContractUnsupported`` (the policy's refusal) rather than answered with the name left clean.
``n > 1`` choices are generated one after another (choice ``i`` with ``seed + i`` when seeded).

Teacher-forced scoring (``guard-eval tofu``'s probabilities and truth ratios) reads a *given* answer
the same way: ``answer_reader`` finds the mention positions token by token as the stream would
(``AnswerMentions``) and corrupts them with the same per-position draws, so a candidate answer that
names the target is scored as the model would read it had it written that answer. One difference
is inherent to teacher forcing: every later token reads the whole mention corrupted, where in
generation the tokens *inside* a mention are produced before the mention is complete.
"""

from __future__ import annotations

import dataclasses
from typing import Any, AsyncIterator, Callable, Collection, Sequence

import torch

from guard.engines.base import Engine, GenerationChunk, PromptInput, SamplingParams
from guard.interventions.token_selection import find_mentions
from guard.lm.nll import AnswerEmbeds

AnswerCorruption = Callable[[torch.Tensor, Sequence[int]], torch.Tensor]
"""(clean answer embeddings ``[len, hidden]``, answer positions to corrupt) -> corrupted embeddings."""


class AnswerMentions:
    """The answer's token ids with per-token character offsets, and which positions mention a name.

    Each token is decoded on its own (byte-level tokens of a multi-byte character decode to a
    replacement character; the offsets stay aligned with the tokens, which is what matters here)."""

    def __init__(self, tokenizer: Any, names: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        self._names = tuple(names)
        self.ids: list[int] = []
        self._offsets: list[tuple[int, int]] = []
        self._text = ""
        self.corrupted: set[int] = set()

    def push(self, token_ids: Sequence[int]) -> list[int]:
        """Append tokens; the answer positions that newly overlap a mention (not yet corrupted)."""
        for token in token_ids:
            piece = self._tokenizer.decode([int(token)])
            self._offsets.append((len(self._text), len(self._text) + len(piece)))
            self._text += piece
            self.ids.append(int(token))
        if not self._names:
            return []
        spans = find_mentions(self._text, self._names)
        hits = [i for i, (a, b) in enumerate(self._offsets)
                if b > a and i not in self.corrupted and any(a < end and b > start for start, end in spans)]
        self.corrupted.update(hits)
        return hits


def answer_mention_positions(tokenizer: Any, names: Sequence[str], answer_ids: Sequence[int],
                             stop_ids: Collection[int] = ()) -> list[int]:
    """Positions of ``answer_ids`` that generation re-reads corrupted: the tokens of each mention of
    ``names``, found token by token as the answer streams (stop tokens are not pushed, as in
    generation, and never selected)."""
    mentions = AnswerMentions(tokenizer, names)
    pushed: list[int] = []  # index in answer_ids of each token pushed
    for i, token in enumerate(answer_ids):
        if int(token) not in stop_ids:
            pushed.append(i)
            mentions.push([token])
    return sorted(pushed[j] for j in mentions.corrupted)


def answer_reader(engine: Engine, names: Sequence[str], corrupt_answer: AnswerCorruption) -> AnswerEmbeds:
    """For teacher-forced scoring: answer ids -> the embeddings the model reads for them under
    ``answer_names`` (the lookup, with every mention position corrupted as in generation)."""
    stop_ids = engine.stop_token_ids()

    def read(answer_ids: Sequence[int]) -> torch.Tensor:
        embeds = engine.embed(answer_ids)
        positions = answer_mention_positions(engine.tokenizer, names, answer_ids, stop_ids)
        return corrupt_answer(embeds, positions) if positions else embeds

    return read


async def stream_with_answer_names(engine: Engine, prompt_embeds: torch.Tensor, params: SamplingParams,
                                   names: Sequence[str], corrupt_answer: AnswerCorruption) -> AsyncIterator[GenerationChunk]:
    """Every choice of ``params.n``, one after another (module docstring)."""
    for index in range(max(1, params.n)):
        seed = params.seed + index if params.seed is not None and params.n > 1 else params.seed
        one = dataclasses.replace(params, n=1, seed=seed)
        async for chunk in _one_choice(engine, prompt_embeds, one, names, corrupt_answer):
            chunk.index = index
            yield chunk


async def _one_choice(engine: Engine, prompt_embeds: torch.Tensor, params: SamplingParams, names: Sequence[str],
                      corrupt_answer: AnswerCorruption) -> AsyncIterator[GenerationChunk]:
    prompt_tokens = int(prompt_embeds.shape[0])
    mentions = AnswerMentions(engine.tokenizer, names)
    stop_ids = engine.stop_token_ids()
    while True:
        embeds = prompt_embeds
        if mentions.ids:
            answer = corrupt_answer(engine.embed(mentions.ids), sorted(mentions.corrupted))
            embeds = torch.cat([prompt_embeds, answer.to(prompt_embeds.dtype)], 0)
        before = len(mentions.ids)
        run = dataclasses.replace(params, max_tokens=params.max_tokens - before)
        restart = False
        stream = engine.generate(PromptInput(embeds=embeds), run)
        try:
            async for chunk in stream:
                new = mentions.push([t for t in chunk.token_ids if t not in stop_ids])
                if chunk.finish_reason is not None:
                    chunk.prompt_tokens = prompt_tokens
                    chunk.completion_tokens += before
                    yield chunk
                    return
                yield chunk
                if new and len(mentions.ids) < params.max_tokens:
                    restart = True
                    break
        finally:
            await stream.aclose()
        if not restart:  # the engine ended without a final chunk (it always sends one): nothing more to do
            return
