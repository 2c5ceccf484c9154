"""Text helpers shared by training and screening: folding, sentence splitting, windows."""

from __future__ import annotations

import re
import unicodedata
from typing import Iterator

_SENT_RE = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9¿¡])")
_WS_RE = re.compile(r"\s+")
_WORD_RE = re.compile(r"\w+(?:['\u2019\-]\w+)*")


def fold(text: str) -> str:
    """Lower-case and strip accents (NFKD, drop combining marks)."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def clean(text: str) -> str:
    return _WS_RE.sub(" ", text).strip()


def split_sentences(text: str, *, min_chars: int = 30, max_chars: int = 400) -> list[str]:
    """Sentences of a passage; short fragments are merged into the previous one, long ones cut."""
    text = clean(text)
    if not text:
        return []
    parts = [p.strip() for p in _SENT_RE.split(text) if p.strip()]
    merged: list[str] = []
    for part in parts:
        if merged and (len(part) < min_chars or len(merged[-1]) < min_chars):
            merged[-1] = f"{merged[-1]} {part}"
        else:
            merged.append(part)
    out: list[str] = []
    for sent in merged:
        while len(sent) > max_chars:
            cut = sent.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            out.append(sent[:cut].strip())
            sent = sent[cut:].strip()
        if sent:
            out.append(sent)
    return out


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def windows(text: str, *, size: int = 64, stride: int = 32) -> Iterator[str]:
    """Overlapping word windows of a long text (``size`` words, every ``stride`` words).

    Sentence-aware as well: every sentence of the text is also yielded on its own, so a short
    question buried in filler is screened in isolation, not diluted by its neighbours.
    """
    toks = text.split()
    if len(toks) <= size:
        yield text
        return
    seen: set[str] = set()
    for start in range(0, max(1, len(toks) - size + stride), stride):
        chunk = " ".join(toks[start:start + size])
        if chunk and chunk not in seen:
            seen.add(chunk)
            yield chunk
    for sent in split_sentences(text, min_chars=1, max_chars=size * 8):
        if sent not in seen and len(sent.split()) <= size:
            seen.add(sent)
            yield sent
