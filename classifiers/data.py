"""Policy data -> training text: what each target is given by, and what must be kept.

The files are read by ``classifiers.sources`` (formats, row ranges, errors naming the field); this
module turns their rows into the detector's exemplar sentences and documents.

A target is given the way a user would give it: names, aliases, an optional description, optional
example queries, optional forget documents (QA pairs, an intro, passages, any text), optional keep
documents. Every read error names the policy field (``targets.2.forget_data.0.path``).

Formats (``DataSource.format``):

=============  ==============================================================================
tofu_qa        JSON Lines (or a JSON array) of ``{question, answer}``; both become exemplars
rwku_intro     RWKU ``intro.json``: ``[{intro, target}]``
rwku_passage   RWKU ``passage.json``: ``[{text}]``; split into sentences
json_text      a JSON array (or JSON Lines) of objects; ``field`` names the text key
jsonl_text     the same (kept for compatibility)
text           a plain text file; blank-line separated paragraphs, split into sentences
=============  ==============================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from classifiers.sources import parse_rows, read_qa, read_texts
from classifiers.text import clean, split_sentences
from guard.errors import ConfigError
from guard.policy import DataSource, Policy, Target

__all__ = ["TargetTexts", "dedupe", "in_half", "parse_rows", "policy_negatives", "read_source", "target_texts"]


@dataclass
class TargetTexts:
    target_id: str
    names: tuple[str, ...]
    documents: list[str] = field(default_factory=list)   # raw forget documents (for entity mining)
    positives: list[str] = field(default_factory=list)   # exemplars from forget data (sentences, QA)
    queries: list[str] = field(default_factory=list)     # example queries given by the user
    keep: list[str] = field(default_factory=list)        # the target's own keep data
    summary: str = ""                                    # intro/description: describes the target itself
    passage_sentences: list[str] = field(default_factory=list)  # sentences of long documents (subset of positives)


def read_source(src: DataSource, param: str) -> tuple[list[str], list[str]]:
    """(exemplar texts, raw documents) of one data source (read by ``classifiers.sources``)."""
    if src.format == "tofu_qa":
        texts: list[str] = []
        docs: list[str] = []
        for qa in read_qa(src, param, allow_empty=src.rows is None):
            texts += [clean(qa.question), clean(qa.answer)]
            docs.append(f"{clean(qa.question)} {clean(qa.answer)}")
        return _half([t for t in texts if t], src.half), docs
    rows = read_texts(src, param)
    if src.format == "text":
        docs = [clean(r.text) for r in rows if clean(r.text)]
        return _half([s for d in docs for s in split_sentences(d)], src.half), docs
    texts, docs = [], []
    for r in rows:
        if src.format == "rwku_intro":
            texts += split_sentences(r.text, min_chars=1)
            docs.append("INTRO: " + clean(r.text))
        elif src.format == "rwku_passage":
            texts += split_sentences(r.text)
            docs.append(clean(r.text))
        else:  # json_text / jsonl_text
            texts += split_sentences(r.text, min_chars=1) if len(r.text) > 400 else [clean(r.text)]
            docs.append(clean(r.text))
    if src.rows is not None and not texts:
        raise ConfigError(f"rows {src.rows!r} select nothing from {src.path} ({len(rows)} rows)", param=f"{param}.rows")
    return _half([t for t in texts if t], src.half), docs


def in_half(text: str, half: str) -> bool:
    import hashlib

    bit = hashlib.blake2b(text.encode("utf-8"), digest_size=1).digest()[0] & 1
    return bit == (0 if half == "a" else 1)


def _half(texts: list[str], half: str | None) -> list[str]:
    return texts if half is None else [t for t in texts if in_half(t, half)]


def target_texts(target: Target, index: int) -> TargetTexts:
    base = f"targets.{index}"
    out = TargetTexts(target_id=target.id, names=target.all_names)
    summaries: list[str] = []
    for j, src in enumerate(target.forget_data):
        texts, docs = read_source(src, f"{base}.forget_data.{j}")
        out.positives += texts
        if src.format in ("rwku_passage", "text"):
            out.passage_sentences += texts
        for d in docs:
            if d.startswith("INTRO: "):
                summaries.append(d[7:])
            else:
                out.documents.append(d)
    if target.description:
        out.positives += split_sentences(target.description, min_chars=1)
        summaries.append(clean(target.description))
    out.summary = " ".join(summaries)
    out.queries = [clean(q) for q in target.example_queries if clean(q)]
    for j, src in enumerate(target.keep_data):
        texts, _ = read_source(src, f"{base}.keep_data.{j}")
        out.keep += texts
    out.positives = _dedupe(out.positives)
    return out


def policy_negatives(policy: Policy) -> list[str]:
    texts: list[str] = []
    for j, src in enumerate(getattr(policy.detector, "negatives", ()) or ()):
        t, _ = read_source(src, f"detector.negatives.{j}")
        texts += t
    return _dedupe(texts)


def _dedupe(texts: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for t in texts:
        if t and t not in seen:
            seen.add(t)
            out.append(t)
    return out


def dedupe(texts: Sequence[str]) -> list[str]:
    return _dedupe(texts)
