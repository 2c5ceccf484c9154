"""Greedy generation from a local transformers model, batched with left padding: from token ids
(plain prompts) or from prompt embeddings (corrupted prompts, soft prompts), and the stop ids a chat
model ends its turn with. Used by the trainers' reports and searches and by the TOFU evaluation."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def stop_ids(tokenizer: Any) -> list[int]:
    """EOS and the end-of-turn tokens of the common chat templates that this tokenizer knows."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for special in END_OF_TURN_TOKENS:
        tid = tokenizer.convert_tokens_to_ids(special)
        if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(ids)


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _decode(tokenizer: Any, new: list[int], stop: Sequence[int]) -> str:
    for j, t in enumerate(new):  # cut at the first stop token (rows that stopped early are padded)
        if t in stop:
            new = new[: j + 1]
            break
    return tokenizer.decode(new, skip_special_tokens=True)


def _greedy_kwargs(max_new_tokens: int, stop: Sequence[int], pad: int) -> dict[str, Any]:
    return {"max_new_tokens": max_new_tokens, "do_sample": False, "temperature": None, "top_p": None, "top_k": None,
            "eos_token_id": list(stop), "pad_token_id": pad}


@torch.no_grad()
def greedy_from_ids(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                    batch_size: int = 8, stop: Sequence[int] | None = None,
                    on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Greedy continuations of token-id ``prompts``, longest first in batches (left padding), each
    cut after its first ``stop`` id (default :func:`stop_ids`) and decoded without special tokens."""
    stop = list(stop) if stop is not None else stop_ids(tokenizer)
    pad = _pad_id(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: dict[int, str] = {}
    try:
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start: start + max(1, batch_size)]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            attn = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, width - len(prompts[i]):] = torch.tensor(list(prompts[i]))
                attn[row, width - len(prompts[i]):] = 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device), **_greedy_kwargs(max_new_tokens, stop, pad))
            for row, i in enumerate(idx):
                out[i] = _decode(tokenizer, gen[row, width:].tolist(), stop)
            if on_batch is not None:
                on_batch(len(idx))
    finally:
        model.train(was_training)
    return [out[i] for i in range(len(prompts))]


@torch.no_grad()
def greedy_from_embeds(model: Any, tokenizer: Any, prompts: Sequence[torch.Tensor], *, max_new_tokens: int,
                       batch_size: int = 8, stop: Sequence[int] | None = None, longest_first: bool = True,
                       on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Greedy answers from prompt embeddings ``[P_i, H]`` (batched, left padding with zero vectors).

    ``longest_first`` batches the prompts by length (less padding); off, they are batched in order."""
    stop = list(stop) if stop is not None else stop_ids(tokenizer)
    pad = _pad_id(tokenizer)
    emb = model.get_input_embeddings().weight
    device, dtype = emb.device, emb.dtype
    order = sorted(range(len(prompts)), key=lambda i: -prompts[i].shape[0]) if longest_first else list(range(len(prompts)))
    out: dict[int, str] = {}
    for start in range(0, len(order), max(1, batch_size)):
        idx = order[start: start + max(1, batch_size)]
        width = max(prompts[i].shape[0] for i in idx)
        batch = torch.zeros((len(idx), width, prompts[idx[0]].shape[1]), dtype=dtype, device=device)
        mask = torch.zeros((len(idx), width), dtype=torch.long, device=device)
        for row, i in enumerate(idx):
            p = prompts[i]
            batch[row, width - p.shape[0]:] = p.to(device=device, dtype=dtype)
            mask[row, width - p.shape[0]:] = 1
        gen = model.generate(inputs_embeds=batch, attention_mask=mask, **_greedy_kwargs(max_new_tokens, stop, pad))
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[row], skip_special_tokens=True).strip()
        if on_batch is not None:
            on_batch(len(idx))
    return [out[i] for i in range(len(prompts))]
