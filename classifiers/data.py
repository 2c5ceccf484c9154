"""Policy data -> training text: what each target is given by, and what must be kept.

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

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from classifiers.text import clean, split_sentences
from guard.errors import ConfigError
from guard.policy import DataSource, Policy, Target


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


def parse_rows(text: str | None, n: int) -> range:
    """'START:END[:STEP]' -> the rows of an n-row file (python slice semantics)."""
    if text is None:
        return range(n)
    parts = [p.strip() for p in text.split(":")]
    vals = [int(p) if p else None for p in parts]
    while len(vals) < 3:
        vals.append(None)
    return range(n)[slice(vals[0], vals[1], vals[2])]


def _read_records(path: Path, param: str) -> list[Any]:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"data file {path} does not exist (paths in a policy are relative to the policy file)", param=param) from None
    except OSError as exc:
        raise ConfigError(f"cannot read data file {path}: {exc.strerror}", param=param) from None
    stripped = raw.lstrip()
    if not stripped:
        return []
    if stripped[0] == "[":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}", param=param) from None
        if not isinstance(data, list):
            raise ConfigError(f"{path} must hold a JSON array", param=param)
        return data
    out = []
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} line {lineno} is not valid JSON ({exc.msg}); expected JSON Lines or a JSON array", param=param) from None
    return out


def _field(record: Any, key: str, path: Path, row: int, param: str) -> str:
    if not isinstance(record, dict):
        raise ConfigError(f"{path} row {row} is not a JSON object", param=param)
    if key not in record:
        raise ConfigError(f"{path} row {row} has no {key!r} field (it has: {', '.join(sorted(record)) or 'nothing'})", param=param)
    value = record[key]
    if not isinstance(value, str):
        raise ConfigError(f"{path} row {row}: field {key!r} must be a string", param=param)
    return value


def read_source(src: DataSource, param: str) -> tuple[list[str], list[str]]:
    """(exemplar texts, raw documents) of one data source."""
    path = Path(src.path)
    fmt = src.format
    if fmt == "text":
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"data file {path} does not exist (paths in a policy are relative to the policy file)", param=f"{param}.path") from None
        except OSError as exc:
            raise ConfigError(f"cannot read data file {path}: {exc.strerror}", param=f"{param}.path") from None
        paras = [clean(p) for p in raw.split("\n\n") if clean(p)]
        rows = parse_rows(src.rows, len(paras))
        docs = [paras[i] for i in rows]
        return _half([s for d in docs for s in split_sentences(d)], src.half), docs
    records = _read_records(path, f"{param}.path")
    rows = parse_rows(src.rows, len(records))
    texts: list[str] = []
    docs: list[str] = []
    for i in rows:
        rec = records[i]
        if fmt == "tofu_qa":
            q = _field(rec, "question", path, i, f"{param}.format")
            a = _field(rec, "answer", path, i, f"{param}.format")
            texts += [clean(q), clean(a)]
            docs.append(f"{clean(q)} {clean(a)}")
        elif fmt == "rwku_intro":
            intro = _field(rec, "intro", path, i, f"{param}.format")
            texts += split_sentences(intro, min_chars=1)
            docs.append("INTRO: " + clean(intro))
        elif fmt == "rwku_passage":
            text = _field(rec, "text", path, i, f"{param}.format")
            texts += split_sentences(text)
            docs.append(clean(text))
        elif fmt in ("json_text", "jsonl_text"):
            if not src.field:
                raise ConfigError(f"format {fmt!r} needs 'field': the key holding the text", param=f"{param}.field")
            text = _field(rec, src.field, path, i, f"{param}.field")
            texts += split_sentences(text, min_chars=1) if len(text) > 400 else [clean(text)]
            docs.append(clean(text))
        else:  # pragma: no cover - the schema forbids other values
            raise ConfigError(f"unknown data format {fmt!r}", param=f"{param}.format")
    if src.rows is not None and not texts:
        raise ConfigError(f"rows {src.rows!r} select nothing from {path} ({len(records)} rows)", param=f"{param}.rows")
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
