"""Cheap features beside the embedding: hashed character n-grams and per-target name matches.

Both are stateless given their parameters (no vocabulary to fit), so an artifact stores only the
parameters and the trained weights, never a pickled vectoriser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from classifiers.text import fold, name_alternation

# Words that never identify a person on their own (titles, particles, generic words in names).
_WEAK = {
    "the", "of", "and", "de", "da", "di", "del", "van", "von", "la", "le", "du", "al", "el", "bin", "ibn",
    "jr", "jr.", "sr", "sr.", "ii", "iii", "iv", "sir", "dame", "lord", "lady", "prince", "princess", "king",
    "queen", "duke", "duchess", "earl", "dr", "dr.", "mr", "mrs", "ms", "saint", "st", "st.", "mc", "mac",
    "cent", "ice", "rock", "john", "james", "mark", "paul", "william", "robert", "david", "michael", "mary",
}


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


class NameMatcher:
    """Per target: does a text name it (a full name or alias), or use a distinctive part of a name?

    Whole-word, case- and accent-insensitive. Returns two columns per target: ``full`` and
    ``part`` (a name token of >= 4 letters that is not a title/particle/common first name). One
    combined regex per kind, whatever the number of targets.
    """

    def __init__(self, names_by_target: Mapping[str, Sequence[str]]) -> None:
        self.target_ids = list(names_by_target)
        self._full_map: dict[str, list[int]] = {}
        self._part_map: dict[str, list[int]] = {}
        for j, tid in enumerate(self.target_ids):
            for n in {fold(n).strip() for n in names_by_target[tid] if n and n.strip()}:
                self._full_map.setdefault(n, []).append(j)
            for p in name_parts(names_by_target[tid]):
                self._part_map.setdefault(p, []).append(j)
        self._full = _overlapping(self._full_map)
        self._part = _overlapping(self._part_map)

    def _hits(self, folded_text: str) -> tuple[set[int], set[int]]:
        full: set[int] = set()
        part: set[int] = set()
        if self._full is not None:
            for m in self._full.finditer(folded_text):
                full.update(self._full_map[m.group(1)])
        if self._part is not None:
            for m in self._part.finditer(folded_text):
                part.update(self._part_map[m.group(1)])
        return full, part

    def matrix(self, texts: Sequence[str], *, folded: bool = False) -> np.ndarray:
        """[len(texts), n_targets, 2] of 0/1 (``folded``: the texts are already ``fold``-ed)."""
        out = np.zeros((len(texts), len(self.target_ids), 2), dtype=np.float32)
        for i, text in enumerate(texts):
            full, part = self._hits(text if folded else fold(text))
            for j in full:
                out[i, j, :] = 1.0
            for j in part:
                out[i, j, 1] = 1.0
        return out

    def column(self, texts: Sequence[str], j: int, *, folded: bool = False) -> np.ndarray:
        """[len(texts), 2] for target index j."""
        out = np.zeros((len(texts), 2), dtype=np.float32)
        for i, text in enumerate(texts):
            full, part = self._hits(text if folded else fold(text))
            if j in full:
                out[i] = 1.0
            elif j in part:
                out[i, 1] = 1.0
        return out


def _overlapping(alternatives: Mapping[str, object]) -> re.Pattern[str] | None:
    """Whole-word matches of any alternative, overlapping ones included (a zero-width lookahead)."""
    source = name_alternation(alternatives)
    return None if source is None else re.compile(rf"(?=({source}))")


def name_parts(names: Iterable[str]) -> list[str]:
    parts: set[str] = set()
    for name in names:
        for tok in re.split(r"[\s,]+", fold(name)):
            tok = tok.strip(".'\"()")
            if len(tok) >= 4 and tok not in _WEAK and not tok.isdigit():
                parts.add(tok)
    return sorted(parts)


def _alternation(names: Iterable[str]) -> re.Pattern[str] | None:
    source = name_alternation(fold(n) for n in names if n)
    return None if source is None else re.compile(source)
