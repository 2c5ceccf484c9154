"""The trainer's workspace: every text it has seen, with its per-stage dense vectors, char n-grams
and folded form, each computed once (and seeded from an artifact's stored vectors on live updates)."""

from __future__ import annotations

import time
from typing import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from classifiers.data import dedupe
from classifiers.features import CharNgrams, NameMatcher
from classifiers.text import fold
from classifiers.train_config import Progress



class Workspace:
    """Texts with their per-stage dense vectors, char n-grams and folded form, computed once."""

    def __init__(self, char: CharNgrams, embedders: dict[str, object], progress: Progress) -> None:
        self.char = char
        self.embedders = embedders
        self.progress = progress
        self.rows: dict[str, int] = {}
        self.texts: list[str] = []
        self.dense: dict[str, np.ndarray] = {s: np.zeros((0, 0), np.float32) for s in embedders}
        self.sparse = sp.csr_matrix((0, char.n_features), dtype=np.float32)
        self.folded: list[str] = []
        self._seeds: dict[str, dict[str, np.ndarray]] = {}

    def seed(self, stage: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Pre-computed vectors (from an artifact) for texts not yet in the workspace."""
        known = self._seeds.setdefault(stage, {})
        for t, v in zip(texts, vectors):
            known[t] = v

    def ensure(self, texts: Iterable[str]) -> np.ndarray:
        texts = list(texts)
        new = dedupe([t for t in texts if t not in self.rows])
        if new:
            start = len(self.texts)
            for i, t in enumerate(new):
                self.rows[t] = start + i
            self.texts += new
            self.folded += [fold(t) for t in new]
            self.sparse = sp.vstack([self.sparse, self.char.transform(new)], format="csr")
            for stage, emb in self.embedders.items():
                known = self._seeds.get(stage, {})
                vecs = np.zeros((len(new), 0), np.float32)
                todo = [i for i, t in enumerate(new) if t not in known]
                if todo:
                    t0 = time.perf_counter()
                    if stage == "sentence" and len(todo) > 200:
                        self.progress(f"embedding {len(todo)} texts with the sentence model (cached on disk after this)...")
                    got = emb.encode([new[i] for i in todo])  # type: ignore[attr-defined]
                    if stage == "sentence" and len(todo) > 200:
                        self.progress(f"  embedded {len(todo)} texts in {time.perf_counter() - t0:.0f}s")
                    dim = got.shape[1]
                else:
                    dim = len(next(iter(known.values())))
                vecs = np.zeros((len(new), dim), np.float32)
                if todo:
                    vecs[todo] = got
                for i, t in enumerate(new):
                    if t in known:
                        vecs[i] = known[t]
                cur = self.dense[stage]
                self.dense[stage] = vecs if cur.size == 0 else np.vstack([cur, vecs])
        return np.array([self.rows[t] for t in texts], dtype=np.int64)

    def names_matrix(self, names: NameMatcher, rows: np.ndarray) -> np.ndarray:
        return names.matrix([self.texts[r] for r in rows], folded=[self.folded[r] for r in rows])

    def names_column(self, names: NameMatcher, rows: np.ndarray, j: int) -> np.ndarray:
        return names.column([self.texts[r] for r in rows], j, folded=[self.folded[r] for r in rows])
