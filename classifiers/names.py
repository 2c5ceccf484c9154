"""Finding a target's name in a text, however it is written: the one name matcher of the guard.

The keyword detector flags what ``NameFinder`` finds, the trained detector's name features
(``classifiers.features.NameMatcher``) are built from it, and ECO's token selection corrupts the
spans it returns, so ECO corrupts exactly what the detector flagged.

A text is matched in its ``classifiers.unicode_fold.match_fold`` form (case, accents, full-width,
look-alike letters, invisible characters, dash and space classes undone). A name of several parts
matches with any run of separators between its parts (spaces, tabs, line breaks, hyphens and
dashes, underscores, dots, apostrophes, or none: "Al-Kuwaiti", "Al Kuwaiti", "Al_Kuwaiti",
"AlKuwaiti"), whole-word at its ends ("Al" never matches inside "Also"), in any text length.
Besides the names themselves, each target has these *forms*:

* ``inverted``: the name turned around at a word ("Al-Kuwaiti, Basil Mahfouz"; comma optional);
* ``given``: the leading words of a name of three or more words, two or more of them and at least
  two distinctive (not a title, particle or initial): "Basil Mahfouz" of "Basil Mahfouz Al-Kuwaiti",
  but not "J. R." of "J. R. Cash". It counts unless the next word is someone else's name
  ("Basil Mahfouz Smith") or the text writes them in lower case while it uses capitals elsewhere;
* ``part``: one word of a name (>= 4 letters, not a title or particle), for the trained detector's
  features only.

With ``approximate=True`` (the keyword detector, ECO's token selection, the de-obfuscation's
respelling) two more kinds are found, in the original text rather than its fold:

* ``initials``: the leading words as initials before the rest of the name, when the rest is
  distinctive (six or more letters, not a common word): "B. M. Al-Kuwaiti", "R. Majumdar";
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
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import regex

from classifiers import surnames
from classifiers.approximate_names import (
    ApproximateNames,
    has_common_word,
    is_common_phrase,
    name_form_words,
)
from classifiers.text import SPACELESS, fold, name_alternation
from classifiers.unicode_fold import match_fold, match_fold_with_map

# Words that never identify a person on their own (titles, particles, generic words in names).
WEAK = frozenset({
    "the", "of", "and", "de", "da", "di", "del", "van", "von", "la", "le", "du", "al", "el", "bin", "ibn",
    "jr", "jr.", "sr", "sr.", "ii", "iii", "iv", "sir", "dame", "lord", "lady", "prince", "princess", "king",
    "queen", "duke", "duchess", "earl", "dr", "dr.", "mr", "mrs", "ms", "saint", "st", "st.", "mc", "mac",
    "cent", "ice", "rock", "john", "james", "mark", "paul", "william", "robert", "david", "michael", "mary",
})
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

# between the parts of a name, in the folded text: any run of separators, or none
_SEP = r"[\s\-_.'\u00b7\u30fb\u2027]*"
_INVERSION = _SEP + r"(?:," + _SEP + r")?"
# a word of a spaced script in the folded text (letters/digits; "_" and apostrophes separate words)
_WORD = re.compile(f"[^\\W_{SPACELESS}]+")
_RIGHT_EDGE = re.compile(f"(?![^\\W_{SPACELESS}])")  # checked after a form's match: not inside a longer word
_KEY = 3  # forms are indexed by the first letters of their first word
_PREV_WORD = re.compile(r"([^\W\d_][\w'\u2019.-]*)\s+$")
# the word after a name part (not after a possessive: "Rohani's Iranian background" is Rohani's)
_NEXT_WORD = re.compile(r"^\s+([^\W\d_][\w'\u2019-]*)")
_NEIGHBOUR_CHARS = 60
# a word of the original text for approximate matching: letters (with their combining marks) and digits
_TEXT_WORD = regex.compile(f"(?:[^\\W_{SPACELESS}]|\\p{{M}})+")
_TEXT_WORD_OR_BOUNDARY = regex.compile(f"{_TEXT_WORD.pattern}|{regex.escape(TEXT_BOUNDARY)}")
_MIN_INITIALS_REST = 6   # letters of what follows the initials ("R. Majumdar"; not "J. Park")
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


def name_words(name: str) -> list[str]:
    """The words of a folded name (hyphenated words stay one word: "al-kuwaiti")."""
    return [w for w in re.split(r"[\s,]+", name) if w]


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text)


def _source(words: Sequence[str], comma_before: Collection[int] = ()) -> tuple[str, str] | None:
    """(first word's first token, pattern source) for ``words`` (folded) as consecutive name parts,
    separators free between them; ``comma_before``: the words a comma may precede ("Prince Harry,
    Duke of Sussex"; where an inverted name turns)."""
    chunks: list[str] = []
    first = ""
    for i, w in enumerate(words):
        toks = _tokens(w)
        if not toks:
            continue
        if chunks:
            chunks.append(_INVERSION if i in comma_before else _SEP)
        else:
            first = toks[0]
        chunks.append(_SEP.join(re.escape(t) for t in toks))
    return (first, "".join(chunks)) if chunks else None


def _spaceless(name: str) -> bool:
    return re.search(f"[{SPACELESS}]", name) is not None or not _tokens(name)


def _distinctive(word: str) -> bool:
    """A name word that says something on its own: not a title or particle, not an initial ("J.")."""
    return word not in WEAK and sum(len(t) for t in _tokens(word)) >= 3


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
        kept = [t for w, initial in zip(words, (*shape, False)) if not initial for t in _tokens(w)]
        if sum(map(len, kept)) < _MIN_INITIALS_REST or is_common_phrase(kept):
            continue
        chunks: list[str] = []
        for w, initial in zip(words, (*shape, False)):
            toks = _tokens(w)
            if not toks:
                break
            if initial:
                chunks.append(f"{re.escape(toks[0][0])}\\.[\\s.]*")
            else:
                chunks.append(_SEP.join(re.escape(t) for t in toks) + ("" if w is words[-1] else r"\s+"))
        else:
            out.append((_tokens(words[0])[0][:1] if shape[0] else _tokens(words[0])[0], "".join(chunks)))
    return out


def name_forms(name: str) -> list[tuple[str, str, str]]:
    """(kind, first token, pattern source) of one folded name's full, inverted and given forms."""
    words = name_words(name)
    commas = {i for i, m in enumerate(re.finditer(r"[^\s,]+", name)) if name[:m.start()].rstrip().endswith(",")}
    full = _source(words, commas)
    if full is None:
        return []
    out = [("full", *full)]
    if "," in name or len(words) < 2:
        return out
    for k in range(1, len(words)):
        inverted = _source(words[k:] + words[:k], {len(words) - k})
        if inverted is not None:
            out.append(("inverted", *inverted))
    if len(words) >= 3:
        for k in range(2, len(words)):
            prefix = words[:k]
            given = _source(prefix) if sum(_distinctive(w) for w in prefix) >= 2 else None
            if given is not None:
                out.append(("given", *given))
    return out


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
            self._own_words.append(frozenset(t for n in names for t in _tokens(n)))
            forms: set[tuple[str, str, str]] = set()
            for n in names:
                if _spaceless(n):
                    spaceless.setdefault(n, []).append((j, "full"))
                    continue
                forms.update(name_forms(n))
                if approximate and "," not in n:
                    words = name_words(n)
                    forms.update(("initials", *f) for f in initials_forms(n))
                    approx_forms += [(j, w) for w in name_form_words(words, [_distinctive(w) for w in words])
                                     if sum(len(t) for x in w if _distinctive(x) for t in _tokens(x)) >= _MIN_APPROX_LETTERS]
                    last_words += [(j, words[-1])] if len(words) >= 2 else []
            for p in (parts or {}).get(tid, ()):
                p = match_fold(p).strip()
                part = None if _spaceless(p) else _source([p])
                if part is not None:
                    forms.add(("part", *part))
            for kind, first, src in sorted(forms):
                self._by_key.setdefault(first[:_KEY], []).append(_Form(j, kind, re.compile(src)))
        self._key_lengths = sorted({len(k) for k in self._by_key}, reverse=True)
        self._spaceless = spaceless
        source = name_alternation(spaceless)
        self._spaceless_re = None if source is None else re.compile(f"(?=({source}))")
        self._approx = ApproximateNames(approx_forms, surnames=surnames.distinctive_surnames(last_words)) if approximate else None

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
        neighbours: dict[tuple[str, int], bool] = {}  # someone else's word? per (word, target), this call
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
            caps = _uses_capitals(text, cuts, a, capitals)
            # the verdict depends on the run, the text around it and whether the text uses capitals:
            # judged once per distinct case (adversarial text repeats a disguised name many times)
            case = (j, text[a:b], text[b:b + _NEIGHBOUR_CHARS], caps, text[max(0, a - _NEIGHBOUR_CHARS):a] if alone else "")
            name = verdicts.get(case)
            if name is None:
                name = verdicts[case] = not (is_common_phrase(w.lower().strip(".,'") for w in text[a:b].split())
                                             or (alone and (surnames.is_ordinary_word(text[a:b])
                                                            or not surnames.speaks_of_a_person(text, a, b)))
                                             # (a family name alone was judged as a word above: not again by its parts)
                                             or self.someone_else(text, (a, b), j, capitals=caps and not alone,
                                                                  previous=alone, memo=neighbours))
            if name:
                taken[a:b] = b"\x01" * (b - a)
                out.append(Mention(j, kind, a, b))
        return sorted(out, key=lambda m: (m.start, m.end))

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
        # the distinct words some form starts with (usually none): the scan below visits only those
        starting = {w for w in set(_WORD.findall(folded)) if self._starts_a_form(w)} if self._by_key else set()
        if starting:
            for m in _WORD.finditer(folded):
                pos, word = m.start(), m.group(0)
                if word not in starting:
                    continue
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

    def _starts_a_form(self, word: str) -> bool:
        return any(word[:n] in self._by_key for n in self._key_lengths if n <= len(word))

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
                                                     capitals=_uses_capitals(text, cuts, start, capitals)):
                continue
            out.append(Mention(j, kind, start, end))
        if {"approx", "surname"} & set(kinds):
            out += self.approximate_mentions(text, kinds, separate_texts=separate_texts)
            out.sort(key=lambda m: (m.start, m.end, m.target))
        return out

    def someone_else(self, text: str, span: tuple[int, int], j: int, *, capitals: bool | None = None,
                     previous: bool = True, memo: dict[tuple[str, int], bool] | None = None) -> bool:
        """The name words at ``span`` of ``text`` are not target ``j``'s: they stand next to a
        capitalised word that is not one of its name words (or a common word), or are written in lower
        case in a text that uses capitals elsewhere and hold an ordinary English word ("a large candy
        bar", "the basil mahfouz recipe"; but "majumdar" in lower case is still the name). ``capitals``: whether
        ``text`` has an upper-case letter, if already known; ``previous``: whether the word before
        counts too (leading given names are judged by the word after them: "Basil Mahfouz *Smith*",
        while the word before is often just a capitalised sentence start, "Through Basil Mahfouz's").
        ``memo``: the verdicts on neighbour words so far, for a caller judging many spans of one text."""
        a, b = span
        if (text[a:b].islower() and (any(ch.isupper() for ch in text) if capitals is None else capitals)
                and has_common_word(t for t in _tokens(fold(text[a:b])) if t not in WEAK)):
            return True
        own = self._own_words[j]
        before = _PREV_WORD.search(text[max(0, a - _NEIGHBOUR_CHARS):a]) if previous else None
        for m in (before, _NEXT_WORD.match(text[b:b + _NEIGHBOUR_CHARS])):
            if m is None:
                continue
            word = m.group(1)
            verdict = None if memo is None else memo.get((word, j))
            if verdict is None:
                key = fold(word).strip(".'\u2019-")
                verdict = word[0].isupper() and key not in NOT_A_NAME and not set(_tokens(match_fold(key))) <= own
                if memo is not None:
                    memo[(word, j)] = verdict
            if verdict:
                return True
        return False


def _uses_capitals(text: str, cuts: Sequence[int], pos: int, known: dict[int, bool]) -> bool:
    """Whether the text of ``text`` around ``pos`` has an upper-case letter: ``cuts`` are the
    ``TEXT_BOUNDARY`` positions of texts joined into one (none: one text); ``known``: the answers so
    far, by text number."""
    k = bisect.bisect_right(cuts, pos)
    if k not in known:
        lo, hi = (cuts[k - 1] + 1 if k else 0), (cuts[k] if k < len(cuts) else len(text))
        known[k] = any(ch.isupper() for ch in text[lo:hi])
    return known[k]


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
