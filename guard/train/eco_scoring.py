"""What ECO's search measures on a local model: the teacher-forced log-prob of answers after prompt
embeddings (the surrogate), greedy answers from (corrupted) prompt embeddings, and their fluency
(reply perplexity after a neutral prompt, n-gram entropy). Built on the LM toolkit (``guard.lm``)."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from guard.lm.generate import greedy_from_embeds
from guard.lm.nll import mean_answer_nll


def answer_logprobs(model: Any, prompts: Sequence[torch.Tensor], answers: Sequence[Sequence[int]],
                    batch_size: int = 8) -> list[float]:
    """Mean per-token log-prob of each answer after its prompt embeddings (teacher forcing, batched,
    right padding): ``-guard.lm.nll.mean_answer_nll``."""
    return [-x for x in mean_answer_nll(model, prompts, answers, batch_size=batch_size)]


def generate_from_embeds(model: Any, tokenizer: Any, prompts: Sequence[torch.Tensor], max_new_tokens: int,
                         batch_size: int = 8) -> list[str]:
    """Greedy answers from prompt embeddings (batched in order, left padding)."""
    return greedy_from_embeds(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              longest_first=False)


def neutral_context(model: Any, tokenizer: Any) -> torch.Tensor:
    """Embeddings of a neutral chat prompt (the template with an empty user turn) that fluency is scored after."""
    from guard.engines.rendering import render_chat

    ids = render_chat(tokenizer, [{"role": "user", "content": ""}]).token_ids
    with torch.no_grad():
        return model.get_input_embeddings()(torch.tensor([ids]))[0].detach().float().clone()


def answer_perplexity(model: Any, tokenizer: Any, context: torch.Tensor, texts: Sequence[str],
                      batch_size: int = 8) -> list[float]:
    """Perplexity of each text as an assistant reply after a neutral prompt, under the clean model.

    Not conditioned on the question: the clean target model has memorised the forget answers, so
    conditioning on the question would score any *different* answer (the point of unlearning) as
    disfluent. Gibberish still scores orders of magnitude above a fluent reply. An empty text gets
    ``inf`` (an empty answer is not a fluent one).
    """
    ids = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    keep = [i for i, x in enumerate(ids) if x]
    out = [float("inf")] * len(texts)
    if keep:
        lps = answer_logprobs(model, [context] * len(keep), [ids[i] for i in keep], batch_size)
        for i, lp in zip(keep, lps):
            out[i] = float(math.exp(-lp))
    return out


def fluency(model: Any, tokenizer: Any, context: torch.Tensor, texts: Sequence[str],
            batch_size: int = 8) -> dict[str, float]:
    """Fluency of ``texts``: ``ppl`` (geometric mean over the non-empty ones of their reply perplexity),
    ``entropy`` (mean n-gram entropy, RWKU's Flu) and ``empty`` (the fraction of empty answers: a
    corrupted prompt that makes the model end its turn at once has not produced an answer)."""
    from guard.eval.rwku_metrics import n_gram_entropy

    ppl = [p for p in answer_perplexity(model, tokenizer, context, texts, batch_size) if math.isfinite(p)]
    geo = math.exp(sum(math.log(p) for p in ppl) / len(ppl)) if ppl else float("inf")
    empty = sum(1 for t in texts if not t.strip()) / max(1, len(texts))
    return {"ppl": float(geo), "entropy": float(n_gram_entropy(list(texts))), "empty": float(empty)}
