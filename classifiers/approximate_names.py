"""Approximate name matching: a target's name as people actually type it.

The exact matcher (``classifiers.names.NameFinder``) already ignores case, accents, look-alike
letters and the separators between name parts. What it cannot see is a name spelt differently:
"Rajiv Majumdar" / "Rajeev Majumdaar" for Rajeev Majumdar, "Hsiao Yunhwa", or the name written in
another script ("Николай Абилов", "Νικολάι Αμπίλοφ", "نيكولاي أبيلوف"). This module finds those:

* every word of the text is written in Latin letters (``anyascii``: Cyrillic, Greek, Arabic, Hebrew,
  ... -> ASCII) and reduced to its letters and digits, so hyphens, spaces and apostrophes do not
  count ("Al-Kuwaiti", "Al Kuwaiti", "AlKuwaiti", "Al'Kuwaiti" are one key);
* runs of 1 to k+1 consecutive words (k = the words of the name) are compared with each name form
  (the name, its inversions, its distinctive leading given names) by Damerau-Levenshtein edit
  distance (``rapidfuzz``: substitutions, insertions, deletions, transpositions), within a bound that
  grows with the name's length (``ApproximateConfig.budget``: none below 6 letters, then 30 % of the
  letters, at most 3), one edit more for a name of 9+ letters whose every word is close on its own
  (``word_checked_budget``: "Tae-o Irak" for "Tae-ho Park");
* both sides are also compared by their *sound key* (``sound_key``: the spellings transliterations
  disagree on made one — ``kh``/``ch``/``tsh``/``h``, ``dzh``/``tz``/``j``, ``v``/``w``/``ou``/``u``,
  ``y``/``i``, Greek ``mp``/``nt`` for ``b``/``d``, doubled letters), within the same bound; a run
  made only of words in another script also by the consonants of that key (``skeleton``), because
  Arabic and Hebrew do not write short vowels;
* a distinctive family name alone (``surnames``, chosen by ``classifiers.surnames``) is matched
  exactly, as a *surname* hit.

Common-word collisions are the caller's to judge (``NameFinder.someone_else`` and
``is_common_phrase`` here): a run made only of common English words ("his ham") is never a name.

Linear in the text: each distinct word is transliterated once per call and compared (one
``rapidfuzz.process.cdist`` call) with the name words of four letters or more and the whole name
keys; only runs around a word that is close to one of them (an *anchor*), or written in another
script, are built and compared with the name forms, again in one ``cdist`` call per key kind. The
runs are built once per distinct *window* (the words that follow a start) for all windows together,
so a text that repeats a disguised name costs about what one occurrence does plus its positions.
Callers match the texts of a request joined (``boundary``), one pass per request, not per turn.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from anyascii import anyascii
from rapidfuzz import process
from rapidfuzz.distance import OSA, DamerauLevenshtein
from wordfreq import zipf_frequency

_KEY_DROP = re.compile(r"[^a-z0-9]+")
# order matters: longer spellings first
# (Arabic writes "ch" as "tsh": "تشين" for "Chen")
_SOUND_PAIRS = (("tsh", "h"), ("dzh", "j"), ("tz", "j"), ("dz", "j"), ("zh", "j"), ("dh", "z"), ("kh", "h"), ("ch", "h"),
                ("gh", "g"), ("ph", "f"), ("th", "t"), ("sh", "s"), ("ts", "s"), ("ck", "k"), ("mp", "b"), ("nt", "d"), ("x", "ks"), ("oy", "u"),
                ("ou", "u"), ("ee", "i"), ("w", "u"), ("v", "u"), ("y", "i"), ("iu", "u"), ("c", "k"), ("q", "k"))
_SKELETON_MAP = str.maketrans({"g": "j", "p": "b", "f": "b", "e": "", "a": "", "i": "", "o": "", "u": ""})
_REPEAT = re.compile(r"(.)\1+")
COMMON_ZIPF = 4.0   # a word this frequent in English (zipf scale) is an ordinary word
# a name part written in lower case is an ordinary word from this frequency on ("basil", "park",
# "chen", "raven"; not "majumdar", "nakamura")
LOWER_CASE_WORD_ZIPF = 3.2
FOREIGN_ANCHOR_DISTANCE = 0.6   # normalised sound-key distance of a word in another script to a name word


def latin_key(word: str) -> str:
    """A word in ASCII letters and digits only, lower case ("Абилов" -> "abilov", "Al-Kuwaiti" -> "alkuwaiti")."""
    text = word if word.isascii() else anyascii(unicodedata.normalize("NFKC", word))
    return _KEY_DROP.sub("", text.lower())


def sound_key(key: str) -> str:
    """A latin key with the spellings transliterations disagree on made one ("khsiaoyunkhva",
    "chsiaoioynchoya" and "hsiaoyunhwa" all become "hsiaounhua"), doubled letters collapsed."""
    for a, b in _SOUND_PAIRS:
        key = key.replace(a, b)
    return _REPEAT.sub(r"\1", key)


def skeleton(key: str) -> str:
    """The consonants of a sound key (``w``/``y`` read as vowels, ``v`` as ``f``: Arabic writes it
    so), doubled ones collapsed: what an Arabic or Hebrew spelling keeps ("krmynmwntnyjrw" and "carmenmontenegro": "krmnmntnjr")."""
    return _REPEAT.sub(r"\1", sound_key(key.replace("v", "f")).translate(_SKELETON_MAP))


def has_common_word(words: Iterable[str], zipf: float = LOWER_CASE_WORD_ZIPF) -> bool:
    """Some word is an ordinary English word (``wordfreq`` zipf >= ``zipf``): "basil mahfouz", "park"."""
    return any(zipf_frequency(w, "en") >= zipf for w in words)


def _join(left: str, right: str) -> str:
    """Two keys whose doubled letters are collapsed, joined with the doubled letter at the seam collapsed too."""
    return left + right[1:] if left and right and left[-1] == right[0] else left + right


def is_common_phrase(words: Iterable[str], zipf: float = COMMON_ZIPF) -> bool:
    """Every word is a common English word (``wordfreq`` zipf >= ``zipf``): "his ham", "the park"."""
    return all(zipf_frequency(w, "en") >= zipf for w in words)


@dataclass(frozen=True)
class ApproximateConfig:
    """Edit bounds. ``budget(n)``: edits allowed for a name form of ``n`` letters."""

    min_letters: int = 6
    edit_ratio: float = 0.3
    max_edits: int = 3
    min_skeleton: int = 4
    skeleton_ratio: float = 0.125
    # a name of this many letters or more is allowed one edit more (at most ``max_edits``) when each
    # of its words is close on its own (``word_budget``): "Tae-o Irak", "Hpin Amheen" (3 edits on 9 letters)
    word_checked_letters: int = 9
    word_ratio: float = 0.5

    def budget(self, n: int) -> int:
        return 0 if n < self.min_letters else min(self.max_edits, max(1, int(n * self.edit_ratio)))

    def word_checked_budget(self, n: int) -> int:
        budget = self.budget(n)
        return min(self.max_edits, budget + 1) if n >= self.word_checked_letters else budget

    def word_budget(self, n: int) -> int:
        return max(1, int(n * self.word_ratio))

    def sound_budget(self, n: int) -> int:
        """Sound keys have the transliterations' differences taken out already: one edit fewer."""
        budget = self.budget(n)
        return max(1, budget - 1) if budget else 0

    def skeleton_budget(self, n: int) -> int:
        """-1 (never) for a skeleton too short to tell names apart."""
        return -1 if n < self.min_skeleton else min(2, int(n * self.skeleton_ratio))


@dataclass(frozen=True)
class _Key:
    target: int
    key: str
    words: int
    budget: int
    sound: str
    sound_budget: int
    skeleton: str
    skeleton_budget: int
    surname: bool = False
    words_budget: int = 0   # edits allowed when every word is close on its own (``_words_close``)
    parts: tuple[str, ...] = ()   # the latin key of each word of the form



def name_form_words(words: Sequence[str], distinctive: Sequence[bool]) -> list[list[str]]:
    """The word lists compared approximately for one name: the name, each inversion, and each
    leading run of two or more words with at least two distinctive ones (the given names)."""
    forms = [list(words)]
    for k in range(1, len(words)):
        forms.append(list(words[k:]) + list(words[:k]))
    for k in range(2, len(words)):
        if sum(distinctive[:k]) >= 2:
            forms.append(list(words[:k]))
    return forms


class ApproximateNames:
    """Approximate mentions of targets' names in a text (see the module docstring).

    ``forms``: (target index, words of a name form as written, folded or not); ``surnames``: (target
    index, family name) matched alone, spelt as given (``distinctive_surnames``), as *surname* hits."""

    def __init__(self, forms: Iterable[tuple[int, Sequence[str]]], config: ApproximateConfig | None = None,
                 surnames: Iterable[tuple[int, str]] = ()) -> None:
        self.config = config or ApproximateConfig()
        keys: dict[tuple[int, str], _Key] = {}
        surname_parts: set[str] = set()
        for target, word in surnames:
            key = latin_key(word)
            surname_parts.update(t for t in map(latin_key, re.findall(r"[^\W_]+", word)) if len(t) >= 3)
            keys[(target, key)] = _Key(target, key, max(1, len(re.findall(r"[^\W_]+", word))), 0, sound_key(key), 0,
                                       skeleton(key), -1, surname=True)
        for target, words in forms:
            key = "".join(latin_key(w) for w in words)
            budget = self.config.budget(len(key))
            if budget == 0 or (target, key) in keys:
                continue
            skel = skeleton(key)
            n_words = max(1, sum(len(re.findall(r"[^\W_]+", w)) for w in words))
            keys[(target, key)] = _Key(target, key, n_words, budget, sound_key(key), self.config.sound_budget(len(key)),
                                       skel, self.config.skeleton_budget(len(skel)),
                                       words_budget=self.config.word_checked_budget(len(key)),
                                       parts=tuple(p for p in map(latin_key, words) if p))
        self._keys = list(keys.values())
        # anchors: the name words that say most (>= 4 letters; all of a name's words if none is) and
        # the whole keys ("hsiaoyunhwa" written as one word)
        anchors: dict[str, int] = {k.key: k.budget for k in keys.values()}
        # a word of a name allowed an edit more when each word is close (``word_checked_budget``) is an
        # anchor as far as ``word_budget`` too, for words that are not common English words ("irak",
        # "pkr" for "park"; not "part", "dark")
        loose: dict[str, int] = {}
        for _, words in forms:
            toks = [latin_key(t) for w in words for t in re.findall(r"[^\W_]+", w)]
            long = [t for t in toks if len(t) >= 4] or [t for t in toks if t]
            n = sum(map(len, toks))
            for t in long:
                anchors[t] = max(anchors.get(t, 0), min(self.config.max_edits, max(1, int(len(t) * self.config.edit_ratio))))
                if self.config.word_checked_budget(n) > self.config.budget(n):
                    loose[t] = max(loose.get(t, 0), min(self.config.max_edits, self.config.word_budget(len(t))))
        # a family name's own parts of three letters or more, exactly ("yun" and "hwa" of "yun-hwa")
        for part in surname_parts:
            anchors.setdefault(part, 0)
        self._anchors = list(anchors | loose)
        self._anchor_budgets = np.asarray([anchors.get(a, -1) for a in self._anchors], dtype=np.int32)
        self._loose_budgets = np.asarray([max(anchors.get(a, -1), loose.get(a, -1)) for a in self._anchors], dtype=np.int32)
        self._anchor_sounds = list({sound_key(a) for a in self._anchors})
        self._strings = [k.key for k in self._keys]
        self._sounds = [k.sound for k in self._keys]
        self._skeletons = [k.skeleton for k in self._keys]
        self._max_words = max((k.words for k in self._keys), default=0) + 1
        lengths = [len(k.key) for k in self._keys]
        self._min_len = min((len(k.key) - (0 if k.surname else self.config.max_edits) for k in self._keys), default=0)
        self._max_len = max(lengths, default=0) + self.config.max_edits
        # a transliteration is longer in Latin letters than the name ("Entoyarnt" for "Edward")
        self._max_foreign_len = int(max(lengths, default=0) * 1.5) + self.config.max_edits

    def __bool__(self) -> bool:
        return bool(self._keys)

    def find(self, text: str, word_re: re.Pattern[str],
             boundary: str | None = None) -> list[tuple[int, int, int, int, int, bool]]:
        """(target, start, end, distance, letters of the name form, whether the form is a family name
        alone) of every approximate mention in
        ``text``; ``word_re``: what a word is (the name matcher's). Overlapping runs are all returned,
        each with its best name form (the longest, then the closest).
        ``boundary``: a character that separates texts joined into one (no run reads across it);
        ``word_re`` must then match it too, as a token of its own."""
        if not self._keys:
            return []
        # each distinct word transliterated and compared with the anchors once: a text with no word
        # near an anchor (most texts) costs one ``findall`` and one ``cdist`` over its vocabulary
        tokens = word_re.findall(text)
        keys = {w: latin_key(w) for w in set(tokens)}
        anchored, loose = self._near_anchor({k for w, k in keys.items() if k and w.isascii()})
        anchored |= self._near_foreign_anchor({k for w, k in keys.items() if k and not w.isascii()})
        near = anchored | loose
        if not near:
            return []
        width = self._max_words
        near_words = {w for w, k in keys.items() if k in near}
        starts: set[int] = set()
        for i in [i for i, w in enumerate(tokens) if w in near_words]:
            starts.update(range(max(0, i - width + 1), i + 1))
        # starts followed by the same words are one *window*: built and compared once (adversarial
        # text repeats itself; ordinary text has few words near an anchor); a window ends at a
        # boundary between texts
        windows: dict[tuple[str, ...], list[int]] = {}
        for i in sorted(starts):
            window = tuple(tokens[i:i + width])
            if boundary is not None and boundary in window:
                window = window[:window.index(boundary)]
            if window:
                windows.setdefault(window, []).append(i)
        # sound keys and skeletons only for windows with a word in another script (only their runs are
        # compared by sound)
        voiced = {w for ws in windows if not all(w.isascii() for w in ws) for w in ws}
        info = {w: (keys[w], *((sound_key(keys[w]), skeleton(keys[w])) if w in voiced else ("", "")), not w.isascii())
                for w in {w for ws in windows for w in ws}}
        words = list(windows)
        # the runs of 1..width words of each window, grown one word at a time for all windows at once
        # (a run ends once longer than any name form could be)
        alive = list(range(len(words)))
        key = [""] * len(alive)
        sound = [""] * len(alive)
        skel = [""] * len(alive)
        other = [False] * len(alive)
        latin = [False] * len(alive)  # some word of the run in Latin letters: its consonants are no skeleton
        min_len, max_len, max_foreign_len = self._min_len, self._max_len, self._max_foreign_len
        runs: list[tuple[str, int, int]] = []       # (key, window, last word of the run in the window)
        sounds: list[tuple[str, int, int]] = []
        foreign: list[tuple[str, int, int]] = []
        for m in range(width):
            keep = [j for j, g in enumerate(alive) if m < len(words[g])]
            nxt = [info[words[alive[j]][m]] for j in keep]
            alive = [alive[j] for j in keep]
            key = [key[j] + w[0] for j, w in zip(keep, nxt)]
            if voiced:
                sound = [_join(sound[j], w[1]) for j, w in zip(keep, nxt)]
                skel = [_join(skel[j], w[2]) for j, w in zip(keep, nxt)]
            else:
                sound = skel = key  # not read: no run has a word in another script
            other = [other[j] or w[3] for j, w in zip(keep, nxt)]
            latin = [latin[j] or not w[3] for j, w in zip(keep, nxt)]
            keep = [j for j, (k, o) in enumerate(zip(key, other)) if len(k) <= (max_foreign_len if o else max_len)]
            if len(keep) < len(alive):
                alive, key, sound, skel, other, latin = ([xs[j] for j in keep] for xs in (alive, key, sound, skel, other, latin))
            if not alive:
                break
            runs += [(k, g, m) for k, g in zip(key, alive) if min_len <= len(k) <= max_len]
            if any(other):
                sounds += [(s, g, m) for s, g, o, k in zip(sound, alive, other, key) if o and len(k) >= min_len]
                # ("was ايشا ال-هاشم" is not "Aysha Al-Hashim" with "was" for a consonant)
                foreign += [(s, g, m) for s, g, o, k, lat in zip(skel, alive, other, key, latin)
                            if o and not lat and len(k) >= min_len]
        # Latin runs: (unrestricted) Damerau-Levenshtein, a transposition with an edit between its
        # letters counts as one ("kNolai" for "Nikolai")
        hits = [(ki, d, g, m) for ki, d, g, m in self._compare(runs, self._strings, [k.words_budget for k in self._keys],
                                                               damerau=True)
                if self._latin_hit([info[w][0] for w in words[g][:m + 1]], self._keys[ki], d, anchored)]
        if sounds:
            hits += self._compare(sounds, self._sounds, [k.sound_budget for k in self._keys])
        if foreign:
            hits += self._compare(foreign, self._skeletons, [k.skeleton_budget for k in self._keys])
        if not hits:
            return []
        # of the hits on one run, only the first of the longest name form at the least distance can
        # be a mention (``NameFinder.approximate_mentions`` judges the others overlapped): one per run
        best: dict[tuple[int, int], tuple[tuple[int, int], int]] = {}
        for h, (ki, d, g, m) in enumerate(hits):
            rank = (-len(self._keys[ki].key), d)
            if (g, m) not in best or rank < best[(g, m)][0]:
                best[(g, m)] = (rank, h)
        spans = [m.span() for m in word_re.finditer(text)]  # the same tokens as ``tokens``
        at = list(windows.values())
        found: list[tuple[int, int, int, int, int, bool]] = []
        for ki, d, g, m in [hits[h] for _, h in sorted(best.values(), key=lambda b: b[1])]:
            k = self._keys[ki]
            found += [(k.target, spans[i][0], spans[i + m][1], d, len(k.key), k.surname) for i in at[g]]
        return found

    def _near_anchor(self, keys: set[str]) -> tuple[set[str], set[str]]:
        """(the word keys within an anchor's budget of one of the anchors, the other ones that are
        within its ``word_budget`` of an anchor of a name allowed that and are no common word)."""
        if not keys:
            return set(), set()
        queries = list(keys)
        dist = process.cdist(queries, self._anchors, scorer=OSA.distance, score_cutoff=self.config.max_edits,
                             dtype=np.int32, workers=1)
        hit = (dist <= self._anchor_budgets[None, :]).any(axis=1)
        loose = (dist <= self._loose_budgets[None, :]).any(axis=1) & ~hit
        return ({q for q, h in zip(queries, hit) if h},
                {q for q, h in zip(queries, loose) if h and zipf_frequency(q, "en") < COMMON_ZIPF})

    def _near_foreign_anchor(self, keys: set[str]) -> set[str]:
        """The keys of words in another script whose sound key is at most ``FOREIGN_ANCHOR_DISTANCE``
        (normalised) from an anchor's: transliterations differ more than misspellings do."""
        if not keys:
            return set()
        queries = list(keys)
        dist = process.cdist([sound_key(q) for q in queries], self._anchor_sounds, scorer=OSA.normalized_distance,
                             score_cutoff=FOREIGN_ANCHOR_DISTANCE, dtype=np.float32, workers=1)
        hit = (dist <= FOREIGN_ANCHOR_DISTANCE).any(axis=1)
        return {q for q, h in zip(queries, hit) if h}

    def _latin_hit(self, tokens: list[str], key: _Key, d: int, anchored: set[str]) -> bool:
        """Whether a Latin run of word keys ``tokens``, ``d`` edits from ``key``, is a mention. One edit
        over the name's usual bound: only when each word is close (``word_budget`` of the name's word:
        "Tae-o Irak"). At the edit limit: only when each word is within half the longer of the two
        ("Kalkidan Alblear"; "Stephenson I" is 3 edits from "Stephen King", but "I" is no "King").
        Else when a word of it is near an anchor by the usual bounds ("the CSS", near "Ross" only
        word by word, is no "the Boss") and it has as many words as the name unless one edit off
        ("Stephenson"); or, for a name allowed the edit more, word by word ("Tae-ho Pap")."""
        if d > key.budget:
            return self._words_close(tokens, key)
        if d >= self.config.max_edits:
            return self._words_close(tokens, key, lenient=True)
        if (len(tokens) >= len(key.parts) or d <= 1) and any(t in anchored for t in tokens):
            return True
        return key.words_budget > key.budget and self._words_close(tokens, key)

    def _words_close(self, tokens: list[str], key: _Key, *, lenient: bool = False) -> bool:
        """The run's ``tokens`` (latin keys) split into consecutive groups, one per word of the name
        form, each within ``word_budget`` of its word (``lenient``: of the longer of the two): both
        given and family name are close."""
        def close(i: int, k: int) -> bool:
            if k == len(key.parts):
                return i == len(tokens)
            word = key.parts[k]
            for e in range(i + 1, len(tokens) - (len(key.parts) - k - 1) + 1):
                group = "".join(tokens[i:e])
                bound = self.config.word_budget(max(len(word), len(group)) if lenient else len(word))
                if DamerauLevenshtein.distance(group, word) <= bound and close(e, k + 1):
                    return True
            return False
        tokens = [t for t in tokens if t]
        return len(key.parts) >= 2 and close(0, 0)

    def _compare(self, runs: list[tuple[str, int, int]], choices: list[str], budgets: list[int], *,
                 damerau: bool = False) -> list[tuple[int, int, int, int]]:
        """(choice, distance, window, last word) of each run whose key is within a choice's budget;
        each distinct run key is compared with ``choices`` in one ``cdist`` call (optimal string
        alignment). ``damerau``: by unrestricted Damerau-Levenshtein distance instead, computed only
        for the pairs one edit over the budget (it is at most OSA's, and ~3x dearer in ``cdist``)."""
        queries = list(dict.fromkeys(k for k, _, _ in runs))
        if not queries:
            return []
        limit = np.asarray(budgets, dtype=np.int32)[None, :]
        dist = process.cdist(queries, choices, scorer=OSA.distance, score_cutoff=self.config.max_edits + damerau,
                             dtype=np.int32, workers=1)
        if damerau:
            qs, ks = np.nonzero(dist == limit + 1)
            if len(qs):
                dist[qs, ks] = process.cpdist([queries[q] for q in qs], [choices[k] for k in ks],
                                              scorer=DamerauLevenshtein.distance, dtype=np.int32, workers=1)
        within = dist <= limit
        hits: dict[str, list[tuple[int, int]]] = {}
        for qi, ki in zip(*np.nonzero(within)):
            if dist[qi, ki] >= 2 and queries[qi].startswith(choices[ki]):
                continue  # the name with letters after it is another word ("Taylor Swiftie", "Parkside")
            hits.setdefault(queries[qi], []).append((int(ki), int(dist[qi, ki])))
        return [(ki, d, g, m) for k, g, m in runs for ki, d in hits.get(k, ())]
