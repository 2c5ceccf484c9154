"""The trained detector: classifier heads + FAISS forget index, thresholds calibrated to a target FPR.

Screening a request (``screen(texts, deadline)``, the texts of every system/user turn):

1. Segments: each text on its own; texts longer than ``window_words`` also in overlapping word
   windows and sentence by sentence (a forget question after 2,000 tokens of filler is still seen
   on its own); with several turns, also all turns joined (a question split across turns). Every
   word of every text is in some segment, however long the input: there is no cap that drops the
   middle of a document. (Above ``detector.max_screen_tokens`` the policy decides: the pipeline
   refuses through the fail mode, or, with ``long_input: cover``, the text is screened in
   ``max_windows`` wider windows that still cover all of it; see docs/detector.md.)
2. Stage ``static`` (distilled static embedder + char n-grams + name match, ~0.3 ms): per target a
   calibrated probability. Its features are computed once per distinct word of the request and
   summed per segment (``classifiers.wordbag``), so the cost is linear in the input's length, in
   batches with a ``Deadline`` check between them. In ``static`` mode this decides. In ``cascade``
   mode segments whose static score is below the *loose* threshold (calibrated to a high FPR, so it
   almost never drops a forget query) are clean; only the rest go to
3. Stage ``sentence`` (the sentence-transformer, ~15-30 ms on this CPU): decides with the strict
   threshold, calibrated on held-out negatives to ``detector.target_fpr`` (split-conformal).
4. The flagged target is the head with the highest probability; ``neighbours`` are the nearest
   forget exemplars from the FAISS index.

Per-segment stage results are kept in an LRU cache (system prompts repeat on every request, and the
de-obfuscating wrapper screens a long text twice when it changed a few words of it).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from classifiers.base import Deadline, Verdict
from classifiers.classifier import logit, sigmoid

# the model and its files live in ``classifiers.detector_model``; importable from here as before
from classifiers.detector_model import (  # noqa: F401
    ARTIFACT_KIND,
    ARTIFACT_VERSION,
    STAGES,
    DetectorModel,
    Stage,
    load_model,
    read_manifest,
    save_model,
)
from classifiers.embedder import SentenceEmbedder
from classifiers.features import N_MATCH, NameMatcher
from classifiers.limits import count_words, wrap_long_words
from classifiers.mention_scan import segments_to_match
from classifiers.segments import Segmentation, segment, segment_texts  # noqa: F401 - segment_texts: training uses it from here
from classifiers.wordbag import CharNgramCounts, WordBag, WordFeatures, static_segments
from guard.errors import ConfigError

CLEAN = -1e4  # log-odds given to a segment the cascade gate let through as clean
SEGMENT_BATCH = 128    # static-stage segments scored per step (a deadline check between steps, a few ms)
SENTENCE_BATCH = 32    # sentence-transformer segments per step
MATCH_EACH_BELOW = 32  # fewer segments than this are name-matched one by one, more through ``mention_scan``
# A request of this many windows' worth of words in all its texts together (a chat of many short
# turns) is judged like one long text: its score is a max over as many segments (issue 15: a benign
# question after 20 benign turns was flagged 27 % of the time at the single-segment threshold).
LONG_REQUEST_WINDOWS = 4
# A segment of fewer words than this that names no target and states none of its facts is no
# evidence on its own ("Kuwait." as a one-word answer scored 3.2 log-odds for Basil Mahfouz Al-Kuwaiti).
MIN_UNMATCHED_WORDS = 3


class TrainedDetector:
    """``Detector`` over a ``DetectorModel``. Thread-safe; the model is treated as immutable."""

    def __init__(self, model: DetectorModel, *, threshold: float | None = None, cache_size: int = 16384,
                 sentence: SentenceEmbedder | None = None, cover_above: int | None = None) -> None:
        """``cover_above``: inputs of more words than this are screened in ``model.max_windows``
        covering windows (``detector.long_input: cover`` with ``detector.max_screen_tokens``)."""
        self.model = model
        self.threshold_override = threshold
        self.cover_above = cover_above
        self.names = NameMatcher({t: model.names[t] for t in model.target_ids}, model.facts)
        # target id -> names/aliases: what the serving de-obfuscation respells misspelt names to
        self.target_names: Mapping[str, Sequence[str]] = MappingProxyType({t: tuple(model.names[t]) for t in model.target_ids})
        self._sentence = sentence
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._cache_size = cache_size
        self._rows = np.arange(model.n_targets)
        # per-word features summed per segment (linear in the input), when the static embedder's
        # tokenizer allows it; else the static stage embeds each segment (same numbers, slower)
        self._words = (WordFeatures(model.static, model.char)
                       if model.static is not None and model.static.word_local else None)
        if model.mode in ("sentence", "cascade") and sentence is None:
            self._sentence = SentenceEmbedder(model.sentence_spec or "default")

    def warm(self) -> None:
        """Load the models now (not on the first request) and check they match the artifact."""
        if self._sentence is not None:
            dim = self.sentence_embedder().encode(["warm-up"]).shape[1]
            st = self.model.stages.get("sentence")
            if st is not None and st.heads.w_dense.shape[1] != dim:
                raise ConfigError(f"the sentence embedder {self.model.sentence_spec!r} gives {dim}-dim vectors but the artifact was trained "
                                  f"with {st.heads.w_dense.shape[1]}-dim ones; retrain with `guard-train classifier`", param="detector.embedder")
        self.screen(["warm-up"])
        self.clear_cache()

    def clear_cache(self) -> None:
        """Forget the per-segment results and per-word features (benchmarks measure cold screening)."""
        with self._lock:
            self._cache.clear()
        if self._words is not None:
            self._words.clear()

    # -------------------------------------------------------------- features

    def sentence_embedder(self) -> SentenceEmbedder:
        assert self._sentence is not None
        return self._sentence

    def embed(self, stage: str, texts: Sequence[str]) -> np.ndarray:
        if stage == "static":
            assert self.model.static is not None
            return self.model.static.encode(texts)
        return self.sentence_embedder().encode(texts)

    def stage_logits(self, stage: str, texts: Sequence[str], dense: np.ndarray | None = None,
                     deadline: Deadline | None = None, match: np.ndarray | None = None) -> np.ndarray:
        """[S, T] calibrated log-odds of one stage, in batches with a ``deadline`` check before each
        (``match``: see ``name_features``)."""
        st = self.model.stages[stage]
        out = np.empty((len(texts), self.model.n_targets), np.float32)
        if stage == "static" and dense is None and self._words is not None and len(texts) > 8:
            bag = WordBag.of(texts, deadline)
            word_char, word_dense = self._words.matrices(bag.words, deadline)
            for start in range(0, len(texts), SEGMENT_BATCH):
                rows = slice(start, start + SEGMENT_BATCH)
                _check(deadline, "static stage")
                counts = bag.counts[rows]
                out[rows] = st.heads.logits(st.heads.decision(static_segments(counts, word_dense),
                                                              CharNgramCounts.segments(counts, word_char),
                                                              self.name_features(texts[rows], None if match is None else match[rows])))
            return out
        batch = SEGMENT_BATCH if stage == "static" else SENTENCE_BATCH
        for start in range(0, len(texts), batch):
            rows = slice(start, start + batch)
            _check(deadline, f"{stage} stage")
            part = texts[rows]
            vecs = self.embed(stage, part) if dense is None else dense[rows]
            out[rows] = st.heads.logits(st.heads.decision(vecs, self.model.char.transform(part), self.name_features(part, None if match is None else match[rows])))
        return out

    def has_match(self, text: str) -> bool:
        """Whether ``text`` matches a target's name, name part, date or title anywhere."""
        return bool(self.names.matrix([text]).any())

    def is_evidence(self, text: str) -> bool:
        """Whether ``text`` alone names a target or states one of its facts (``NameMatcher.is_evidence``)."""
        return self.names.is_evidence(text)

    def name_features(self, texts: Sequence[str], match: np.ndarray | None = None) -> np.ndarray:
        """[S, T, K] name/fact matches of the segments ``texts``; ``match``: [S] which of them can
        have any (``classifiers.mention_scan``; the others are zero), None: all."""
        if match is None:
            return self.names.matrix(texts)
        out = np.zeros((len(texts), self.model.n_targets, N_MATCH), np.float32)
        rows = np.flatnonzero(match)
        if len(rows):
            out[rows] = self.names.matrix([texts[i] for i in rows])
        return out

    # -------------------------------------------------------------- screening

    def is_long(self, texts: Sequence[str]) -> bool:
        """Whether the request is judged by the long-input threshold: a text is screened in windows,
        or all texts together hold ``LONG_REQUEST_WINDOWS`` windows' worth of words (many turns)."""
        words = [len(t.split()) for t in texts if isinstance(t, str)]
        return any(n > self.model.window_words for n in words) or sum(words) > LONG_REQUEST_WINDOWS * self.model.window_words

    def segments(self, texts: Sequence[str]) -> list[str]:
        """Every segment of ``texts`` (see ``_segment``)."""
        return self._segment(_wrapped(texts)).segments

    def _segment(self, wrapped: Sequence[str], deadline: Deadline | None = None) -> Segmentation:
        """``classifiers.segments.segment`` of texts already through ``wrap_long_words``; in covering
        windows above ``cover_above`` screen tokens."""
        cover = self.cover_above is not None and count_words(wrapped, deadline) > self.cover_above
        return segment(wrapped, self.model.window_words, self.model.max_windows if cover else None, deadline=deadline)

    def _match_mask(self, cut: Segmentation | None, idx: list[int], deadline: Deadline | None) -> np.ndarray | None:
        """Which of ``cut.segments[idx]`` can have a name/fact match, from one pass over the text; None
        (match each) when they are few, or a small part of the text (the rest came from the cache)."""
        if cut is None or len(idx) <= MATCH_EACH_BELOW or 4 * len(idx) < len(cut.segments):
            return None
        return segments_to_match(cut.units, [cut.segments[i] for i in idx], [cut.sources[i] for i in idx], self.has_match,
                                 deadline=deadline)

    def _scores(self, segs: list[str], deadline: Deadline | None = None,
                cut: Segmentation | None = None) -> tuple[np.ndarray, np.ndarray]:
        """([S, T] probabilities of the deciding stage, [S] whether the sentence stage ran). ``cut``:
        where ``segs`` come from, for matching names in one pass over the text, not per segment."""
        m = self.model
        T = m.n_targets
        first = "static" if m.mode in ("static", "cascade") else "sentence"
        with self._lock:
            entries: list[list[Any] | None] = []
            for s in segs:
                hit = self._cache.get(s)
                if hit is not None:
                    self._cache.move_to_end(s)
                    entries.append([hit[0], hit[1]])
                else:
                    entries.append(None)
        miss = [i for i, e in enumerate(entries) if e is None]
        if miss:
            match = self._match_mask(cut, miss, deadline)
            P = self.stage_logits(first, [segs[i] for i in miss], deadline=deadline, match=match)
            for k, i in enumerate(miss):
                entries[i] = [P[k], None]
        rows: list[list[Any]] = entries  # type: ignore[assignment]
        if m.mode != "cascade":
            final = np.stack([e[0] for e in rows])
            second = np.full(len(segs), m.mode == "sentence")
        else:
            tau_loose = m.stages["static"].tau_loose
            second = np.array([float(e[0].max()) > tau_loose for e in rows])
            need = [i for i in range(len(segs)) if second[i] and rows[i][1] is None]
            if need:
                P2 = self.stage_logits("sentence", [segs[i] for i in need], deadline=deadline)
                for k, i in enumerate(need):
                    rows[i][1] = P2[k]
            final = np.stack([rows[i][1] if second[i] else np.full(T, CLEAN, np.float32) for i in range(len(segs))])
        with self._lock:
            for s, e in zip(segs, rows):
                self._cache[s] = (e[0], e[1])
                self._cache.move_to_end(s)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return final, second

    def score_matrix(self, texts: Sequence[str]) -> np.ndarray:
        """[T] max over the segments of the deciding stage's log-odds (for evaluation)."""
        segs = self.segments(texts)
        if not segs or self.model.n_targets == 0:
            return np.full(self.model.n_targets, CLEAN, np.float32)
        final, _ = self._scores(segs)
        return final.max(axis=0)

    def stage_scores(self, stage: str, texts: Sequence[str], batch: int = 512,
                     progress: Any = None) -> np.ndarray:
        """[N, T] one stage's log-odds per text (max over its segments), batched; no LRU cache."""
        seg_lists = [self.segments([t]) for t in texts]
        flat: list[str] = []
        owner: list[int] = []
        for i, segs in enumerate(seg_lists):
            flat += segs
            owner += [i] * len(segs)
        uniq = list(dict.fromkeys(flat))
        pos = {s: k for k, s in enumerate(uniq)}
        P = np.zeros((len(uniq), self.model.n_targets), np.float32)
        for start in range(0, len(uniq), batch):
            part = uniq[start:start + batch]
            P[start:start + len(part)] = self.stage_logits(stage, part)
            if progress:
                progress(min(start + batch, len(uniq)), len(uniq))
        out = np.full((len(texts), self.model.n_targets), CLEAN, np.float32)
        for s, i in zip(flat, owner):
            np.maximum(out[i], P[pos[s]], out=out[i])
        return out

    def threshold(self, long: bool = False) -> float:
        """The decision threshold in log-odds (``detector.threshold`` overrides it as a probability);
        ``long``: for an input screened in windows."""
        if self.threshold_override is not None:
            return logit(self.threshold_override)
        m = self.model
        st = m.stages["sentence" if m.mode in ("sentence", "cascade") else "static"]
        return st.long_thresholds()[0] if long else st.tau

    def screen(self, texts: Sequence[str], deadline: Deadline | None = None) -> Verdict:
        m = self.model
        started = time.perf_counter()
        _check(deadline, "segmentation")
        if m.n_targets == 0:
            return Verdict.clean()
        cut = self._segment(_wrapped(texts, deadline), deadline)
        segs = cut.segments
        if not segs:
            return Verdict.clean()
        final, second = self._scores(segs, deadline, cut)
        for i, seg in enumerate(segs):
            if len(seg.split()) < MIN_UNMATCHED_WORDS and not self.has_match(seg):
                final[i] = CLEAN
        seg_i, tgt_i = np.unravel_index(int(np.argmax(final)), final.shape)
        z = float(final[seg_i, tgt_i])
        long = self.is_long(texts)
        tau = self.threshold(long)
        flagged = z > tau
        score = float(sigmoid(z))
        detail: dict[str, Any] = {
            "detector": "trained", "mode": m.mode, "threshold": float(sigmoid(tau)), "log_odds": round(z, 4),
            "threshold_log_odds": round(tau, 4), "segments": len(segs), "long": long,
            "stage": "sentence" if bool(second[seg_i]) else "static",
        }
        if not flagged:
            detail["ms"] = round((time.perf_counter() - started) * 1000, 3)
            return Verdict(flagged=False, score=score, detail=detail)
        seg = segs[seg_i]
        try:
            vec = self.embed(m.index_stage, [seg])[0]
            neighbours = m.index.neighbours(vec, m.target_ids, k=5)
        except Exception:  # noqa: BLE001 - attribution extras must never break screening
            neighbours = ()
        detail["segment"] = seg[:200]
        order = np.argsort(-final[seg_i])[:3]
        detail["top"] = {m.target_ids[j]: round(float(sigmoid(final[seg_i, j])), 6) for j in order}
        detail["ms"] = round((time.perf_counter() - started) * 1000, 3)
        return Verdict(flagged=True, target_id=m.target_ids[int(tgt_i)], score=score, neighbours=neighbours, detail=detail)


def _wrapped(texts: Sequence[str], deadline: Deadline | None = None) -> list[str]:
    """The texts with runs of more than ``MAX_WORD_CHARS`` non-space characters cut into pieces, so
    text without spaces is windowed like any other (``classifiers.limits``)."""
    return [wrap_long_words(t, deadline) for t in texts if isinstance(t, str)]


def _check(deadline: Deadline | None, stage: str) -> None:
    if deadline is not None:
        deadline.check(stage)
