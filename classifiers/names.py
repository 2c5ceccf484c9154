"""Finding a target's name in a text, however it is written: the one name matcher of the guard.

The keyword detector flags what ``NameFinder`` finds, the trained detector's name features
(``classifiers.features.NameMatcher``) are built from it, and ECO's token selection corrupts the
spans it returns, so ECO corrupts exactly what the detector flagged.

A text is matched in its ``classifiers.unicode_fold.match_fold`` form (case, accents, full-width,
look-alike letters, invisible characters, dash and space classes undone), whole-word at a name's
ends ("Al" never matches inside "Also"), in any text length. The forms of a name (``full``,
``inverted``, ``given``, ``initials``) are built in ``classifiers.name_forms``; a ``given`` form
counts unless the next word is someone else's name ("Basil Mahfouz Smith") or the text writes it in
lower case while it uses capitals elsewhere (``classifiers.name_neighbours``). ``part``: one word of
a name (>= 4 letters, not a title or particle), for the trained detector's features only.

With ``approximate=True`` (the keyword detector, ECO's token selection, the de-obfuscation's
respelling) two more kinds are found, in the original text rather than its fold:

* ``initials``: "B. M. Al-Kuwaiti", "R. Majumdar" (``classifiers.name_forms``);
* ``approx``: the name (or an inversion, or its distinctive given names) spelt differently or in
  another script, found by ``classifiers.approximate_names`` ("Rajiv Majumdar", "Николай Абилов"),
  unless it stands next to someone else's name or is made of common English words;
* ``surname``: a distinctive family name alone about a person (``classifiers.surnames``), respelt only.

Names in scripts written without spaces (Han, kana, Hangul, Thai, ...) match inside running text.

Matching is linear in the text: the folded text is cut into words once, and only forms whose first
letters match a word's first letters are tried there (each an anchored pattern without nested
repetition).
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import regex

from classifiers import surnames
from classifiers.approximate_names import (
    ApproximateNames,
    is_common_phrase,
    name_form_words,
)
from classifiers.name_forms import (
    WEAK,
    WORD,
    initials_forms,
    is_distinctive,
    is_spaceless,
    name_forms,
    name_words,
    source,
    tokens,
)
from classifiers.name_neighbours import (
    NEIGHBOUR_CHARS,
    after_a_lower_case_given_name,
    ordinary_phrase,
    someone_else,
    uses_capitals,
)
from classifiers.text import SPACELESS, name_alternation, prefix_trie
from classifiers.unicode_fold import match_fold, match_fold_with_map

__all__ = [
    "FLAGGING_KINDS", "KINDS", "RESPELLED_KINDS", "TEXT_BOUNDARY", "WEAK", "Mention", "NameFinder", "find_name_spans",
    "initials_forms", "name_forms", "name_words",
]

KINDS = ("full", "inverted", "given", "part", "initials", "approx", "surname")
# what the keyword detector flags and ECO corrupts (``initials``/``approx``: only a finder built with
# ``approximate=True`` finds them)
FLAGGING_KINDS = ("full", "inverted", "given", "initials", "approx")
# mentions the de-obfuscation writes back as the name itself (``surname``: a distinctive family name
# alone, "what did majumdar write": only a finder built with ``approximate=True`` finds it)
RESPELLED_KINDS = ("initials", "approx", "surname")
# what separates texts joined into one for a single pass (no separator between name parts: no name,
# exact or approximate, is read across two texts)
TEXT_BOUNDARY = "\x00"
_NOT_A_BOUNDARY = "\x01"

_RIGHT_EDGE = re.compile(f"(?![^\\W_{SPACELESS}])")  # checked after a form's match: not inside a longer word
_KEY = 3  # forms are indexed by the first letters of their first word
# a word of the original text for approximate matching: letters (with their combining marks) and digits
_TEXT_WORD = regex.compile(f"(?:[^\\W_{SPACELESS}]|\\p{{M}})+")
_TEXT_WORD_OR_BOUNDARY = regex.compile(f"{_TEXT_WORD.pattern}|{regex.escape(TEXT_BOUNDARY)}")
_MIN_APPROX_LETTERS = 6  # letters of a form's distinctive words to match it approximately ("the Boss": not)
_INITIAL = re.compile(r"(?<![^\W_])[^\W\d_]\.")  # a letter and a dot: a text without one has no initials form


@dataclass(frozen=True)
class Mention:
    """A form of target ``target`` (index into the finder's targets) at ``[start, end)`` of the original text."""

    target: int
    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class _Form:
    target: int
    kind: str
    pattern: re.Pattern[str]


class NameFinder:
    """Every mention of any target's names in a text (see the module docstring).

    ``names_by_target``: target id -> names/aliases as written; ``parts``: target id -> single name
    words to find as ``part`` mentions (``classifiers.features.name_parts``), optional.
    """

    def __init__(self, names_by_target: Mapping[str, Sequence[str]],
                 parts: Mapping[str, Iterable[str]] | None = None, *, approximate: bool = False) -> None:
        self.target_ids = list(names_by_target)
        self.canonical = [next((n.strip() for n in names_by_target[t] if n and n.strip()), "") for t in self.target_ids]
        self._by_key: dict[str, list[_Form]] = {}
        self._own_words: list[frozenset[str]] = []
        spaceless: dict[str, list[tuple[int, str]]] = {}
        approx_forms: list[tuple[int, list[str]]] = []
        last_words: list[tuple[int, str]] = []
        for j, tid in enumerate(self.target_ids):
            names = [match_fold(n).strip() for n in names_by_target[tid] if n and n.strip()]
            self._own_words.append(frozenset(t for n in names for t in tokens(n)))
            forms: set[tuple[str, str, str]] = set()
            for n in names:
                if is_spaceless(n):
                    spaceless.setdefault(n, []).append((j, "full"))
                    continue
                forms.update(name_forms(n))
                if approximate and "," not in n:
                    words = name_words(n)
                    forms.update(("initials", *f) for f in initials_forms(n))
                    approx_forms += [(j, w) for w in name_form_words(words, [is_distinctive(w) for w in words])
                                     if sum(len(t) for x in w if is_distinctive(x) for t in tokens(x)) >= _MIN_APPROX_LETTERS]
                    last_words += [(j, words[-1])] if len(words) >= 2 else []
            for p in (parts or {}).get(tid, ()):
                p = match_fold(p).strip()
                part = None if is_spaceless(p) else source([p])
                if part is not None:
                    forms.add(("part", *part))
            for kind, first, src in sorted(forms):
                self._by_key.setdefault(first[:_KEY], []).append(_Form(j, kind, re.compile(src)))
        self._key_lengths = sorted({len(k) for k in self._by_key}, reverse=True)
        # where a word starts with some form's key: the only places a form can match
        self._form_start = re.compile(f"(?<![^\\W_{SPACELESS}])(?:{prefix_trie(self._by_key)})") if self._by_key else None
        self._spaceless = spaceless
        alternation = name_alternation(spaceless)
        self._spaceless_re = None if alternation is None else re.compile(f"(?=({alternation}))")
        self._approx = ApproximateNames(approx_forms, surnames=surnames.family_names(last_words)) if approximate else None
        self._shared_family_names = surnames.shared_family_names(last_words)

    def __bool__(self) -> bool:
        return bool(self._by_key) or self._spaceless_re is not None

    def approximate_mentions(self, text: str, kinds: Sequence[str] = ("approx",), *,
                             separate_texts: bool = False) -> list[Mention]:
        """``approx`` (and ``surname`` if in ``kinds``) mentions in ``text`` (original-text spans), collisions
        left out: a run of common English words, one next to someone else's name; a family name alone also
        as an ordinary word ("Kuwaiti") or not about a person (``classifiers.surnames``). ``separate_texts``:
        ``text`` is several texts joined by ``TEXT_BOUNDARY``, each judged on its own (capitals or not)."""
        if not self._approx or not {"approx", "surname"} & set(kinds):
            return []
        found = self._approx.find(text, _TEXT_WORD_OR_BOUNDARY, TEXT_BOUNDARY)
        if not found:
            return []
        out: list[Mention] = []
        cuts = [m.start() for m in re.finditer(TEXT_BOUNDARY, text)] if separate_texts else []
        capitals: dict[int, bool] = {}  # per text of ``cuts`` (``_uses_capitals``)
        neighbours: dict[int, dict[str, bool]] = {}  # someone else's word? per target and word, this call
        verdicts: dict[tuple[int, str, str, bool, str], bool] = {}  # a mention? per case (below), this call
        # of overlapping runs, the one of the longest name form (the full name before the given
        # names), then the closest, then the shortest is the mention: "who is Rajeev Majumdaar" is
        # "Rajeev Majumdaar" (1 edit), not "is Rajeev Majumdaar" (3 edits)
        # (a run that overlaps a closer one is not judged again, whatever the verdict on that one was;
        # ``judged`` marks the characters of the runs judged so far: linear however many runs there are)
        # (a family name alone is blocked only by a mention: "has yun-hwa" is none, "yun-hwa" may be one)
        judged, taken = bytearray(len(text)), bytearray(len(text))
        for j, a, b, _, _, alone in sorted(found, key=lambda f: (-f[4], f[3], f[2] - f[1])):
            if (taken if alone else judged).find(1, a, b) >= 0:
                continue
            judged[a:b] = b"\x01" * (b - a)
            kind = "surname" if alone else "approx"
            if kind not in kinds:
                continue
            caps = uses_capitals(text, cuts, a, capitals)
            # the verdict depends on the run, the text around it and whether the text uses capitals:
            # judged once per distinct case (adversarial text repeats a disguised name many times)
            case = (j, text[a:b], text[b:b + NEIGHBOUR_CHARS], caps, text[max(0, a - NEIGHBOUR_CHARS):a] if alone else "")
            name = verdicts.get(case)
            if name is None:
                # (a family name alone is judged as a word by ``_alone_is_a_person``, not as a phrase)
                name = verdicts[case] = not ((not alone and is_common_phrase(w.lower().strip(".,'") for w in text[a:b].split()))
                                             or (alone and not self._alone_is_a_person(text, a, b))
                                             # (a family name alone was judged as a word above: not again by its parts)
                                             or self.someone_else(text, (a, b), j, capitals=caps and not alone,
                                                                  previous=alone, memo=neighbours, sentence_starts=alone))
            if name:
                taken[a:b] = b"\x01" * (b - a)
                out.append(Mention(j, kind, a, b))
        return sorted(out, key=lambda m: (m.start, m.end))

    def _alone_is_a_person(self, text: str, a: int, b: int) -> bool:
        """Whether the family name alone at ``text[a:b]`` stands for a person: a distinctive one where the
        text speaks of a person there, a common one only where it also acts as one (``classifiers.surnames``)."""
        if surnames.is_distinctive(text[a:b], self._shared_family_names):
            return surnames.speaks_of_a_person(text, a, b) or surnames.acts_as_a_person(text, a, b)
        return surnames.acts_as_a_person(text, a, b)

    def respell(self, text: str) -> str | None:
        """``text`` with every ``initials``/``approx`` mention written as the target's name ("Rajiv
        Majumdar" -> "Rajeev Majumdar"), so a detector trained on the name sees it; ``None`` if none."""
        return self.respell_texts([text])[0]

    def respell_texts(self, texts: Sequence[str]) -> list[str | None]:
        """``respell`` of each text, in one pass over all of them (``mentions_by_text``)."""
        kinds = RESPELLED_KINDS if any(_INITIAL.search(t) for t in texts) else ("approx", "surname")
        out: list[str | None] = []
        for text, mentions in zip(texts, self.mentions_by_text(texts, kinds)):
            if not mentions:
                out.append(None)
                continue
            parts: list[str] = []
            prev = 0
            for m in sorted(mentions, key=lambda m: (m.start, -m.end)):
                if m.start < prev:
                    continue
                parts += [text[prev:m.start], self.canonical[m.target]]
                prev = m.end
            parts.append(text[prev:])
            out.append("".join(parts))
        return out

    def mentions_by_text(self, texts: Sequence[str], kinds: Sequence[str] = KINDS) -> list[list[Mention]]:
        """``mentions`` of each text (spans in that text), in one pass over the texts joined by
        ``TEXT_BOUNDARY`` (a request of many short turns costs what one long text does); each text is
        judged on its own (whether it uses capitals) and no name is read across two."""
        if len(texts) < 2:
            return [self.mentions(t, kinds) for t in texts]
        # a text's own NUL characters become another control character of the same length (which
        # the matchers treat alike), so only the joints are boundaries
        joined = TEXT_BOUNDARY.join(t.replace(TEXT_BOUNDARY, _NOT_A_BOUNDARY) for t in texts)
        offsets = list(itertools.accumulate((len(t) + 1 for t in texts[:-1]), initial=0))
        out: list[list[Mention]] = [[] for _ in texts]
        for m in self.mentions(joined, kinds, separate_texts=True):
            i = bisect.bisect_right(offsets, m.start) - 1
            out[i].append(Mention(m.target, m.kind, m.start - offsets[i], m.end - offsets[i]))
        return out

    def folded_mentions(self, folded: str) -> list[tuple[int, str, int, int]]:
        """(target, kind, start, end) in ``folded`` (a ``match_fold`` text), sorted, overlaps included."""
        found: list[tuple[int, str, int, int]] = []
        if self._form_start is not None:
            for start in self._form_start.finditer(folded):   # usually none: few words start like a name
                pos = start.start()
                word = m.group(0) if (m := WORD.match(folded, pos)) is not None else ""
                for n in self._key_lengths:
                    for form in self._by_key.get(word[:n], ()) if n <= len(word) else ():
                        hit = form.pattern.match(folded, pos)
                        if hit is not None and _RIGHT_EDGE.match(folded, hit.end()):
                            found.append((form.target, form.kind, pos, hit.end()))
        if self._spaceless_re is not None:
            for m in self._spaceless_re.finditer(folded):
                for j, kind in self._spaceless.get(m.group(1), ()):
                    found.append((j, kind, m.start(), m.start() + len(m.group(1))))
        found.sort(key=lambda f: (f[2], f[3], f[0]))
        return found

    def mentions(self, text: str, kinds: Sequence[str] = KINDS, *, separate_texts: bool = False) -> list[Mention]:
        """Mentions in ``text`` (original-text spans); ``given`` ones only where they stand for the target.
        ``separate_texts``: see ``approximate_mentions``."""
        if set(kinds) <= {"approx", "surname"}:  # no exact form asked for: no exact pass
            return self.approximate_mentions(text, kinds, separate_texts=separate_texts)
        folded, index = match_fold_with_map(text)
        out: list[Mention] = []
        cuts = [m.start() for m in re.finditer(TEXT_BOUNDARY, text)] if separate_texts else []
        capitals: dict[int, bool] = {}
        for j, kind, a, b in self.folded_mentions(folded):
            if kind not in kinds or b <= a:
                continue
            start, end = int(index[a]), int(index[b - 1]) + 1
            if kind == "given" and self.someone_else(text, (start, end), j, previous=False,
                                                     capitals=uses_capitals(text, cuts, start, capitals)):
                continue
            if kind == "full" and ordinary_phrase(text, (start, end), capitals=uses_capitals(text, cuts, start, capitals)):
                continue  # a common-word alias in its ordinary sense: "the rock band"
            out.append(Mention(j, kind, start, end))
        if {"approx", "surname"} & set(kinds):
            out += _outside(self.approximate_mentions(text, kinds, separate_texts=separate_texts),
                            [m for m in out if m.kind in FLAGGING_KINDS])
            out.sort(key=lambda m: (m.start, m.end, m.target))
        return out

    def someone_else(self, text: str, span: tuple[int, int], j: int, *, capitals: bool | None = None,
                     previous: bool = True, memo: dict[int, dict[str, bool]] | None = None,
                     sentence_starts: bool = False) -> bool:
        """``classifiers.name_neighbours.someone_else`` for target ``j``'s name words; ``memo``: the
        verdicts on neighbour words so far, per target, for a caller judging many spans of one text."""
        own = self._own_words[j]
        return (someone_else(text, span, own, capitals=capitals, previous=previous,
                             memo=None if memo is None else memo.setdefault(j, {}), sentence_starts=sentence_starts)
                or (previous and after_a_lower_case_given_name(text, span, own)))


def _outside(mentions: list[Mention], exact: list[Mention]) -> list[Mention]:
    """``mentions`` not within one of the ``exact`` ones: a name found as written is what the text says
    there, so a guess over the same characters ("hINa aᗰEEn" read through a look-alike letter as
    someone else's name) is no second mention. Linear-logarithmic (sorted starts, running max end)."""
    if not exact:
        return mentions
    spans = sorted((m.start, m.end) for m in exact)
    starts = [a for a, _ in spans]
    reach = list(itertools.accumulate((b for _, b in spans), max))
    return [m for m in mentions if (k := bisect.bisect_right(starts, m.start) - 1) < 0 or reach[k] < m.end]


def find_name_spans(text: str, names: Iterable[str]) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of ``text`` where any of ``names`` is mentioned in a flagging
    form (name, inverted name, distinctive given names), merged and sorted."""
    finder = NameFinder({"target": [n for n in names if n and n.strip()]}, approximate=True)
    spans = sorted((m.start, m.end) for m in finder.mentions(text, FLAGGING_KINDS))
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
