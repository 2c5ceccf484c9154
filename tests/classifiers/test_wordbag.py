"""Long inputs are screened from per-word features and one matching pass: the same numbers as scoring
each segment on its own (``classifiers.wordbag``, ``classifiers.mention_scan``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from classifiers.detector import TrainedDetector
from classifiers.mention_scan import segments_to_match
from classifiers.segments import segment
from classifiers.wordbag import WordBag
from tests.classifiers.test_detector import insert_at, prose

ODD = ["Ünïcödé façade — “quoted” text, ½ ﬁ x\u00a8y and 日本語のテキスト", "tabs\tand\nnew\u00a0lines", "", "   ",
       "Zorblax Quenton was born on 05/11/1991.", "a" * 300 + " Quenton"]


def test_word_bag_counts() -> None:
    bag = WordBag.of(["a b a", "", "b c"])
    assert bag.words == ["a", "b", "c"]
    assert bag.counts.toarray().tolist() == [[2, 1, 0], [0, 0, 0], [0, 1, 1]]


def test_static_stage_from_words_equals_per_segment(trained, data_dir: Path) -> None:
    _, model = trained
    det = TrainedDetector(model)
    assert model.static is not None and model.static.word_local
    doc = insert_at(prose(data_dir, 3_000), "Who taught Zorblax Quenton glassblowing?", 0.5)
    segs = det.segments([doc] + ODD) + ODD
    assert len(segs) > 100
    from_words = det.stage_logits("static", segs)
    st = model.stages["static"]
    each = st.heads.logits(st.heads.decision(model.static.encode(segs), model.char.transform(segs), det.names.matrix(segs)))
    np.testing.assert_allclose(from_words, each, atol=1e-4)


def test_one_matching_pass_finds_every_segment_with_a_match(trained, data_dir: Path) -> None:
    _, model = trained
    det = TrainedDetector(model)
    texts = [insert_at(prose(data_dir, 4_000), "Zorblax Quenton", f) for f in (0.0, 0.3)] + [
        "Tell me more.", insert_at(prose(data_dir, 2_000, seed=2), "Mirela Vantongeren's atlas", 0.99)] + ODD
    cut = segment(texts, model.window_words, block_words=1000)  # several blocks per long text
    segs = cut.segments
    assert len(cut.units) > len(texts)
    need = segments_to_match(cut.units, segs, cut.sources, det.has_match, chunk_words=256)
    expected = det.names.matrix(segs)
    has = expected.reshape(len(segs), -1).any(axis=1)
    assert has.sum() >= 6 and not (has & ~need).any()  # every segment with a match is matched on its own
    assert need.sum() < len(segs) / 4                   # and most of the text is read once, not per segment
    np.testing.assert_array_equal(det.name_features(segs, need), expected)
