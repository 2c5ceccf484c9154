"""The forget index: FAISS inner-product search over normalised exemplar embeddings, tagged by target.

Used to attribute a flagged request to a target (which exemplars it is closest to) and as a second
signal beside the classifier. Stored as a FAISS index file plus a numpy array of target numbers and
a JSON Lines file of exemplar texts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from classifiers.base import Neighbour
from guard.errors import ConfigError

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise


class ForgetIndex:
    def __init__(self, dim: int) -> None:
        import faiss

        # FAISS's OpenMP threads spin-wait like torch's: one thread for these small searches (a
        # process-wide setting, idempotent, so every index sets it rather than a module flag)
        faiss.omp_set_num_threads(1)

        self.dim = dim
        self.index = faiss.IndexFlatIP(dim)
        self.owner = np.zeros(0, dtype=np.int32)   # target number per exemplar
        self.texts: list[str] = []

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray, owner: int, texts: Sequence[str]) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors) != len(texts):
            raise ValueError("vectors and texts differ in length")
        if len(vectors):
            self.index.add(vectors)
            self.owner = np.concatenate([self.owner, np.full(len(vectors), owner, dtype=np.int32)])
            self.texts += list(texts)

    def vectors(self) -> np.ndarray:
        if self.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.index.reconstruct_n(0, self.size)

    def keep_owners(self, keep: Sequence[int]) -> "ForgetIndex":
        """A new index with only the exemplars of targets ``keep`` (renumbered 0..len(keep)-1)."""
        vecs = self.vectors()
        new = ForgetIndex(self.dim)
        for new_no, old_no in enumerate(keep):
            rows = np.nonzero(self.owner == old_no)[0]
            new.add(vecs[rows], new_no, [self.texts[i] for i in rows])
        return new

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.size == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        k = min(k, self.size)
        sims, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return sims, ids

    def max_sim_per_target(self, queries: np.ndarray, n_targets: int, k: int = 64) -> np.ndarray:
        """[S, T]: the best similarity to each target's exemplars among the top-k hits (0 if none)."""
        sims, ids = self.search(queries, k)
        out = np.zeros((len(queries), n_targets), dtype=np.float32)
        for s in range(len(queries)):
            for sim, i in zip(sims[s], ids[s]):
                if i < 0:
                    continue
                t = self.owner[i]
                if sim > out[s, t]:
                    out[s, t] = sim
        return out

    def neighbours(self, query: np.ndarray, target_ids: Sequence[str], k: int = 5) -> tuple[Neighbour, ...]:
        sims, ids = self.search(query.reshape(1, -1), k)
        return tuple(Neighbour(target_id=target_ids[self.owner[i]], similarity=float(s), exemplar=self.texts[i])
                     for s, i in zip(sims[0], ids[0]) if i >= 0)

    # ------------------------------------------------------------------ files

    def save(self, directory: Path) -> dict[str, str]:
        import faiss
        import json

        faiss.write_index(self.index, str(directory / "forget.faiss"))
        np.save(directory / "forget_owner.npy", self.owner)
        with open(directory / "forget_texts.jsonl", "w", encoding="utf-8") as fh:
            for t in self.texts:
                fh.write(json.dumps(t, ensure_ascii=False) + "\n")
        return {"index": "forget.faiss", "owner": "forget_owner.npy", "texts": "forget_texts.jsonl"}

    @classmethod
    def load(cls, directory: Path, files: dict[str, str], dim: int) -> "ForgetIndex":
        import faiss
        import json

        try:
            index = faiss.read_index(str(directory / files["index"]))
            owner = np.load(directory / files["owner"], allow_pickle=False).astype(np.int32)
            with open(directory / files["texts"], encoding="utf-8") as fh:
                texts = [json.loads(line) for line in fh if line.strip()]
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            raise ConfigError(f"forget index in {directory} is missing or corrupt ({exc}); retrain with `guard-train classifier`", param="detector.artifact") from None
        if index.d != dim or index.ntotal != len(owner) or len(owner) != len(texts):
            raise ConfigError(f"forget index in {directory} is inconsistent (dim {index.d} vs {dim}, {index.ntotal} vectors, "
                              f"{len(owner)} owners, {len(texts)} texts); retrain with `guard-train classifier`", param="detector.artifact")
        new = cls(dim)
        new.index = index
        new.owner = owner
        new.texts = texts
        return new
