"""Cheap features beside the embedding: hashed character n-grams and per-target name matches.

Both are stateless given their parameters (no vocabulary to fit), so an artifact stores only the
parameters and the trained weights, never a pickled vectoriser.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from classifiers.facts import date_keys
from classifiers.name_forms import WEAK
from classifiers.names import NameFinder
from classifiers.name_neighbours import ordinary_phrase
from classifiers.surnames import speaks_of_a_person
from classifiers.text import fold, name_alternation
from classifiers.unicode_fold import match_fold, match_fold_with_map


@dataclass(frozen=True)
class CharNgrams:
    """Hashed, accent-folded character n-grams inside word boundaries (l2-normalised)."""

    n_features: int = 2 ** 17
    ngram_min: int = 3
    ngram_max: int = 5

    def __post_init__(self) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        object.__setattr__(self, "_hv", HashingVectorizer(
            analyzer="char_wb", ngram_range=(self.ngram_min, self.ngram_max), n_features=self.n_features,
            alternate_sign=False, norm="l2", preprocessor=fold, dtype=np.float32,
        ))

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        return self._hv.transform(list(texts)).tocsr()  # type: ignore[attr-defined]

    def params(self) -> dict[str, int]:
        return {"n_features": self.n_features, "ngram_min": self.ngram_min, "ngram_max": self.ngram_max}


# columns of the per-target match features, in the order of ``Heads.w_name``
MATCH_COLUMNS = ("full", "part", "part_other", "date", "title", "given")
N_MATCH = len(MATCH_COLUMNS)
_STRONG_COLUMNS = [MATCH_COLUMNS.index(c) for c in ("full", "date", "title")]  # evidence on their own
_WORD_COLUMNS = [MATCH_COLUMNS.index(c) for c in ("part", "given")]  # evidence where the word is a person's


class NameMatcher:
    """Per target, what in a text points at it: its name, a part of its name, or one of its facts.

    Columns (``MATCH_COLUMNS``), 0/1 each: ``full`` (a name or alias, whole word, case- and
    accent-insensitive), ``part`` (a name token of >= 4 letters that is not a title/particle/common
    first name; also set with ``full``), ``part_other`` (instead of ``part`` when every such part
    stands next to a capitalised word that is not the target's, "Elliot *Patrick* Benson" is
    someone else, or is written in lower case in a text that has capitals, "a large *candy* bar";
    ``given`` instead of ``part`` when the only parts used are given names: "Marie"
    alone is weaker evidence for Marie Osmond than "Osmond"),
    ``date`` (a full date from the target's forget data, in any rendering), ``title`` (a quoted
    title from its forget data). Names and parts are found by ``classifiers.names.NameFinder``, the
    matcher the keyword detector and ECO use (look-alikes, invisible characters, any separators
    between parts, inverted order); titles by one combined regex, whatever the number of targets.
    """

    def __init__(self, names_by_target: Mapping[str, Sequence[str]],
                 facts_by_target: Mapping[str, Mapping[str, Sequence[str]]] | None = None) -> None:
        self.target_ids = list(names_by_target)
        self._given: list[set[str]] = []
        self._date_map: dict[str, list[int]] = {}
        self._title_map: dict[str, list[int]] = {}
        facts_by_target = facts_by_target or {}
        clean = {tid: [n for n in names_by_target[tid] if n and n.strip()] for tid in self.target_ids}
        self._finder = NameFinder(clean, parts={tid: name_parts(names) for tid, names in clean.items()})
        for j, tid in enumerate(self.target_ids):
            self._given.append({match_fold(g) for g in given_names(clean[tid])})
            facts = facts_by_target.get(tid) or {}
            for key in facts.get("dates", ()):
                self._date_map.setdefault(key, []).append(j)
            for title in facts.get("titles", ()):
                self._title_map.setdefault(fold(title).strip(), []).append(j)
        self._title = _overlapping(self._title_map)

    def _fill(self, row: np.ndarray, text: str, folded: str, only: int | None = None) -> None:
        """Set the columns of ``row`` ([T, N_MATCH], or [N_MATCH] when ``only`` is a target index)."""

        def put(j: int, col: int) -> None:
            if only is None:
                row[j, col] = 1.0
            elif j == only:
                row[col] = 1.0

        names_folded, index = match_fold_with_map(text)
        full: set[int] = set()
        spans: dict[int, list[tuple[int, int]]] = {}
        capitals: bool | None = None
        for j, kind, a, b in self._finder.folded_mentions(names_folded):
            if kind in ("full", "inverted"):
                if kind == "full" and j not in full:
                    if capitals is None:
                        capitals = any(ch.isupper() for ch in text)
                    if ordinary_phrase(text, (int(index[a]), int(index[b - 1]) + 1), capitals=capitals):
                        continue  # a common-word alias in its ordinary sense: "the rock band"
                full.add(j)
            elif kind == "part" and (only is None or j == only):
                spans.setdefault(j, []).append((a, b))
        for j in full:
            put(j, 0)
            put(j, 1)
        if spans and capitals is None:
            capitals = any(ch.isupper() for ch in text)
        for j, js in spans.items():
            if j in full:
                continue
            own = [(a, b) for a, b in js if not self._finder.someone_else(text, (int(index[a]), int(index[b - 1]) + 1), j, capitals=capitals)]
            if not own:
                put(j, 2)
            else:
                put(j, 5 if all(names_folded[a:b] in self._given[j] for a, b in own) else 1)
        if self._date_map and any(ch.isdigit() for ch in folded):
            for key in date_keys(folded):
                for j in self._date_map.get(key, ()):
                    put(j, 3)
        if self._title is not None:
            for m in self._title.finditer(folded):
                for j in self._title_map[m.group(1)]:
                    put(j, 4)

    def is_evidence(self, text: str) -> bool:
        """Whether ``text`` on its own says who it is about: a target's name or alias, one of its
        facts, or a single word of its name used as a person's (the possessive, after "by" or a
        question's auxiliary, a personal pronoun near it: "What did Bird win?"). A name word that is
        no person's ("the reading ability of *French*" for "The Hick from French Lick", "a large
        *candy* bar") or no name word at all ("John and Jay.", "I loved his portrayal in Pulp
        Fiction.") is not: a sentence cut out of a longer text is judged alone only on such evidence
        (``classifiers.normalize.NormalizingDetector``). (Also counting a sentence about *some*
        person with no name word kept 4 more RWKU attack probes but let benign turns of a many-turn
        chat be judged alone: TOFU many-turn FPR 0 -> 5 %.)"""
        row = self.matrix([text])[0]
        if row[:, _STRONG_COLUMNS].any():
            return True
        if not row[:, _WORD_COLUMNS].any():
            return False
        folded, index = match_fold_with_map(text)
        for j, kind, a, b in self._finder.folded_mentions(folded):
            if kind == "part" and row[j, _WORD_COLUMNS].any():
                start, end = int(index[a]), int(index[b - 1]) + 1
                if not self._finder.someone_else(text, (start, end), j) and speaks_of_a_person(text, start, end):
                    return True
        return False

    def _folded(self, texts: Sequence[str], folded: bool | Sequence[str] | None) -> Sequence[str]:
        if folded is True:
            return texts   # no original case: ``part_other`` cannot be told (prefer passing the folded forms)
        if not folded:
            return [fold(t) for t in texts]
        return folded  # type: ignore[return-value]

    def matrix(self, texts: Sequence[str], *, folded: bool | Sequence[str] | None = None) -> np.ndarray:
        """[len(texts), n_targets, N_MATCH] of 0/1. ``folded``: the ``fold``-ed forms of ``texts``
        if already computed (``True``: ``texts`` themselves are folded)."""
        ff = self._folded(texts, folded)
        out = np.zeros((len(texts), len(self.target_ids), N_MATCH), dtype=np.float32)
        for i, (text, f) in enumerate(zip(texts, ff)):
            self._fill(out[i], text, f)
        return out

    def column(self, texts: Sequence[str], j: int, *, folded: bool | Sequence[str] | None = None) -> np.ndarray:
        """[len(texts), N_MATCH] for target index j."""
        ff = self._folded(texts, folded)
        out = np.zeros((len(texts), N_MATCH), dtype=np.float32)
        for i, (text, f) in enumerate(zip(texts, ff)):
            self._fill(out[i], text, f, only=j)
        return out


def _overlapping(alternatives: Mapping[str, object]) -> re.Pattern[str] | None:
    """Whole-word matches of any alternative, overlapping ones included (a zero-width lookahead)."""
    source = name_alternation(alternatives)
    return None if source is None else re.compile(rf"(?=({source}))")


def given_names(names: Iterable[str]) -> set[str]:
    """Name parts that are given names: the first distinctive word of a name with several ("marie"
    of "Marie Osmond"; none for "Prince Harry")."""
    out: set[str] = set()
    for name in names:
        toks = [t for t in (x.strip(".'\"()") for x in re.split(r"\s+", fold(name.split(",")[0]))) if t and t not in WEAK]
        if len(toks) >= 2 and len(toks[0]) >= 4 and not toks[0].isdigit():
            out.add(toks[0])
    return out


def name_parts(names: Iterable[str]) -> list[str]:
    parts: set[str] = set()
    for name in names:
        for tok in re.split(r"[\s,]+", fold(name)):
            tok = tok.strip(".'\"()")
            if len(tok) >= 4 and tok not in WEAK and not tok.isdigit():
                parts.add(tok)
    return sorted(parts)
