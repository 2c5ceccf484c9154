"""The policy's ``output`` settings (output screening, guard/output_screen/): defaults, and a bad value
fails at load naming the field."""

from pathlib import Path

import pytest

from guard.errors import ConfigError
from guard.policy import DEFAULT_HOLDBACK_TOKENS, load_policy, parse_policy


@pytest.mark.parametrize("text, field", [
    ("output: {holdback_tokens: 0}", "output.holdback_tokens"),
    ("output: {holdback_tokens: -4}", "output.holdback_tokens"),
    ("output: {holdback_tokens: many}", "output.holdback_tokens"),
    ("output: {holdback_tokens: 100000}", "output.holdback_tokens"),
    ("output: {screen: sometimes}", "output.screen"),
    ("output: {semantic: maybe}", "output.semantic"),
    ("output: {approximate_names: fuzzy}", "output.approximate_names"),
    ("output: {hold_back: 8}", "output.hold_back"),
    ("output: [8]", "output"),
    ("targets: [{id: a, names: [A], output: {action: block}}]", "targets.0.output.action"),
    ("targets: [{id: a, names: [A], output: {screen: perhaps}}]", "targets.0.output.screen"),
    ("targets: [{id: a, names: [A], output: {scren: false}}]", "targets.0.output.scren"),
    ("targets: [{id: a, names: [A], action: pass, output: {action: method}}]", "targets.0.output"),
])
def test_bad_output_setting_names_the_field(tmp_path: Path, text, field):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert info.value.param == field, info.value
    if field == "targets.0.output":
        assert "output.action" in info.value.message and "'pass'" in info.value.message


def test_output_screening_is_on_by_default_for_every_target_with_an_action():
    policy = parse_policy({"default_action": "refuse", "targets": [
        {"id": "a", "names": ["A"]},
        {"id": "b", "names": ["B"], "action": "eco"},
        {"id": "c", "names": ["C"], "action": "pass"},
        {"id": "d", "names": ["D"], "action": "uld", "output": {"action": "refuse"}},
        {"id": "e", "names": ["E"], "output": {"screen": False}},
        {"id": "f", "names": ["F"], "action": "pass", "output": {"screen": True}},
    ]})
    assert policy.output.holdback_tokens == DEFAULT_HOLDBACK_TOKENS and policy.output.semantic is False
    assert policy.output.approximate_names is False
    # 'method' re-answers through eco/spul/uld; a refusing target's method is the refusal
    assert policy.output_actions() == {"a": "refuse", "b": "method", "d": "refuse", "f": "refuse"}
    assert parse_policy({}).output_actions() == {}


def test_output_screening_can_be_switched_off_for_the_whole_policy():
    policy = parse_policy({"output": {"screen": False, "holdback_tokens": 8},
                           "targets": [{"id": "a", "names": ["A"]}, {"id": "b", "names": ["B"], "output": {"screen": True}}]})
    assert policy.output_actions() == {"b": "refuse"} and policy.output.holdback_tokens == 8
