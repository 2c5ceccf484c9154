"""Text helpers shared by training and screening: folding, sentence splitting, windows."""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Iterator

_SENT_RE = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9¿¡])")
_WS_RE = re.compile(r"\s+")
_WORD_RE = re.compile(r"\w+(?:['\u2019\-]\w+)*")
# Scripts written without spaces between words (Han, kana, Hangul incl. the jamo NFKD gives, Thai, Lao,
# Myanmar, Khmer, Tibetan, Yi): a name in them has no word boundary on that side ("我喜欢周杰伦的歌").
SPACELESS = ("\u0e00-\u0eff\u0f00-\u0fff\u1000-\u109f\u1100-\u11ff\u1780-\u17ff\u2e80-\u2fdf\u3040-\u30ff"
             "\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff\ua000-\ua4cf\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff"
             "\uff66-\uff9f\U00020000-\U0003134f")
_SPACELESS_RE = re.compile(f"[{SPACELESS}]")
# a boundary for an edge in a spaced script: the neighbour is not a letter/digit of a spaced script
# (so "Al" does not match "Also", while "Taylor Swift" matches in "我喜欢Taylor Swift的歌")
_LEFT = f"(?<![^\\W{SPACELESS}])"
_RIGHT = f"(?![^\\W{SPACELESS}])"


def fold(text: str) -> str:
    """Lower-case and strip accents (NFKD, drop combining marks)."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def fold_with_map(text: str) -> tuple[str, list[int]]:
    """``fold(text)`` and, for each of its characters, the index of the character of ``text`` it came from."""
    if text.isascii():
        return text.lower(), list(range(len(text)))
    out: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        for f in fold(ch):
            out.append(f)
            index.append(i)
    return "".join(out), index


def spaceless(ch: str) -> bool:
    return bool(_SPACELESS_RE.match(ch))


def name_alternation(names: Iterable[str]) -> str | None:
    """Regex source matching any of ``names`` (already folded) as a whole word, longest first.

    The word boundary is checked only on an edge whose character belongs to a spaced script and is
    a letter or digit; names in CJK/Thai/... match inside running text.
    """
    alts = sorted({n.strip() for n in names if n and n.strip()}, key=len, reverse=True)
    if not alts:
        return None
    runs: list[tuple[str, str, list[str]]] = []
    for a in alts:
        left = "" if spaceless(a[0]) or not a[0].isalnum() else _LEFT
        right = "" if spaceless(a[-1]) or not a[-1].isalnum() else _RIGHT
        if runs and runs[-1][:2] == (left, right):
            runs[-1][2].append(a)
        else:
            runs.append((left, right, [a]))
    return "|".join(f"{left}(?:{'|'.join(re.escape(a) for a in group)}){right}" for left, right, group in runs)


def prefix_trie(prefixes: Iterable[str]) -> str:
    """Regex source matching any of ``prefixes`` (literal strings) as a trie, one branch per next
    character: at a position where none can start, the match fails on the first character instead
    of trying each prefix in turn (an alternation of ~150 short prefixes was slower than a Python
    loop over a text's words; the trie is 1.5-2x faster, ``classifiers.names.NameFinder``)."""
    following: dict[str, list[str]] = {}
    ends_here = False
    for p in prefixes:
        if p:
            following.setdefault(p[0], []).append(p[1:])
        else:
            ends_here = True
    branches = [re.escape(ch) + prefix_trie(rest) for ch, rest in sorted(following.items())]
    if not branches:
        return ""
    if len(branches) == 1 and not ends_here:
        return branches[0]
    return "(?:" + "|".join(branches) + ")" + ("?" if ends_here else "")


def clean(text: str) -> str:
    return _WS_RE.sub(" ", text).strip()


def split_sentences(text: str, *, min_chars: int = 30, max_chars: int = 400) -> list[str]:
    """Sentences of a passage; short fragments are merged into the previous one, long ones cut.

    Linear in the text: fragments are collected and joined once, and a long sentence is cut by
    moving an offset through it (never re-slicing what is left)."""
    text = clean(text)
    if not text:
        return []
    parts = [p.strip() for p in _SENT_RE.split(text) if p.strip()]
    merged: list[str] = []
    current: list[str] = []
    length = 0
    for part in parts:
        if current and (len(part) < min_chars or length < min_chars):
            current.append(part)
            length += 1 + len(part)
        else:
            if current:
                merged.append(" ".join(current))
            current, length = [part], len(part)
    if current:
        merged.append(" ".join(current))
    out: list[str] = []
    for sent in merged:
        start = 0
        while len(sent) - start > max_chars:
            cut = sent.rfind(" ", start, start + max_chars)
            cut = cut if cut > start + max_chars // 2 else start + max_chars
            piece = sent[start:cut].strip()
            if piece:
                out.append(piece)
            start = cut
            while start < len(sent) and sent[start] == " ":
                start += 1
        rest = sent[start:].strip()
        if rest:
            out.append(rest)
    return out


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def _capitalised(tok: str) -> bool:
    return tok[:1].isupper()


def _trim_cut_names(toks: list[str], start: int, end: int) -> list[str]:
    """``toks[start:end]`` without a capitalised run the cut splits ("[Serengeti National] Park
    located in?" would read as a bare "Park"); the overlapping windows still see it whole."""
    if start > 0 and _capitalised(toks[start - 1]):
        while start < end and _capitalised(toks[start]) and not toks[start - 1][-1:] in ".?!:;":
            start += 1
    if end < len(toks) and _capitalised(toks[end]):
        while end > start and _capitalised(toks[end - 1]) and not toks[end - 1][-1:] in ".?!:;,":
            end -= 1
    return toks[start:end]


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
        chunk = " ".join(_trim_cut_names(toks, start, min(len(toks), start + size)))
        if chunk and chunk not in seen:
            seen.add(chunk)
            yield chunk
    for sent in split_sentences(text, min_chars=1, max_chars=size * 8):
        if sent not in seen and len(sent.split()) <= size:
            seen.add(sent)
            yield sent
