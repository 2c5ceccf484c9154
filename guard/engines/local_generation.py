"""The local engine's side of one ``generate`` call: which logits processors run, in which order,
and how the batched token stream of ``n`` sequences becomes per-choice ``GenerationChunk``s.

Processor order (transformers runs custom processors in list order, before temperature/top-p):

1. the method's own processors (ULD's logit difference): what the model samples from under the method;
2. ``LogprobRecorder`` (when log-probs are asked for): records *that* distribution, before penalties,
   bias and grammar, as vLLM's default ``raw_logprobs`` does for the model's own distribution;
3. ``logit_bias`` and presence/frequency penalties (``openai_sampling.logits_processors``);
4. the grammar (``StructuredOutputCompiler``) last, so nothing after it can re-enable a token it forbids;
5. ``StopWhenNothingAllowed``: a row where the processors above left no token (a method that forbids
   the stop token while a finished grammar allows only that one) stops there instead of handing
   sampling an all ``-inf`` row, which transformers turns into NaN probabilities and a crash.

With a method's processor the grammar moves *before* it (0.): ULD keeps only its plausible set
(the target's top-k) and puts ``-inf`` elsewhere, so a mask applied after it could leave no token at
all (the grammar's next token outside the top-k); masking first makes ULD choose its plausible set
among the tokens the grammar allows. Everything after it only adds to logits, so ``-inf`` stays
``-inf``: the grammar still has the final word. The recorded log-probs are then ULD's distribution
over the allowed tokens, which is what was sampled from.

``n`` choices are one batched ``generate`` (``num_return_sequences``): every processor above handles a
batch (a method whose processor is per-sequence, like ULD's, asks for its choices one by one instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from guard.engines.base import (
    GenerationChunk,
    LogitsProcessor,
    SamplingParams,
    TokenLogprob,
)
from guard.engines.openai_sampling import (
    LogprobRecorder,
    PositionRecord,
    SamplingControls,
    logits_processors,
)
from guard.engines.rendering import IncrementalDecoder, StopMatcher, token_logprob


def controls_of(params: SamplingParams) -> SamplingControls:
    return SamplingControls(n=params.n, top_logprobs=params.logprobs, presence_penalty=params.presence_penalty,
                            frequency_penalty=params.frequency_penalty, logit_bias=params.logit_bias)


class StopWhenNothingAllowed:
    """The last processor: a row with no finite score (or a NaN) becomes "only ``stop_id``", so the
    sequence ends (``finish_reason: "stop"``) rather than failing the whole batch in sampling."""

    def __init__(self, stop_id: int) -> None:
        self._stop_id = stop_id

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        dead = ~torch.isfinite(scores).any(dim=-1) | torch.isnan(scores).any(dim=-1)
        if bool(dead.any()):
            scores[dead] = float("-inf")
            scores[dead, self._stop_id] = 0.0
        return scores


def processor_chain(params: SamplingParams, method: Sequence[LogitsProcessor], prompt_length: int,
                    grammar: Callable[[], Any] | None, stop_id: int) -> tuple[list[Any], LogprobRecorder | None]:
    """The processors of one generation (module docstring) and its recorder, if any. ``prompt_length``:
    the prompt's tokens as ``input_ids`` shows them (0 when prompting with embeddings); ``stop_id``:
    the token that ends a sequence no token is left for."""
    recorder = LogprobRecorder(params.logprobs, prompt_length) if params.logprobs is not None else None
    mask = [grammar()] if params.constraint is not None and grammar is not None else []
    chain: list[Any] = [*mask, *method] if method else []
    if recorder is not None:
        chain.append(recorder)
    chain.extend(logits_processors(controls_of(params), prompt_length))
    if not method:
        chain.extend(mask)
    chain.append(StopWhenNothingAllowed(stop_id))
    return chain, recorder


Step = list[tuple[int, PositionRecord | None]]
"""One generation step: per sequence, the token sampled and its log-prob record (None: not recorded)."""


class BatchStreamer:
    """transformers streamer for a batch: each ``put`` after the prompt is one step (one token per
    sequence), handed on with the recorder's records for that step. ``generate`` first "puts" the
    prompt ids (an empty tensor when prompting with embeddings); that first call is skipped."""

    def __init__(self, put: Callable[[Any], None], recorder: LogprobRecorder | None) -> None:
        self._put = put
        self._recorder = recorder
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        tokens = value.reshape(-1)
        records: list[PositionRecord | None] = list(self._recorder.settle(tokens)) if self._recorder else []
        records += [None] * (len(tokens) - len(records))
        self._put(list(zip(tokens.tolist(), records)))

    def end(self) -> None:
        pass


@dataclass
class ChoiceState:
    """One sequence of the batch: its decoding, stop strings, counts, and whether it is finished."""

    index: int
    decoder: IncrementalDecoder
    stops: StopMatcher
    tokens: int = 0
    last_id: int | None = None
    done: bool = False
    finish: str | None = None
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)


class ChoiceStreams:
    """Turns steps into per-choice chunks: tokens after a sequence's stop token (the batch's padding)
    are dropped; a stop string ends that choice only."""

    def __init__(self, tokenizer: Any, params: SamplingParams, stop_ids: set[int], prompt_tokens: int) -> None:
        self._tokenizer = tokenizer
        self._stop_ids = stop_ids
        self._prompt_tokens = prompt_tokens
        self._params = params
        self.choices = [ChoiceState(i, IncrementalDecoder(tokenizer), StopMatcher(params.stop)) for i in range(params.n)]

    @property
    def all_done(self) -> bool:
        return all(c.done for c in self.choices)

    def _final(self, choice: ChoiceState, text: str = "", token_ids: list[int] | None = None,
               logprobs: list[TokenLogprob] | None = None) -> GenerationChunk:
        return GenerationChunk(text=text, token_ids=token_ids or [], finish_reason=choice.finish,
                               prompt_tokens=self._prompt_tokens, completion_tokens=choice.tokens,
                               index=choice.index, logprobs=logprobs or [])

    def step(self, step: Step) -> list[GenerationChunk]:
        chunks: list[GenerationChunk] = []
        for choice, (token, record) in zip(self.choices, step):
            if choice.done:
                continue
            choice.tokens += 1
            choice.last_id = token
            logprobs = [token_logprob(self._tokenizer, record.token, record.logprob, record.top)] if record is not None else []
            text = choice.stops.feed(choice.decoder.push([token]))
            if choice.stops.stopped:
                choice.done, choice.finish = True, "stop"
                chunks.append(self._final(choice, text, [token], logprobs))
            elif token in self._stop_ids:
                choice.done, choice.finish = True, "stop"
                chunks.append(self._final(choice, text + choice.stops.flush(), [token], logprobs))
            else:
                chunks.append(GenerationChunk(text=text, token_ids=[token], index=choice.index, logprobs=logprobs))
        return chunks

    def finish(self) -> list[GenerationChunk]:
        """The last chunk of every choice still open (ran to ``max_tokens``, or produced nothing)."""
        out: list[GenerationChunk] = []
        for choice in self.choices:
            if choice.done:
                continue
            choice.done = True
            choice.finish = "length" if choice.last_id is not None or self._params.max_tokens <= 0 else "stop"
            out.append(self._final(choice, choice.stops.flush()))
        return out
