"""How much a model has memorised a set of QA pairs: a quick report for fine-tuned models.

* greedy answers to the chat-templated questions and their ROUGE-L recall against the gold answer;
* the mean per-token NLL of each gold answer (the ``avg_loss`` behind TOFU's Probability metric);
* TOFU's per-item truth ratio on items with paraphrased and perturbed answers.

The pieces come from the LM toolkit (``guard.lm``: NLL, generation, ROUGE) and the truth ratio from
the TOFU metrics (``guard.eval.tofu_metrics``); these are sanity numbers for training runs, the full
TOFU evaluation is ``guard-eval tofu``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from guard.eval.tofu_metrics import truth_ratios as tofu_truth_ratios
from guard.lm.chat_format import encode_prompt
from guard.lm.generate import greedy_from_ids
from guard.lm.nll import qa_mean_nll
from guard.lm.rouge import rouge_l_recall


@dataclass
class TruthItem:
    question: str
    paraphrased_answer: str
    perturbed_answers: Sequence[str]


def _bar(total: int, desc: str, enabled: bool) -> tuple[Callable[[int], None] | None, Callable[[], None]]:
    if not enabled:
        return None, lambda: None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, leave=False)
    return bar.update, bar.close


def answer_nll(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, max_length: int = 512, batch_size: int = 8,
               system_prompt: str | None = None, progress: bool = False) -> list[float]:
    """Mean per-token NLL of each answer given its question (``guard.lm.nll.qa_mean_nll``, with a bar)."""
    update, close = _bar(len(pairs), "answer NLL", progress)
    try:
        return qa_mean_nll(model, tokenizer, pairs, max_length=max_length, batch_size=batch_size,
                           system_prompt=system_prompt, on_batch=update)
    finally:
        close()


def greedy_answers(model: Any, tokenizer: Any, questions: Sequence[str], *, max_new_tokens: int = 96, batch_size: int = 8,
                   system_prompt: str | None = None, progress: bool = False) -> list[str]:
    """Greedy answers to ``questions`` (chat template with the generation prompt), up to EOS."""
    prompts = [encode_prompt(tokenizer, q, system_prompt) for q in questions]
    update, close = _bar(len(prompts), "generate", progress)
    try:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return [a.strip() for a in greedy_from_ids(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                                    batch_size=batch_size, stop=eos, on_batch=update)]
    finally:
        close()


def truth_ratios(model: Any, tokenizer: Any, items: Sequence[TruthItem], *, max_length: int = 512, batch_size: int = 8,
                 system_prompt: str | None = None, progress: bool = False) -> list[float]:
    """Per-item TOFU truth ratio ``P(perturbed) / P(paraphrased)`` (``guard.eval.tofu_metrics.truth_ratios``)."""
    common = dict(max_length=max_length, batch_size=batch_size, system_prompt=system_prompt, progress=progress)
    para = answer_nll(model, tokenizer, [(it.question, it.paraphrased_answer) for it in items], **common)
    pert = answer_nll(model, tokenizer, [(it.question, p) for it in items for p in it.perturbed_answers], **common)
    grouped, pos = [], 0
    for it in items:
        grouped.append(pert[pos:pos + len(it.perturbed_answers)])
        pos += len(it.perturbed_answers)
    return [float(r) for r in tofu_truth_ratios(para, grouped)] if items else []


def memorisation_report(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, max_new_tokens: int = 96,
                        max_length: int = 512, batch_size: int = 8, system_prompt: str | None = None, progress: bool = False,
                        ids: Sequence[Any] | None = None) -> dict[str, Any]:
    """Greedy answers -> ROUGE-L recall, and answer NLL, for ``pairs`` of (question, gold answer).

    Returns ``{"n", "rouge_l_recall", "nll", "items": [{id, question, answer, generated,
    rouge_l_recall, nll}]}``; the means are over items.
    """
    if not pairs:
        return {"n": 0, "rouge_l_recall": None, "nll": None, "items": []}
    nll = answer_nll(model, tokenizer, pairs, max_length=max_length, batch_size=batch_size, system_prompt=system_prompt,
                     progress=progress)
    gen = greedy_answers(model, tokenizer, [q for q, _ in pairs], max_new_tokens=max_new_tokens, batch_size=batch_size,
                         system_prompt=system_prompt, progress=progress)
    ids = list(ids) if ids is not None else list(range(len(pairs)))
    items = [{"id": ids[i], "question": q, "answer": a, "generated": g, "rouge_l_recall": rouge_l_recall(g, a), "nll": loss}
             for i, ((q, a), g, loss) in enumerate(zip(pairs, gen, nll))]
    n = len(items)
    return {"n": n, "rouge_l_recall": sum(it["rouge_l_recall"] for it in items) / n,
            "nll": sum(it["nll"] for it in items) / n, "items": items}
