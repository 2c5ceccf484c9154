from pathlib import Path

import pytest

from guard.errors import ConfigError
from guard.policy import load_policy

FIXTURES = Path(__file__).parent / "fixtures"


def test_fixture_policy_loads():
    policy = load_policy(FIXTURES / "refuse_keyword.yaml")
    assert policy.targets[0].all_names == ("Basil Mahfouz Al-Kuwaiti", "Basil Al-Kuwaiti")
    assert policy.action_for("tofu-basil") == "refuse" and policy.action_for(None) == "refuse"


@pytest.mark.parametrize("text, field", [
    ("targets: [{id: a, names: [A], action: forget}]", "targets.0.action"),
    ("targets: [{id: a, names: []}]", "targets.0.names"),
    ("targets: [{id: 'bad id!', names: [A]}]", "targets.0.id"),
    ("targets: [{id: a, names: [A]}, {id: a, names: [B]}]", "(top level)"),
    ("detector: {kind: trained}", "detector"),
    ("fail_mode: maybe", "fail_mode"),
    ("targets: [{id: a, names: [A], forget_data: [{path: x.json, rows: 'ten'}]}]", "targets.0.forget_data.0.rows"),
    ("detector: {budget_ms: 0}", "detector.budget_ms"),
    ("detector: {budget_ms: 1e9}", "detector.budget_ms"),
    ("detector: {max_screen_tokens: 0}", "detector.max_screen_tokens"),
    ("detector: {long_input: skip}", "detector.long_input"),
])
def test_bad_policy_names_the_field(tmp_path: Path, text, field):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert info.value.param == field, info.value


def test_screening_limits_have_measured_defaults():
    from guard.policy import parse_policy

    spec = parse_policy({}).detector
    assert 0 < spec.budget_ms <= 2000 and spec.max_screen_tokens >= 100_000 and spec.long_input == "fail"


def test_relative_data_paths_resolve_against_the_policy(tmp_path: Path):
    path = tmp_path / "sub" / "p.yaml"
    path.parent.mkdir()
    path.write_text("targets: [{id: a, names: [A], forget_data: [{path: ../data.json}]}]")
    assert load_policy(path).targets[0].forget_data[0].path == tmp_path / "data.json"


REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "policies").rglob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO / "policies")))
def test_shipped_policies_load_and_their_data_exists(path: Path):
    """Shipped policies name benchmark files relative to ``../shared/data`` beside the checkout; each
    must exist in the benchmark data in use (``$GUARD_DATA_DIR`` when the checkout is elsewhere)."""
    from guard.paths import default_data_dir

    policy = load_policy(path)
    assert policy.targets
    for target in policy.targets:
        for source in [*target.forget_data, *target.keep_data]:
            parts = source.path.parts
            at = next((k for k in range(len(parts) - 1) if parts[k:k + 2] == ("shared", "data")), None)
            assert at is not None, f"{path.name}: {target.id}: {source.path} is not under shared/data"
            inside = Path(*parts[at + 2:])
            assert (default_data_dir() / inside).exists(), f"{path.name}: {target.id}: {inside} is not in the benchmark data"
