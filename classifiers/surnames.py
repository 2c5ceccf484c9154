"""A target's family name said alone ("what did majumdar write?", "al-shamary's novels").

Most family names are other people's too ("Park", "Chen", "Williams") or ordinary words ("Montenegro",
"Basil"), so a family name alone counts only when it is *distinctive* (``distinctive_surnames``: rare
in English, one target's only) and the text speaks of a *person* there (``speaks_of_a_person``): the
name in the possessive, after "by", as the subject of a question ("did majumdar", "has rohani"), or
a personal pronoun in the same text ("he", "her"). "The jarrah forest" is a tree, not Adib Jarrah.
``classifiers.names.NameFinder`` finds these as ``surname`` mentions (approximate finders only) and
the de-obfuscation writes them back as the whole name, so the trained heads judge the question
they were trained on; no detector flags a family name alone by itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from wordfreq import zipf_frequency

from classifiers.approximate_names import latin_key

# a family name alone stands for the target only when it is rarer than this in English (zipf scale):
# "majumdar", "al-shamary", "abilov"; not "park", "chen", "williams", "montenegro", "nakamura"
SURNAME_ZIPF = 3.0
MIN_SURNAME_LETTERS = 5
# the word before a name that makes it a question's subject or a book's author
_PERSON_BEFORE = frozenset({
    "did", "does", "do", "has", "have", "had", "is", "was", "would", "could", "can", "will", "should", "might",
    "may", "by", "about", "whom", "with",
})
_PRONOUN = re.compile(r"\b(?:he|she|his|her|hers|him|himself|herself|they|their|them)\b", re.IGNORECASE)
_POSSESSIVE = re.compile(r"^['\u2019]s?\b")
_WORD_BEFORE = re.compile(r"([^\W\d_]+)\W*$")
_CONTEXT_CHARS = 40


def distinctive_surnames(last_words: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """(target, family name) of the family names that identify a target on their own: five letters
    or more, rarer than ``SURNAME_ZIPF`` in English, and the last word of one target's names only
    (two targets called Park: neither is "park")."""
    owners: dict[str, set[int]] = {}
    for target, word in last_words:
        owners.setdefault(latin_key(word), set()).add(target)
    return [(target, word) for target, word in dict.fromkeys(last_words)
            if len(owners[latin_key(word)]) == 1 and len(latin_key(word)) >= MIN_SURNAME_LETTERS
            and not is_ordinary_word(word)]


def is_ordinary_word(word: str) -> bool:
    """Frequent enough in English (``SURNAME_ZIPF``) to be a word or many people's name ("Kuwaiti")."""
    return zipf_frequency(word, "en") >= SURNAME_ZIPF


def speaks_of_a_person(text: str, start: int, end: int) -> bool:
    """Whether the name at ``text[start:end]`` reads as a person: in the possessive, after "by" or a
    question's auxiliary ("did majumdar write"), or in a text with a personal pronoun. ``text`` may
    be several texts joined; only the characters near the name are read for the first two, and the
    pronoun is looked for in the text up to the name's end and a sentence's worth after it."""
    if _POSSESSIVE.match(text[end:end + 3]):
        return True
    before = _WORD_BEFORE.search(text[max(0, start - _CONTEXT_CHARS):start])
    if before is not None and before.group(1).lower() in _PERSON_BEFORE:
        return True
    return _PRONOUN.search(text, max(0, start - 4 * _CONTEXT_CHARS), min(len(text), end + 4 * _CONTEXT_CHARS)) is not None
