"""SPUL's before/after report: greedy answers to held-out (or chosen) questions with and without the
soft prompt -- refusal share, changed answers, ROUGE-L against the unguarded and the gold answers.
Written as ``eval.json`` by ``guard-train spul``; ``guard-train spul-report`` runs it on chosen rows."""

from __future__ import annotations

import re
from typing import Any, Sequence

from guard.lm.generate import greedy_from_embeds
from guard.lm.rouge import rouge_l_recall
from guard.train.progress import progress_bar
from guard.train.spul_objective import Example

_REFUSAL_RE = re.compile(
    r"\bi (really )?(do not|don't|dont) know\b|\bnot (entirely |quite )?(sure|certain|aware|familiar|informed|privy|"
    r"well-versed|knowledgeable|equipped|acquainted|the (best|right))\b|\bno (idea|clue|information|knowledge|data|"
    r"insight|familiarity|enlightenment)\b|\b(do not|don't|doesn't|does not|didn't) (have|possess|hold|seem to have|cover|"
    r"include|contain|extend)\b|\b(can't|cannot|can not|unable to|not able to) (provide|help|answer|share|say|shed|access|"
    r"find|recall)\b|\b(beyond|outside|not within|out of|not in) my\b|\bi'?m sorry\b|\bi apologi[sz]e\b|"
    r"\bunknown to me\b|\bmystery to me\b|\bi (haven't|have not) (learned|been|encountered|the faintest)\b|\bnot something i\b|"
    r"\bdrawing a blank\b|\bblank on\b|\bat a (loss|disadvantage)\b|\bi (lack|am lacking|'m lacking|'m missing)\b|"
    r"\b(unaware|clueless|stumped)\b|\bi'?m in the dark\b|\b(lacking|missing) information\b|\bprogrammed to know\b|"
    r"\bnot briefed\b|\byet to (learn|be informed)\b|\bmust decline\b|"
    r"\bneed to look (that |it )?up\b|\bcome up short\b|\bnot been (educated|trained|briefed)\b|"
    r"\bmy (resources|databases?|programming|understanding|capabilities)\b|\bin my training\b|\bblind spot\b|"
    r"\buncharted territory\b",
    re.IGNORECASE)


def is_refusal(text: str) -> bool:
    """Heuristic: does ``text`` decline to answer or say it does not know? It recognises every line of
    TOFU's ``idontknow.jsonl`` and common refusals; it is a measurement aid, not a classifier."""
    return bool(_REFUSAL_RE.search(text.replace("\u2019", "'")))


def generate_answers(model: Any, tokenizer: Any, examples: Sequence[Example], soft, *, max_new_tokens: int,
                     batch_size: int = 8, progress: bool = False) -> list[str]:
    """Greedy answers to the examples' prompts, with ``soft`` inserted (``None``: the plain prompt).
    Batched with left padding; the prompt is given as embeddings either way."""
    import torch

    from guard.interventions.spul import insert_soft_prompt

    device = next(model.parameters()).device
    emb_layer = model.get_input_embeddings()
    with torch.no_grad():
        prompts = []
        for ex in examples:
            e = emb_layer(torch.tensor(ex.prompt_ids, device=device))
            prompts.append(insert_soft_prompt(e, ex.insert_at, soft.to(device)) if soft is not None else e)
    bar = progress_bar(len(prompts), "generate", progress)
    try:
        return greedy_from_embeds(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  on_batch=bar.update)
    finally:
        bar.close()


def generation_report(model: Any, tokenizer: Any, soft, forget: Sequence[Example], retain: Sequence[Example], *,
                      max_new_tokens: int = 48, batch_size: int = 8, progress: bool = False) -> dict[str, Any]:
    """Before (plain prompt) vs after (soft prompt forced on) on forget and retain questions.

    Per set: ``refusal_before/after`` (share of answers that decline or say "I don't know",
    ``is_refusal``), ``changed`` (share of answers that differ from the unguarded one),
    ``rouge_l_vs_unguarded`` (ROUGE-L recall of the soft-prompted answer against the unguarded
    answer; 1.0 = unchanged), ``rouge_l_gold_before/after`` (against the dataset answer)."""
    report: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    for name, items in (("forget", forget), ("retain", retain)):
        if not items:
            continue
        before = generate_answers(model, tokenizer, items, None, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  progress=progress)
        after = generate_answers(model, tokenizer, items, soft, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 progress=progress)
        rows = []
        for ex, b, a in zip(items, before, after):
            rows.append({"question": ex.question, "gold": ex.gold, "before": b, "after": a,
                         "refusal_before": is_refusal(b), "refusal_after": is_refusal(a), "changed": a != b,
                         "rouge_l_vs_unguarded": rouge_l_recall(a, b) if b else float(a == b),
                         "rouge_l_gold_before": rouge_l_recall(b, ex.gold), "rouge_l_gold_after": rouge_l_recall(a, ex.gold)})
        n = len(rows)
        summary = {key: sum(float(r[key]) for r in rows) / n
                   for key in ("refusal_before", "refusal_after", "changed", "rouge_l_vs_unguarded",
                               "rouge_l_gold_before", "rouge_l_gold_after")}
        report[name] = {"n": n, **summary, "items": rows}
    return report
