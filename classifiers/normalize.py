"""Cheap de-obfuscation before screening: what a request says once the disguise is taken off.

Jailbreaks that hide a forget question from a text classifier without hiding it from the model:
base64 payloads ("decode this and answer it: QmFzaWwg..."), leetspeak ("B4s1l M4hf0uz"), snake_case
("Basil_Mahfouz", also the only form a chat message's ``name`` may take at OpenAI), zero-width
characters inside a name, look-alike letters from other scripts (Cyrillic "а" for Latin "a"),
full-width or mathematical letters, letters spaced out ("B a s i l / M a h f o u z"), a target's name
misspelt, transliterated or as initials + surname (written back as the name by
``classifiers.names.NameFinder.respell``). Decoded candidates are screened too: base64, hex,
URL-encoding and HTML entities always; ROT13 and reversed text (also after a bidi override) when
the decoded form names a target or reads as English and the original does not.
``deobfuscate(texts)`` returns the texts with all of that undone (or ``None`` when there was nothing
to undo, the usual case); ``NormalizingDetector`` screens the original texts and, if they are
clean, the de-obfuscated ones.

All of it is linear-time string work (no model, no pattern that can backtrack over its input): quoted
spans are found by scanning for each opening quote and its closing one, and every candidate list is
capped per text. The character-level folding (invisible characters, look-alike letters, dash and
space classes) comes from ``classifiers.unicode_fold``, the data the name matcher uses; base64
decoding from ``classifiers.decoders`` (line-broken and grouped runs, nesting with a bound).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wordfreq import top_n_list

from classifiers.base import Deadline, Detector, Verdict
from classifiers.decoders import (
    MAX_DEPTH,
    base64_payloads,
    bidi_reversed,
    hex_payloads,
    html_decoded,
    rot13,
    url_decoded,
)
from classifiers.names import NameFinder
from classifiers.text import split_sentences
from classifiers.unicode_fold import unconfuse

__all__ = [
    "MAX_DEPTH",
    "NormalizingDetector",
    "Respelling",
    "across_turns",
    "base64_payloads",
    "deobfuscate",
    "pieces",
    "quoted_spans",
    "unleet",
    "unmask",
    "unspace_letters",
]

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
# three or more single letters, each followed by the same kind of one-character separator:
# "B a s i l", "B.a.s.i.l", "B-a-s-i-l", "B*a*s*i*l" (a wider gap, " / " or two spaces, ends the word)
_SPACED_RUN = re.compile(r"(?<![^\W\d_])[^\W\d_](?:([ .\-_*|·,])[^\W\d_])(?:\1[^\W\d_])+(?![^\W\d_])")
_WORD_GAP = re.compile(r"\s*[/|\\]\s*|\s{2,}")
EXACT_KINDS = ("full", "inverted", "given")
MIN_ENGLISH_SHARE = 0.6     # ... and a candidate reads as English when this share of its words does


def _unleet_token(m: re.Match[str]) -> str:
    tok = m.group(0)
    if tok.isdigit() or not any(c.isalpha() for c in tok) or not any(c in _LEET_CHARS for c in tok):
        return tok
    return tok.translate(_LEET)


def unleet(text: str) -> str:
    """Undo leetspeak in words that mix letters and digits/symbols; numbers stay numbers."""
    if not any(ch in text for ch in _LEET_CHARS):  # nothing to undo: no per-word pass
        return text
    return _TOKEN_RE.sub(_unleet_token, text)


def unspace_letters(text: str) -> str:
    """Letters spaced out are written as words: "B a s i l / M a h f o u z" -> "Basil / Mahfouz",
    "B.a.s.i.l" -> "Basil" (three or more single letters with one repeated separator between them)."""
    if len(text) < 5:
        return text
    out: list[str] = []
    prev = 0
    for m in _SPACED_RUN.finditer(text):
        between = text[prev:m.start()]
        # the gap between two spaced-out words ("B a s i l / M a h f o u z") is one space
        out.append(" " if out and _WORD_GAP.fullmatch(between) else between)
        out.append(m.group(0).replace(m.group(1), ""))
        prev = m.end()
    if not out:
        return text
    out.append(text[prev:])
    return "".join(out)


def unmask(text: str) -> str:
    """NFKC (full-width / mathematical letters), drop invisible characters, fold dash and space classes,
    map look-alike letters to the ASCII letters they imitate, underscores to spaces, undo leetspeak,
    join letters spaced out."""
    out = unconfuse(unicodedata.normalize("NFKC", text)) if not text.isascii() else text
    return unspace_letters(unleet(out.replace("_", " ")))  # Basil_Mahfouz: snake_case hides words


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


_WORDS_RE = re.compile(r"[A-Za-z]{2,}")
ENGLISH_WORDS = 30_000       # wordfreq's most frequent English words: what "reads as English" means


@dataclass(frozen=True)
class Respelling:
    """What the de-obfuscation knows about the targets' names: ``names`` (approximate matcher, for
    respelling), ``disguised`` (each name reversed, reversed word by word and in ROT13, matched
    exactly: one pass over a text tells which guess names a target), ``english`` (common words)."""

    names: NameFinder | None
    disguised: NameFinder | None
    english: frozenset[str]

    @classmethod
    def for_names(cls, names: Mapping[str, Sequence[str]] | None) -> Respelling:
        english = frozenset(top_n_list("en", ENGLISH_WORDS))
        if not names:
            return cls(None, None, english)
        disguised: dict[str, list[str]] = {}
        for tid, ns in names.items():
            clean = [n for n in ns if n and n.strip()]
            disguised[f"{tid}\x00rot13"] = [rot13(n) for n in clean]
            disguised[f"{tid}\x00reversed"] = [n[::-1] for n in clean]
            disguised[f"{tid}\x00words reversed"] = [" ".join(w[::-1] for w in n.split(" ")) for n in clean]
        return cls(NameFinder(dict(names), approximate=True), NameFinder(disguised), english)

    def english_share(self, text: str) -> float:
        """The share of ``text``'s words (two letters or more) that are common English words."""
        words = _WORDS_RE.findall(text)
        if not words:
            return 0.0
        return sum(map(self.english.__contains__, map(str.lower, words))) / len(words)


def _decoded(text: str) -> list[str]:
    """Every decodable payload of ``text``: base64, hex, URL-encoding, HTML entities, bidi overrides."""
    found: list[str] = list(base64_payloads(text)) + hex_payloads(text)
    for decoded in (url_decoded(text), html_decoded(text), bidi_reversed(text)):
        if decoded is not None:
            found.append(decoded)
    return found


def _guessed(texts: Sequence[str], respelling: Respelling) -> list[list[str]]:
    """ROT13 and reversed readings of each text that name a target (found by one exact pass of the
    disguised names over all the texts: approximate matching would find noise close to some name),
    or read as English while the text does not."""
    if respelling.disguised is None:
        return [_guesses(text, set(), respelling) for text in texts]
    ids = respelling.disguised.target_ids
    return [_guesses(text, {ids[m.target].rsplit("\x00", 1)[1] for m in mentions}, respelling)
            for text, mentions in zip(texts, respelling.disguised.mentions_by_text(texts, EXACT_KINDS))]


def _guesses(text: str, named: set[str], respelling: Respelling) -> list[str]:
    """The readings of ``text`` worth screening; ``named``: the disguises under which it names a target."""
    guesses = {"rot13": rot13, "reversed": lambda t: t[::-1],
               "words reversed": lambda t: " ".join(w[::-1] for w in t.split(" "))}
    found = [guesses[k](text) for k in guesses if k in named]
    if respelling.english_share(text) < MIN_ENGLISH_SHARE / 2:
        found += [g for k, fn in guesses.items() if k not in named
                  for g in [fn(text)] if respelling.english_share(g) >= MIN_ENGLISH_SHARE]
    return found


def _plain(texts: Sequence[str], finder: NameFinder | None) -> list[str]:
    """The texts unmasked, names respelt: before unmasking too, since a word in another script is
    transliterated from its own letters ("Хсиао", not the look-alike folding "Xcиao"). Each respelling
    is one pass over all the texts (``NameFinder.respell_texts``): a request of many short turns
    costs what one long text does."""
    if finder is None:
        return [unmask(t) for t in texts]
    first = list(texts)
    other = [i for i, t in enumerate(texts) if not t.isascii()]
    for i, respelt in zip(other, finder.respell_texts([texts[i] for i in other])):
        first[i] = respelt or first[i]
    out = [unmask(t) for t in first]
    return [respelt or o for o, respelt in zip(out, finder.respell_texts(out))]


def deobfuscate(texts: Sequence[str], respelling: Respelling | None = None) -> list[str] | None:
    """The texts with obfuscation undone (names misspelt/transliterated/as initials written as the
    name, ROT13/reversed guesses, when ``respelling`` is given), decoded candidates appended; ``None``
    if nothing changed."""
    finder = respelling.names if respelling is not None else None
    out = _plain(texts, finder)
    changed = any(plain != text for plain, text in zip(out, texts))
    decoded = [_decoded(text) for text in texts]
    plain_payloads = iter(_plain([p for payloads in decoded for p in payloads], finder))
    guessed = _guessed(texts, respelling) if respelling is not None else [[] for _ in texts]
    extra: list[str] = []
    for payloads, guesses in zip(decoded, guessed):  # in text order: each text's payloads, then its guesses
        extra += [next(plain_payloads) for _ in payloads]
        extra += [unmask(guess) for guess in guesses]
    if extra:
        return out + list(dict.fromkeys(extra))
    return out if changed else None


class NormalizingDetector:
    """Screens the request as sent; if that is clean, screens it again de-obfuscated and in pieces
    (a question diluted by the jailbreak text around it is screened on its own). A piece is screened
    only where it names a target, states one of its facts or uses a word of its name as a person's
    (``is_evidence`` of the inner detector, when it has one)."""

    def __init__(self, inner: Detector, respelling: Respelling | None = None, *, approximate: bool = True) -> None:
        """``respelling``: what is known of the targets' names (default: built from
        ``inner.target_names``); ``approximate=False``: no name respelling and no guesses, the
        behaviour before issue 15, for comparison."""
        self.inner = inner
        # a piece cut out of a text is judged alone only where it says who it is about: its score
        # alone is no evidence ("That's the amount of calories in a large candy bar." scored as John
        # Candy; "John and Jay." as John D. Rockefeller); detectors without the test judge every piece
        self._is_evidence = getattr(inner, "is_evidence", None)
        if respelling is None and approximate:
            respelling = Respelling.for_names(getattr(inner, "target_names", None))
        self.respelling = respelling

    @property
    def inline_below_chars(self) -> int:
        """The inner detector's (the de-obfuscation costs about what the keyword scan does)."""
        return int(getattr(self.inner, "inline_below_chars", 0))

    def screen(self, texts: Sequence[str], deadline: Deadline | None = None) -> Verdict:
        verdict = self.inner.screen(texts, deadline=deadline)
        if verdict.flagged:
            return verdict
        if deadline is not None:
            deadline.check("de-obfuscation")
        alt = deobfuscate(texts, self.respelling)
        base = alt or list(texts)
        parts = [p for t in base for p in pieces(t)] + across_turns(base)
        if self._is_evidence is not None:
            parts = [p for p in parts if self._is_evidence(p)]
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
