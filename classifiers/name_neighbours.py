"""Whether name words found in a text stand for the target or for someone (something) else.

"Elliot *Patrick* Benson" is not Patrick; "Basil Mahfouz *Smith*" is not Basil Mahfouz Al-Kuwaiti;
"a large *candy* bar" is not John Candy. ``someone_else`` judges a span the name matcher found by
its neighbour words and by its case; ``uses_capitals`` tells, for texts joined into one, whether
the text around a position writes capitals at all (lower case means something only where it does).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

from classifiers.approximate_names import has_common_word, is_common_phrase
from classifiers.name_forms import WEAK, tokens
from classifiers.surnames import continues_a_compound
from classifiers.text import fold
from classifiers.unicode_fold import match_fold

# capitalised words next to a name part that do not make it someone else's name
NOT_A_NAME = (WEAK | {
    "who", "whom", "whose", "what", "when", "where", "why", "how", "which", "is", "are", "was", "were", "did", "does", "do",
    "has", "have", "had", "can", "could", "would", "should", "will", "may", "might", "must", "a", "an", "in", "on", "at",
    "for", "from", "with", "by", "to", "as", "or", "but", "if", "after", "before", "since", "while", "this", "that", "these",
    "those", "his", "her", "their", "its", "my", "your", "our", "i", "we", "you", "he", "she", "they", "it", "yes", "no",
    "also", "both", "about", "according", "regarding", "tell", "describe", "explain", "name", "list", "give", "write",
    "compare", "summarize", "summarise", "please", "author", "writer", "novelist", "poet", "actor", "actress", "singer",
    "director", "president", "professor", "doctor", "senator", "general", "captain", "coach", "player", "mr.", "mrs.",
    "ms.", "dr.", "miss", "madam", "so", "then", "now", "here", "there", "all", "some", "many", "one",
    "january", "february", "march", "april", "june", "july", "august", "september", "october", "november", "december",
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday", "english", "american", "british",
}) - {"mark", "john", "james", "paul", "william", "robert", "david", "michael", "mary", "cent", "ice", "rock"}

NEIGHBOUR_CHARS = 60  # how far around a span its neighbour words are looked for
_PREV_WORD = re.compile(r"([^\W\d_][\w'\u2019.-]*)\s+$")
# the word after a name part (not after a possessive: "Rohani's Iranian background" is Rohani's)
_NEXT_WORD = re.compile(r"^\s+([^\W\d_][\w'\u2019-]*)")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\n\"\u201c]\s*)$")


def someone_else(text: str, span: tuple[int, int], own: frozenset[str], *, capitals: bool | None = None,
                 previous: bool = True, memo: dict[str, bool] | None = None, sentence_starts: bool = False) -> bool:
    """The name words at ``span`` of ``text`` are not the target's (``own``: its folded name words):
    they stand next to a capitalised word that is not one of its name words (or a common word), or
    are written in lower case in a text that uses capitals elsewhere and hold an ordinary English
    word ("a large candy bar", "the basil mahfouz recipe"; but "majumdar" in lower case is still
    the name). ``capitals``: whether ``text`` has an upper-case letter, if already known;
    ``previous``: whether the word before counts too (leading given names are judged by the word
    after them: "Basil Mahfouz *Smith*", while the word before is often just a capitalised sentence
    start, "Through Basil Mahfouz's"). ``memo``: the verdicts on neighbour words so far, for a
    caller judging many spans of one text against one target. ``sentence_starts``: a common English
    word before the span that is capitalised because it starts its sentence is no given name ("Through
    al-kuwaiti's novels"; for a family name alone, where a given name would be all there is)."""
    a, b = span
    if (text[a:b].islower() and (any(ch.isupper() for ch in text) if capitals is None else capitals)
            and has_common_word(t for t in tokens(fold(text[a:b])) if t not in WEAK)):
        return True
    left = text[max(0, a - NEIGHBOUR_CHARS):a]
    before = _PREV_WORD.search(left) if previous else None
    if (before is not None and sentence_starts and _SENTENCE_START.search(left[:before.start(1)])
            and has_common_word([fold(before.group(1))])):
        before = None
    for m in (before, _NEXT_WORD.match(text[b:b + NEIGHBOUR_CHARS])):
        if m is None:
            continue
        word = m.group(1)
        verdict = None if memo is None else memo.get(word)
        if verdict is None:
            key = fold(word).strip(".'\u2019-")
            verdict = word[0].isupper() and key not in NOT_A_NAME and not set(tokens(match_fold(key))) <= own
            if memo is not None:
                memo[word] = verdict
        if verdict:
            return True
    return False


def uses_capitals(text: str, cuts: Sequence[int], pos: int, known: dict[int, bool]) -> bool:
    """Whether the text of ``text`` around ``pos`` has an upper-case letter: ``cuts`` are the
    boundary positions of texts joined into one (none: one text); ``known``: the answers so far, by
    text number."""
    k = bisect.bisect_right(cuts, pos)
    if k not in known:
        lo, hi = (cuts[k - 1] + 1 if k else 0), (cuts[k] if k < len(cuts) else len(text))
        known[k] = any(ch.isupper() for ch in text[lo:hi])
    return known[k]


_ENGLISH_ENDINGS = ("s", "ed", "ing", "ly", "tion", "ment", "ness", "ity", "ous", "ive", "ful", "able", "ible", "ist", "ism")
_LOWER_WORD_BEFORE = re.compile(r"(?<![^\W\d_])([^\W\d_A-Z][^\W\d_]*)[ \t]+$")  # "tatiana " before "majumdar"


def after_a_lower_case_given_name(text: str, span: tuple[int, int], own: frozenset[str]) -> bool:
    """(2026-12-04) The name word at ``span``, written in lower case, follows a lower-case word that is
    no English word (not common, no English ending) and none of the target's name words: someone else's
    name in lower case ("fans of tatiana majumdar"), as a capitalised word there would be ("Tatiana
    majumdar"); a rare English word before it is not ("accolades marais has"). (Session 9: also in a
    text with no capitals at all, where case cannot tell the name from a word but this neighbour can.)"""
    a, b = span
    if not text[a:b].islower():
        return False
    before = _LOWER_WORD_BEFORE.search(text[max(0, a - NEIGHBOUR_CHARS):a])
    return (before is not None and not has_common_word([before.group(1)])
            and not before.group(1).endswith(_ENGLISH_ENDINGS)
            and not set(tokens(match_fold(before.group(1)))) <= own)


def ordinary_phrase(text: str, span: tuple[int, int], *, capitals: bool | None = None) -> bool:
    """(session 9) A whole name form at ``span`` that is an ordinary phrase there: an alias made of
    common English words ("The Rock", "The Boss"), written in lower case in a text that uses capitals,
    and continued by the next word as a compound ("the rock band", "the boss level"). "How tall is the
    rock?" and "The Rock's films" stay the alias."""
    a, b = span
    written = text[a:b]
    if not written.islower() or not (any(ch.isupper() for ch in text) if capitals is None else capitals):
        return False
    if not is_common_phrase(w.strip(".,'") for w in written.split()):
        return False
    return continues_a_compound(text[b:b + NEIGHBOUR_CHARS])
