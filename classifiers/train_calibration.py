"""Fitting and calibrating the detector's heads (see ``classifiers.train``): one head per target and
stage, Platt scaling on held-out exemplars, Mondrian split-conformal thresholds per negative group,
and the long-input thresholds calibrated on long texts made of held-out negatives."""

from __future__ import annotations

import hashlib
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from classifiers.benign_text import long_benign_texts
from classifiers.classifier import conformal_threshold, fit_head, fit_platt
from classifiers.data import dedupe
from classifiers.detector import DetectorModel, Stage, segment_texts
from classifiers.features import NameMatcher
from classifiers.text import fold
from classifiers.train_config import TrainConfig, text_bucket
from classifiers.train_targets import GROUP_GENERAL, GROUP_HARD, GROUP_KEEP_QUESTION, GROUP_KEEP_STATEMENT, GROUP_NAMES, TargetData
from classifiers.train_workspace import Workspace


def sample_by_hash(items: Sequence[str], k: int, salt: str) -> list[str]:
    if len(items) <= k:
        return list(items)
    return sorted(items, key=lambda t: text_bucket(t, salt))[:k]


def fit_target_heads(ws: Workspace, stages: Sequence[str], j: int, td: TargetData, names: NameMatcher,
                      neg_train: Sequence[str], others: Sequence[str], cfg: TrainConfig) -> dict[str, tuple]:
    pos = dedupe(td.exemplars + td.name_questions)
    hard_train = [t for t in td.hard if text_bucket(t, "neg") >= cfg.cal_fraction]
    pos_set = set(pos)
    neg = [t for t in dedupe(list(neg_train) + hard_train + sample_by_hash(others, cfg.max_other, td.target_id)) if t not in pos_set]
    rows = ws.ensure(pos + neg)
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    name_cols = ws.names_column(names, rows, j)
    out = {}
    for stage in stages:
        out[stage] = fit_head(ws.dense[stage][rows], ws.sparse[rows], name_cols, y, c=cfg.c)
    return out


def group_threshold(scores: np.ndarray, groups: np.ndarray, cfg: TrainConfig) -> float:
    """Mondrian split-conformal: the largest of the per-group thresholds (FPR <= alpha in every group).

    A group too small to have a quantile at its alpha (fewer than 2/alpha negatives) would only
    contribute its maximum; such groups are pooled with the general instructions instead."""
    groups = groups.copy()
    min_n = int(np.ceil(2.0 / cfg.fpr))
    for g in (GROUP_KEEP_STATEMENT, GROUP_KEEP_QUESTION):
        if 0 < (groups == g).sum() < min_n:
            groups[groups == g] = GROUP_GENERAL
    taus = []
    for g in np.unique(groups):
        alpha = cfg.neighbour_fpr if g == GROUP_HARD else cfg.fpr
        taus.append(conformal_threshold(scores[groups == g], alpha))
    return max(taus) if taus else 0.0


def calibrate(model: DetectorModel, ws: Workspace, names: NameMatcher, holdouts: dict[str, list[str]],
               train_pos: dict[str, list[str]], cfg: TrainConfig, *, refit_platt: Sequence[int],
              long_cache: LongWindowCache | None = None) -> dict[str, dict]:
    """Platt scaling for heads in ``refit_platt``, then all thresholds. Returns calibration stats."""
    cal_mask = model.neg_split == 1
    cal_texts = [t for t, c in zip(model.neg_texts, cal_mask) if c]
    groups = model.neg_group[cal_mask]
    owners = model.neg_owner[cal_mask]
    cal_rows = ws.ensure(cal_texts)
    cal_names = ws.names_matrix(names, cal_rows)
    stats: dict[str, dict] = {}
    for stage_name, st in model.stages.items():
        dec = st.heads.decision(ws.dense[stage_name][cal_rows], ws.sparse[cal_rows], cal_names)
        for j in refit_platt:
            tid = model.target_ids[j]
            pos_txt = list(holdouts.get(tid) or []) + list(train_pos.get(tid) or [])
            if pos_txt:
                prow = ws.ensure(pos_txt)
                pn = ws.names_column(names, prow, j)[:, None, :]
                pdec = st.heads.decision(ws.dense[stage_name][prow], ws.sparse[prow], pn, rows=np.array([j]), names_selected=True)[:, 0]
            else:
                pdec = np.zeros(0)
            a, b = fit_platt(pdec, dec[:, j])
            st.heads.platt[j] = (a, b)
        Z = st.heads.logits(dec)
        # a hard negative (about an entity target j's documents mention) is judged by head j only:
        # it may well be about another target of the policy, whose head is right to fire on it
        hard = groups == GROUP_HARD
        own = owners[hard]
        st.tau_target = np.array([group_threshold(Z[~hard | (owners == j), j], groups[~hard | (owners == j)], cfg)
                                  for j in range(Z.shape[1])], np.float32)
        st.tau_loose_target = np.array([conformal_threshold(Z[:, j], cfg.loose_fpr) for j in range(Z.shape[1])], np.float32)
        mx = Z.max(axis=1) if Z.shape[1] else np.zeros(len(cal_rows))
        if hard.any() and Z.shape[1]:
            mx = mx.copy()
            mx[hard] = Z[np.nonzero(hard)[0], np.clip(own, 0, Z.shape[1] - 1)]
        st.tau = group_threshold(mx, groups, cfg)
        st.tau_loose = conformal_threshold(mx, cfg.loose_fpr)
        long_fpr = None
        if stage_name == "static" and cfg.long_negatives and len(cal_texts):
            long_fpr = _calibrate_long(model, st, ws, names, [t for t, g in zip(cal_texts, groups) if g != GROUP_HARD], cfg,
                                       long_cache if long_cache is not None else LongWindowCache())
        stats[stage_name] = {
            "calibration_negatives": {GROUP_NAMES[int(g)]: int((groups == g).sum()) for g in np.unique(groups)},
            "threshold_log_odds": st.tau, "loose_threshold_log_odds": st.tau_loose,
            "calibration_fpr": {GROUP_NAMES[int(g)]: float((mx[groups == g] > st.tau).mean()) for g in np.unique(groups)},
        }
        if long_fpr is not None:
            stats[stage_name].update({"long_threshold_log_odds": st.tau_long, "long_negatives": cfg.long_negatives,
                                      "long_fpr_at_strict_threshold": long_fpr})
    return stats


def long_negatives(texts: Sequence[str], n: int, words: int, seed: int) -> list[str]:
    """``n`` texts of about ``words`` words, each a random run of ``texts`` (deterministic)."""
    pool = sorted(set(texts), key=lambda t: text_bucket(t, "long"))
    return long_benign_texts(pool, n, words, random.Random(seed))


@dataclass(frozen=True)
class LongWindows:
    """The long calibration texts cut into screening windows, with each unique window's features."""
    rows: list[np.ndarray]         # per long text: indices of its windows in ``windows``
    windows: list[str]
    folded: list[str]
    dense: np.ndarray
    sparse: Any


class LongWindowCache:
    """Featurised long calibration texts, kept for re-calibrations that use the same negatives
    (a live update removes then adds targets: two calibrations, one featurisation). Owned by the
    caller of ``train``/``add_targets``/``remove_targets``; thread-safe, holds at most ``size``."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, LongWindows] = OrderedDict()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, model: DetectorModel, ws: Workspace, stage: str, negatives: Sequence[str], cfg: TrainConfig) -> LongWindows:
        h = hashlib.sha1("\x00".join(sorted(set(negatives))).encode("utf-8")).hexdigest()
        emb = ws.embedders[stage]
        key = (stage, getattr(emb, "key", id(emb)), model.char.params().__repr__(), h, cfg.long_negatives, cfg.long_words, cfg.seed,
               model.window_words, model.max_windows)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit
        longs = long_negatives(negatives, cfg.long_negatives, cfg.long_words, cfg.seed)
        seg_lists = [segment_texts([t], model.window_words, model.max_windows) for t in longs]
        uniq = dedupe([x for segs in seg_lists for x in segs])
        pos = {x: k for k, x in enumerate(uniq)}
        rows = [np.array([pos[x] for x in segs], np.int64) for segs in seg_lists]
        entry = LongWindows(rows, uniq, [fold(u) for u in uniq], emb.encode(uniq), model.char.transform(uniq))  # type: ignore[attr-defined]
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return entry


def _calibrate_long(model: DetectorModel, st: Stage, ws: Workspace, names: NameMatcher, negatives: Sequence[str],
                    cfg: TrainConfig, long_cache: LongWindowCache) -> float:
    """The long-input thresholds: a long input is judged by the max over its windows, which a
    threshold calibrated on single segments does not bound; so calibrate on long texts made of
    held-out negatives, screened the way ``screen`` screens them. Returns the long texts' FPR at
    the strict threshold (what the long threshold corrects)."""
    lw = long_cache.get(model, ws, st.name, negatives, cfg)
    Z = st.heads.logits(st.heads.decision(lw.dense, lw.sparse, names.matrix(lw.windows, folded=lw.folded)))
    ZL = np.stack([Z[r].max(axis=0) for r in lw.rows])
    st.tau_long = max(st.tau, conformal_threshold(ZL.max(axis=1), cfg.fpr))
    st.tau_long_target = np.maximum(st.tau_target, np.array([conformal_threshold(ZL[:, j], cfg.fpr) for j in range(ZL.shape[1])],
                                                            np.float32))
    return float((ZL.max(axis=1) > st.tau).mean())


def holdout_metrics(model: DetectorModel, ws: Workspace, names: NameMatcher, holdouts: dict[str, list[str]]) -> dict[str, float]:
    stage = "sentence" if model.mode in ("sentence", "cascade") else "static"
    st = model.stages[stage]
    recalls, attributed, total = [], 0, 0
    for j, tid in enumerate(model.target_ids):
        texts = holdouts.get(tid) or []
        if not texts:
            continue
        rows = ws.ensure(texts)
        nm = ws.names_matrix(names, rows)
        P = st.heads.logits(st.heads.decision(ws.dense[stage][rows], ws.sparse[rows], nm))
        hit = P.max(axis=1) > st.tau
        recalls.append(float(hit.mean()))
        attributed += int((P.argmax(axis=1) == j).sum())
        total += len(texts)
    return {"holdout_exemplar_recall": float(np.mean(recalls)) if recalls else float("nan"),
            "holdout_attribution": attributed / total if total else float("nan"), "holdout_exemplars": total,
            "stage": stage}
