"""Distinctive facts of a target that identify it without its name: full dates and quoted titles.

"Who is the writer born on November 5th, 1991 in Taipei?" names no one, yet the birth date in the
target's forget data ("born in Taipei, Taiwan on 05/11/1991") singles the target out as surely as
its name does. So are the titles of its works ("'A Whisper in the Wind' ..."). The facts are mined
from the target's forget documents at training time and stored in the artifact's manifest; a
text's dates are read in any common rendering and compared as canonical ``YYYY-MM-DD`` keys.
``date_variants`` re-renders the dates of a text, so the heads see each fact in several forms.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from classifiers.text import fold

MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
_MONTH_NUM = {m: i + 1 for i, m in enumerate(MONTHS)}
_MONTH_NUM.update({m[:3]: i + 1 for i, m in enumerate(MONTHS)})
_MONTH_NUM["sept"] = 9
_MON = r"(january|february|march|april|may|june|july|august|september|october|november|december|jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec)\.?"
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
_YEAR = r"(\d{4})"
# numeric 05/11/1991, 05-11-1991, 05.11.1991 (day and month order unknown: both readings are kept)
_NUMERIC = re.compile(r"(?<![\d/.-])(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})(?![\d/.-]*\d)")
# 1991-11-05, 1991/11/05, 1991.11.05 (year first: always year, month, day)
_ISO = re.compile(r"(?<![\d/.-])(\d{4})([-/.])(\d{1,2})\2(\d{1,2})(?![\d/.-]*\d)")
# November 5th, 1991 / Nov. 5 1991 / May the 25th, 1930
_MDY = re.compile(rf"\b{_MON}\s+(?:the\s+)?{_DAY},?\s+(?:of\s+|in\s+)?{_YEAR}\b")
# 5 November 1991 / the 4th of June, 1934 / 1st March 1936 / 25-May-1930 / 25. May 1930
_DMY = re.compile(rf"\b(?:the\s+)?{_DAY}(?:\.?\s+|-)(?:day\s+)?(?:of\s+)?{_MON}(?:,?\s+|-)(?:of\s+|in\s+)?{_YEAR}\b")

# a quoted span: opens after a space/bracket/start, closes before a non-letter; apostrophes inside
# words (Affliction's) are allowed
_QUOTED = re.compile(r"(?:^|(?<=[\s(\[{:;,]))[\"'\u2018\u201c]((?:[^\"'\u2018\u2019\u201c\u201d]|['\u2019](?=[A-Za-z]))"
                     r"{3,160}?)[\"'\u2019\u201d](?![A-Za-z])")
_TITLE_SPLIT = re.compile(r"\s*(?:[:(\[]|\s[-\u2013\u2014]\s)\s*")


def _valid(y: int, m: int, d: int) -> bool:
    return 1 <= m <= 12 and 1 <= d <= 31 and 1000 <= y <= 2999


def _key(y: int, m: int, d: int) -> str:
    return f"{y:04d}-{m:02d}-{d:02d}"


def date_triples(text: str) -> list[tuple[int, int, int, tuple[int, int]]]:
    """(year, month, day, (start, end)) of every date in ``text``; a numeric date whose day and
    month could be swapped gives both readings."""
    low = text.lower() if text.isascii() else fold(text)
    out: list[tuple[int, int, int, tuple[int, int]]] = []
    if not any(ch.isdigit() for ch in low):
        return out
    for m in _NUMERIC.finditer(low):
        a, b, y = int(m.group(1)), int(m.group(2)), int(m.group(3))
        for mm, dd in {(a, b), (b, a)}:
            if _valid(y, mm, dd):
                out.append((y, mm, dd, m.span()))
    for m in _ISO.finditer(low):
        y, mm, dd = int(m.group(1)), int(m.group(3)), int(m.group(4))
        if _valid(y, mm, dd):
            out.append((y, mm, dd, m.span()))
    for m in _MDY.finditer(low):
        mm, dd, y = _MONTH_NUM[m.group(1).rstrip(".")], int(m.group(2)), int(m.group(3))
        if _valid(y, mm, dd):
            out.append((y, mm, dd, m.span()))
    for m in _DMY.finditer(low):
        dd, mm, y = int(m.group(1)), _MONTH_NUM[m.group(2).rstrip(".")], int(m.group(3))
        if _valid(y, mm, dd):
            out.append((y, mm, dd, m.span()))
    return out


def date_keys(text: str) -> set[str]:
    return {_key(y, m, d) for y, m, d, _ in date_triples(text)}


def _ordinal(d: int) -> str:
    suffix = "th" if 10 <= d % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
    return f"{d}{suffix}"


def renderings(y: int, m: int, d: int) -> list[str]:
    month = MONTHS[m - 1].capitalize()
    return [f"{month} {d}, {y}", f"{d} {month} {y}", f"the {_ordinal(d)} of {month}, {y}", f"{month} {_ordinal(d)}, {y}",
            f"{m:02d}/{d:02d}/{y}", f"{y}-{m:02d}-{d:02d}"]


def date_variants(text: str, limit: int = 6) -> list[str]:
    """``text`` with its dates written in other common forms (nothing if it has no date)."""
    triples = date_triples(text)
    if not triples:
        return []
    by_span: dict[tuple[int, int], tuple[int, int, int]] = {}
    for y, m, d, span in triples:
        by_span.setdefault(span, (y, m, d))  # an ambiguous numeric date: re-render one reading
    spans = sorted(by_span)
    # drop overlapping spans (keep the first)
    kept: list[tuple[int, int]] = []
    for s in spans:
        if not kept or s[0] >= kept[-1][1]:
            kept.append(s)
    out: list[str] = []
    for k in range(len(renderings(2000, 1, 1))):
        pieces, last = [], 0
        for s in kept:
            pieces += [text[last:s[0]], renderings(*by_span[s])[k]]
            last = s[1]
        pieces.append(text[last:])
        variant = "".join(pieces)
        if variant != text and variant not in out:
            out.append(variant)
    return out[:limit]


def quoted_titles(documents: Iterable[str], *, min_words: int = 2, max_words: int = 14) -> list[str]:
    """Folded titles quoted in ``documents``, and their main parts ('A Whisper in the Wind
    (Sorrows of the Old World Series, #7)' also gives 'a whisper in the wind' and 'sorrows of the
    old world series'). A title needs ``min_words`` words and a capital letter."""
    titles: set[str] = set()
    for doc in documents:
        for m in _QUOTED.finditer(doc):
            span = m.group(1).strip()
            for piece in [span] + _TITLE_SPLIT.split(span):
                piece = re.sub(r"[\s,#\d)\]]+$", "", piece).strip(" ,.;!?")
                n = len(piece.split())
                if piece.count("(") != piece.count(")"):
                    continue
                if min_words <= n <= max_words and any(ch.isupper() for ch in piece):
                    titles.add(fold(piece))
    return sorted(titles)


def target_facts(documents: Sequence[str]) -> dict[str, list[str]]:
    dates: set[str] = set()
    for doc in documents:
        dates |= date_keys(doc)
    return {"dates": sorted(dates), "titles": quoted_titles(documents)}


def mask_names(text: str, pattern: re.Pattern[str], replacement: str = "this person") -> str:
    """``text`` with every match of ``pattern`` (names, on the folded text) replaced; case is lost
    only where a name was (the text must be ASCII or fold to the same length, else it is returned as is)."""
    folded = fold(text)
    if len(folded) != len(text):
        return text
    out, last = [], 0
    for m in pattern.finditer(folded):
        out += [text[last:m.start()], replacement]
        last = m.end()
    return "".join(out) + text[last:] if out else text


def fact_hits(folded: str, facts: dict[str, list[str]], titles: re.Pattern[str] | None) -> bool:
    if facts.get("dates") and any(ch.isdigit() for ch in folded) and date_keys(folded) & set(facts["dates"]):
        return True
    return titles is not None and titles.search(folded) is not None
