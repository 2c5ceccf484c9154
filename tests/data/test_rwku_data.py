"""RWKU loaders: targets come from the folder (real data and unseen synthetic targets), names with
commas and non-ASCII characters survive, selection and generated policies work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classifiers.loader import build_detector
from guard.data.rwku import (
    ALL_SETS, PROBE_SETS, UTILITY_SETS, discover_targets, load_target, policy_dict, rwku_dir, select_targets,
    target_id,
)
from guard.errors import ConfigError
from guard.policy import parse_policy


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False, indent=4), encoding="utf-8")


@pytest.fixture
def unseen(tmp_path: Path) -> Path:
    """Targets that are not in RWKU 1-100: odd names, one without intro.json, one with utility files."""
    root = tmp_path / "rwku"
    name = "Zoë Ångström, Jr."
    folder = root / "150_Zoë_Ångström,_Jr."
    _write(folder / "intro.json", [{"intro": f"Please forget {name}.", "target": name}])
    _write(folder / "forget_level1.json", [{"subject": name, "level": "1", "query": f"{name} was born in ___.",
                                            "answer": "Oslo", "type": "cloze"}] * 3)
    _write(folder / "forget_level2.json", [{"subject": name, "level": "2", "query": "Where?", "answer": "Oslo",
                                            "type": "simple question"}])
    _write(folder / "triviaqa.json", [{"subject": name, "question": "q?", "answers": ["a"]}])
    other = root / "7_Ada_Lovelace"  # no intro.json: the name comes from the probes' subject
    _write(other / "neighbor_level1.json", [{"subject": "Ada Lovelace", "neighbor": "Charles Babbage", "level": "1",
                                             "query": "Babbage built the ___ engine.", "answer": "Analytical"}])
    (root / "notes").mkdir()  # not a target folder
    (root / "README.txt").write_text("x")
    return tmp_path


def test_real_folder_is_discovered_not_listed(data_dir: Path):
    targets = discover_targets(data_dir)
    assert len(targets) == len([p for p in rwku_dir(data_dir).iterdir() if p.is_dir()])
    assert [t.number for t in targets] == sorted(t.number for t in targets)
    by_number = {t.number: t for t in targets}
    assert by_number[1].name == "Stephen King" and by_number[1].key == "1_Stephen_King"
    assert by_number[10].name == "Prince Harry, Duke of Sussex"
    assert by_number[24].name == "Beyoncé"
    assert set(by_number[1].sets) == set(ALL_SETS)                          # 1-10 ship utility files
    assert set(by_number[11].sets) == set(PROBE_SETS) | {"fluency"}         # others: probes + fluency
    assert by_number[10].intro.startswith("Please forget Prince Harry")
    fb = by_number[24].load("forget_fb", limit=2)
    assert len(fb) == 2 and fb[0]["subject"] == "Beyoncé" and "___" in fb[0]["query"]
    assert by_number[11].load("mmlu") == []


def test_unseen_targets_with_odd_names(unseen: Path):
    targets = discover_targets(unseen)            # DIR holding rwku/
    assert [t.key for t in targets] == ["7_Ada_Lovelace", "150_Zoë_Ångström,_Jr."]
    ada, zoe = targets
    assert ada.name == "Ada Lovelace" and ada.intro is None and ada.sets == ("neighbor_fb",)
    assert zoe.name == "Zoë Ångström, Jr." and zoe.number == 150
    assert zoe.sets == ("forget_fb", "forget_qa", "triviaqa") and zoe.has_utility
    assert len(zoe.load("forget_fb", limit=2)) == 2 and len(zoe.load("forget_fb")) == 3
    assert discover_targets(unseen / "rwku") == targets   # the rwku folder itself works too
    with pytest.raises(ConfigError, match="unknown RWKU set"):
        zoe.load("forget_everything")


def test_select_targets(unseen: Path, data_dir: Path):
    real = discover_targets(data_dir)
    keys = lambda spec: [t.key for t in select_targets(real, spec)]  # noqa: E731
    assert keys("1-3") == ["1_Stephen_King", "2_Confucius", "3_Bruce_Lee"]
    assert keys("1,4") == ["1_Stephen_King", "4_Warren_Buffett"]
    assert keys("beyonce;10_Prince_Harry,_Duke_of_Sussex") == ["24_Beyoncé", "10_Prince_Harry,_Duke_of_Sussex"]
    assert keys("Prince Harry, Duke of Sussex") == ["10_Prince_Harry,_Duke_of_Sussex"]
    assert len(select_targets(real, None)) == len(real) and len(select_targets(real, "all")) == len(real)
    with pytest.raises(ConfigError, match="no RWKU target matches"):
        select_targets(real, "Nobody Atall")
    fresh = discover_targets(unseen)
    assert [t.name for t in select_targets(fresh, "150")] == ["Zoë Ångström, Jr."]
    assert [t.name for t in select_targets(fresh, "zoe angstrom, jr.")] == ["Zoë Ångström, Jr."]


def test_missing_or_broken_data_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        discover_targets(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no RWKU target folders"):
        discover_targets(tmp_path / "empty")
    bad = tmp_path / "bad" / "1_X"
    bad.mkdir(parents=True)
    (bad / "forget_level1.json").write_text("[{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_target(bad)


def test_generated_policy_is_valid_and_flags_the_target(data_dir: Path, unseen: Path):
    targets = select_targets(discover_targets(data_dir), "10;24") + discover_targets(unseen)
    data = policy_dict(targets, action="refuse")
    policy = parse_policy(data)                     # validates ids, names, paths
    assert [t.id for t in policy.targets] == ["rwku-10-prince-harry-duke-of-sussex", "rwku-24-beyonce",
                                              "rwku-7-ada-lovelace", "rwku-150-zoe-angstrom-jr"]
    assert policy.targets[0].aliases == ("Prince Harry",)
    assert policy.targets[0].forget_data[0].format == "rwku_intro"
    assert policy.targets[2].forget_data == ()       # no intro.json for this one
    detector = build_detector(policy)
    assert detector.screen(["What is Beyonce's first solo album?"]).target_id == "rwku-24-beyonce"
    assert detector.screen(["Where does Prince Harry live?"]).target_id == "rwku-10-prince-harry-duke-of-sussex"
    assert not detector.screen(["Who wrote Carrie?"]).flagged
    assert target_id(targets[-1]) == "rwku-150-zoe-angstrom-jr"
    assert set(UTILITY_SETS) == {"mmlu", "bbh", "truthfulqa", "triviaqa", "fluency"}
