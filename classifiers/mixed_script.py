"""Mixed-script words: Latin letters and letters of another script inside one word.

UTS #39 (section 5) calls a string *mixed-script* when its letters belong to more than one script,
and uses the restriction levels built on that notion to flag spoofed identifiers. Written text
almost never mixes scripts inside a word: "Βasil Al-Kuwaiτi" (a Greek capital beta and a Greek tau
among Latin letters) is an obfuscation sign, a Russian or Greek sentence is not. So inside such a
word the letters of the other script stand for Latin letters, and ``classifiers.unicode_fold``
writes those it cannot map to an ASCII letter through the TR39 table in ASCII (``ascii_stand_in``:
the letter a small-capital prototype reads as, else the letter's transliteration by ``anyascii``).
Words in one non-Latin script are left alone (transliteration as such is issue 15).

Scripts come from the Unicode ``Script`` property (the ``regex`` package's tables). Neutral, i.e.
neither sign nor break: marks and letters of the Common and Inherited scripts (mathematical
letters, modifier letters), default-ignorables (the caller decides which characters those are), and
Han, Hiragana, Katakana, Bopomofo and Hangul, which UTS #39's "Highly Restrictive" level allows
next to Latin ("Tシャツ" is not a sign). Anything that is not a letter or a mark ends a word.

Why ``anyascii`` rather than ``Unidecode`` (measured over Unicode's own data, anyascii 0.3.3 vs
Unidecode 1.4.0; ``tests/classifiers/test_mixed_script.py`` keeps the first figure): anyascii writes
756 of 797 Latin letters named after one ASCII letter (small capitals, turned, hooked) as that
letter (Unidecode 666), agrees with TR39's ASCII look-alike for 55 of 177 Greek/Cyrillic/Armenian/
Cherokee/... letters (Unidecode 32), gives an ASCII letter for 1247 of 1275 letters of those
scripts (Unidecode 788), and is faster (0.27 vs 0.84 us per character).
"""

from __future__ import annotations

import re
import unicodedata

import regex
from anyascii import anyascii

LATIN = "L"
OTHER = "O"
NEUTRAL = "J"
BREAK = " "

_LATIN = regex.compile(r"\p{Script=Latin}")
_NEUTRAL_LETTER = regex.compile(
    r"[\p{Script=Common}\p{Script=Inherited}\p{Script=Han}\p{Script=Hiragana}\p{Script=Katakana}"
    r"\p{Script=Bopomofo}\p{Script=Hangul}]")
# over a string of the classes above: a word (maximal run of L/O/J, anchored at its start by the
# look-behind, so a position inside a word fails at once) holding both an L and an O. Each word start
# costs at most a few scans of that word, so the search is linear in the text.
_MIXED_WORD = re.compile(r"(?<![LOJ])(?:[OJ]*L[LJ]*O|[LJ]*O[OJ]*L)[LOJ]*")
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_SMALL_CAPITAL = re.compile(r"LATIN LETTER SMALL CAPITAL ([A-Z])$")


def letter_class(ch: str) -> str:
    """``LATIN``, ``OTHER`` (a letter of another script), ``NEUTRAL`` (a mark, a Common/Inherited
    letter, a Han/kana/Bopomofo/Hangul letter) or ``BREAK`` (not part of a word)."""
    category = unicodedata.category(ch)
    if category[0] == "M":
        return NEUTRAL
    if category[0] != "L":
        return BREAK
    if ch.isascii() or _LATIN.match(ch):
        return LATIN
    return NEUTRAL if _NEUTRAL_LETTER.match(ch) else OTHER


def mixed_script_words(classes: str) -> list[tuple[int, int]]:
    """(start, end) of every mixed-script word of a text, given the text as a string of its characters'
    classes (one of ``LATIN``/``OTHER``/``NEUTRAL``/``BREAK`` per character), in text order."""
    return [m.span() for m in _MIXED_WORD.finditer(classes)]


def small_capital_of(ch: str) -> str | None:
    """The ASCII letter (lower case) that ``ch`` is the Latin small capital of ("ᴛ" -> "t"), if it is one:
    a small capital has the capital's shape at letter height, so it reads as that letter."""
    m = _SMALL_CAPITAL.match(unicodedata.name(ch, "")) if len(ch) == 1 else None
    return m.group(1).lower() if m else None


def ascii_stand_in(ch: str, prototype: str) -> str:
    """The ASCII letters an other-script letter ``ch`` stands for inside a mixed-script word, given its
    TR39 ``prototype`` (which is not ASCII): the letter that prototype is a small capital of (Cyrillic
    "в" and "н" have the prototypes "ʙ" and "ʜ", so "b" and "h"), else ``ch``'s transliteration (Greek
    "κ" -> "k": its prototype is kra "ĸ", which transliterators write as "q"). Case follows ``ch``;
    empty when there is no ASCII letter to write."""
    letter = small_capital_of(prototype)
    if letter is None:
        return transliterate(ch)
    return letter.upper() if ch.isupper() else letter


def transliterate(ch: str) -> str:
    """``ch`` in ASCII letters and digits (``anyascii``, case kept: Greek "κ" -> "k", Cyrillic "Ж" ->
    "Zh"); empty when the transliteration has none (a Cyrillic hard sign is an apostrophe)."""
    return _NOT_ALNUM.sub("", anyascii(ch))
