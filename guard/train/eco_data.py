"""The QA pairs ECO's search runs on: the forget QA of the chosen targets (every target whose action
is eco, or ``--target``), never-seen TOFU holdout QA for the level to match, tokenised once with
their clean prompt embeddings. Target choice and source reading are the trainers' shared steps
(``guard.train.method_data``, ``classifiers.sources``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from classifiers.sources import read_qa, row_slice
from guard.errors import ConfigError
from guard.train.method_data import forget_sources, select_targets

QA_PURPOSE = "guard-train eco needs question/answer pairs (format tofu_qa)"


@dataclass
class QAItem:
    question: str
    answer: str
    target_id: str | None
    names: tuple[str, ...]
    source: str


@dataclass
class Prepared:
    """One QA pair, tokenised once: the rendered prompt, its clean embeddings and the answer ids."""

    item: QAItem
    rendered: Any
    embeds: torch.Tensor
    answer_ids: list[int]


def load_source_qa(source: Any, where: str) -> list[tuple[str, str]]:
    """(question, answer) pairs of a policy ``DataSource`` in ``tofu_qa`` format."""
    return [(r.question, r.answer) for r in read_qa(source, where, purpose=QA_PURPOSE)]


def forget_items(policy: Any, target_ids: Sequence[str] | None) -> tuple[list[QAItem], list[str]]:
    """The forget QA of the chosen targets (default: every target whose action is eco)."""
    chosen = select_targets(policy, target_ids, action="eco", require_action=True)
    for i, target in chosen:
        if not target.forget_data:
            raise ConfigError(f"target {target.id!r} has no forget_data: the search needs its forget QA",
                              param=f"targets.{i}.forget_data")
    names = {t.id: t.all_names for _, t in chosen}
    items = [QAItem(q, a, ref.target_id, names[ref.target_id], f"{ref.source.path}[{ref.source.rows or ':'}]")
             for ref in forget_sources(chosen) for q, a in load_source_qa(ref.source, ref.param)]
    return items, [t.id for _, t in chosen]


def holdout_items(data_dir: Path, split: str, rows: str | None) -> list[QAItem]:
    from guard.data.tofu import load_qa

    return [QAItem(qa.question, qa.answer, None, (), f"tofu/{split}[{qa.index}]")
            for qa in load_qa(data_dir, split, row_slice(rows) if rows else None)]


def spread(items: list[Any], n: int | None) -> list[Any]:
    """At most ``n`` items, evenly spread over the list (keeps every target represented)."""
    if n is None or n >= len(items):
        return list(items)
    if n <= 0:
        return []
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def prepare(model: Any, tokenizer: Any, items: Sequence[QAItem], max_length: int = 512) -> list[Prepared]:
    from guard.engines.rendering import render_chat
    from guard.lm.chat_format import IGNORE_INDEX, encode_qa

    emb = model.get_input_embeddings()
    out = []
    for item in items:
        rendered = render_chat(tokenizer, [{"role": "user", "content": item.question}])
        enc = encode_qa(tokenizer, item.question, item.answer, max_length)
        labels = enc["labels"].tolist()
        prompt_len = next((i for i, t in enumerate(labels) if t != IGNORE_INDEX), len(labels))
        answer = labels[prompt_len:]
        if not answer or IGNORE_INDEX in answer:
            raise ConfigError(f"QA pair {item.source} has no answer tokens within 512 tokens", param="forget_data")
        if enc["input_ids"][:prompt_len].tolist() != rendered.token_ids:
            raise RuntimeError("the chat rendering and the QA encoding disagree on the prompt tokens")
        with torch.no_grad():
            embeds = emb(torch.tensor([rendered.token_ids]))[0].detach().float().clone()
        out.append(Prepared(item, rendered, embeds, answer))
    return out


def answer_head(items: list[Prepared], n: int | None) -> list[Prepared]:
    """The items with their answers cut to the first ``n`` tokens (the surrogate's scope)."""
    if n is None:
        return items
    return [Prepared(p.item, p.rendered, p.embeds, p.answer_ids[:n]) for p in items]
