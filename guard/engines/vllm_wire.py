"""vLLM's OpenAI wire format, as the vLLM engine writes and reads it: completion payloads, prompt
embeddings, error bodies and top-k log-probs (token ids as keys, ``return_tokens_as_token_ids``)."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import torch

from guard.engines.base import PromptInput, SamplingParams

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
    """A streamed ``/v1/completions`` request from token ids or prompt embeddings, usage included."""
    payload: dict[str, Any] = {
        "model": model,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if params.stop:
        payload["stop"] = list(params.stop)
    if params.seed is not None:
        payload["seed"] = params.seed
    if prompt.token_ids is not None:
        payload["prompt"] = list(prompt.token_ids)
    else:
        payload["prompt_embeds"] = encode_prompt_embeds(prompt.embeds)
    return payload
