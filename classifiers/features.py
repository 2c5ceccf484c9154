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

from classifiers.text import fold

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
    ``part`` (a name token of >= 4 letters that is not a title/particle/common first name).
    """

    def __init__(self, names_by_target: Mapping[str, Sequence[str]]) -> None:
        self.target_ids = list(names_by_target)
        self._full: list[re.Pattern[str] | None] = []
        self._part: list[re.Pattern[str] | None] = []
        for tid in self.target_ids:
            self._full.append(_alternation(names_by_target[tid]))
            self._part.append(_alternation(name_parts(names_by_target[tid])))

    def matrix(self, texts: Sequence[str], *, folded: bool = False) -> np.ndarray:
        """[len(texts), n_targets, 2] of 0/1 (``folded``: the texts are already ``fold``-ed)."""
        out = np.zeros((len(texts), len(self.target_ids), 2), dtype=np.float32)
        for i, text in enumerate(texts):
            f = text if folded else fold(text)
            for j in range(len(self.target_ids)):
                full, part = self._full[j], self._part[j]
                if full is not None and full.search(f):
                    out[i, j, 0] = 1.0
                    out[i, j, 1] = 1.0
                elif part is not None and part.search(f):
                    out[i, j, 1] = 1.0
        return out

    def column(self, texts: Sequence[str], j: int, *, folded: bool = False) -> np.ndarray:
        """[len(texts), 2] for target index j."""
        out = np.zeros((len(texts), 2), dtype=np.float32)
        full, part = self._full[j], self._part[j]
        for i, text in enumerate(texts):
            f = text if folded else fold(text)
            if full is not None and full.search(f):
                out[i] = 1.0
            elif part is not None and part.search(f):
                out[i, 1] = 1.0
        return out


def name_parts(names: Iterable[str]) -> list[str]:
    parts: set[str] = set()
    for name in names:
        for tok in re.split(r"[\s,]+", fold(name)):
            tok = tok.strip(".'\"()")
            if len(tok) >= 4 and tok not in _WEAK and not tok.isdigit():
                parts.add(tok)
    return sorted(parts)


def _alternation(names: Iterable[str]) -> re.Pattern[str] | None:
    alts = sorted({fold(n).strip() for n in names if n and n.strip()}, key=len, reverse=True)
    if not alts:
        return None
    joined = "|".join(re.escape(a) for a in alts)
    return re.compile(rf"(?<!\w)(?:{joined})(?!\w)")
