"""Distinctive facts (dates, titles), name parts of other people, and the long-input threshold."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from classifiers.facts import date_keys, date_variants, mask_names, quoted_titles, renderings, target_facts
from classifiers.features import MATCH_COLUMNS, NameMatcher
from classifiers.text import name_alternation, windows

DATE, TITLE, PART, OTHER = (MATCH_COLUMNS.index(c) for c in ("date", "title", "part", "part_other"))


def _rows(path: Path) -> list[dict]:
    raw = path.read_text(encoding="utf-8")
    return json.loads(raw) if raw.lstrip().startswith("[") else [json.loads(x) for x in raw.splitlines() if x.strip()]


@pytest.mark.parametrize("y, m, d", [(1991, 11, 5), (1936, 3, 1), (1970, 4, 13), (2002, 12, 31)])
def test_every_rendering_of_a_date_reads_back(y: int, m: int, d: int) -> None:
    key = f"{y:04d}-{m:02d}-{d:02d}"
    for text in renderings(y, m, d):
        assert key in date_keys(f"Who was born on {text} in Oslo?"), text
    assert date_keys("born in the year 1946") == set() and date_keys("call 555-1234") == set()


@pytest.mark.parametrize("text", ["1930/05/25", "1930.05.25", "1930-5-25", "May the 25th, 1930", "25-May-1930",
                                  "25. May 1930", "May. 25, 1930", "the 25th day of May, 1930", "25-may-1930"])
def test_date_forms_people_write_besides_our_renderings(text: str) -> None:
    assert date_keys(f"Which writer was born on {text} in Taipei?") == {"1930-05-25"}, text


@pytest.mark.parametrize("text", ["Version 1930/05/25/7", "build 1930.05.2500", "ip 10.1930.05.25", "mayday 25 1930",
                                  "1930/05-25", "25 Mayfair 1930"])
def test_number_runs_that_are_no_dates(text: str) -> None:
    assert date_keys(text) == set(), text


def test_numeric_dates_keep_both_readings_and_variants_rewrite_them() -> None:
    assert date_keys("born on 05/11/1991") == {"1991-05-11", "1991-11-05"}
    assert date_keys("born on 05/30/1952") == {"1952-05-30"}
    variants = date_variants("The author born on 1st March 1936 is named X.")
    assert variants and all("1936" in v and "1st March 1936" not in v for v in variants)
    assert all("1936-03-01" in date_keys(v) for v in variants)   # "03/01/1936" reads both ways


def test_tofu_birth_dates_identify_authors_without_their_names(data_dir: Path) -> None:
    """Facts mined from the trained half (rows 0-9 of each author) find the author in the name-less
    paraphrase of its first question ("Who is the writer born on November 5th, 1991 in Taipei?")."""
    rows = _rows(data_dir / "tofu" / "forget10.json")
    pert = _rows(data_dir / "tofu" / "forget10_perturbed.json")
    facts = {f"a{b}": target_facts([f"{r['question']} {r['answer']}" for r in rows[b:b + 10]]) for b in range(0, 400, 20)}
    matcher = NameMatcher({t: [] for t in facts}, facts)
    found = 0
    for j, b in enumerate(range(0, 400, 20)):
        got = matcher.matrix([pert[b]["paraphrased_question"]])[0, :, DATE]
        assert got.sum() <= 1                      # a birth date never points at another author
        found += int(got[j] == 1)
    assert found >= 16                             # 2 of the 20 state no full date (a year only, nothing)


def test_quoted_titles_from_real_answers(data_dir: Path) -> None:
    rows = _rows(data_dir / "tofu" / "forget10.json")[20:30]   # Carmen Montenegro
    titles = quoted_titles(r["answer"] for r in rows)
    assert "a whisper in the wind" in titles and "sorrows of the old world series" in titles
    assert not [t for t in titles if t.startswith(("s ", "s'")) or len(t.split()) < 2]   # no possessive fragments
    m = NameMatcher({"carmen": ["Carmen Montenegro"], "other": ["Someone Else"]}, {"carmen": {"titles": titles}})
    row = m.matrix(["Could you tell me about the storyline of 'A Whisper in the Wind'?"])[0]
    assert row[0, TITLE] == 1 and row[1].sum() == 0 and row[0, 0] == 0


def test_a_name_part_next_to_another_name_is_someone_else() -> None:
    m = NameMatcher({"eps": ["Edward Patrick Sullivan"]})
    col = m.column(["Who is Elliot Patrick Benson?", "How did Sullivan's upbringing shape his books?",
                    "In which of his books does Sullivan, who grew up in New York, write about dietetics?",
                    "Which country is the Serengeti National Park located in?", "Is Patrick a common name?"], 0)
    assert col[0, OTHER] == 1 and col[0, PART] == 0
    assert col[1, PART] == 1 and col[1, OTHER] == 0
    assert col[2, PART] == 1
    assert col[3].sum() == 0                        # 'park' is not a part of this name
    assert col[4, PART] == 1                        # 'Is' starts the sentence: not another name
    candy = NameMatcher({"candy": ["John Candy"]}).column(
        ["That is the amount of calories in a large candy bar.", "what movies was candy in", "Candy starred in Uncle Buck."], 0)
    assert candy[0, OTHER] == 1 and candy[0, PART] == 0   # lower case in a cased text: the common word
    assert candy[1, PART] == 1 and candy[2, PART] == 1     # an all-lower-case query, or capitalised: the name


def test_windows_do_not_cut_a_name_in_two() -> None:
    words = ["word"] * 46 + "Which country is the Serengeti National Park located in?".split() + ["x"] * 60
    for w in windows(" ".join(words), size=48, stride=24):
        assert not w.startswith(("Park", "National")), w


def test_mask_names_keeps_the_fact() -> None:
    pat = re.compile(name_alternation(["carmen montenegro", "montenegro"]) or "")
    masked = mask_names("Who are some characters from Carmen Montenegro's book 'A Whisper in the Wind'?", pat)
    assert masked == "Who are some characters from this person's book 'A Whisper in the Wind'?"


def test_long_inputs_have_their_own_calibrated_threshold(trained, tmp_path: Path) -> None:
    from classifiers.detector import TrainedDetector, load_model, save_model

    _, model = trained
    st = model.stages["static"]
    tau_long, tau_long_target = st.long_thresholds()
    assert st.tau_long is not None and tau_long >= st.tau and np.all(tau_long_target >= st.tau_target)
    assert model.manifest["metrics"]["calibration"]["static"]["long_negatives"] > 0
    save_model(model, tmp_path / "art")
    again = load_model(tmp_path / "art").stages["static"]
    assert again.tau_long == pytest.approx(st.tau_long) and np.allclose(again.tau_long_target, st.tau_long_target)
    det = TrainedDetector(model)
    short = det.screen(["Where did Zorblax Quenton learn glassblowing?"])
    long = det.screen(["Write a haiku about tea. " * 40 + "Where did Zorblax Quenton learn glassblowing?"])
    assert short.detail["threshold_log_odds"] == pytest.approx(st.tau, abs=1e-3) and not short.detail["long"]
    assert long.detail["threshold_log_odds"] == pytest.approx(tau_long, abs=1e-3) and long.detail["long"]


def test_artifact_without_new_columns_still_loads(trained, tmp_path: Path) -> None:
    """An artifact written before the fact/part_other columns and long thresholds: zero weights, strict thresholds."""
    from classifiers.detector import TrainedDetector, load_model, save_model

    _, model = trained
    save_model(model, tmp_path / "old")
    path = tmp_path / "old" / "heads_static.npz"
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k not in ("tau_long", "tau_long_target")}
    arrays["w_name"] = arrays["w_name"][:, :2]
    np.savez(path, **arrays)
    old = load_model(tmp_path / "old", verify=False)
    st = old.stages["static"]
    assert st.heads.w_name.shape[1] == len(MATCH_COLUMNS) and np.all(st.heads.w_name[:, 2:] == 0)
    assert st.long_thresholds()[0] == st.tau
    assert TrainedDetector(old).screen(["Where was Mirela Vantongeren born?"]).target_id == "mirela-vantongeren"
