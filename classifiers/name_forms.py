"""The exact forms of a name that ``classifiers.names.NameFinder`` looks for, as pattern sources.

A name of several parts matches with any run of separators between its parts (spaces, tabs, line
breaks, hyphens and dashes, underscores, dots, apostrophes, or none: "Al-Kuwaiti", "Al Kuwaiti",
"Al_Kuwaiti", "AlKuwaiti"). Besides the name itself (``full``), each name has these forms:

* ``inverted``: the name turned around at a word ("Al-Kuwaiti, Basil Mahfouz"; comma optional);
* ``given``: the leading words of a name of three or more words, two or more of them and at least
  two distinctive (not a title, particle or initial): "Basil Mahfouz" of "Basil Mahfouz Al-Kuwaiti",
  but not "J. R." of "J. R. Cash";
* ``initials``: the leading words as initials before the rest of the name, when the rest is
  distinctive (six or more letters, not a common word): "B. M. Al-Kuwaiti", "R. Majumdar".

Every source is an anchored pattern without nested repetition, over a ``match_fold`` text, and is
returned with the first token of its first word (the finder indexes forms by it).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Collection, Sequence

from classifiers.approximate_names import is_common_phrase
from classifiers.text import SPACELESS

# Words that never identify a person on their own (titles, particles, generic words in names).
WEAK = frozenset({
    "the", "of", "and", "de", "da", "di", "del", "van", "von", "la", "le", "du", "al", "el", "bin", "ibn",
    "jr", "jr.", "sr", "sr.", "ii", "iii", "iv", "sir", "dame", "lord", "lady", "prince", "princess", "king",
    "queen", "duke", "duchess", "earl", "dr", "dr.", "mr", "mrs", "ms", "saint", "st", "st.", "mc", "mac",
    "cent", "ice", "rock", "john", "james", "mark", "paul", "william", "robert", "david", "michael", "mary",
})

# between the parts of a name, in the folded text: any run of separators, or none
SEP = r"[\s\-_.'\u00b7\u30fb\u2027]*"
_INVERSION = SEP + r"(?:," + SEP + r")?"
# a word of a spaced script in the folded text (letters/digits; "_" and apostrophes separate words)
WORD = re.compile(f"[^\\W_{SPACELESS}]+")
_MIN_INITIALS_REST = 6   # letters of what follows the initials ("R. Majumdar"; not "J. Park")


def name_words(name: str) -> list[str]:
    """The words of a folded name (hyphenated words stay one word: "al-kuwaiti")."""
    return [w for w in re.split(r"[\s,]+", name) if w]


def tokens(text: str) -> list[str]:
    """The words of a spaced script in a folded text (a hyphenated word is two tokens)."""
    return WORD.findall(text)


def source(words: Sequence[str], comma_before: Collection[int] = ()) -> tuple[str, str] | None:
    """(first word's first token, pattern source) for ``words`` (folded) as consecutive name parts,
    separators free between them; ``comma_before``: the words a comma may precede ("Prince Harry,
    Duke of Sussex"; where an inverted name turns)."""
    chunks: list[str] = []
    first = ""
    for i, w in enumerate(words):
        toks = tokens(w)
        if not toks:
            continue
        if chunks:
            chunks.append(_INVERSION if i in comma_before else SEP)
        else:
            first = toks[0]
        chunks.append(SEP.join(re.escape(t) for t in toks))
    return (first, "".join(chunks)) if chunks else None


def is_spaceless(name: str) -> bool:
    """Written in a script without spaces between words (Han, kana, Thai, ...), or no words at all."""
    return re.search(f"[{SPACELESS}]", name) is not None or not tokens(name)


def is_distinctive(word: str) -> bool:
    """A name word that says something on its own: not a title or particle, not an initial ("J.")."""
    return word not in WEAK and sum(len(t) for t in tokens(word)) >= 3


def initials_forms(name: str) -> list[tuple[str, str]]:
    """(first token, pattern source) of a folded name with some of its words before the last as
    initials ("b. m. al-kuwaiti", "b. mahfouz al-kuwaiti", "basil m. al-kuwaiti"): an initial is a
    letter and a dot. The words written out must be distinctive (six letters or more, not
    all common words: "R. Majumdar", not "J. Park")."""
    words = name_words(name)
    out: list[tuple[str, str]] = []
    if len(words) < 2 or len(words) > 4:
        return out
    for shape in itertools.product((False, True), repeat=len(words) - 1):
        if not any(shape):
            continue
        kept = [t for w, initial in zip(words, (*shape, False)) if not initial for t in tokens(w)]
        if sum(map(len, kept)) < _MIN_INITIALS_REST or is_common_phrase(kept):
            continue
        chunks: list[str] = []
        for w, initial in zip(words, (*shape, False)):
            toks = tokens(w)
            if not toks:
                break
            if initial:
                chunks.append(f"{re.escape(toks[0][0])}\\.[\\s.]*")
            else:
                chunks.append(SEP.join(re.escape(t) for t in toks) + ("" if w is words[-1] else r"\s+"))
        else:
            out.append((tokens(words[0])[0][:1] if shape[0] else tokens(words[0])[0], "".join(chunks)))
    return out


def name_forms(name: str) -> list[tuple[str, str, str]]:
    """(kind, first token, pattern source) of one folded name's full, inverted and given forms."""
    words = name_words(name)
    commas = {i for i, m in enumerate(re.finditer(r"[^\s,]+", name)) if name[:m.start()].rstrip().endswith(",")}
    full = source(words, commas)
    if full is None:
        return []
    out = [("full", *full)]
    if "," in name or len(words) < 2:
        return out
    for k in range(1, len(words)):
        inverted = source(words[k:] + words[:k], {len(words) - k})
        if inverted is not None:
            out.append(("inverted", *inverted))
    if len(words) >= 3:
        for k in range(2, len(words)):
            prefix = words[:k]
            given = source(prefix) if sum(is_distinctive(w) for w in prefix) >= 2 else None
            if given is not None:
                out.append(("given", *given))
    return out
