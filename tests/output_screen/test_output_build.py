"""Building the screener from a policy: names from the policy, facts from the artifact (or mined from
the forget data), the trained detector as the semantic stage, and errors that name the field."""

from __future__ import annotations

import pytest
import yaml

from guard.errors import ConfigError
from guard.output_screen import SEMANTIC, build_output_screener
from guard.policy import load_policy, parse_policy
from tests.classifiers.conftest import ZORB, tiny_static, write_policy


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(policy, trained detector) of the two made-up people, semantic output screening on."""
    from classifiers.detector import TrainedDetector
    from classifiers.train import TrainConfig, train

    root = tmp_path_factory.mktemp("tiny-output")
    path = write_policy(root, ["zorb", "mirela"])
    data = yaml.safe_load(path.read_text())
    data["output"] = {"semantic": True, "holdback_tokens": 8}
    path.write_text(yaml.safe_dump(data))
    policy = load_policy(path)
    cfg = TrainConfig.from_policy(policy)
    cfg.static_embedder = tiny_static()
    return policy, TrainedDetector(train(policy, cfg))


def test_mined_facts_of_the_real_data(screener):
    # forget01: Basil Mahfouz Al-Kuwaiti's birth date (both readings of 08/09/1956) and his titles
    dates = screener.matcher._dates
    assert dates["1956-08-09"] == ["tofu-basil-mahfouz-al-kuwaiti"] and "1952-02-07" in dates
    assert screener.screen_text("I loved reading 'Promise by the Seine' last summer.").reason == "title"
    assert screener.screen_text("Who wrote Les Misérables? Victor Hugo did, in 1862.") is None
    assert screener.holdback_tokens == 16 and screener.fail_closed


def test_the_trained_detector_judges_answer_sentences(tiny):
    policy, detector = tiny
    screener = build_output_screener(policy, detector)
    assert screener.semantic is detector and screener.holdback_tokens == 8
    # a forget sentence that names no one (no name, date or title to match): the heads still know it
    nameless = ZORB[6]
    assert screener.matcher.matches(nameless) == []
    hit = screener.screen_text("Here is what I know. " + nameless)
    assert hit is not None and hit.reason == SEMANTIC and hit.target_id == "zorblax-quenton"
    assert hit.char_offset == len("Here is what I know.")
    assert screener.screen_text("The weather in Lisbon is mild in spring. Trams climb the hills.") is None


def test_semantic_screening_without_a_trained_detector_names_the_field():
    policy = parse_policy({"detector": {"kind": "keyword"}, "output": {"semantic": True},
                           "targets": [{"id": "a", "names": ["Ada Quill"]}]})
    with pytest.raises(ConfigError) as info:
        build_output_screener(policy, None)
    assert info.value.param == "output.semantic"


def test_a_policy_without_screened_targets_screens_nothing():
    policy = parse_policy({"output": {"screen": False}, "targets": [{"id": "a", "names": ["Ada Quill"]}]})
    screener = build_output_screener(policy)
    assert not screener.active and screener.screen_text("Ada Quill wrote it.") is None
