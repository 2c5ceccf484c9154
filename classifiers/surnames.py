"""A target's family name said alone ("what did majumdar write?", "al-shamary's novels", "park's books").

A family name alone is matched only as it is written (no spelling budget) and counts only where the
text speaks of a *person* there. How much evidence that takes depends on the name:

* a *distinctive* family name (``is_distinctive``: five letters or more, rarer than ``SURNAME_ZIPF``
  in English, one target's only: "majumdar", "al-shamary", "abilov") needs a person's *slot*
  (``speaks_of_a_person``): the possessive, after "by" or a question's auxiliary ("did majumdar",
  "has rohani"), or a personal pronoun near it. "The jarrah forest" is a tree, not Adib Jarrah.
* a *common* one (an English word, many people's name, or two targets': "park", "chen", "williams",
  "sullivan", "ben-david") needs a slot and a person's *act* (``acts_as_a_person``): no article or
  adjective before it ("the park's trees", "central park" are places), and the possessive, a verb
  people do after it ("did park write", "is chen known for"), "written by" before it, "who is" before
  it. "Is park open on Sundays?" is a park.

``classifiers.names.NameFinder`` finds these as ``surname`` mentions (approximate finders only) and
the de-obfuscation writes them back as the whole name, so the trained heads judge the question they
were trained on; no detector flags a family name alone by itself.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from wordfreq import zipf_frequency

from classifiers.approximate_names import latin_key

# a family name alone is distinctive only when it is rarer than this in English (zipf scale):
# "majumdar", "al-shamary", "abilov"; not "park", "chen", "williams", "montenegro", "nakamura"
SURNAME_ZIPF = 3.0
MIN_SURNAME_LETTERS = 5   # a distinctive family name
MIN_COMMON_LETTERS = 4    # a common one ("park", "chen"; not "lee", "li")
# the word before a name that makes it a question's subject or a book's author
_PERSON_BEFORE = frozenset({
    "did", "does", "do", "has", "have", "had", "is", "was", "would", "could", "can", "will", "should", "might",
    "may", "by", "about", "whom", "with",
})
# ... and the function words a bare name may follow where an ordinary noun takes an article ("of park")
_SLOT_BEFORE = _PERSON_BEFORE | frozenset({
    "of", "in", "on", "from", "to", "for", "into", "how", "why", "where", "when", "what", "which", "that", "and", "or",
    "tell", "describe", "summarize", "summarise", "explain", "me", "as", "like", "than", "between", "whether", "if",
    "are", "were", "among", "against", "toward", "towards", "through", "at", "after", "before", "since", "during",
    "under", "without", "beyond", "then", "so", "but", "yet", "while", "because", "although", "unlike", "upon", "across",
    # particles of phrasal verbs ("sets apart chen's books", "look up sullivan's")
    "apart", "around", "out", "up", "down", "over", "off", "away", "back", "together",
})
# what people do (the word after a family name in a question about a person: "did park write"):
# verbs with their past and -ing forms (third person -s only for those without a common noun of that
# spelling: "park writes", not "park works", "park plans", "park visits")
_VERBS = (
    "write", "publish", "win", "receive", "collaborate", "explore", "teach", "translate", "become", "say",
    "grow", "begin", "start", "use", "draw", "incorporate", "portray", "depict", "create", "inspire",
    "influence", "describe", "approach", "handle", "deal", "choose", "decide", "feel", "think", "believe",
    "consider", "attend", "study", "live", "work", "marry", "die", "balance", "weave", "integrate",
    "infuse", "blend", "reflect", "contribute", "achieve", "gain", "raise", "move", "visit", "travel",
    "speak", "mention", "talk", "explain", "express", "convey", "tackle", "focus", "emphasize", "discuss",
    "highlight", "challenge", "address", "aim", "hope", "want", "prefer", "plan", "develop", "craft",
    "share", "tend", "continue", "manage", "navigate",
)
_THIRD_PERSON = (
    "write", "publish", "explore", "teach", "translate", "say", "describe", "portray", "depict",
    "incorporate", "create", "inspire", "collaborate", "believe", "consider", "attend", "reflect",
    "contribute", "explain", "express", "convey", "tackle", "emphasize", "discuss", "highlight", "continue",
    "tend", "prefer", "want",
)
_IRREGULAR = (
    "wrote", "written", "won", "taught", "became", "grew", "grown", "began", "begun", "drew", "drawn",
    "chose", "chosen", "felt", "thought", "spoke", "spoken", "born", "known", "famous", "still", "ever",
    "been", "said", "made", "got", "went", "came", "did", "done", "had", "planned", "planning",
)


def _inflections(verb: str) -> set[str]:
    """A regular verb's base, past and -ing forms (and third person, for ``_THIRD_PERSON``)."""
    stem = verb.removesuffix("e")
    past = verb + "d" if verb.endswith("e") else (stem[:-1] + "ied" if verb.endswith("y") else verb + "ed")
    third = verb[:-1] + "ies" if verb.endswith("y") else verb + ("es" if verb.endswith(("sh", "ch", "s", "x")) else "s")
    return {verb, past, stem + "ing"} | ({third} if verb in _THIRD_PERSON else set())


_PERSON_ACT = frozenset(_IRREGULAR).union(*(_inflections(v) for v in _VERBS))
# the word before "by" when the name after it is an author's ("written by park", "a novel by chen")
_CREATED_BY = re.compile(r"(?:written|authored|published|penned|edited|translated|illustrated|directed|composed|"
                         r"created|produced|novels?|books?|works?|poems?|stories|story|essays?|memoirs?|titles?)$")
# what a person has that a place or thing rarely does, after a possessive ("reading park's work")
_PERSON_THING = re.compile(
    r"(?:books?|novels?|works?|writing|writings|style|career|life|parents|upbringing|background|family|father|mother|"
    r"childhood|poems?|stories|characters?|themes?|biography|awards?|debut|publications?|memoirs?|identity|views|"
    r"perspective|narratives?|protagonists?|genre|influences?|legacy|education|interviews?|fans|readers)$")
# no person after these: "the park's work", "our park's life"
_DETERMINER = frozenset({"the", "a", "an", "this", "that", "these", "those", "our", "your", "my", "its", "their",
                         "his", "her", "every", "each", "some", "any", "no", "national", "city", "state", "theme"})
_AUXILIARY_PERFECT = frozenset({"has", "have", "had"})
_PARTICIPLE = re.compile(r"(?:[^\W\d_]{3,}(?:ed|en|wn)|done|gone|made|won|got|led|met|read|sold|taught|thought|brought|built|felt|kept|left|told|wrote)$")  # "connected", "written", "done"
_PRONOUN = re.compile(r"\b(?:he|she|his|her|hers|him|himself|herself|they|their|them)\b", re.IGNORECASE)
_POSSESSIVE = re.compile(r"^['\u2019]s?\b")
_POSSESSIVE_OF_A_THING = re.compile(r"^['\u2019]s?\s+[^\W\d_]")  # "park's leadership books"
_WORD_BEFORE = re.compile(r"([^\W\d_]+)\W*$")
_TWO_WORDS_BEFORE = re.compile(r"([^\W\d_]+)\W+([^\W\d_]+)\W*$")
_WORD_AFTER = re.compile(r"^\W*([^\W\d_]+)")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n\"\u201c]\s*)$")
_CONTEXT_CHARS = 40


def family_names(last_words: Sequence[tuple[int, str]]) -> list[tuple[int, str]]:
    """(target, family name) of the family names that may stand for a target alone: four letters or
    more (``is_distinctive`` and ``is_common`` then say how much evidence each takes)."""
    return [(target, word) for target, word in dict.fromkeys(last_words) if len(latin_key(word)) >= MIN_COMMON_LETTERS]


def shared_family_names(last_words: Sequence[tuple[int, str]]) -> frozenset[str]:
    """The ``latin_key`` of every family name that two or more targets have (two targets called Park)."""
    owners: dict[str, set[int]] = {}
    for target, word in last_words:
        owners.setdefault(latin_key(word), set()).add(target)
    return frozenset(key for key, targets in owners.items() if len(targets) > 1)


def is_distinctive(word: str, shared: frozenset[str]) -> bool:
    """Five letters or more, rarer than ``SURNAME_ZIPF`` in English, and not two targets' (``shared``)."""
    key = latin_key(word)
    return len(key) >= MIN_SURNAME_LETTERS and key not in shared and not is_ordinary_word(word)


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


def acts_as_a_person(text: str, start: int, end: int) -> bool:
    """Whether a common family name at ``text[start:end]`` (an English word or many people's name)
    reads as a person: a person's things after its possessive, with no article before ("reading
    park's work"; not "the park's work"); or nothing before it in its sentence or a function word
    that a bare name follows ("of park", "did park"; not "the park", "central park"), and after it
    the possessive of something ("park's trees"... only where no article could stand: "of park's"),
    a verb people do ("did park write", "has chen connected"), or "written by" / "bestowed upon" /
    "who is" before it. (A pronoun nearby is no evidence here: "funded animal rescue and park facilities" in a
    sentence about his wife.)"""
    left = text[max(0, start - _CONTEXT_CHARS):start]
    before = _WORD_BEFORE.search(left)
    prev = before.group(1).lower() if before is not None else ""
    after = text[end:end + _CONTEXT_CHARS]
    owned = _POSSESSIVE_OF_A_THING.match(after)
    if owned is not None and prev not in _DETERMINER and _PERSON_THING.match(_WORD_AFTER.match(after[owned.end() - 1:]).group(1).lower()):
        return True  # a person's things, whatever verb comes before: "reading park's work"
    if (prev not in _SLOT_BEFORE) if before is not None else not _SENTENCE_START.search(left):
        return False
    if owned is not None:
        return True
    nxt = _WORD_AFTER.match(after) if not _POSSESSIVE.match(after) else None
    if nxt is not None and nxt.group(1).lower().endswith("ly"):  # an adverb between: "is park currently writing"
        nxt = _WORD_AFTER.match(after[nxt.end():])
    if nxt is not None and (nxt.group(1).lower() in _PERSON_ACT
                            or (prev in _AUXILIARY_PERFECT and _PARTICIPLE.match(nxt.group(1).lower()))):
        return True  # "did park write", "has chen connected"
    two = _TWO_WORDS_BEFORE.search(left)
    first = two.group(1).lower() if two is not None else ""
    # "written by park", "an award bestowed upon williams", "who is chen"
    return ((prev == "by" and _CREATED_BY.search(first) is not None)
            or (prev in ("by", "upon") and _PARTICIPLE.match(first) is not None)
            or (first == "who" and prev in ("is", "was")))
