"""The optional ULD report (``guard-train uld --eval N``): greedy answers with and without the logit
difference on forget and retain questions, ROUGE-L against the gold and the plain answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from guard.train.uld_data import UldData


def generation_report(model_dir: Path, tokenizer: Any, assistant: Any, data: UldData, cfg: Any,
                      *, progress: bool = True) -> dict[str, Any]:
    """ROUGE-L of greedy answers: forget items vs gold (should drop), retain items vs the plain answer (should stay)."""
    import torch
    from transformers import AutoModelForCausalLM

    from guard.interventions.uld_decoding import AssistantRuntime, ULDLogitsProcessor, ULDSettings
    from guard.lm.chat_format import encode_prompt
    from guard.lm.rouge import rouge_l_recall

    target = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    runtime = AssistantRuntime(assistant)
    settings = ULDSettings(alpha=cfg.alpha, top_k=cfg.top_k, min_prob_ratio=cfg.min_prob_ratio)
    forget = [it for it in data.forget_train + data.forget_val if it.question][: cfg.eval_items]
    retain = [it for it in data.retain_val + data.retain_train if it.question][: cfg.eval_items]

    def answer(question: str, uld: bool) -> str:
        ids = torch.tensor([encode_prompt(tokenizer, question, cfg.system_prompt)])
        kwargs: dict[str, Any] = {}
        if uld:
            kwargs["logits_processor"] = [ULDLogitsProcessor(runtime, settings)]
        with torch.no_grad():
            out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=cfg.eval_max_new_tokens,
                                  do_sample=False, temperature=None, top_p=None, top_k=None,
                                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, **kwargs)
        return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    rows = []
    todo = [("forget", it) for it in forget] + [("retain", it) for it in retain]
    iterator = todo
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(todo, desc="uld report", leave=False)
    for kind, it in iterator:
        plain, guarded = answer(it.question, False), answer(it.question, True)
        rows.append({"set": kind, "question": it.question, "gold": it.answer, "plain": plain, "uld": guarded,
                     "rouge_plain_vs_gold": rouge_l_recall(plain, it.answer), "rouge_uld_vs_gold": rouge_l_recall(guarded, it.answer),
                     "rouge_uld_vs_plain": rouge_l_recall(guarded, plain)})

    def mean(kind: str, key: str) -> float | None:
        vals = [r[key] for r in rows if r["set"] == kind]
        return round(sum(vals) / len(vals), 4) if vals else None

    summary = {kind: {"n": sum(r["set"] == kind for r in rows), **{k: mean(kind, k) for k in
               ("rouge_plain_vs_gold", "rouge_uld_vs_gold", "rouge_uld_vs_plain")}} for kind in ("forget", "retain")}
    return {"summary": summary, "items": rows}
