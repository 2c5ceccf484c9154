"""Bad policy data fails with errors that name the field; helpers for policy generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from classifiers.data import parse_rows, read_source, target_texts
from classifiers.entities import co_mentioned, stated_aliases
from guard.errors import ConfigError
from guard.policy import load_policy


def _policy(tmp_path: Path, target: dict, detector: dict | None = None) -> Path:
    data = {"version": 1, "detector": detector or {"kind": "keyword"}, "targets": [target]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _texts(tmp_path: Path, target: dict):
    policy = load_policy(_policy(tmp_path, target))
    return target_texts(policy.targets[0], 0)


def test_missing_file_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _texts(tmp_path, {"id": "a", "names": ["A B"], "forget_data": [{"path": "nope.json", "format": "tofu_qa"}]})
    assert err.value.param == "targets.0.forget_data.0.path" and "does not exist" in str(err.value)


def test_wrong_fields_and_formats(tmp_path: Path) -> None:
    (tmp_path / "qa.jsonl").write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n")
    with pytest.raises(ConfigError) as err:
        _texts(tmp_path, {"id": "a", "names": ["A B"], "forget_data": [{"path": "qa.jsonl", "format": "tofu_qa"}]})
    assert "question" in str(err.value) and err.value.param == "targets.0.forget_data.0.format"
    with pytest.raises(ConfigError) as err:
        _texts(tmp_path, {"id": "a", "names": ["A B"], "forget_data": [{"path": "qa.jsonl", "format": "json_text"}]})
    assert err.value.param == "targets.0.forget_data.0.field"
    (tmp_path / "bad.json").write_text("[{\"text\": 1,")
    with pytest.raises(ConfigError) as err:
        _texts(tmp_path, {"id": "a", "names": ["A B"], "keep_data": [{"path": "bad.json", "format": "rwku_passage"}]})
    assert err.value.param == "targets.0.keep_data.0.path" and "not valid JSON" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_policy(_policy(tmp_path, {"id": "a", "names": ["A B"], "forget_data": [{"path": "x", "format": "pdf"}]}))
    assert "targets.0.forget_data.0.format" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_policy(_policy(tmp_path, {"id": "a", "names": ["A B"], "forget_data": [{"path": "x", "rows": "a:b"}]}))
    assert "rows" in str(err.value)


def test_rows_and_empty_selection(tmp_path: Path) -> None:
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps({"question": f"q{i}?", "answer": f"a{i}."}) for i in range(6)))
    tt = _texts(tmp_path, {"id": "a", "names": ["A B"], "forget_data": [{"path": "qa.jsonl", "format": "tofu_qa", "rows": "0:6:2"}]})
    assert tt.positives == ["q0?", "a0.", "q2?", "a2.", "q4?", "a4."]
    with pytest.raises(ConfigError) as err:
        _texts(tmp_path, {"id": "a", "names": ["A B"], "forget_data": [{"path": "qa.jsonl", "format": "tofu_qa", "rows": "10:20"}]})
    assert err.value.param == "targets.0.forget_data.0.rows"
    assert list(parse_rows("1:5", 10)) == [1, 2, 3, 4] and list(parse_rows(None, 3)) == [0, 1, 2]


def test_trained_without_artifact_and_bad_detector_fields(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_policy(_policy(tmp_path, {"id": "a", "names": ["A B"]}, {"kind": "trained"}))
    assert "artifact" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_policy(_policy(tmp_path, {"id": "a", "names": ["A B"]}, {"kind": "trained", "artifact": "x", "target_fpr": 2}))
    assert "detector.target_fpr" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_policy(_policy(tmp_path, {"id": "a", "names": ["A B"]}, {"kind": "trained", "artifact": "x", "embedder_kind": "gpu"}))
    assert "detector.embedder_kind" in str(err.value)


def test_negatives_paths_resolve_relative_to_policy(tmp_path: Path) -> None:
    (tmp_path / "neg.txt").write_text("A sentence about nothing in particular that is long enough.\n\nAnother one here, also long enough.")
    policy = load_policy(_policy(tmp_path, {"id": "a", "names": ["A B"]},
                                 {"kind": "trained", "artifact": "art", "negatives": [{"path": "neg.txt", "format": "text"}]}))
    assert policy.detector.negatives[0].path == (tmp_path / "neg.txt").resolve()
    assert policy.detector.artifact == (tmp_path / "art").resolve()
    texts, _ = read_source(policy.detector.negatives[0], "detector.negatives.0")
    assert len(texts) == 2


def test_aliases_and_co_mentioned_entities() -> None:
    p0 = 'Shawn Corey Carter (born December 4, 1969), known by his stage name Jay-Z, is an American rapper.'
    assert stated_aliases("Jay-Z", [p0]) == ["Shawn Corey Carter"]
    assert "Prince Harry" in stated_aliases("Prince Harry, Duke of Sussex", ["Prince Harry, Duke of Sussex (born Henry Charles Albert David; 1984)"])
    docs = ["Zorblax Quenton made the Crimson Lantern. The Crimson Lantern is in the Vellmar Museum.",
            "Zorblax Quenton lives in Vellmar Museum district; Quenton loves the Crimson Lantern."]
    ents = co_mentioned(docs, ["Zorblax Quenton"])
    assert "Crimson Lantern" in ents and not any("Quenton" in e for e in ents)


def test_hash_halves_are_disjoint(tmp_path: Path) -> None:
    rows = [{"instruction": f"Write a short note number {i} about the weather."} for i in range(60)]
    (tmp_path / "f.json").write_text(json.dumps(rows))
    a = _texts(tmp_path, {"id": "a", "names": ["A B"], "forget_data": [{"path": "f.json", "format": "json_text", "field": "instruction", "half": "a"}]})
    b = _texts(tmp_path, {"id": "a", "names": ["A B"], "forget_data": [{"path": "f.json", "format": "json_text", "field": "instruction", "half": "b"}]})
    assert a.positives and b.positives and not set(a.positives) & set(b.positives)
    assert len(a.positives) + len(b.positives) == 60


def test_passage_focus_splits_on_and_off_target_sentences(tmp_path: Path) -> None:
    from classifiers.train import TrainConfig, _name_filter, prepare_target

    (tmp_path / "p.txt").write_text("Zorblax Quenton blows glass in Vellmar. He won the Golden Furnace prize in 1998. "
                                    "The Vellmar museum was founded in 1870 by the city council. Quenton later taught glass colouring to students.")
    policy = load_policy(_policy(tmp_path, {"id": "z", "names": ["Zorblax Quenton"], "forget_data": [{"path": "p.txt", "format": "text"}]}))
    cfg = TrainConfig(pos_holdout=0.0)
    td = prepare_target(policy.targets[0], 0, cfg, _name_filter(["Zorblax Quenton"]))
    assert "The Vellmar museum was founded in 1870 by the city council." in td.hard
    assert "He won the Golden Furnace prize in 1998." in td.exemplars
    cfg.passage_focus = "all"
    td = prepare_target(policy.targets[0], 0, cfg, _name_filter(["Zorblax Quenton"]))
    assert "The Vellmar museum was founded in 1870 by the city council." in td.exemplars
