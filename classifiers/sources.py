"""Reading a policy's data sources (``DataSource``: a file, its format, a row range): the one reader
behind the detector's training texts (``classifiers.data``) and the unlearning trainers' forget and
retain data (``guard.train``). Every error names the policy field it comes from
(``targets.2.forget_data.0.path``) and the fix.

=============  ==============================================================================
tofu_qa        JSON Lines (or a JSON array) of ``{question, answer, ...}``
rwku_intro     RWKU ``intro.json``: ``[{intro, target}]``
rwku_passage   RWKU ``passage.json``: ``[{text}]``
json_text      a JSON array (or JSON Lines) of objects; ``field`` names the text key
jsonl_text     the same (kept for compatibility)
text           a plain text file; its rows are its blank-line separated paragraphs
=============  ==============================================================================

It lives in ``classifiers`` because the detector needs it and ``classifiers`` depends on nothing in
``guard`` above the policy model; ``guard.train`` imports it from here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guard.errors import ConfigError
from guard.policy import DataSource

TEXT_KEYS = {"rwku_intro": "intro", "rwku_passage": "text"}


@dataclass(frozen=True)
class QARecord:
    """One row of a ``tofu_qa`` source; ``extra`` keeps its other fields (paraphrases, perturbed answers)."""

    question: str
    answer: str
    source: str
    row: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TextRecord:
    """One row of a document source: an intro, a passage, a paragraph, a text field."""

    text: str
    source: str
    row: int


def row_slice(text: str | None) -> slice | None:
    """'START:END[:STEP]' -> the slice it names (``None`` for no range)."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(":")]
    vals: list[int | None] = [int(p) if p else None for p in parts]
    while len(vals) < 3:
        vals.append(None)
    return slice(vals[0], vals[1], vals[2])


def parse_rows(text: str | None, n: int) -> range:
    """'START:END[:STEP]' -> the rows of an n-row file (python slice semantics; ``None``: all)."""
    rows = row_slice(text)
    return range(n) if rows is None else range(n)[rows]


def _read_text(path: Path, param: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"data file {path} does not exist (paths in a policy are relative to the policy file)", param=param) from None
    except OSError as exc:
        raise ConfigError(f"cannot read data file {path}: {exc.strerror}", param=param) from None


def read_records(path: Path, param: str) -> list[Any]:
    """The records of a JSON array or JSON Lines file (``param`` names the policy field in errors)."""
    raw = _read_text(Path(path), param)
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


def read_paragraphs(path: Path, param: str) -> list[str]:
    """The blank-line separated paragraphs of a text file (raw, not cleaned)."""
    return [p for p in _read_text(Path(path), param).split("\n\n") if p.strip()]


def string_field(record: Any, key: str, path: Path, row: int, param: str) -> str:
    if not isinstance(record, dict):
        raise ConfigError(f"{path} row {row} is not a JSON object", param=param)
    if key not in record:
        raise ConfigError(f"{path} row {row} has no {key!r} field (it has: {', '.join(sorted(record)) or 'nothing'})", param=param)
    value = record[key]
    if not isinstance(value, str):
        raise ConfigError(f"{path} row {row}: field {key!r} must be a string", param=param)
    return value


def _empty(src: DataSource, n: int, param: str) -> ConfigError:
    return ConfigError(f"rows {src.rows!r} select nothing from {src.path} ({n} rows)", param=f"{param}.rows")


def read_qa(src: DataSource, param: str, *, purpose: str = "this needs question/answer pairs",
            allow_empty: bool = False) -> list[QARecord]:
    """The (question, answer) rows of a ``tofu_qa`` source, sliced by ``rows``. ``purpose`` says in the
    error for another format why QA pairs are needed ("SPUL trains on question/answer data"). An empty
    selection is an error unless ``allow_empty`` (the detector accepts an empty file without ``rows``)."""
    if src.format != "tofu_qa":
        raise ConfigError(f"{purpose}; {src.path} has format {src.format!r} (use a 'tofu_qa' source: JSON Lines of "
                          f"{{question, answer}})", param=f"{param}.format")
    path = Path(src.path)
    records = read_records(path, f"{param}.path")
    out = []
    for i in parse_rows(src.rows, len(records)):
        rec = records[i]
        q = string_field(rec, "question", path, i, f"{param}.format")
        a = string_field(rec, "answer", path, i, f"{param}.format")
        out.append(QARecord(q, a, str(path), i, {k: v for k, v in rec.items() if k not in ("question", "answer")}))
    if not out and not allow_empty:
        raise _empty(src, len(records), param)
    return out


def read_texts(src: DataSource, param: str) -> list[TextRecord]:
    """The text of each selected row of a document source (any format but ``tofu_qa``): the paragraphs
    of a ``text`` file, the ``intro``/``text`` of RWKU rows, the ``field`` of ``json_text`` rows."""
    path = Path(src.path)
    if src.format == "tofu_qa":
        raise ConfigError(f"{path} is a question/answer source (tofu_qa), not documents", param=f"{param}.format")
    if src.format == "text":
        paras = read_paragraphs(path, f"{param}.path")
        out = [TextRecord(paras[i], str(path), i) for i in parse_rows(src.rows, len(paras))]
        if src.rows is not None and not out:
            raise _empty(src, len(paras), param)
        return out
    if src.format in ("json_text", "jsonl_text") and not src.field:
        raise ConfigError(f"format {src.format!r} needs 'field': the key holding the text", param=f"{param}.field")
    key = src.field or TEXT_KEYS[src.format]
    where = f"{param}.field" if src.field else f"{param}.format"
    records = read_records(path, f"{param}.path")
    out = [TextRecord(rec if isinstance(rec, str) else string_field(rec, key, path, i, where), str(path), i)
           for i in parse_rows(src.rows, len(records)) for rec in [records[i]]]
    if src.rows is not None and not out:
        raise _empty(src, len(records), param)
    return out
