"""How much a model has memorised a set of QA pairs: a quick report for trained models.

* ``greedy_answers``: greedy decoding of the chat-templated question (batched, left padding);
* ``rouge_l_recall``: ROUGE-L recall of a generation against the gold answer (``rouge_score``,
  Porter stemming), as TOFU/open-unlearning report it;
* ``answer_nll``: mean per-token negative log-likelihood of the answer tokens given the prompt
  (the ``avg_loss`` behind TOFU's Probability metric: ``P = exp(-nll)``);
* ``truth_ratios``: TOFU's per-item truth ratio ``P(perturbed) / P(paraphrased)`` with per-token
  normalised probabilities (open-unlearning's ``false/true`` direction; the legacy TOFU code used
  the reciprocal, which gives the same KS test);
* ``forget_quality``: the KS-test p-value between two models' truth ratios
  (``scipy.stats.ks_2samp``): low means the target is distinguishable from the retain twin.

These are sanity numbers for training runs; the full TOFU evaluation lives in ``guard.eval``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from guard.train.chat_data import answer_nll_sums, encode_prompt, encode_qa, pad_batch, pad_token_id


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


_SCORER = None


def rouge_l_recall(generated: str, reference: str) -> float:
    """ROUGE-L recall of ``generated`` against ``reference`` (stemmed, as TOFU computes it)."""
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_SCORER.score(reference, generated)["rougeL"].recall)


@torch.no_grad()
def answer_nll(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    max_length: int = 512,
    batch_size: int = 8,
    system_prompt: str | None = None,
    progress: bool = False,
) -> list[float]:
    """Mean per-token NLL of each answer given its question (chat template, answer tokens only)."""
    was_training = model.training
    model.eval()
    device = _device(model)
    pad = pad_token_id(tokenizer)
    encoded = [encode_qa(tokenizer, q, a, max_length, system_prompt) for q, a in pairs]
    out: list[float] = []
    try:
        for chunk in _progress(_chunks(len(encoded), batch_size), -(-len(encoded) // batch_size), "answer NLL", progress):
            batch = pad_batch([encoded[i] for i in chunk], pad, side="right")
            batch = {k: v.to(device) for k, v in batch.items()}
            sums, counts = answer_nll_sums(model, batch)
            per_item = sums / counts.clamp(min=1)
            out.extend(float(x) for x in per_item.cpu())
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def greedy_answers(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    *,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    system_prompt: str | None = None,
    progress: bool = False,
) -> list[str]:
    """Greedy answers to ``questions`` (chat template with the generation prompt)."""
    was_training = model.training
    model.eval()
    device = _device(model)
    pad = pad_token_id(tokenizer)
    prompts = [torch.tensor(encode_prompt(tokenizer, q, system_prompt), dtype=torch.long) for q in questions]
    # longest first keeps padding low and makes the slowest batch show up early in the bar
    order = sorted(range(len(prompts)), key=lambda i: -prompts[i].shape[0])
    answers: dict[int, str] = {}
    try:
        for chunk in _progress(_chunks(len(order), batch_size), -(-len(order) // batch_size), "generate", progress):
            idx = [order[i] for i in chunk]
            batch = pad_batch(
                [{"input_ids": prompts[i], "attention_mask": torch.ones_like(prompts[i])} for i in idx], pad, side="left"
            )
            batch = {k: v.to(device) for k, v in batch.items()}
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
            )
            new = generated[:, batch["input_ids"].shape[1]:]
            for i, row in zip(idx, new):
                answers[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    finally:
        model.train(was_training)
    return [answers[i] for i in range(len(questions))]


@dataclass
class TruthItem:
    question: str
    paraphrased_answer: str
    perturbed_answers: Sequence[str]


def truth_ratios(
    model: Any,
    tokenizer: Any,
    items: Sequence[TruthItem],
    *,
    max_length: int = 512,
    batch_size: int = 8,
    system_prompt: str | None = None,
    progress: bool = False,
) -> list[float]:
    """Per-item ``exp(nll(paraphrased) - mean_j nll(perturbed_j))`` = P(perturbed)/P(paraphrased)."""
    import math

    para = answer_nll(model, tokenizer, [(it.question, it.paraphrased_answer) for it in items],
                      max_length=max_length, batch_size=batch_size, system_prompt=system_prompt, progress=progress)
    flat = [(it.question, p) for it in items for p in it.perturbed_answers]
    pert = answer_nll(model, tokenizer, flat, max_length=max_length, batch_size=batch_size,
                      system_prompt=system_prompt, progress=progress)
    ratios, pos = [], 0
    for it, para_nll in zip(items, para):
        n = len(it.perturbed_answers)
        mean_pert = sum(pert[pos:pos + n]) / n
        pos += n
        wrong, correct = math.exp(-mean_pert), math.exp(-para_nll)
        ratios.append(wrong / (correct + 1e-10))
    return ratios


def forget_quality(target_truth_ratios: Sequence[float], retain_truth_ratios: Sequence[float]) -> dict[str, float]:
    """TOFU forget quality: the KS-test p-value between the two models' truth ratios."""
    from scipy.stats import ks_2samp

    res = ks_2samp(list(target_truth_ratios), list(retain_truth_ratios))
    return {"forget_quality": float(res.pvalue), "ks_statistic": float(res.statistic)}


def memorisation_report(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    max_new_tokens: int = 96,
    max_length: int = 512,
    batch_size: int = 8,
    system_prompt: str | None = None,
    progress: bool = False,
    ids: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Greedy answers -> ROUGE-L recall, and answer NLL, for ``pairs`` of (question, gold answer).

    Returns ``{"n", "rouge_l_recall", "nll", "items": [{id, question, answer, generated,
    rouge_l_recall, nll}]}``; the means are over items.
    """
    if not pairs:
        return {"n": 0, "rouge_l_recall": None, "nll": None, "items": []}
    nll = answer_nll(model, tokenizer, pairs, max_length=max_length, batch_size=batch_size,
                     system_prompt=system_prompt, progress=progress)
    gen = greedy_answers(model, tokenizer, [q for q, _ in pairs], max_new_tokens=max_new_tokens,
                         batch_size=batch_size, system_prompt=system_prompt, progress=progress)
    ids = list(ids) if ids is not None else list(range(len(pairs)))
    items = []
    for i, ((q, a), g, loss) in enumerate(zip(pairs, gen, nll)):
        items.append({"id": ids[i], "question": q, "answer": a, "generated": g,
                      "rouge_l_recall": rouge_l_recall(g, a), "nll": loss})
    n = len(items)
    return {
        "n": n,
        "rouge_l_recall": sum(it["rouge_l_recall"] for it in items) / n,
        "nll": sum(it["nll"] for it in items) / n,
        "items": items,
    }
