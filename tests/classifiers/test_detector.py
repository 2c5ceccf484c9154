"""Training, screening, artifacts, windows, multi-turn and live target changes of the trained detector."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from classifiers.base import Verdict
from classifiers.classifier import conformal_threshold
from classifiers.detector import TrainedDetector, load_model, save_model
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
