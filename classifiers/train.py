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
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from classifiers.classifier import Heads, conformal_threshold, fit_head, fit_platt
from classifiers.data import TargetTexts, dedupe, policy_negatives, target_texts
from classifiers.detector import DetectorModel, Stage, segment_texts
from classifiers.facts import date_keys, date_variants, fact_hits, mask_names, target_facts
from classifiers.embedder import CachedEmbedder, SentenceEmbedder, StaticEmbedder, static_for
from classifiers.entities import co_mentioned, neighbour_questions
from classifiers.features import CharNgrams, NameMatcher, name_parts
from classifiers.index import ForgetIndex
from classifiers.templates import entity_questions, general_pool, partial_name_negatives, surname_questions
from classifiers.text import fold, name_alternation
from guard.errors import ConfigError
from guard.policy import Policy, Target

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass
class TrainConfig:
    mode: str = "cascade"              # static | sentence | cascade
    sentence_spec: str = "default"
    fpr: float = 0.005
    neighbour_fpr: float = 0.05        # FPR allowed on hard negatives (questions about co-mentioned entities)
    loose_fpr: float = 0.15
    general_pool: int = 4000
    hard_negatives: bool = True
    passage_focus: str = "contrast"    # all | mentions | contrast
    window_words: int = 48
    max_windows: int = 256
    c: float = 4.0
    max_other: int = 3000              # other targets' positives sampled as negatives per head
    cal_fraction: float = 0.25
    pos_holdout: float = 0.10
    seed: int = 0
    static_embedder: StaticEmbedder | None = None   # injected (tests); else distilled from sentence_spec
    facts: bool = True                 # distinctive dates/titles of the forget data as features (+ date re-renderings)
    long_negatives: int = 200          # long texts made of calibration negatives, for the long-input threshold (0: none)
    long_words: int = 1000

    @staticmethod
    def from_policy(policy: Policy) -> "TrainConfig":
        d = policy.detector
        return TrainConfig(mode=d.embedder_kind, sentence_spec=d.embedder, fpr=d.target_fpr, neighbour_fpr=d.neighbour_fpr,
                           general_pool=d.general_pool,
                           hard_negatives=d.hard_negatives, passage_focus=d.passage_focus, window_words=d.window_words,
                           max_windows=d.max_windows)


def _bucket(text: str, salt: str = "") -> float:
    h = hashlib.blake2b((salt + text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0 ** 64


def target_digest(target: Target) -> str:
    """Identity of what a target's head was trained from (names, description, queries, data content)."""
    h = hashlib.sha1()
    h.update(json.dumps([target.id, list(target.names), list(target.aliases), target.description, list(target.example_queries)],
                        ensure_ascii=False).encode())
    for src in tuple(target.forget_data) + tuple(target.keep_data):
        h.update(json.dumps([src.path.name, src.format, src.rows, src.field]).encode())
        try:
            h.update(hashlib.sha1(src.path.read_bytes()).digest())
        except OSError:
            h.update(b"missing")
    return h.hexdigest()[:16]


# ================================================================== what to train on

# groups of the negative bank: each gets its own conformal threshold (FPR is controlled per group)
GROUP_GENERAL, GROUP_KEEP_STATEMENT, GROUP_KEEP_QUESTION, GROUP_HARD = 0, 1, 2, 3
GROUP_NAMES = {GROUP_GENERAL: "general", GROUP_KEEP_STATEMENT: "keep_statements", GROUP_KEEP_QUESTION: "keep_questions",
               GROUP_HARD: "hard"}


def keep_group(text: str) -> int:
    return GROUP_KEEP_QUESTION if text.rstrip().endswith("?") else GROUP_KEEP_STATEMENT


@dataclass
class TargetData:
    target_id: str
    names: tuple[str, ...]
    exemplars: list[str]            # forget data sentences/QA + example queries (indexed)
    name_questions: list[str]       # templates about the names (positives, not indexed)
    hard: list[str]                 # neighbour questions (negatives for this head)
    holdout: list[str] = field(default_factory=list)   # exemplars held out of this head (Platt + metrics)
    facts: dict[str, list[str]] = field(default_factory=dict)  # distinctive dates/titles (``classifiers.facts``)


def _name_filter(all_names: Sequence[str]) -> Callable[[str], bool]:
    """True if a text names any of ``all_names`` (whole word, folded)."""
    source = name_alternation(fold(n) for n in all_names)
    if source is None:
        return lambda text: False
    pat = re.compile(source)
    return lambda text: bool(pat.search(fold(text)))


_PRONOUN_OPEN = re.compile(r"^\W*(he|she|his|her|him|they|their|them)\b", re.IGNORECASE)


_HEADER = re.compile(r"^\s*(?:=+[^=]*=+\s*)+")   # "=== 1966-1970: American roles ===" opening a passage sentence


def surnames(names: Sequence[str]) -> list[str]:
    """The last word of each name ("Lee", "King"), however short or common: in the target's own
    documents it stands for the target."""
    out = []
    for n in names:
        toks = n.split(",")[0].split()
        if len(toks) >= 2 and len(toks[-1].strip(".")) >= 2:
            out.append(toks[-1].strip("."))
    return out


def _mention_filter(names: Sequence[str]) -> Callable[[str], bool]:
    """True if a sentence of the target's documents is about the target: it names it (a name, a
    distinctive part, its surname) or opens with a pronoun (in a biography, the subject). Section
    headers ("=== Career ===") are ignored."""
    by_name = _name_filter(list(names) + name_parts(names) + surnames(names))

    def about(s: str) -> bool:
        body = _HEADER.sub("", s)
        return by_name(body) or bool(_PRONOUN_OPEN.match(body))
    return about


def prepare_target(target: Target, index: int, cfg: TrainConfig, names_filter: Callable[[str], bool]) -> TargetData:
    tt: TargetTexts = target_texts(target, index)
    positives = list(tt.positives)
    off_target: list[str] = []
    if cfg.passage_focus != "all" and tt.passage_sentences:
        mentions = _mention_filter(target.all_names)
        off_target = [s for s in tt.passage_sentences if not mentions(s)]
        drop = set(off_target)
        positives = [p for p in positives if p not in drop]
    exemplars = dedupe(positives + tt.queries)
    if not exemplars and not target.all_names:
        raise ConfigError(f"target {target.id!r} has neither names nor forget data", param=f"targets.{index}")
    holdout = [t for t in exemplars if _bucket(t, "pos") < cfg.pos_holdout and t not in tt.queries] if len(exemplars) >= 10 else []
    hold = set(holdout)
    hard: list[str] = []
    if cfg.hard_negatives and tt.documents:
        ents = co_mentioned(tt.documents, target.all_names, exclude_text=tt.summary)
        hard = [q for q in neighbour_questions(ents) if not names_filter(q)]
    if cfg.passage_focus == "contrast":
        # sentences of the target's documents that are about something else (a film, a bandmate...)
        hard += [t for t in off_target if not names_filter(t)]
    # made-up people sharing one name part with the target are not the target...
    parts = name_parts(target.all_names)
    hard += [q for q in partial_name_negatives(parts, seed=cfg.seed) if not names_filter(q)]
    # ...but a question using the target's own surname alone usually is
    questions = entity_questions(target.all_names)
    toks = target.names[0].replace(",", " ").split()
    if len(toks) >= 2 and toks[-1].lower().strip(".") in parts:
        questions += surname_questions(toks[-1])
    train_exemplars = [t for t in exemplars if t not in hold]
    facts: dict[str, list[str]] = {}
    if cfg.facts:
        facts = target_facts(tt.documents)
        questions += fact_positives(train_exemplars, target.all_names, facts)
    return TargetData(target.id, target.all_names, train_exemplars, dedupe(questions), dedupe(hard), holdout, facts)


def fact_positives(exemplars: Sequence[str], names: Sequence[str], facts: dict[str, list[str]]) -> list[str]:
    """The target's sentences that state one of its facts, with the name taken out ("Who are some
    characters from this person's book 'A Whisper in the Wind'?"), and everything with its dates
    written other ways ("05/11/1991" -> "November 5, 1991"): a fact identifies the target without
    its name, and a date in any rendering."""
    name_src = name_alternation(fold(n) for n in list(names) + name_parts(names) + surnames(names))
    name_re = re.compile(name_src) if name_src else None
    title_src = name_alternation(facts.get("titles", ()))
    titles = re.compile(title_src) if title_src else None
    out: list[str] = []
    for t in exemplars:
        variants = [t] + date_variants(t)
        out += variants[1:]
        if name_re is None:
            continue
        for v in variants:
            masked = mask_names(v, name_re)
            if masked != v and fact_hits(fold(masked), facts, titles):
                out.append(masked)
    return out


def shared_negatives(policy: Policy, cfg: TrainConfig, names_filter: Callable[[str], bool]) -> tuple[list[str], list[int]]:
    """(texts, group) of the negatives every head trains against."""
    all_names = [n for t in policy.targets for n in t.all_names]
    general = general_pool(cfg.general_pool, seed=cfg.seed, exclude_names=all_names) if cfg.general_pool else []
    keep = policy_negatives(policy)
    for i, target in enumerate(policy.targets):
        keep += target_texts(target, i).keep if target.keep_data else []
    if cfg.facts:
        keep += [v for t in keep for v in date_variants(t, limit=3)]
    texts, groups, seen = [], [], set()
    for items, group in ((general, None), (keep, "keep")):
        for t in items:
            if t in seen or names_filter(t):
                continue
            seen.add(t)
            texts.append(t)
            groups.append(GROUP_GENERAL if group is None else keep_group(t))
    return texts, groups


def drop_common_facts(tds: Sequence[TargetData], negatives: Sequence[str]) -> None:
    """A date or title that also occurs in the shared negatives (or belongs to several targets)
    does not single a target out: drop it."""
    owners: dict[tuple[str, str], int] = {}
    for td in tds:
        for kind, values in td.facts.items():
            for v in values:
                owners[(kind, v)] = owners.get((kind, v), 0) + 1
    if not owners:
        return
    seen: set[tuple[str, str]] = {k for k, n in owners.items() if n > 1}
    titles = [v for kind, v in owners if kind == "titles"]
    source = name_alternation(titles)
    pattern = re.compile(source) if source else None
    for text in negatives:
        folded = fold(text)
        if any(ch.isdigit() for ch in folded):
            seen |= {("dates", k) for k in date_keys(folded)}
        if pattern is not None:
            seen |= {("titles", m.group(0)) for m in pattern.finditer(folded)}
    for td in tds:
        td.facts = {kind: [v for v in values if (kind, v) not in seen] for kind, values in td.facts.items()}


# ================================================================== a workspace of embedded texts


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


# ================================================================== fitting


def _sample(items: Sequence[str], k: int, salt: str) -> list[str]:
    if len(items) <= k:
        return list(items)
    return sorted(items, key=lambda t: _bucket(t, salt))[:k]


def _fit_target_heads(ws: Workspace, stages: Sequence[str], j: int, td: TargetData, names: NameMatcher,
                      neg_train: Sequence[str], others: Sequence[str], cfg: TrainConfig) -> dict[str, tuple]:
    pos = dedupe(td.exemplars + td.name_questions)
    hard_train = [t for t in td.hard if _bucket(t, "neg") >= cfg.cal_fraction]
    pos_set = set(pos)
    neg = [t for t in dedupe(list(neg_train) + hard_train + _sample(others, cfg.max_other, td.target_id)) if t not in pos_set]
    rows = ws.ensure(pos + neg)
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    name_cols = ws.names_column(names, rows, j)
    out = {}
    for stage in stages:
        out[stage] = fit_head(ws.dense[stage][rows], ws.sparse[rows], name_cols, y, c=cfg.c)
    return out


def _group_threshold(scores: np.ndarray, groups: np.ndarray, cfg: TrainConfig) -> float:
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


def _calibrate(model: DetectorModel, ws: Workspace, names: NameMatcher, holdouts: dict[str, list[str]],
               train_pos: dict[str, list[str]], cfg: TrainConfig, *, refit_platt: Sequence[int]) -> dict[str, dict]:
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
        st.tau_target = np.array([_group_threshold(Z[~hard | (owners == j), j], groups[~hard | (owners == j)], cfg)
                                  for j in range(Z.shape[1])], np.float32)
        st.tau_loose_target = np.array([conformal_threshold(Z[:, j], cfg.loose_fpr) for j in range(Z.shape[1])], np.float32)
        mx = Z.max(axis=1) if Z.shape[1] else np.zeros(len(cal_rows))
        if hard.any() and Z.shape[1]:
            mx = mx.copy()
            mx[hard] = Z[np.nonzero(hard)[0], np.clip(own, 0, Z.shape[1] - 1)]
        st.tau = _group_threshold(mx, groups, cfg)
        st.tau_loose = conformal_threshold(mx, cfg.loose_fpr)
        long_fpr = None
        if stage_name == "static" and cfg.long_negatives and len(cal_texts):
            long_fpr = _calibrate_long(model, st, ws, names, [t for t, g in zip(cal_texts, groups) if g != GROUP_HARD], cfg)
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
    rng = random.Random(seed)
    pool = sorted(set(texts), key=lambda t: _bucket(t, "long"))
    out: list[str] = []
    for _ in range(n if pool else 0):
        parts: list[str] = []
        count = 0
        while count < words:
            parts.append(rng.choice(pool))
            count += len(parts[-1].split())
        out.append(" ".join(parts))
    return out


# windows of the long calibration texts with their stage features, kept across re-calibrations in
# this process (live target updates re-calibrate against the same negatives): {key: (windows of each
# text, unique windows, folded windows, dense, sparse)}
_LONG_CACHE: "OrderedDict[tuple, tuple]" = OrderedDict()


def _long_features(model: DetectorModel, ws: Workspace, stage: str, negatives: Sequence[str], cfg: TrainConfig) -> tuple:
    h = hashlib.sha1("\x00".join(sorted(set(negatives))).encode("utf-8")).hexdigest()
    emb = ws.embedders[stage]
    key = (stage, getattr(emb, "key", id(emb)), model.char.params().__repr__(), h, cfg.long_negatives, cfg.long_words, cfg.seed,
           model.window_words, model.max_windows)
    hit = _LONG_CACHE.get(key)
    if hit is not None:
        _LONG_CACHE.move_to_end(key)
        return hit
    longs = long_negatives(negatives, cfg.long_negatives, cfg.long_words, cfg.seed)
    seg_lists = [segment_texts([t], model.window_words, model.max_windows) for t in longs]
    uniq = dedupe([x for segs in seg_lists for x in segs])
    pos = {x: k for k, x in enumerate(uniq)}
    rows = [np.array([pos[x] for x in segs], np.int64) for segs in seg_lists]
    entry = (rows, uniq, [fold(u) for u in uniq], emb.encode(uniq), model.char.transform(uniq))  # type: ignore[attr-defined]
    _LONG_CACHE[key] = entry
    while len(_LONG_CACHE) > 2:
        _LONG_CACHE.popitem(last=False)
    return entry


def _calibrate_long(model: DetectorModel, st: Stage, ws: Workspace, names: NameMatcher, negatives: Sequence[str],
                    cfg: TrainConfig) -> float:
    """The long-input thresholds: a long input is judged by the max over its windows, which a
    threshold calibrated on single segments does not bound; so calibrate on long texts made of
    held-out negatives, screened the way ``screen`` screens them. Returns the long texts' FPR at
    the strict threshold (what the long threshold corrects)."""
    rows, uniq, folded, dense, sparse = _long_features(model, ws, st.name, negatives, cfg)
    Z = st.heads.logits(st.heads.decision(dense, sparse, names.matrix(uniq, folded=folded)))
    ZL = np.stack([Z[r].max(axis=0) for r in rows])
    st.tau_long = max(st.tau, conformal_threshold(ZL.max(axis=1), cfg.fpr))
    st.tau_long_target = np.maximum(st.tau_target, np.array([conformal_threshold(ZL[:, j], cfg.fpr) for j in range(ZL.shape[1])],
                                                            np.float32))
    return float((ZL.max(axis=1) > st.tau).mean())


def _holdout_metrics(model: DetectorModel, ws: Workspace, names: NameMatcher, holdouts: dict[str, list[str]]) -> dict[str, float]:
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


def train(policy: Policy, cfg: TrainConfig | None = None, progress: Progress = lambda s: None) -> DetectorModel:
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
    neg_train = [t for t in shared if _bucket(t, "neg") >= cfg.cal_fraction]
    exemplars = {td.target_id: td.exemplars + td.name_questions for td in tds}
    per_stage: dict[str, list[tuple]] = {s: [] for s in stages}
    for j, td in enumerate(tds):
        t0 = time.perf_counter()
        others = [t for k, other in enumerate(tds) if k != j for t in exemplars[other.target_id]]
        fitted = _fit_target_heads(ws, stages, j, td, names, neg_train, others, cfg)
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
    neg_split = np.array([1 if _bucket(t, "neg") < cfg.cal_fraction else 0 for t in neg_texts], np.int8)
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
    cal = _calibrate(model, ws, names, holdouts, exemplars, cfg, refit_platt=range(len(tds)))
    metrics = _holdout_metrics(model, ws, names, holdouts)
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


def recalibrate(model: DetectorModel, progress: Progress = lambda s: None) -> DetectorModel:
    """Recompute all thresholds from the stored negative bank (heads and Platt scaling unchanged)."""
    cfg = _cfg_for(model, None)
    ws, _ = _workspace_from_model(model, cfg, progress)
    names = NameMatcher({t: model.names[t] for t in model.target_ids}, model.facts)
    stats = _calibrate(model, ws, names, {}, {}, cfg, refit_platt=())
    model.manifest = dict(model.manifest)
    model.manifest.setdefault("metrics", {})["calibration"] = stats
    return model


def remove_targets(model: DetectorModel, remove: Iterable[str], progress: Progress = lambda s: None) -> DetectorModel:
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
        _calibrate(new, ws, names, {}, {}, cfg, refit_platt=())
    new.manifest.setdefault("updates", []).append({"removed": sorted(gone & set(model.target_ids))})
    return new


def add_targets(model: DetectorModel, policy: Policy, target_ids: Sequence[str], progress: Progress = lambda s: None) -> DetectorModel:
    """Train heads for ``target_ids`` (targets of ``policy``) and add them; existing heads are kept.

    Replaces a target already in the model (e.g. whose data changed). Only the new targets' texts
    are embedded; the negative bank and the other targets' exemplars come from the artifact.
    """
    t_start = time.perf_counter()
    model = remove_targets(model, [t for t in target_ids if t in model.target_ids], progress)
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
        fitted = _fit_target_heads(ws, stages, j, td, names, shared_train, others, cfg)
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
        model.neg_split = np.concatenate([model.neg_split, np.array([1 if _bucket(t, "neg") < cfg.cal_fraction else 0 for t in td.hard], np.int8)])
        model.neg_group = np.concatenate([model.neg_group, np.full(len(td.hard), GROUP_HARD, np.int8)])
        if model.neg_sentence is not None:
            model.neg_sentence = np.vstack([model.neg_sentence, ws.dense["sentence"][ws.ensure(td.hard)]]) if td.hard else model.neg_sentence
    holdouts = {td.target_id: td.holdout for td in new_tds}
    train_pos = {td.target_id: td.exemplars + td.name_questions for td in new_tds}
    for s in model.stages.values():
        s.tau_target = np.concatenate([s.tau_target, np.zeros(len(new_tds), np.float32)])
        s.tau_loose_target = np.concatenate([s.tau_loose_target, np.zeros(len(new_tds), np.float32)])
    _calibrate(model, ws, names, holdouts, train_pos, cfg, refit_platt=range(model.n_targets - len(new_tds), model.n_targets))
    model.manifest = dict(model.manifest)
    model.manifest.setdefault("updates", []).append({"added": [td.target_id for td in new_tds],
                                                     "seconds": round(time.perf_counter() - t_start, 2)})
    progress(f"added {len(new_tds)} target(s) in {time.perf_counter() - t_start:.1f}s")
    return model
