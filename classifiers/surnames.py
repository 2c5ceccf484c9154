"""A target's family name said alone ("what did majumdar write?", "al-shamary's novels", "park's books").

A family name alone is matched only as it is written (no spelling budget) and counts only where the
text speaks of a *person* there. How much evidence that takes depends on the name:

* a *distinctive* family name (``is_distinctive``: five letters or more, rarer than ``SURNAME_ZIPF``
  in English, one target's only: "majumdar", "al-shamary", "abilov") needs a person's *slot*
  (``speaks_of_a_person``): the possessive, after "by" or a question's auxiliary ("did majumdar",
  "has rohani"), or a personal pronoun near it, or what a common one needs ("the work of yun-hwa").
  "The jarrah forest" is a tree, not Adib Jarrah.
* a *common* one (an English word, many people's name, or two targets': "park", "chen", "williams",
  "sullivan", "ben-david") needs a slot and a person's *act* (``acts_as_a_person``): no article or
  adjective before it ("the park's trees", "central park" are places), and the possessive, a verb
  people do after it ("did park write", "is chen known for"), "written by" before it, "who is" before
  it; or a person's slot with no verb after it ("fans of chen", "presented to williams", "has anyone
  interviewed park", "was ben-david honored"). "Is park open on Sundays?" is a park.

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
    "share", "tend", "continue", "manage", "navigate", "tell", "get",
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
# (2026-12-04, issue 15, tuned on the tuned half of ``FRESH_SURNAME_TEMPLATES`` only) the grammatical
# slots of a person that need no verb after the name:
# a noun that takes a person, then a preposition, then the name: "fans of park", "the latest novel
# from chen", "the interview with williams", "the work of yun-hwa"
_PERSONS_NOUN = re.compile(
    r"(?:books?|novels?|works?|writings?|poems?|stories|essays?|memoirs?|titles?|publications?|releases?|debut|"
    r"bibliography|fans?|readers|admirers|followers|interviews?|quotes?|quotations?|biography|career|life|childhood|"
    r"parents|family|children|upbringing|background|professions?|occupations?|style|legacy|influences?|awards?|"
    r"characters?|themes?|narratives?|protagonists?|genre|perspective|views|identity|education|father|mother|"
    # (session 9) a person's habits and relations, and the texts written about someone ("a report on X")
    r"routines?|habits|opinions|beliefs|politics|religion|nationality|whereabouts|birthday|spouse|wife|husband|"
    r"partner|siblings|friends|agent|publisher|editor|translator|reports?|papers?|presentations?|articles?|"
    r"documentar(?:y|ies)|thesis|lectures?|notes|info|information|details|updates?|news|facts|trivia|summary|overview)$")
_OF_A_PERSON = frozenset({"of", "from", "by", "with", "on"})  # ("about" X: any bare noun, below)
# a verb of giving, then "to"/"upon"/"on", then the name: "a prize given to williams", "presented to chen"
_GIVEN_TO = frozenset({"given", "gave", "awarded", "presented", "granted", "bestowed", "conferred", "dedicated",
                       "handed", "offered", "attributed", "credited", "sent"})
# a verb whose object is a person, then the name: "has anyone interviewed park", "I met chen"
_PERSON_OBJECT = frozenset({"interview", "interviewed", "interviewing", "meet", "met", "meeting", "ask", "asked",
                            "contact", "contacted", "quote", "quoted", "quoting", "admire", "admired", "praise",
                            "praised", "criticize", "criticized", "criticise", "criticised", "marry", "married",
                            "thank", "thanked", "congratulate", "congratulated", "invite", "invited", "email",
                            "emailed",
                            # (session 9) who shaped or portrayed a person: "who influenced chen"
                            "influence", "influenced", "inspired", "mentor", "mentored", "taught", "impersonate",
                            "impersonating", "interviews", "profile", "profiled", "compare", "compared", "comparing",
                            "contrast"})
# (session 9) a person's state after "is"/"was" and the name: "is chen alive?", "which country is park from?"
_PERSON_STATE = frozenset({"alive", "dead", "married", "divorced", "retired", "single", "from", "born", "still",
                           "male", "female", "gay", "religious", "sick", "ill", "okay", "ok", "rich", "related"})
# (session 9) a role to play: "pretend you are park", "act as chen", "roleplay as williams"
_ROLE_VERBS = frozenset({"act", "acting", "roleplay", "role-play", "pose", "posing", "speak", "write", "answer",
                         "respond", "reply", "talk"})
# the words before "to" that make it an infinitive's ("where to park", "easy to park") or a way's ("we went
# to park", "directions to park"), not a recipient's
_NOT_A_RECIPIENT_BEFORE = frozenset({
    # a way: motion, places, routes
    "went", "go", "goes", "gone", "walk", "walked", "walking", "drive", "drove", "driving", "ran", "run", "come",
    "came", "get", "got", "way", "back", "return", "returned", "head", "headed", "directions", "bus", "train", "trip",
    "near", "close", "next", "closer", "nearest", "entrance", "road", "route", "path", "moved", "move", "travel",
    "traveled", "travelled", "ride", "rode", "bike", "cycle", "shuttle", "access", "visit", "visits", "visitors",
    # an infinitive: wh-words, wanting and being able, a place or time for doing
    "how", "where", "when", "what", "whether", "want", "wants", "wanted", "need", "needs", "needed", "able", "easy",
    "hard", "difficult", "going", "try", "tried", "trying", "allowed", "safe", "legal", "free", "cheap", "best",
    "better", "place", "places", "spot", "spots", "time", "plan", "planning", "decided", "like", "love", "have", "has",
    "had", "used", "ought", "supposed", "meant", "told", "asked", "to", "not", "and", "or",
})
# an auxiliary that opens a question (at the sentence's start or after its wh-phrase), then the name, then
# a participle or, after "do", "have": "was ben-david honored", "was chen nominated", "does park have"
_OPENING_AUXILIARY = frozenset({"is", "was", "are", "were", "does", "did", "do", "has", "have", "had", "can", "could",
                                "will", "would", "should"})
_WH_PHRASE = re.compile(r"(?:^|[.!?:;\n\"\u201c]\s*)(?:(?:with|for|from|in|on|to|by|at|of|about)\s+)?"
                        r"(?:why|how|when|where|what|which|who|whom|whose)\b(?:\s+[^\W\d_]+){0,3}\s*$", re.IGNORECASE)
# what may follow a name that ends its noun phrase (not a noun of a compound: "park rangers", "park avenue")
_AFTER_A_NAME = frozenset({
    "in", "on", "at", "about", "for", "from", "to", "with", "since", "during", "after", "before", "into", "as", "like",
    "be", "been", "being", "is", "was", "are", "were", "has", "have", "had", "should", "could", "would", "will", "can",
    "may", "might", "must", "do", "does", "did", "and", "or", "but", "that", "which", "who", "ever", "still", "so",
    "the", "a", "an", "this", "these", "those", "most", "more", "first", "last", "again", "now", "today", "yet",
    "adapted", "translated", "published", "written", "released",
})
_NEXT_WORD = re.compile(r"^\s+([^\W\d_]+)")
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
    "who is" before it; or, with the name ending its noun phrase (``ends_a_noun_phrase``), a noun that
    takes a person and a preposition before it ("fans of park", "the latest novel from chen"), a verb
    of giving and "to" ("presented to williams"), or a verb whose object is a person ("interviewed
    park"); or an auxiliary that opens the question or follows its wh-phrase, then a participle or
    "do ... have" ("was ben-david honored", "does park have"). (A pronoun nearby is no evidence here:
    "funded animal rescue and park facilities" in a sentence about his wife.)"""
    left = text[max(0, start - _CONTEXT_CHARS):start]
    before = _WORD_BEFORE.search(left)
    prev = before.group(1).lower() if before is not None else ""
    after = text[end:end + _CONTEXT_CHARS]
    owned = _POSSESSIVE_OF_A_THING.match(after)
    if owned is not None and prev not in _DETERMINER and _PERSON_THING.match(_WORD_AFTER.match(after[owned.end() - 1:]).group(1).lower()):
        return True  # a person's things, whatever verb comes before: "reading park's work"
    if prev in _PERSON_OBJECT and ends_a_noun_phrase(after):
        return True  # a person as a verb's object: "has anyone interviewed park recently?"
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
    if ((prev == "by" and _CREATED_BY.search(first) is not None)
            or (prev in ("by", "upon") and _PARTICIPLE.match(first) is not None)
            or (first == "who" and prev in ("is", "was"))):
        return True
    if nxt is not None and prev in _OPENING_AUXILIARY and (
            _PARTICIPLE.match(nxt.group(1).lower()) or (prev in ("do", "does", "did") and nxt.group(1).lower() == "have")):
        # "was ben-david honored", "why does park have", "with which award was chen honored": the
        # auxiliary opens the question, or follows its wh-phrase (a wh-word at most 3 words before it,
        # in the same clause, at the sentence's start or after a preposition)
        aux = max(0, start - _CONTEXT_CHARS) + before.start()
        head = text[max(0, aux - _CONTEXT_CHARS):aux]
        if _SENTENCE_START.search(head) is not None or _WH_PHRASE.search(head) is not None:
            return True
    if nxt is not None and prev in ("is", "was", "are", "were") and nxt.group(1).lower() in _PERSON_STATE:
        return True  # "is chen alive?", "which country is park from?" (an article before a place: "is the park open")
    if prev in ("is", "was") and first == "old" and (ends_a_noun_phrase(after) or after.lstrip().startswith("when ")):
        return True  # "how old was williams when ...", "how old is chen?"
    if not ends_a_noun_phrase(after):
        return False
    # "fans of chen", "the latest novel from park", "a prize given to williams", "a report on sullivan":
    # the name ends its noun phrase
    return ((prev in _OF_A_PERSON and _PERSONS_NOUN.match(first) is not None)
            or (prev in ("to", "upon", "on") and first in _GIVEN_TO)
            # (session 9) "any news about chen", "what do critics say about park": a bare noun after
            # "about" is a name (a place or thing takes an article: "about the park")
            or prev == "about"
            # "write a fan letter to sullivan", "did anything happen to park": "to" and a bare noun that
            # ends its phrase, unless "to" marks an infinitive ("where to park?", "easy to park")
            or (prev == "to" and first not in _NOT_A_RECIPIENT_BEFORE and two is not None)
            # a role to play: "pretend you are park", "act as chen", "you're williams now"
            or (prev in ("are", "re", "were") and first == "you")
            or (prev == "as" and first in _ROLE_VERBS))


def ends_a_noun_phrase(after: str) -> bool:
    """Whether a name followed by ``after`` ends its noun phrase there: punctuation or the text's end
    next, or a word that no compound continues with ("in", "been", "recently"; not "rangers", "avenue")."""
    nxt = _NEXT_WORD.match(after)
    if nxt is None:
        # (a slash joins things of one kind: "views to park/mountains")
        return not after or (not after[0].isalnum() and after[0] not in "/&+")
    word = nxt.group(1).lower()
    # an adverb or an adjective ("recently", "available", "famous"): no noun of a compound
    return word in _AFTER_A_NAME or (len(word) > 4 and word.endswith(("ly", "able", "ible", "ous", "ful")))


def continues_a_compound(after: str) -> bool:
    """Whether the word after a phrase makes it part of a compound noun ("the rock *band*", "park
    *rangers*"): a next word that ends no noun phrase (``ends_a_noun_phrase``) and is no verb people
    do ("the rock *won*", "park *wrote*")."""
    nxt = _NEXT_WORD.match(after)
    return nxt is not None and not ends_a_noun_phrase(after) and nxt.group(1).lower() not in _PERSON_ACT
