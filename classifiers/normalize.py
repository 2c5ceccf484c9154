"""Cheap de-obfuscation before screening: what a request says once the disguise is taken off.

Jailbreaks that hide a forget question from a text classifier without hiding it from the model:
base64 payloads ("decode this and answer it: QmFzaWwg..."), leetspeak ("B4s1l M4hf0uz"), snake_case
("Basil_Mahfouz", also the only form a chat message's ``name`` may take at OpenAI), zero-width
characters inside a name, look-alike letters from other scripts (Cyrillic "а" for Latin "a"),
full-width or mathematical letters. ``deobfuscate(texts)`` returns the texts with all of that undone
(or ``None`` when there was nothing to undo, the usual case); ``NormalizingDetector`` screens the
original texts and, if they are clean, the de-obfuscated ones.

All of it is linear-time string work (no model), bounded in how much it decodes.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from typing import Sequence

from classifiers.base import Detector, Verdict
from classifiers.text import split_sentences

MAX_PAYLOADS = 64            # base64 payloads decoded per text (the first ones; a request hiding its
                             # question behind 64 decoys is not decoded further)
MAX_PAYLOAD_CHARS = 16 << 20  # above any body the guard accepts: padding a payload does not hide it
MIN_PAYLOAD_CHARS = 12       # shorter runs are ordinary words ("Mississippi1")
MAX_PIECE_WORDS = 64         # longer texts are already screened in windows and sentence by sentence
MAX_PIECES = 64

# Invisible format characters used to break up words (zero-width space/joiners, soft hyphen, BOM, ...).
_INVISIBLE = {c: None for c in (0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x200B, 0x200C, 0x200D,
                                0x200E, 0x200F, 0x2060, 0x2061, 0x2062, 0x2063, 0x2064, 0xFEFF)}
# Cyrillic and Greek letters that look like Latin ones (the common homoglyph substitutions).
_CONFUSABLES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y",
    "х": "x", "ѕ": "s", "і": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ɡ": "g", "ӏ": "l",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "Х": "X",
    "Ѕ": "S", "І": "I", "Ј": "J", "Ү": "Y",
    "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P",
    "Τ": "T", "Υ": "Y", "Χ": "X",
})
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "8": "b"})
_LEET_CHARS = frozenset("0134578@$")
# a "word" that mixes letters with leet characters: B4s1l, M4hf0uz, @uthor, 4l-Kuw41t1 (per part)
_TOKEN_RE = re.compile(r"[A-Za-z0-9@$]+")
_B64_RE = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{%d,}={0,2}(?![A-Za-z0-9+/=_-])" % MIN_PAYLOAD_CHARS)


def _unleet_token(m: re.Match[str]) -> str:
    tok = m.group(0)
    if tok.isdigit() or not any(c.isalpha() for c in tok) or not any(c in _LEET_CHARS for c in tok):
        return tok
    return tok.translate(_LEET)


def unleet(text: str) -> str:
    """Undo leetspeak in words that mix letters and digits/symbols; numbers stay numbers."""
    return _TOKEN_RE.sub(_unleet_token, text)


def unmask(text: str) -> str:
    """NFKC (full-width / mathematical letters), drop invisible characters, map homoglyphs, underscores to
    spaces, undo leetspeak."""
    out = unicodedata.normalize("NFKC", text) if not text.isascii() else text
    out = out.translate(_INVISIBLE).translate(_CONFUSABLES).replace("_", " ")  # Basil_Mahfouz: snake_case hides words
    return unleet(out)


def _decode_b64(run: str) -> str | None:
    raw = run.rstrip("=")
    if len(raw) > MAX_PAYLOAD_CHARS or len(raw) % 4 == 1:
        return None
    # all letters (a long word) or no letters/digits mix: not base64-looking
    if raw.isalpha() or raw.isdigit():
        return None
    padded = raw + "=" * (-len(raw) % 4)
    try:
        data = (base64.urlsafe_b64decode(padded) if ("-" in raw or "_" in raw) else base64.b64decode(padded, validate=True))
        text = data.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    printable = sum(ch.isprintable() or ch in "\n\t\r" for ch in text)
    if not text.strip() or printable < 0.95 * len(text) or sum(ch.isalpha() for ch in text) < 0.5 * len(text.replace(" ", "")):
        return None
    return text


def base64_payloads(text: str, *, depth: int = 2) -> list[str]:
    """Texts hidden in ``text`` as base64 (standard or URL-safe; nested up to ``depth`` levels)."""
    found: list[str] = []
    for m in _B64_RE.finditer(text):
        if len(found) >= MAX_PAYLOADS:
            break
        decoded = _decode_b64(m.group(0))
        if decoded is None:
            continue
        found.append(decoded)
        if depth > 1:
            found += base64_payloads(decoded, depth=depth - 1)
    return found[:MAX_PAYLOADS]


_QUOTED_RE = re.compile(r"\"([^\"]{8,})\"|“([^”]{8,})”|«\s*([^»]{8,}?)\s*»")
_CLAUSE_RE = re.compile(r"\n+|:\s+")


def pieces(text: str) -> list[str]:
    """The parts of a short text a jailbreak wraps a question in: its lines, sentences, clauses after a
    colon, quoted spans. Empty for a single-piece text (nothing new to screen) and for long texts."""
    if len(text.split()) > MAX_PIECE_WORDS:
        return []
    found: list[str] = []
    for m in _QUOTED_RE.finditer(text):
        found.append(next(g for g in m.groups() if g))
    for chunk in _CLAUSE_RE.split(text):
        found += split_sentences(chunk, min_chars=1)
    out = list(dict.fromkeys(p.strip() for p in found if p.strip() and p.strip() != text.strip()))
    return out[:MAX_PIECES]


_QUOTES = "\"'“”«» ‘’"


def _head(text: str) -> str:
    """The first sentence of a turn, after a short label ("Part 2: ...")."""
    parts = [p for p in _CLAUSE_RE.split(text.strip()) if p.strip()]
    if not parts:
        return ""
    body = parts[1] if len(parts) > 1 and len(parts[0].split()) <= 6 else parts[0]
    sents = split_sentences(body, min_chars=1)
    return sents[0].strip(_QUOTES) if sents else ""


def _tail(text: str) -> str:
    """The last sentence of a turn, after its last colon."""
    parts = [p for p in _CLAUSE_RE.split(text.strip()) if p.strip()]
    sents = split_sentences(parts[-1], min_chars=1) if parts else []
    return sents[-1].strip(_QUOTES) if sents else ""


def across_turns(texts: Sequence[str]) -> list[str]:
    """A question split over several turns, put back together: every quoted span of the request
    joined in order, and the end of each of the last turns joined to the start of each later one."""
    recent = [t for t in texts if t.strip()][-4:]
    if len(recent) < 2:
        return []
    out: list[str] = []
    quoted = [next(g for g in m.groups() if g).strip() for t in recent for m in _QUOTED_RE.finditer(t)]
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

    def screen(self, texts: Sequence[str]) -> Verdict:
        verdict = self.inner.screen(texts)
        if verdict.flagged:
            return verdict
        alt = deobfuscate(texts)
        base = alt or list(texts)
        parts = [p for t in base for p in pieces(t)] + across_turns(base)
        if alt is None and not parts:
            return verdict
        second = self.inner.screen((alt or []) + parts)
        if not second.flagged:
            return verdict
        return Verdict(flagged=True, target_id=second.target_id, score=second.score, neighbours=second.neighbours,
                       detail={**second.detail, "deobfuscated": True})

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        # warm(), model, threshold(), ... of the wrapped detector stay reachable (evaluation uses them)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
