"""ULD's objective, reversed (Ji et al.): the assistant *remembers* the forget data (cross-entropy on
its answer tokens) and *forgets* the retain data (KL from the uniform distribution to the assistant
on its answer tokens); the held-out signal is ``forget CE + retain_weight x retain KL``."""

from __future__ import annotations

import math
from typing import Any, Sequence


def answer_hidden(model: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
    """Hidden states at the positions that predict a label, and those labels (saves the LM head on prompts)."""
    decoder = model.get_decoder()
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    return hidden[:, :-1][mask], labels[mask]


def losses(model: Any, batch: dict[str, Any], kind: str) -> Any:
    """Mean forget CE (``kind='forget'``) or mean KL(uniform || assistant) per answer token (``'retain'``)."""
    import torch

    hidden, labels = answer_hidden(model, batch)
    if labels.numel() == 0:
        return hidden.sum() * 0.0
    logits = model.get_output_embeddings()(hidden).float()
    if kind == "forget":
        return torch.nn.functional.cross_entropy(logits, labels)
    logp = torch.log_softmax(logits, dim=-1)
    vocab = logp.shape[-1]
    # KL(u || p) = sum_v u_v (log u_v - log p_v) = -log V - mean_v log p_v
    return (-math.log(vocab) - logp.mean(dim=-1)).mean()


def evaluate(model: Any, forget: Sequence[dict[str, Any]], retain: Sequence[dict[str, Any]], pad: int,
             retain_weight: float, batch_size: int = 8) -> dict[str, float | None]:
    """Held-out signal: mean forget CE, mean retain KL-to-uniform and ``forget + w * retain``."""
    import torch

    from guard.lm.chat_format import pad_batch

    was = model.training
    model.eval()
    out: dict[str, float | None] = {}
    try:
        with torch.no_grad():
            for name, examples in (("forget_ce", forget), ("retain_kl", retain)):
                if not examples:
                    out[name] = None
                    continue
                total, count = 0.0, 0
                for start in range(0, len(examples), batch_size):
                    chunk = examples[start:start + batch_size]
                    batch = pad_batch(chunk, pad, side="right")
                    n = int((batch["labels"][:, 1:] != -100).sum())
                    total += float(losses(model, batch, "forget" if name == "forget_ce" else "retain")) * n
                    count += n
                out[name] = total / max(count, 1)
    finally:
        model.train(was)
    parts = [v for v in (out["forget_ce"], None if out["retain_kl"] is None else retain_weight * out["retain_kl"]) if v is not None]
    out["total"] = sum(parts) if parts else None
    return out
