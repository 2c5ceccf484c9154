"""Teacher-forced scoring through an intervention (local engine), for TOFU's probability and
truth-ratio metrics: the per-token negative log-likelihood of a given answer after a prompt, where
the prompt may be given as embeddings (ECO, SPUL) and the logits may be transformed (ULD)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

LogitsTransform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(input_embeds [1, T, H], logits [1, T, V]) -> logits [1, T, V]"""


def answer_nll(model: torch.nn.Module, prompt_embeds: torch.Tensor, answer_ids: Sequence[int],
               logits_transform: LogitsTransform | None = None) -> list[float]:
    """NLL of each answer token given ``prompt_embeds`` ``[P, H]`` (teacher forcing, one forward)."""
    emb_layer = model.get_input_embeddings()
    answer = torch.tensor([list(answer_ids)], dtype=torch.long, device=emb_layer.weight.device)
    with torch.no_grad():
        answer_embeds = emb_layer(answer)[0]
        prompt = prompt_embeds.to(device=answer_embeds.device, dtype=answer_embeds.dtype)
        inputs = torch.cat([prompt, answer_embeds], dim=0).unsqueeze(0)
        logits = model(inputs_embeds=inputs).logits
        if logits_transform is not None:
            logits = logits_transform(inputs, logits)
        p = prompt_embeds.shape[0]
        pred = logits[0, p - 1: p - 1 + answer.shape[1]].float()
        nll = torch.nn.functional.cross_entropy(pred, answer[0], reduction="none")
    return nll.cpu().tolist()
