"""The trainers' shared steps (``guard.train.method_data``): which targets, the held-out split, the
``--retain`` override; each method states its own minimum for splitting."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from guard.errors import ConfigError
from guard.policy import load_policy
from guard.train.method_data import (forget_sources, holdout_split, keep_sources, retain_override, select_targets,
                                     with_forget_data)


def _policy(tmp_path: Path) -> object:
    (tmp_path / "qa.jsonl").write_text('{"question": "q?", "answer": "a."}\n')
    src = [{"path": "qa.jsonl", "format": "tofu_qa"}]
    policy = {"version": 1, "default_action": "refuse", "targets": [
        {"id": "a", "names": ["Alpha One"], "action": "uld", "forget_data": src, "keep_data": src},
        {"id": "b", "names": ["Beta Two"], "action": "eco", "forget_data": src},
        {"id": "c", "names": ["Gamma Three"]},
    ]}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(policy))
    return load_policy(path)


def test_target_choice(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    ids = lambda chosen: [t.id for _, t in chosen]  # noqa: E731
    assert ids(select_targets(policy, ["c", "a"])) == ["a", "c"]
    assert ids(select_targets(policy, None, action="uld")) == ["a"]
    assert ids(select_targets(policy, None, action="spul")) == ["a", "b", "c"]  # none has it: every target
    assert ids(select_targets(policy, None)) == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="not in the policy") as err:
        select_targets(policy, ["nobody"])
    assert err.value.param == "target"
    with pytest.raises(ConfigError, match="action spul") as err:
        select_targets(policy, None, action="spul", require_action=True)
    assert err.value.param == "targets"
    assert ids(with_forget_data(select_targets(policy, None), "none")) == ["a", "b"]
    with pytest.raises(ConfigError, match="needs forget data"):
        with_forget_data(select_targets(policy, ["c"]), "needs forget data")
    chosen = select_targets(policy, None)
    assert [r.param for r in forget_sources(chosen)] == ["targets.0.forget_data.0", "targets.1.forget_data.0"]
    assert [(r.param, r.target_id) for r in keep_sources(chosen)] == [("targets.0.keep_data.0", "a")]


def test_holdout_split_holds_out_a_share_but_never_everything() -> None:
    train, held = holdout_split(range(10), 0.2, random.Random(0), min_items=2)
    assert len(held) == 2 and sorted(train + held) == list(range(10))
    assert len(holdout_split(range(10), 0.01, random.Random(0), min_items=2)[1]) == 1   # at least one
    assert len(holdout_split(range(2), 0.9, random.Random(0), min_items=2)[0]) == 1     # never all
    assert holdout_split(range(3), 0.5, random.Random(0), min_items=4)[1] == []         # too few for this method
    assert holdout_split(range(3), 0.0, random.Random(0), min_items=1)[1] == []
    # the same seed, the same split
    assert holdout_split(range(20), 0.3, random.Random(5), min_items=2) == holdout_split(range(20), 0.3, random.Random(5), min_items=2)


def test_retain_override(tmp_path: Path) -> None:
    assert retain_override(None, None) is None
    refs = retain_override(tmp_path / "r.jsonl", "0:10")
    assert refs and refs[0].param == "--retain" and refs[0].source.rows == "0:10" and refs[0].source.format == "tofu_qa"
    with pytest.raises(ConfigError) as err:
        retain_override(None, "0:10")
    assert err.value.param == "retain_rows"
    with pytest.raises(ConfigError) as err:
        retain_override(tmp_path / "r.jsonl", "a:b")
    assert err.value.param == "retain_rows"
