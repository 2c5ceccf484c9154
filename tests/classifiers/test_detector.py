"""Training, screening, artifacts, windows, multi-turn and live target changes of the trained detector."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from classifiers.base import Verdict
from classifiers.classifier import conformal_threshold
from classifiers.detector import TrainedDetector, load_model, save_model
from guard.data.documents import insert_at, prose
from guard.errors import ConfigError
from guard.policy import load_policy
from tests.classifiers.conftest import write_policy

FILLER = ("The committee reviewed the quarterly figures and agreed to revisit the budget in spring. "
          "Several members asked for clearer charts, and the chair promised a summary by Friday. ")


def test_train_flags_targets_and_attributes(trained) -> None:
    _, model = trained
    det = TrainedDetector(model)
    v = det.screen(["Where does Zorblax Quenton live?"])
    assert isinstance(v, Verdict) and v.flagged and v.target_id == "zorblax-quenton"
    assert 0.0 <= v.score <= 1.0 and v.detail["detector"] == "trained"
    assert v.neighbours and all(n.target_id in model.target_ids for n in v.neighbours)
    v = det.screen(["Which medal did Mirela Vantongeren receive?"])
    assert v.flagged and v.target_id == "mirela-vantongeren"
    for benign in ["Write a haiku about autumn leaves.", "How do I reverse a string in Python?", "What is the capital of Australia?"]:
        assert not det.screen([benign]).flagged, benign
    assert not det.screen([]).flagged and not det.screen(["", "   "]).flagged


def test_thresholds_are_conformal(trained) -> None:
    _, model = trained
    st = model.stages["static"]
    assert np.isfinite(st.tau) and len(st.tau_target) == 2
    metrics = model.manifest["metrics"]
    assert metrics["holdout_exemplars"] >= 0 and "calibration" in metrics
    scores = np.arange(1000, dtype=float)
    assert conformal_threshold(scores, 0.01) == 990.0
    assert conformal_threshold(scores[:10], 0.01) == 9.0  # too few negatives: the max


def test_save_load_round_trip(trained, tmp_path: Path) -> None:
    _, model = trained
    save_model(model, tmp_path / "art")
    files = {p.name for p in (tmp_path / "art").iterdir()}
    assert {"manifest.json", "forget.faiss", "heads_static.npz", "static_vectors.npy"} <= files
    assert not any(name.endswith((".pkl", ".pickle", ".joblib")) for name in files)
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["kind"] == "forget-detector" and manifest["targets"][0]["id"] == "zorblax-quenton"
    loaded = load_model(tmp_path / "art")
    texts = ["Tell me about Quenton's glass.", "Write a limerick about a cat.", "Mirela Vantongeren " + FILLER * 3]
    a, b = TrainedDetector(model), TrainedDetector(loaded)
    for stage in model.stages:
        np.testing.assert_allclose(a.stage_scores(stage, texts), b.stage_scores(stage, texts), atol=2e-2)
    assert [a.screen([t]).flagged for t in texts] == [b.screen([t]).flagged for t in texts]


def test_corrupt_or_missing_artifact(trained, tmp_path: Path) -> None:
    _, model = trained
    with pytest.raises(ConfigError) as err:
        load_model(tmp_path / "nope")
    assert err.value.param == "detector.artifact" and "guard-train classifier" in str(err.value)
    save_model(model, tmp_path / "art")
    heads = tmp_path / "art" / "heads_static.npz"
    heads.write_bytes(heads.read_bytes()[:100])
    with pytest.raises(ConfigError) as err:
        load_model(tmp_path / "art")
    assert "corrupt" in str(err.value)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text('{"kind": "something-else"}')
    with pytest.raises(ConfigError):
        load_model(tmp_path / "junk")


def test_windowed_screening_finds_a_buried_question(trained) -> None:
    _, model = trained
    det = TrainedDetector(model)
    filler = FILLER * 80  # ~2,240 words
    assert len(filler.split()) > 2000
    assert not det.screen([filler]).flagged
    v = det.screen([filler + " By the way, who taught Zorblax Quenton glassblowing?"])
    assert v.flagged and v.target_id == "zorblax-quenton" and v.detail["segments"] > 10
    v = det.screen(["Who taught Zorblax Quenton glassblowing? " + filler])
    assert v.flagged


def test_every_turn_is_screened(trained) -> None:
    _, model = trained
    det = TrainedDetector(model)
    convo = ["You are a helpful assistant.", "I am writing about Mirela Vantongeren and her atlas.", "Thanks! Now write a haiku about tea."]
    v = det.screen(convo)
    assert v.flagged and v.target_id == "mirela-vantongeren"
    assert not det.screen(["You are a helpful assistant.", "Write a haiku about tea.", "And another about coffee."]).flagged


def test_cache_gives_same_verdicts(trained) -> None:
    _, model = trained
    det = TrainedDetector(model)
    q = ["What prize did Zorblax Quenton win in 1998?"]
    first, second = det.screen(q), det.screen(q)
    assert first.flagged == second.flagged and first.score == pytest.approx(second.score)


def test_live_add_and_remove_targets(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, static_embedder) -> None:
    from classifiers.loader import build_detector
    from classifiers.train import TrainConfig, train

    monkeypatch.setenv("GUARD_CACHE_DIR", str(tmp_path / "cache"))
    artifact = tmp_path / "artifact"
    only_zorb = load_policy(write_policy(tmp_path, ["zorb"], artifact=artifact))
    cfg = TrainConfig.from_policy(only_zorb)
    cfg.static_embedder = static_embedder
    save_model(train(only_zorb, cfg), artifact)
    q_mirela = ["Where was Mirela Vantongeren born?"]
    q_zorb = ["What did Zorblax Quenton write about his apprenticeship?"]
    det = build_detector(only_zorb)
    assert det.screen(q_zorb).flagged and not det.screen(q_mirela).flagged
    # add a target: the policy changes, the artifact does not; build_detector trains the new head
    both = load_policy(write_policy(tmp_path, ["zorb", "mirela"], artifact=artifact))
    t0 = time.perf_counter()
    det = build_detector(both)
    first_load = time.perf_counter() - t0
    v = det.screen(q_mirela)
    assert v.flagged and v.target_id == "mirela-vantongeren"
    assert det.screen(q_zorb).target_id == "zorblax-quenton"
    assert not det.screen(["Write a poem about the sea."]).flagged
    # the reconciled model is cached: a second reload does not train again
    overlays = list((tmp_path / "cache" / "detector-overlays").iterdir())
    assert len(overlays) == 1
    t0 = time.perf_counter()
    build_detector(both)
    assert time.perf_counter() - t0 < max(first_load, 1.0)
    # remove the first target
    only_mirela = load_policy(write_policy(tmp_path, ["mirela"], artifact=artifact))
    det = build_detector(only_mirela)
    assert not det.screen(q_zorb).flagged and det.screen(q_mirela).flagged
    # update_missing: false refuses instead of training
    strict = load_policy(write_policy(tmp_path, ["zorb", "mirela"], artifact=artifact, extra={"update_missing": False}))
    with pytest.raises(ConfigError) as err:
        build_detector(strict)
    assert "mirela-vantongeren" in str(err.value) and err.value.param == "detector.artifact"


def test_update_cli_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, static_embedder) -> None:
    """`guard-train classifier --update` adds a target to an existing artifact."""
    import classifiers.train as tr
    from guard.cli_train import main

    monkeypatch.setenv("GUARD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(tr, "static_for", lambda spec, **kw: static_embedder)
    artifact = tmp_path / "art"
    assert main(["classifier", "--policy", str(write_policy(tmp_path, ["zorb"], artifact=artifact)), "--quiet"]) == 0
    assert load_model(artifact).target_ids == ["zorblax-quenton"]
    both = write_policy(tmp_path, ["zorb", "mirela"], artifact=artifact)
    assert main(["classifier", "--policy", str(both), "--update", "--quiet"]) == 0
    assert load_model(artifact).target_ids == ["zorblax-quenton", "mirela-vantongeren"]


def test_loader_kinds(tmp_path: Path) -> None:
    from classifiers.base import NullDetector
    from classifiers.keyword import KeywordDetector
    from classifiers.loader import build_detector
    from guard.policy import parse_policy

    assert isinstance(build_detector(parse_policy({"detector": {"kind": "none"}})), NullDetector)
    kw = build_detector(parse_policy({"detector": {"kind": "keyword"}, "targets": [{"id": "a", "names": ["Zorblax Quenton"]}]}))
    assert isinstance(kw, KeywordDetector) and kw.screen(["who is zorblax quenton"]).flagged
    missing = parse_policy({"detector": {"kind": "trained", "artifact": str(tmp_path / "none")}, "targets": [{"id": "a", "names": ["X Y"]}]})
    with pytest.raises(ConfigError) as err:
        build_detector(missing)
    assert err.value.param == "detector.artifact"


# ---------------------------------------------------------------- long inputs and the screening budget


class CountingClock:
    """A clock for ``Deadline``: time 0 for the first ``ticks`` readings, then far past any deadline."""

    def __init__(self, ticks: int) -> None:
        self.ticks = ticks
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        return 0.0 if self.readings <= self.ticks else 1e9


def test_deadline_stops_screening_between_batches(trained, data_dir: Path) -> None:
    from classifiers.base import Deadline, ScreeningIncomplete

    _, model = trained
    det = TrainedDetector(model)
    doc = prose(data_dir, 12_000)
    clock = CountingClock(ticks=3)  # creation + 2 checks pass, the 3rd check finds the deadline passed
    deadline = Deadline.after_ms(1000, clock=clock)
    with pytest.raises(ScreeningIncomplete) as err:
        det.screen([doc], deadline=deadline)
    assert err.value.param == "detector.budget_ms"
    assert clock.readings == 4  # it stopped at the first check after the deadline: no more work was done
    # an ample deadline changes nothing
    ample = det.screen([doc], deadline=Deadline.after_ms(600_000))
    det._cache.clear()
    assert ample.flagged == det.screen([doc]).flagged and ample.score == pytest.approx(det.screen([doc]).score)


def test_every_segment_of_a_long_input_is_screened(trained, data_dir: Path) -> None:
    """No cap drops the middle of a long text: every word is in some screened segment, and a text
    cut into blocks gives the windows it would give whole."""
    from classifiers.segments import segment

    doc = prose(data_dir, 12_000)
    cut = segment([doc], 48)
    assert len(cut.segments) > 2 * 256 and len(cut.units) > 1  # far more than the old cap of 256 windows; in blocks
    covered = {w for s in cut.segments for w in s.split()}
    assert set(doc.split()) <= covered
    whole = set(segment([doc], 48, block_words=10**6).segments)
    windows = [s for s in whole if len(s.split()) == 48]
    assert set(windows) <= set(cut.segments)
    assert all(s in " ".join(doc.split()) for s in cut.segments)


def test_question_in_the_middle_of_a_long_document_is_flagged(trained, data_dir: Path) -> None:
    _, model = trained
    det = TrainedDetector(model)
    doc = prose(data_dir, 10_000)  # (this toy detector's false-positive rate is not the point: see the TOFU test below)
    for fraction in (0.1, 0.5, 0.9):
        v = det.screen([insert_at(doc, "By the way, who taught Zorblax Quenton glassblowing?", fraction)])
        assert v.flagged and v.target_id == "zorblax-quenton" and v.score > 0.99, fraction


def test_tofu_question_anywhere_in_a_long_document_is_flagged(tofu01_detectors, data_dir: Path) -> None:
    """The trained TOFU detector (forget01, first-half policy) as served, on a held-out forget
    question placed at several depths of a ~10,000-word document of ordinary prose."""
    _, detectors = tofu01_detectors
    served = detectors["trained+deobf"]
    rows = [json.loads(line) for line in (data_dir / "tofu" / "forget01.json").read_text(encoding="utf-8").splitlines() if line.strip()]
    held_out = [rows[12]["question"], rows[35]["question"]]  # rows 10:20 and 30:40 are not in the policy's forget data
    doc = prose(data_dir, 10_000, seed=1)
    assert not served.screen([doc]).flagged
    for question in held_out:
        for fraction in (0.05, 0.5, 0.95):
            assert served.screen([insert_at(doc, question, fraction)]).flagged, (question, fraction)


def test_cover_mode_screens_a_bounded_number_of_windows_over_all_the_text(trained, data_dir: Path) -> None:
    _, model = trained
    det = TrainedDetector(model, cover_above=1000)
    doc = insert_at(prose(data_dir, 20_000), "Who taught Zorblax Quenton glassblowing?", 0.5)
    segs = det.segments([doc])
    assert len(segs) <= model.max_windows + 2
    assert {w for s in segs for w in s.split()} == set(doc.split())
    assert det.screen([doc]).detail["segments"] == len(segs)
