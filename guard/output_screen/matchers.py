"""What in a window of an answer points at a forget target: its names, its dates, its titles.

The answer side reuses the request side's matching, so a name is found in an answer exactly as it
is found in a question: names and aliases through ``classifiers.names.NameFinder`` (the
``classifiers.unicode_fold`` normalisation: case, accents, look-alike letters, invisible characters,
any separators between name parts, inverted names, distinctive leading given names), full dates
through ``classifiers.facts.date_triples`` (any rendering, compared as ``YYYY-MM-DD`` keys) and
quoted titles of the target's forget data as whole words of the ``classifiers.text.fold``-ed text
(as ``classifiers.features.NameMatcher`` finds them). Unlike the request side, which only needs
*whether* a text matches, the answer side needs *where*: a match is reported with its character
span in the window, so the stream can stop before the first character of it is released.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from classifiers.approximate_names import ApproximateConfig, is_common_phrase
from classifiers.facts import date_triples
from classifiers.names import FLAGGING_KINDS, NameFinder
from classifiers.text import fold_with_map, name_alternation

# quotation marks a title may be written between (straight, curly, guillemets, CJK brackets)
_QUOTES = frozenset("\"'“”‘’«»„‚「」『』")
_TITLE_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")   # "can't", "Clouds'll": one word
# short words a title leaves in lower case ("Promise by the Seine")
_MINOR_WORDS = frozenset("a an the of in on at to and or for by with from as is".split())

NAME = "name"
DATE = "date"
TITLE = "title"
SEMANTIC = "semantic"
REASONS = (NAME, DATE, TITLE, SEMANTIC)
_DIGIT = re.compile(r"\d")


@dataclass(frozen=True)
class WindowMatch:
    """A target's name/date/title at ``[start, end)`` of the window it was found in."""

    target_id: str
    reason: str           # one of REASONS
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class TargetFacts:
    """Distinctive facts of one target (``classifiers.facts``): date keys and folded titles."""

    dates: tuple[str, ...] = ()
    titles: tuple[str, ...] = ()

    @classmethod
    def of(cls, facts: Mapping[str, Sequence[str]] | None) -> TargetFacts:
        facts = facts or {}
        return cls(tuple(facts.get("dates", ())), tuple(facts.get("titles", ())))


class NameFactMatcher:
    """Every name, date and title of the screened targets in a text, with its span.

    ``names_by_target``: target id -> names and aliases as written; ``facts_by_target``: target id ->
    its ``TargetFacts``. Stateless after construction (thread-safe); linear in the text's length.
    """

    def __init__(self, names_by_target: Mapping[str, Sequence[str]],
                 facts_by_target: Mapping[str, TargetFacts] | None = None, *, approximate: bool = False) -> None:
        self.target_ids = list(names_by_target)
        self.approximate = approximate
        self._finder = NameFinder({t: [n for n in names if n and n.strip()] for t, names in names_by_target.items()},
                                  approximate=approximate)
        self._dates: dict[str, list[str]] = {}
        self._titles: dict[str, list[str]] = {}
        for tid, facts in (facts_by_target or {}).items():
            for key in facts.dates:
                self._dates.setdefault(key, []).append(tid)
            for title in facts.titles:
                self._titles.setdefault(title.strip(), []).append(tid)
        # a title made only of common English words ("dollar bill", "at the hop") is that title only where
        # the answer writes it as one; in running text it is the ordinary phrase
        self._ordinary_titles = frozenset(t for t in self._titles if _TITLE_WORD.search(t) is not None
                                          and is_common_phrase(_TITLE_WORD.findall(t)))
        source = name_alternation(self._titles)
        self._title_re = None if source is None else re.compile(f"(?=({source}))")
        longest_title = max((len(t) for t in self._titles), default=0)
        longest_name = max((len(n) for names in names_by_target.values() for n in names), default=0)
        # a misspelt name may be longer than the name: its edits, and separators between its letters
        slack = 2 * ApproximateConfig().max_edits if approximate else 0
        self.longest_match_chars = max(longest_title, longest_name + slack, len("the 30th of September, 2000"))

    def __bool__(self) -> bool:
        return bool(self._finder) or bool(self._dates) or self._title_re is not None

    def matches(self, text: str) -> list[WindowMatch]:
        """All matches in ``text``, sorted by start."""
        out: list[WindowMatch] = []
        if self._finder:
            for m in self._finder.mentions(text, FLAGGING_KINDS):
                out.append(WindowMatch(self._finder.target_ids[m.target], NAME, m.start, m.end, text[m.start:m.end]))
        if self._dates and _DIGIT.search(text) is not None:
            for y, mo, d, (a, b) in date_triples(text):
                for tid in self._dates.get(f"{y:04d}-{mo:02d}-{d:02d}", ()):
                    out.append(WindowMatch(tid, DATE, a, b, text[a:b]))
        if self._title_re is not None:
            folded, index = fold_with_map(text)
            for m in self._title_re.finditer(folded):
                a, b = index[m.start()], index[m.start() + len(m.group(1)) - 1] + 1
                if m.group(1) in self._ordinary_titles and not written_as_a_title(text, a, b):
                    continue
                for tid in self._titles[m.group(1)]:
                    out.append(WindowMatch(tid, TITLE, a, b, text[a:b]))
        out.sort(key=lambda w: (w.start, w.end))
        return out


def written_as_a_title(text: str, start: int, end: int) -> bool:
    """Whether ``text[start:end]`` is written as a title: between quotation marks, or with every word
    but the minor ones capitalised ("Dollar Bill", "the Doors", "At the Hop"; not "a dollar bill")."""
    if text[start - 1:start] in _QUOTES or text[end:end + 1] in _QUOTES:
        return True
    words = [w for w in _TITLE_WORD.findall(text[start:end]) if w.lower() not in _MINOR_WORDS]
    return bool(words) and all(w[0].isupper() for w in words)
