"""Reading a policy's data sources (``classifiers.sources``), the one reader behind the detector's
training texts and the unlearning trainers: formats, row ranges (with a step), errors naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classifiers.benign_text import filler_text, long_benign_texts
from classifiers.sources import parse_rows, read_qa, read_records, read_texts, row_slice
from guard.data.tofu import parse_slice
from guard.errors import ConfigError
from guard.policy import DataSource


def test_row_ranges_are_python_slices_with_an_optional_step() -> None:
    assert list(parse_rows("0:6:2", 10)) == [0, 2, 4] and list(parse_rows("-2:", 5)) == [3, 4]
    assert list(parse_rows(None, 3)) == [0, 1, 2] and row_slice(None) is None
    assert parse_slice("3960:4000:2") == slice(3960, 4000, 2) == row_slice("3960:4000:2")


def test_qa_rows_keep_their_other_fields_and_errors_name_the_field(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}?", "answer": f"a{i}.", "paraphrased_answer": f"p{i}."} for i in range(5)]
    (tmp_path / "qa.json").write_text(json.dumps(rows))
    got = read_qa(DataSource(path=tmp_path / "qa.json", format="tofu_qa", rows="1:5:2"), "targets.0.forget_data.0")
    assert [(r.question, r.row, r.extra["paraphrased_answer"]) for r in got] == [("q1?", 1, "p1."), ("q3?", 3, "p3.")]
    with pytest.raises(ConfigError, match="select nothing") as err:
        read_qa(DataSource(path=tmp_path / "qa.json", format="tofu_qa", rows="10:20"), "targets.0.forget_data.0")
    assert err.value.param == "targets.0.forget_data.0.rows"
    with pytest.raises(ConfigError, match="SPUL trains on") as err:
        read_qa(DataSource(path=tmp_path / "qa.json", format="text"), "targets.1.keep_data.0", purpose="SPUL trains on QA")
    assert err.value.param == "targets.1.keep_data.0.format"
    with pytest.raises(ConfigError, match="does not exist") as err:
        read_qa(DataSource(path=tmp_path / "nope.json", format="tofu_qa"), "targets.0.forget_data.0")
    assert err.value.param == "targets.0.forget_data.0.path"
    (tmp_path / "bad.jsonl").write_text('{"question": "q?", "answer": "a."}\n{"question": 1, "answer": "b"}\n')
    with pytest.raises(ConfigError, match="must be a string") as err:
        read_qa(DataSource(path=tmp_path / "bad.jsonl", format="tofu_qa"), "p")
    assert err.value.param == "p.format"
    (tmp_path / "empty.jsonl").write_text("")
    assert read_qa(DataSource(path=tmp_path / "empty.jsonl", format="tofu_qa"), "p", allow_empty=True) == []


def test_document_rows_of_each_format(tmp_path: Path) -> None:
    (tmp_path / "doc.txt").write_text("First paragraph.\n\n\n\nSecond one.\n\nThird.")
    texts = read_texts(DataSource(path=tmp_path / "doc.txt", format="text", rows="1:"), "p")
    assert [(t.text.strip(), t.row) for t in texts] == [("Second one.", 1), ("Third.", 2)]
    (tmp_path / "passage.json").write_text(json.dumps([{"text": "One."}, {"text": "Two."}]))
    assert [t.text for t in read_texts(DataSource(path=tmp_path / "passage.json", format="rwku_passage"), "p")] == ["One.", "Two."]
    (tmp_path / "strings.json").write_text(json.dumps(["plain string row"]))
    got = read_texts(DataSource(path=tmp_path / "strings.json", format="json_text", field="body"), "p")
    assert [t.text for t in got] == ["plain string row"]
    with pytest.raises(ConfigError) as err:
        read_texts(DataSource(path=tmp_path / "passage.json", format="json_text"), "p")
    assert err.value.param == "p.field"
    with pytest.raises(ConfigError) as err:
        read_texts(DataSource(path=tmp_path / "passage.json", format="tofu_qa"), "p")
    assert err.value.param == "p.format"
    (tmp_path / "broken.json").write_text('[{"text": 1,')
    with pytest.raises(ConfigError, match="not valid JSON") as err:
        read_records(tmp_path / "broken.json", "p.path")
    assert err.value.param == "p.path"


def test_benign_text_is_deterministic_long_enough_and_made_of_the_pool() -> None:
    import random

    pool = ["a short benign sentence here.", "another harmless line of text.", "the weather was mild today."]
    texts = long_benign_texts(pool, 5, 40, random.Random(3))
    assert texts == long_benign_texts(pool, 5, 40, random.Random(3)) and len(texts) == 5
    assert all(len(t.split()) >= 40 for t in texts) and len(set(texts)) > 1
    assert set(" ".join(texts).split()) <= set(" ".join(pool).split())
    assert long_benign_texts([], 5, 40, random.Random(0)) == []
    assert len(filler_text(pool, 1, random.Random(0)).split()) <= 5
