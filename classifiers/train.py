"""Training the detector from a policy, and the fast paths that add or remove targets.

What a target's head is trained on (all derived from what the policy gives):

* positives: the target's forget exemplars (QA pairs, intro, passage sentences, description), the
  user's example queries, and question templates filled with its names/aliases
  (``classifiers.templates``);
* negatives: the built-in general-instruction pool (template-generated, ships with the code), the
  policy's ``detector.negatives`` and every target's ``keep_data``, questions about *other* entities
  named in the target's documents (hard negatives, ``detector.hard_negatives``), and the other
  targets' positives (so heads also attribute).

Every negative that names a policy target is dropped. Negatives are split by a hash of their text
into 75 % training / 25 % calibration; 10 % of each target's exemplars are held out from its head
for Platt scaling and the train-time recall estimate. The thresholds are split-conformal quantiles
of the calibration negatives' scores (global: of the max over heads), at ``detector.target_fpr``
(strict) and ``loose_fpr`` (the cascade's gate).

``add_targets`` trains heads for new targets against the artifact's stored negative bank and forget
index, embedding only the new target's texts; existing heads are untouched and all thresholds are
re-calibrated. ``remove_targets`` drops heads and re-calibrates; both take seconds.

This module is the entry point (``train``, the live updates); the parts live beside it:
``train_config`` (settings, hash split, target digest), ``train_targets`` (what each head trains on),
``train_workspace`` (embedded texts), ``train_calibration`` (fitting, Platt, thresholds).
"""

from __future__ import annotations

import logging
import time
from typing import Iterable, Sequence

import numpy as np

from classifiers.classifier import Heads
from classifiers.data import dedupe
from classifiers.detector import DetectorModel, Stage
from classifiers.embedder import CachedEmbedder, SentenceEmbedder, StaticEmbedder, static_for
from classifiers.features import CharNgrams, NameMatcher
from classifiers.index import ForgetIndex
from classifiers.train_calibration import LongWindowCache, calibrate, fit_target_heads, holdout_metrics
from classifiers.train_config import Progress, TrainConfig, target_digest, text_bucket
from classifiers.train_targets import (GROUP_HARD, TargetData, _mention_filter, _name_filter, drop_common_facts, prepare_target,
                                       shared_negatives)
from classifiers.train_workspace import Workspace
from guard.errors import ConfigError
from guard.policy import Policy

__all__ = ["LongWindowCache", "Progress", "TargetData", "TrainConfig", "_mention_filter", "_name_filter", "add_targets", "prepare_target",
           "recalibrate", "remove_targets", "target_digest", "train"]

log = logging.getLogger(__name__)


def _embedders(cfg: TrainConfig, static: StaticEmbedder | None = None) -> tuple[dict[str, object], StaticEmbedder | None]:
    embedders: dict[str, object] = {}
    if cfg.mode in ("static", "cascade"):
        static = static or static_for(cfg.sentence_spec)
        embedders["static"] = static
    if cfg.mode in ("sentence", "cascade"):
        embedders["sentence"] = CachedEmbedder(SentenceEmbedder(cfg.sentence_spec))
    if not embedders:
        raise ConfigError(f"embedder_kind {cfg.mode!r} must be static, sentence or cascade", param="detector.embedder_kind")
    return embedders, static


def train(policy: Policy, cfg: TrainConfig | None = None, progress: Progress = lambda s: None,
          long_cache: LongWindowCache | None = None) -> DetectorModel:
    cfg = cfg or TrainConfig.from_policy(policy)
    t_start = time.perf_counter()
    if not policy.targets:
        raise ConfigError("the policy has no targets to train a detector for", param="targets")
    all_names = [n for t in policy.targets for n in t.all_names]
    names_filter = _name_filter(all_names)
    progress(f"reading policy data for {len(policy.targets)} target(s)...")
    tds = [prepare_target(t, i, cfg, names_filter) for i, t in enumerate(policy.targets)]
    shared, shared_groups = shared_negatives(policy, cfg, names_filter)
    embedders, static = _embedders(cfg, cfg.static_embedder)
    stages = list(embedders)
    char = CharNgrams()
    ws = Workspace(char, embedders, progress)
    n_pos = sum(len(td.exemplars) + len(td.name_questions) for td in tds)
    progress(f"{n_pos} positives, {len(shared)} shared negatives, {sum(len(td.hard) for td in tds)} hard negatives; stages: {', '.join(stages)}")
    everything = dedupe([t for td in tds for t in td.exemplars + td.name_questions + td.hard + td.holdout] + shared)
    ws.ensure(everything)
    drop_common_facts(tds, shared)
    names = NameMatcher({td.target_id: td.names for td in tds}, {td.target_id: td.facts for td in tds})
    neg_train = [t for t in shared if text_bucket(t, "neg") >= cfg.cal_fraction]
    exemplars = {td.target_id: td.exemplars + td.name_questions for td in tds}
    per_stage: dict[str, list[tuple]] = {s: [] for s in stages}
    for j, td in enumerate(tds):
        t0 = time.perf_counter()
        others = [t for k, other in enumerate(tds) if k != j for t in exemplars[other.target_id]]
        fitted = fit_target_heads(ws, stages, j, td, names, neg_train, others, cfg)
        for s in stages:
            per_stage[s].append(fitted[s])
        progress(f"[{j + 1}/{len(tds)}] head for {td.target_id!r}: {len(td.exemplars)} exemplars, {len(td.hard)} hard negatives "
                 f"({time.perf_counter() - t0:.1f}s)")
    model_stages = {}
    for s in stages:
        rows = per_stage[s]
        heads = Heads(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows]),
                      np.array([r[3] for r in rows], np.float32), np.tile(np.array([1.0, 0.0], np.float32), (len(rows), 1)))
        model_stages[s] = Stage(s, heads, 0.5, np.zeros(len(rows), np.float32))
    index_stage = "sentence" if "sentence" in stages else "static"
    index = ForgetIndex(ws.dense[index_stage].shape[1])
    for j, td in enumerate(tds):
        texts = td.exemplars + td.holdout  # the index holds all forget exemplars (held-out ones only skip the head)
        rows = ws.ensure(texts)
        index.add(ws.dense[index_stage][rows], j, texts)
    # negative bank: shared (owner -1) and hard (owner j), with their split
    neg_texts, neg_owner, neg_group = list(shared), [-1] * len(shared), list(shared_groups)
    for j, td in enumerate(tds):
        neg_texts += td.hard
        neg_owner += [j] * len(td.hard)
        neg_group += [GROUP_HARD] * len(td.hard)
    neg_split = np.array([1 if text_bucket(t, "neg") < cfg.cal_fraction else 0 for t in neg_texts], np.int8)
    neg_sentence = ws.dense["sentence"][ws.ensure(neg_texts)] if "sentence" in stages else None
    model = DetectorModel(
        target_ids=[td.target_id for td in tds], names={td.target_id: list(td.names) for td in tds},
        target_digests={t.id: target_digest(t) for t in policy.targets}, mode=cfg.mode, stages=model_stages, index=index,
        index_stage=index_stage, char=char, static=static, sentence_spec=cfg.sentence_spec if "sentence" in stages else None,
        fpr=cfg.fpr, loose_fpr=cfg.loose_fpr, window_words=cfg.window_words, max_windows=cfg.max_windows,
        neg_texts=neg_texts, neg_owner=np.array(neg_owner, np.int32), neg_split=neg_split, neg_sentence=neg_sentence,
        neg_group=np.array(neg_group, np.int8), facts={td.target_id: td.facts for td in tds},
    )
    progress("calibrating: Platt scaling on held-out exemplars, conformal thresholds on held-out negatives...")
    holdouts = {td.target_id: td.holdout for td in tds}
    cal = calibrate(model, ws, names, holdouts, exemplars, cfg, refit_platt=range(len(tds)), long_cache=long_cache)
    metrics = holdout_metrics(model, ws, names, holdouts)
    model.manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_seconds": round(time.perf_counter() - t_start, 1),
        "data": {"targets": {td.target_id: {"exemplars": len(td.exemplars), "name_questions": len(td.name_questions),
                                            "hard_negatives": len(td.hard), "holdout": len(td.holdout),
                                            "sources": [str(s.path) for s in policy.target(td.target_id).forget_data]}
                             for td in tds},
                 "shared_negatives": len(shared), "general_pool": cfg.general_pool,
                 "policy_negatives": [str(s.path) for s in policy.detector.negatives]},
        "config": {k: getattr(cfg, k) for k in ("c", "max_other", "cal_fraction", "pos_holdout", "seed", "hard_negatives", "neighbour_fpr",
                                                "passage_focus", "facts", "long_negatives", "long_words")},
        "metrics": {"calibration": cal, **metrics},
    }
    progress(f"done in {time.perf_counter() - t_start:.1f}s: threshold (log-odds) {model.stages[metrics['stage']].tau:.3f}, held-out exemplar recall "
             f"{metrics['holdout_exemplar_recall']:.4f}, attribution {metrics['holdout_attribution']:.4f}")
    return model


# ================================================================== live updates


def _workspace_from_model(model: DetectorModel, cfg: TrainConfig, progress: Progress) -> tuple[Workspace, dict[str, object]]:
    embedders, _ = _embedders(cfg, model.static)
    if "sentence" in embedders and model.sentence_spec:
        embedders["sentence"] = CachedEmbedder(SentenceEmbedder(model.sentence_spec))
    ws = Workspace(model.char, embedders, progress)
    if model.neg_sentence is not None and "sentence" in embedders:
        ws.seed("sentence", model.neg_texts, model.neg_sentence)
    ws.seed(model.index_stage, model.index.texts, model.index.vectors())
    return ws, embedders


def _cfg_for(model: DetectorModel, policy: Policy | None) -> TrainConfig:
    cfg = TrainConfig.from_policy(policy) if policy is not None else TrainConfig()
    cfg.mode, cfg.fpr, cfg.loose_fpr = model.mode, model.fpr, model.loose_fpr
    cfg.sentence_spec = model.sentence_spec or cfg.sentence_spec
    c = model.manifest.get("config") or {}
    for k in ("c", "max_other", "cal_fraction", "pos_holdout", "seed", "hard_negatives", "neighbour_fpr", "passage_focus", "facts",
              "long_negatives", "long_words"):
        if k in c:
            setattr(cfg, k, c[k])
    return cfg


def recalibrate(model: DetectorModel, progress: Progress = lambda s: None, long_cache: LongWindowCache | None = None) -> DetectorModel:
    """Recompute all thresholds from the stored negative bank (heads and Platt scaling unchanged)."""
    cfg = _cfg_for(model, None)
    ws, _ = _workspace_from_model(model, cfg, progress)
    names = NameMatcher({t: model.names[t] for t in model.target_ids}, model.facts)
    stats = calibrate(model, ws, names, {}, {}, cfg, refit_platt=(), long_cache=long_cache)
    model.manifest = dict(model.manifest)
    model.manifest.setdefault("metrics", {})["calibration"] = stats
    return model


def remove_targets(model: DetectorModel, remove: Iterable[str], progress: Progress = lambda s: None,
                   long_cache: LongWindowCache | None = None) -> DetectorModel:
    """Drop targets' heads, exemplars and hard negatives; re-calibrate the thresholds."""
    gone = set(remove)
    keep = [j for j, t in enumerate(model.target_ids) if t not in gone]
    if len(keep) == model.n_targets:
        return model
    remap = {old: new for new, old in enumerate(keep)}
    owner = model.neg_owner
    mask = np.array([o < 0 or o in remap for o in owner], bool)
    new = DetectorModel(
        target_ids=[model.target_ids[j] for j in keep], names={model.target_ids[j]: model.names[model.target_ids[j]] for j in keep},
        target_digests={model.target_ids[j]: model.target_digests.get(model.target_ids[j], "") for j in keep}, mode=model.mode,
        stages={s: Stage(s, st.heads.select(np.array(keep, np.int64)), st.tau, st.tau_target[keep], st.tau_loose,
                         st.tau_loose_target[keep] if len(st.tau_loose_target) else st.tau_loose_target)
                for s, st in model.stages.items()},
        index=model.index.keep_owners(keep), index_stage=model.index_stage, char=model.char, static=model.static,
        sentence_spec=model.sentence_spec, fpr=model.fpr, loose_fpr=model.loose_fpr, window_words=model.window_words,
        max_windows=model.max_windows, manifest=dict(model.manifest),
        neg_texts=[t for t, k in zip(model.neg_texts, mask) if k],
        neg_owner=np.array([o if o < 0 else remap[o] for o, k in zip(owner, mask) if k], np.int32),
        neg_split=model.neg_split[mask], neg_sentence=None if model.neg_sentence is None else model.neg_sentence[mask],
        neg_group=model.neg_group[mask], facts={model.target_ids[j]: model.facts[model.target_ids[j]] for j in keep if model.target_ids[j] in model.facts},
    )
    if new.n_targets:
        cfg = _cfg_for(new, None)
        ws, _ = _workspace_from_model(new, cfg, progress)
        names = NameMatcher({t: new.names[t] for t in new.target_ids}, new.facts)
        calibrate(new, ws, names, {}, {}, cfg, refit_platt=(), long_cache=long_cache)
    new.manifest.setdefault("updates", []).append({"removed": sorted(gone & set(model.target_ids))})
    return new


def add_targets(model: DetectorModel, policy: Policy, target_ids: Sequence[str], progress: Progress = lambda s: None,
                long_cache: LongWindowCache | None = None) -> DetectorModel:
    """Train heads for ``target_ids`` (targets of ``policy``) and add them; existing heads are kept.

    Replaces a target already in the model (e.g. whose data changed). Only the new targets' texts
    are embedded; the negative bank and the other targets' exemplars come from the artifact.
    """
    t_start = time.perf_counter()
    # the removal and the addition calibrate on the same long texts: one featurisation for both
    long_cache = long_cache if long_cache is not None else LongWindowCache()
    model = remove_targets(model, [t for t in target_ids if t in model.target_ids], progress, long_cache)
    cfg = _cfg_for(model, policy)
    ws, _ = _workspace_from_model(model, cfg, progress)
    index_of = {t.id: i for i, t in enumerate(policy.targets)}
    all_names = [n for t in policy.targets for n in t.all_names] + [n for ns in model.names.values() for n in ns]
    names_filter = _name_filter(all_names)
    new_tds = []
    for tid in target_ids:
        if tid not in index_of:
            raise ConfigError(f"target {tid!r} is not in the policy", param="targets")
        new_tds.append(prepare_target(policy.targets[index_of[tid]], index_of[tid], cfg, names_filter))
    target_ids_all = model.target_ids + [td.target_id for td in new_tds]
    names_all = {**model.names, **{td.target_id: list(td.names) for td in new_tds}}
    shared_all = [t for t, o in zip(model.neg_texts, model.neg_owner) if o < 0]
    drop_common_facts(new_tds, shared_all)
    facts_all = {**model.facts, **{td.target_id: td.facts for td in new_tds}}
    names = NameMatcher({t: names_all[t] for t in target_ids_all}, facts_all)
    shared_train = [t for t, o, s in zip(model.neg_texts, model.neg_owner, model.neg_split) if o < 0 and s == 0 and not names_filter(t)]
    stages = list(model.stages)
    existing_exemplars = list(model.index.texts)
    for k, td in enumerate(new_tds):
        t0 = time.perf_counter()
        j = model.n_targets + k
        others = existing_exemplars + [t for kk, o in enumerate(new_tds) if kk != k for t in o.exemplars + o.name_questions]
        fitted = fit_target_heads(ws, stages, j, td, names, shared_train, others, cfg)
        for s in stages:
            w_d, w_s, w_n, b = fitted[s]
            add = Heads(w_d[None], w_s[None], w_n[None], np.array([b], np.float32), np.array([[1.0, 0.0]], np.float32))
            model.stages[s].heads = model.stages[s].heads.append(add)
        texts = td.exemplars + td.holdout
        rows = ws.ensure(texts)
        model.index.add(ws.dense[model.index_stage][rows], j, texts)
        progress(f"added head for {td.target_id!r}: {len(td.exemplars)} exemplars, {len(td.hard)} hard negatives ({time.perf_counter() - t0:.1f}s)")
    model.target_ids = target_ids_all
    model.names = names_all
    model.facts = facts_all
    for td in new_tds:
        model.target_digests[td.target_id] = target_digest(policy.target(td.target_id))
        model.neg_texts = model.neg_texts + td.hard
        model.neg_owner = np.concatenate([model.neg_owner, np.full(len(td.hard), target_ids_all.index(td.target_id), np.int32)])
        model.neg_split = np.concatenate([model.neg_split, np.array([1 if text_bucket(t, "neg") < cfg.cal_fraction else 0 for t in td.hard], np.int8)])
        model.neg_group = np.concatenate([model.neg_group, np.full(len(td.hard), GROUP_HARD, np.int8)])
        if model.neg_sentence is not None:
            model.neg_sentence = np.vstack([model.neg_sentence, ws.dense["sentence"][ws.ensure(td.hard)]]) if td.hard else model.neg_sentence
    holdouts = {td.target_id: td.holdout for td in new_tds}
    train_pos = {td.target_id: td.exemplars + td.name_questions for td in new_tds}
    for s in model.stages.values():
        s.tau_target = np.concatenate([s.tau_target, np.zeros(len(new_tds), np.float32)])
        s.tau_loose_target = np.concatenate([s.tau_loose_target, np.zeros(len(new_tds), np.float32)])
    calibrate(model, ws, names, holdouts, train_pos, cfg, refit_platt=range(model.n_targets - len(new_tds), model.n_targets),
              long_cache=long_cache)
    model.manifest = dict(model.manifest)
    model.manifest.setdefault("updates", []).append({"added": [td.target_id for td in new_tds],
                                                     "seconds": round(time.perf_counter() - t_start, 2)})
    progress(f"added {len(new_tds)} target(s) in {time.perf_counter() - t_start:.1f}s")
    return model
