"""The prompt classifier: one logistic-regression head per target, over [embedding | char n-grams | name match].

Each head is trained one-vs-rest (the target's exemplars against the negative pool and the other
targets' exemplars) with scikit-learn, then stored as plain arrays (weights, bias, Platt scaling
parameters), so loading never unpickles anything. Scores are Platt-calibrated probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from classifiers.features import N_MATCH


@dataclass
class Heads:
    w_dense: np.ndarray    # [T, d]
    w_sparse: np.ndarray   # [T, F]
    w_name: np.ndarray     # [T, K]: weights of the match columns (``features.MATCH_COLUMNS``)
    bias: np.ndarray       # [T]
    platt: np.ndarray      # [T, 2]: p = sigmoid(a * decision + b)

    @staticmethod
    def empty(dim: int, n_features: int) -> "Heads":
        return Heads(np.zeros((0, dim), np.float32), np.zeros((0, n_features), np.float32),
                     np.zeros((0, N_MATCH), np.float32), np.zeros(0, np.float32), np.zeros((0, 2), np.float32))

    @property
    def n(self) -> int:
        return int(self.bias.shape[0])

    def _transposed(self) -> tuple[np.ndarray, np.ndarray]:
        cached = getattr(self, "_t", None)
        if cached is None or cached[0].shape[1] != self.n:
            cached = (np.ascontiguousarray(self.w_dense.T), np.ascontiguousarray(self.w_sparse.T))
            object.__setattr__(self, "_t", cached)
        return cached

    def decision(self, dense: np.ndarray, sparse: sp.csr_matrix, names: np.ndarray, rows: np.ndarray | None = None,
                 names_selected: bool = False) -> np.ndarray:
        """[S, T] decision values (``names`` is [S, T, K]). ``rows`` restricts to some heads
        (``names_selected``: ``names`` already holds only those heads' columns)."""
        if rows is not None:
            wd, ws, wn, b = self.w_dense[rows].T, np.ascontiguousarray(self.w_sparse[rows].T), self.w_name[rows], self.bias[rows]
            names = names if names_selected else names[:, rows]
        else:
            (wd, ws), wn, b = self._transposed(), self.w_name, self.bias
        out = dense @ wd
        out += np.asarray(sparse @ ws)
        for k in range(min(wn.shape[1], names.shape[2])):
            out += names[:, :, k] * wn[None, :, k]
        out += b[None, :]
        return out

    def logits(self, decision: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Platt-calibrated log-odds (thresholds live in this space: no saturation near 0/1)."""
        platt = self.platt if rows is None else self.platt[rows]
        return decision * platt[None, :, 0] + platt[None, :, 1]

    def padded(self) -> "Heads":
        """Heads of an artifact written before some match columns existed: their weights are 0."""
        k = self.w_name.shape[1]
        if k >= N_MATCH:
            return self
        w_name = np.hstack([self.w_name, np.zeros((self.n, N_MATCH - k), np.float32)])
        return Heads(self.w_dense, self.w_sparse, w_name, self.bias, self.platt)

    def append(self, other: "Heads") -> "Heads":
        return Heads(np.vstack([self.w_dense, other.w_dense]), np.vstack([self.w_sparse, other.w_sparse]),
                     np.vstack([self.w_name, other.w_name]), np.concatenate([self.bias, other.bias]),
                     np.vstack([self.platt, other.platt]))

    def select(self, rows: np.ndarray) -> "Heads":
        return Heads(self.w_dense[rows], self.w_sparse[rows], self.w_name[rows], self.bias[rows], self.platt[rows])


def fit_head(dense: np.ndarray, sparse: sp.csr_matrix, names: np.ndarray, labels: np.ndarray,
             *, c: float = 4.0, sample_weight: np.ndarray | None = None, max_iter: int = 500, tol: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One logistic-regression head; returns (w_dense, w_sparse, w_name, bias)."""
    from sklearn.linear_model import LogisticRegression

    X = sp.hstack([sp.csr_matrix(dense), sparse, sp.csr_matrix(names)], format="csr")
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=max_iter, solver="lbfgs", tol=tol)
    clf.fit(X, labels, sample_weight=sample_weight)
    w = clf.coef_[0].astype(np.float32)
    d, f = dense.shape[1], sparse.shape[1]
    return w[:d], w[d:d + f], w[d + f:], float(clf.intercept_[0])


def sigmoid(z: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


def logit(p: float) -> float:
    p = min(max(float(p), 1e-12), 1 - 1e-12)
    return float(np.log(p / (1 - p)))


def fit_platt(pos_scores: np.ndarray, neg_scores: np.ndarray) -> tuple[float, float]:
    """Platt scaling of decision values -> log-odds, classes weighted equally, mildly regularised.

    Falls back to the identity when a class is missing or the fit degenerates (a slope <= 0)."""
    from sklearn.linear_model import LogisticRegression

    if len(pos_scores) == 0 or len(neg_scores) == 0:
        return 1.0, 0.0
    x = np.concatenate([pos_scores, neg_scores]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(pos_scores)), np.zeros(len(neg_scores))])
    w = np.concatenate([np.full(len(pos_scores), 0.5 / len(pos_scores)), np.full(len(neg_scores), 0.5 / len(neg_scores))])
    clf = LogisticRegression(C=1.0, max_iter=1000)
    clf.fit(x, y, sample_weight=w * len(y))
    a, b = float(clf.coef_[0, 0]), float(clf.intercept_[0])
    if not np.isfinite(a) or a <= 0:
        return 1.0, 0.0
    return a, b


def conformal_threshold(neg_scores: np.ndarray, alpha: float) -> float:
    """Split-conformal threshold: flag ``s > t`` gives FPR <= alpha on exchangeable negatives.

    t is the ceil((n+1)(1-alpha))-th smallest calibration score (the largest score if n is too small
    for alpha, i.e. the guarantee then degrades to 1/(n+1)).
    """
    s = np.sort(np.asarray(neg_scores, dtype=np.float64))
    n = len(s)
    if n == 0:
        return 0.5
    k = int(np.ceil((n + 1) * (1.0 - alpha))) - 1
    return float(s[min(max(k, 0), n - 1)])
