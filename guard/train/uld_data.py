"""ULD's training data: the forget items of the chosen targets (QA pairs with their TOFU paraphrases,
or documents) and the retain items (keep data or ``--retain``), split by item into training and
held-out sets, and their encoding (labels on the answer, or on the whole document).

Choosing targets, reading the sources and the held-out split are the trainers' shared steps
(``guard.train.method_data``)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Sequence

from classifiers.sources import read_qa, read_texts
from guard.errors import ConfigError
from guard.train.method_data import SourceRef, forget_sources, holdout_split, keep_sources, select_targets, with_forget_data

MIN_ITEMS_TO_SPLIT = 4  # fewer items are not split: holding one out would cost a quarter of the data or more


@dataclass
class Item:
    """One QA pair (or text document, ``question=None``) with its variants for training."""

    question: str | None
    answer: str
    variants: list[tuple[str | None, str]] = field(default_factory=list)
    source: str = ""
    row: int = 0

    def pairs(self, with_variants: bool) -> list[tuple[str | None, str]]:
        return [(self.question, self.answer)] + (self.variants if with_variants else [])


def load_source(src: Any, param: str) -> list[Item]:
    """Items of a policy ``DataSource``: QA pairs (``tofu_qa``, with their paraphrases) or documents (the other formats)."""
    if src.format == "tofu_qa":
        items = []
        for rec in read_qa(src, param, purpose="ULD trains on question/answer pairs or documents"):
            variants: list[tuple[str | None, str]] = []
            pq, pa = rec.extra.get("paraphrased_question"), rec.extra.get("paraphrased_answer")
            if isinstance(pq, str) and pq.strip():
                variants.append((pq, rec.answer))
            if isinstance(pa, str) and pa.strip():
                variants.append((rec.question, pa))
            items.append(Item(rec.question, rec.answer, variants, rec.source, rec.row))
        return items
    docs = [Item(None, t.text, [], t.source, t.row) for t in read_texts(src, param) if t.text.strip()]
    if not docs:
        raise ConfigError(f"{src.path} rows {src.rows!r} select nothing", param=f"{param}.rows")
    return docs


def _source_entry(ref: SourceRef, n: int) -> dict[str, Any]:
    return {"path": str(ref.source.path), "format": ref.source.format, "rows": ref.source.rows, "items": n}


@dataclass
class UldData:
    forget_train: list[Item]
    forget_val: list[Item]
    retain_train: list[Item]
    retain_val: list[Item]
    sources: dict[str, Any]


def _split(items: list[Item], fraction: float, rng: random.Random) -> tuple[list[Item], list[Item]]:
    return holdout_split(items, fraction, rng, min_items=MIN_ITEMS_TO_SPLIT)


def collect_data(policy: Any, cfg: Any, *, targets: Sequence[str] | None = None,
                 retain: Sequence[SourceRef] | None = None) -> UldData:
    chosen = with_forget_data(select_targets(policy, targets, action="uld"),
                              "no selected target has forget_data: the ULD assistant learns the forget data, so add e.g. "
                              "forget_data: [{path: .../tofu/forget01_perturbed.json, format: tofu_qa}]")
    forget: list[Item] = []
    retain_items: list[Item] = []
    sources: dict[str, Any] = {"targets": [t.id for _, t in chosen], "forget": [], "retain": []}
    for ref in forget_sources(chosen):
        got = load_source(ref.source, ref.param)
        forget.extend(got)
        sources["forget"].append(_source_entry(ref, len(got)))
    retain_sources = list(retain or []) or keep_sources(chosen)
    if not retain_sources:
        raise ConfigError("ULD needs retain data (the assistant learns to be uniform on it, so the guard leaves those "
                          "answers alone): add keep_data to the target (e.g. TOFU retain_perturbed.json rows) or pass --retain",
                          param="keep_data")
    for ref in retain_sources:
        got = load_source(ref.source, ref.param)
        retain_items.extend(got)
        sources["retain"].append(_source_entry(ref, len(got)))
    forget_questions = {it.question for it in forget if it.question}
    retain_items = [it for it in retain_items if it.question not in forget_questions or it.question is None]
    # targets often share their keep data: one copy of each row, so a held-out retain item (the early stop's
    # and the alpha search's flagged-retain answers) is never also a training item
    seen: set[tuple[str, int]] = set()
    retain_items = [it for it in retain_items if not ((it.source, it.row) in seen or seen.add((it.source, it.row)))]
    rng = random.Random(cfg.seed)
    if cfg.max_retain and len(retain_items) > cfg.max_retain:
        retain_items = rng.sample(retain_items, cfg.max_retain)
    if not retain_items:
        raise ConfigError("the retain data is empty once forget questions are removed from it", param="keep_data")
    forget_train, forget_val = _split(forget, cfg.val_fraction, rng)
    retain_train, retain_val = _split(retain_items, cfg.val_fraction, rng)
    sources.update(n_forget=len(forget), n_forget_val=len(forget_val), n_retain=len(retain_items),
                   n_retain_val=len(retain_val), paraphrases=cfg.paraphrases,
                   n_forget_examples=sum(len(it.pairs(cfg.paraphrases)) for it in forget_train))
    return UldData(forget_train, forget_val, retain_train, retain_val, sources)


def encode(tokenizer: Any, question: str | None, answer: str, max_length: int, system_prompt: str | None) -> dict[str, Any]:
    """A QA pair in the chat template (labels on the answer), or a document (labels on all of it)."""
    import torch

    from guard.lm.chat_format import IGNORE_INDEX, encode_qa

    if question is not None:
        return encode_qa(tokenizer, question, answer, max_length, system_prompt)
    ids = list(tokenizer(answer, add_special_tokens=True)["input_ids"])[:max_length]
    labels = list(ids)
    if labels:
        labels[0] = IGNORE_INDEX
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.ones(len(ids), dtype=torch.long)}


def encode_items(tokenizer: Any, items: Sequence[Item], cfg: Any, with_variants: bool) -> list[dict[str, Any]]:
    out = []
    for it in items:
        for q, a in it.pairs(with_variants):
            try:
                out.append(encode(tokenizer, q, a, cfg.max_length, cfg.system_prompt))
            except ValueError as exc:
                raise ConfigError(f"{it.source} row {it.row}: {exc}", param="max_length") from None
    return out
