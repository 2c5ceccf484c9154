"""Cheap de-obfuscation before screening: what a request says once the disguise is taken off.

Jailbreaks that hide a forget question from a text classifier without hiding it from the model:
base64 payloads ("decode this and answer it: QmFzaWwg..."), leetspeak ("B4s1l M4hf0uz"), snake_case
("Basil_Mahfouz", also the only form a chat message's ``name`` may take at OpenAI), zero-width
characters inside a name, look-alike letters from other scripts (Cyrillic "а" for Latin "a"),
full-width or mathematical letters. ``deobfuscate(texts)`` returns the texts with all of that undone
(or ``None`` when there was nothing to undo, the usual case); ``NormalizingDetector`` screens the
original texts and, if they are clean, the de-obfuscated ones.

All of it is linear-time string work (no model, no pattern that can backtrack over its input): quoted
spans are found by scanning for each opening quote and its closing one, and every candidate list is
capped per text. The character-level folding (invisible characters, look-alike letters, dash and
space classes) comes from ``classifiers.unicode_fold``, the data the name matcher uses; base64
decoding from ``classifiers.decoders`` (line-broken and grouped runs, nesting with a bound).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

from classifiers.base import Deadline, Detector, Verdict
from classifiers.decoders import MAX_DEPTH, base64_payloads
from classifiers.text import split_sentences
from classifiers.unicode_fold import unconfuse

__all__ = ["MAX_DEPTH", "NormalizingDetector", "across_turns", "base64_payloads", "deobfuscate", "pieces",
           "quoted_spans", "unleet", "unmask"]

MAX_PIECE_WORDS = 64         # longer texts are already screened in windows and sentence by sentence
MAX_PIECE_CHARS = 8192       # ... and so are texts of a few very long "words"
MAX_PIECES = 64
MAX_QUOTED = 64              # quoted spans taken per text
MIN_QUOTED_CHARS = 8
TURN_EDGE_CHARS = 4096       # how much of a turn's start/end is read for its first/last sentence
# opening quote -> closing quote
QUOTE_PAIRS = (('"', '"'), ("\u201c", "\u201d"), ("\u00ab", "\u00bb"))

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "8": "b"})
_LEET_CHARS = frozenset("0134578@$")
# a "word" that mixes letters with leet characters: B4s1l, M4hf0uz, @uthor, 4l-Kuw41t1 (per part)
_TOKEN_RE = re.compile(r"[A-Za-z0-9@$]+")
_CLAUSE_RE = re.compile(r"\n+|:\s+")


def _unleet_token(m: re.Match[str]) -> str:
    tok = m.group(0)
    if tok.isdigit() or not any(c.isalpha() for c in tok) or not any(c in _LEET_CHARS for c in tok):
        return tok
    return tok.translate(_LEET)


def unleet(text: str) -> str:
    """Undo leetspeak in words that mix letters and digits/symbols; numbers stay numbers."""
    return _TOKEN_RE.sub(_unleet_token, text)


def unmask(text: str) -> str:
    """NFKC (full-width / mathematical letters), drop invisible characters, fold dash and space classes,
    map look-alike letters to the ASCII letters they imitate, underscores to spaces, undo leetspeak."""
    out = unconfuse(unicodedata.normalize("NFKC", text)) if not text.isascii() else text
    return unleet(out.replace("_", " "))  # Basil_Mahfouz: snake_case hides words


def quoted_spans(text: str, limit: int = MAX_QUOTED) -> list[str]:
    """The spans of ``text`` between matching quotes ("...", \u201c...\u201d, \u00ab...\u00bb), at least
    ``MIN_QUOTED_CHARS`` long, in text order, at most ``limit``.

    A scan, not a pattern: each opening quote is paired with the next closing one by ``str.find``;
    a span too short to count moves on to the next opening quote, a counted one past its closing
    quote, and an opening quote with no closing one after it ends the search for that kind. So each
    character is looked at a bounded number of times, however many quotes are unmatched."""
    found: list[tuple[int, str]] = []
    for opening, closing in QUOTE_PAIRS:
        taken = 0
        i = text.find(opening)
        while i >= 0 and taken < limit:
            j = text.find(closing, i + 1)
            if j < 0:
                break
            inner = text[i + 1:j].strip()
            if len(inner) >= MIN_QUOTED_CHARS:
                found.append((i, inner))
                taken += 1
                i = text.find(opening, j + 1)
            else:
                i = text.find(opening, i + 1)
    found.sort(key=lambda f: f[0])
    return [span for _, span in found[:limit]]


def pieces(text: str) -> list[str]:
    """The parts of a short text a jailbreak wraps a question in: its lines, sentences, clauses after a
    colon, quoted spans. Empty for a single-piece text (nothing new to screen) and for long texts."""
    if len(text) > MAX_PIECE_CHARS or len(text.split()) > MAX_PIECE_WORDS:
        return []
    found: list[str] = quoted_spans(text)
    for chunk in _CLAUSE_RE.split(text):
        found += split_sentences(chunk, min_chars=1)
    out = list(dict.fromkeys(p.strip() for p in found if p.strip() and p.strip() != text.strip()))
    return out[:MAX_PIECES]


_QUOTES = "\"'“”«» ‘’"


def _head(text: str) -> str:
    """The first sentence of a turn, after a short label ("Part 2: ...")."""
    parts = [p for p in _CLAUSE_RE.split(text[:TURN_EDGE_CHARS].strip()) if p.strip()]
    if not parts:
        return ""
    body = parts[1] if len(parts) > 1 and len(parts[0].split()) <= 6 else parts[0]
    sents = split_sentences(body, min_chars=1)
    return sents[0].strip(_QUOTES) if sents else ""


def _tail(text: str) -> str:
    """The last sentence of a turn, after its last colon."""
    parts = [p for p in _CLAUSE_RE.split(text[-TURN_EDGE_CHARS:].strip()) if p.strip()]
    sents = split_sentences(parts[-1], min_chars=1) if parts else []
    return sents[-1].strip(_QUOTES) if sents else ""


def across_turns(texts: Sequence[str]) -> list[str]:
    """A question split over several turns, put back together: every quoted span of the request
    joined in order, and the end of each of the last turns joined to the start of each later one."""
    recent = [t for t in texts if t.strip()][-4:]
    if len(recent) < 2:
        return []
    out: list[str] = []
    quoted = [q for t in recent for q in quoted_spans(t)][-MAX_QUOTED:]
    if len(quoted) > 1:
        out.append(" ".join(quoted))
    heads = [_head(t) for t in recent]
    tails = [_tail(t) for t in recent]
    for i in range(len(recent)):
        for j in range(i + 1, len(recent)):
            if tails[i] and heads[j]:
                out.append(f"{tails[i]} {heads[j]}")
    return out


def deobfuscate(texts: Sequence[str]) -> list[str] | None:
    """The texts with obfuscation undone, decoded payloads appended; ``None`` if nothing changed."""
    out: list[str] = []
    extra: list[str] = []
    changed = False
    for text in texts:
        plain = unmask(text)
        changed = changed or plain != text
        out.append(plain)
        for payload in base64_payloads(text):
            extra.append(unmask(payload))
    if extra:
        return out + extra
    return out if changed else None


class NormalizingDetector:
    """Screens the request as sent; if that is clean, screens it again de-obfuscated and in pieces
    (a question diluted by the jailbreak text around it is screened on its own)."""

    def __init__(self, inner: Detector) -> None:
        self.inner = inner

    def screen(self, texts: Sequence[str], deadline: Deadline | None = None) -> Verdict:
        verdict = self.inner.screen(texts, deadline=deadline)
        if verdict.flagged:
            return verdict
        if deadline is not None:
            deadline.check("de-obfuscation")
        alt = deobfuscate(texts)
        base = alt or list(texts)
        parts = [p for t in base for p in pieces(t)] + across_turns(base)
        if alt is None and not parts:
            return verdict
        if deadline is not None:
            deadline.check("de-obfuscation")
        second = self.inner.screen((alt or []) + parts, deadline=deadline)
        if not second.flagged:
            return verdict
        return Verdict(flagged=True, target_id=second.target_id, score=second.score, neighbours=second.neighbours,
                       detail={**second.detail, "deobfuscated": True})

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        # warm(), model, threshold(), ... of the wrapped detector stay reachable (evaluation uses them)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
