"""Segment features from per-word features: how a long input is screened in time linear in its length.

A long input is screened as thousands of overlapping segments (word windows and sentences, see
``classifiers.detector.segment_texts``), so every word sits in about three of them. Two of the
static stage's features are sums over the words of a segment:

* hashed character n-grams inside word boundaries (``CharNgrams``: sklearn's ``char_wb`` analyser
  splits the text on whitespace and takes each word's n-grams on its own), and
* the static embedding (the mean of the segment's token vectors, the tokens of a word-local
  tokenizer such as BERT's WordPiece being the concatenation of its words' tokens).

So each distinct word of the request is analysed once, and a segment's features are a sparse
product ``counts[S, W] @ word_features[W, ...]`` followed by the normalisation the per-segment path
applies (l2 rows): the same numbers the per-segment path gives (``tests/classifiers/test_wordbag.py``),
for a fraction of the Python work. Everything is done in chunks so a caller can check its
``Deadline`` between them and so no single C call holds the GIL for long.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.preprocessing import normalize

from classifiers.base import Deadline
from classifiers.embedder import StaticEmbedder
from classifiers.features import CharNgrams

WORD_CHUNK = 256    # distinct words analysed per step (a deadline check between steps, a few ms)


@dataclass(frozen=True)
class WordBag:
    """The distinct words of some segments and how often each segment uses each one."""

    words: list[str]
    counts: sp.csr_matrix    # [S, W] word counts per segment

    @classmethod
    def of(cls, segments: Sequence[str], deadline: Deadline | None = None) -> "WordBag":
        vocab: dict[str, int] = {}
        indices: list[int] = []
        indptr = [0]
        for i, seg in enumerate(segments):
            if deadline is not None and i % WORD_CHUNK == 0:
                deadline.check("word bag")
            indices += [vocab.setdefault(w, len(vocab)) for w in seg.split()]
            indptr.append(len(indices))
        data = np.ones(len(indices), np.float32)
        counts = sp.csr_matrix((data, np.asarray(indices, np.int64), np.asarray(indptr, np.int64)),
                               shape=(len(segments), len(vocab)))
        counts.sum_duplicates()
        return cls(list(vocab), counts)


class CharNgramCounts:
    """``CharNgrams`` without the row normalisation: per-word counts that add up to a segment's."""

    def __init__(self, char: CharNgrams) -> None:
        # the same vectoriser configuration (analyser, hashing, preprocessor), only un-normalised
        self._hv = clone(char._hv).set_params(norm=None)  # type: ignore[attr-defined]
        self.n_features = char.n_features

    def words(self, words: Sequence[str]) -> sp.csr_matrix:
        return self._hv.transform(list(words)).tocsr()

    @staticmethod
    def segments(counts: sp.csr_matrix, word_rows: sp.csr_matrix) -> sp.csr_matrix:
        """[S, F] l2-normalised n-gram vectors of the segments (rows of ``counts``)."""
        return normalize((counts @ word_rows).tocsr(), norm="l2", copy=False)


def static_segments(counts: sp.csr_matrix, word_sums: np.ndarray) -> np.ndarray:
    """[S, d] static embeddings of the segments from their words' token-vector sums (the mean of a
    segment's tokens, l2-normalised, is its normalised sum; a segment without tokens stays zero)."""
    out = np.asarray(counts @ word_sums, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return out / norms


class WordFeatures:
    """Per-word static-stage features (token ids, char n-gram counts), computed once per distinct word
    and kept in a bounded LRU (``size`` words, a few hundred bytes each): a document's vocabulary
    recurs across requests, and a de-obfuscated second screening of a long text changes few words.
    Thread-safe; one per detector (no module state)."""

    def __init__(self, static: StaticEmbedder, char: CharNgrams, size: int = 100_000) -> None:
        self.static = static
        self.counts = CharNgramCounts(char)
        self.size = size
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def _compute(self, words: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        ids = self.static.token_ids(words)
        rows = self.counts.words(words)
        return [(ids[i], rows.indices[rows.indptr[i]:rows.indptr[i + 1]].copy(), rows.data[rows.indptr[i]:rows.indptr[i + 1]].copy())
                for i in range(len(words))]

    def matrices(self, words: Sequence[str], deadline: Deadline | None = None) -> tuple[sp.csr_matrix, np.ndarray]:
        """([W, F] char n-gram counts, [W, d] token-vector sums) of ``words``, in chunks of
        ``WORD_CHUNK`` words with a ``deadline`` check before each (a few milliseconds of work)."""
        chars, sums = [], []
        for start in range(0, len(words), WORD_CHUNK):
            if deadline is not None:
                deadline.check("word features")
            char, dense = self._chunk(words[start:start + WORD_CHUNK])
            chars.append(char)
            sums.append(dense)
        if not chars:
            return self._chunk([])
        return sp.vstack(chars, format="csr"), np.vstack(sums)

    def _chunk(self, words: Sequence[str]) -> tuple[sp.csr_matrix, np.ndarray]:
        with self._lock:
            found = [self._cache.get(w) for w in words]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            for i, feats in zip(missing, self._compute([words[i] for i in missing])):
                found[i] = feats
        with self._lock:
            for w, f in zip(words, found):
                self._cache[w] = f  # type: ignore[assignment]
                self._cache.move_to_end(w)
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        feats = [f for f in found if f is not None]
        char = _rows([f[1] for f in feats], [f[2] for f in feats], self.counts.n_features)
        tokens = _rows([f[0] for f in feats], [np.ones(len(f[0]), np.float32) for f in feats], len(self.static.vectors))
        return char, np.asarray(tokens @ self.static.vectors, dtype=np.float32)


def _rows(indices: list[np.ndarray], data: list[np.ndarray], width: int) -> sp.csr_matrix:
    indptr = np.zeros(len(indices) + 1, np.int64)
    np.cumsum([len(x) for x in indices], out=indptr[1:])
    flat_i = np.concatenate(indices).astype(np.int64, copy=False) if indices and indptr[-1] else np.zeros(0, np.int64)
    flat_d = np.concatenate(data).astype(np.float32, copy=False) if data and indptr[-1] else np.zeros(0, np.float32)
    return sp.csr_matrix((flat_d, flat_i, indptr), shape=(len(indices), width))
