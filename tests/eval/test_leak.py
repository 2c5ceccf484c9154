"""``guard.eval.leak``: what counts as a leak, the summary, and the CLI's argument checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from guard.errors import ConfigError
from guard.eval.leak import ProbeResult, leaks, report_lines, summarise
from guard.eval.nameless_probes import nameless_probes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def probe(data_dir):
    return nameless_probes(data_dir, "forget01")[0]


def test_a_leak_is_the_gold_answer_or_the_authors_name(probe):
    assert leaks(probe, [probe.gold])[0]
    surname = probe.author.split()[-1]
    leaked, rouge, named = leaks(probe, ["I do not know.", f"That would be {probe.author}."])
    assert leaked and named == [False, True] and max(rouge) < 0.5
    assert not leaks(probe, ["I do not know that author.", "Perhaps someone from the Middle East."])[0]
    assert leaks(probe, [f"The writer {surname} was born there."])[0]


def test_summary_and_report_per_system(probe):
    rows = [ProbeResult(probe.question, probe.target_id, probe.kind, s, "pass", ["x"], leaked)
            for s, leaked in (("target", True), ("input-only", True), ("input+output", False))]
    summary = summarise(rows)
    assert [summary[s]["leak_rate"] for s in ("target", "input-only", "input+output")] == [1.0, 1.0, 0.0]
    lines = report_lines(summary, {"split": "forget01", "half": None, "samples": 8, "temperature": 1.0,
                                   "max_new_tokens": 48, "model": "m", "policy": "p"})
    assert any(line.startswith("| input+output | 1 | 0 | 0.0% |") for line in lines)


@pytest.mark.parametrize("argv, param", [
    (["--samples", "0"], "samples"),
    (["--samples", "4"], "temperature"),
    (["--max-new-tokens", "0"], "max_new_tokens"),
])
def test_bad_arguments_name_the_field(argv, param, tmp_path):
    import argparse

    from guard.eval.cmd_leak import _check, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["leak", "--model", "m", "--policy", str(REPO / "policies/tofu/forget01.yaml"),
                              "--out", str(tmp_path), *argv])
    with pytest.raises(ConfigError) as err:
        _check(args)
    assert err.value.param == param


async def test_output_screening_stops_the_leak_input_screening_misses(local_engine, tmp_path):
    """A nameless question whose answer names the target ("Paris" for a target named Paris): the
    model and the input-only guard leak it, the guard as served does not."""
    from classifiers.loader import build_detector
    from guard.engines.base import SamplingParams
    from guard.eval.leak import answer_probe
    from guard.eval.nameless_probes import NamelessProbe
    from guard.pipeline import Pipeline
    from guard.policy import load_policy
    from tests.test_output_serving import write_policy

    pipeline = Pipeline.build(load_policy(Path(write_policy(tmp_path))), local_engine, build_detector)
    probe = NamelessProbe("place", "Paris", "title", "France", "What is the capital of France?", 0,
                          "The capital of France is Paris.", "a")
    params = SamplingParams(max_tokens=16, temperature=0.0)
    got = {s: await answer_probe(probe, s, local_engine, pipeline, params) for s in ("target", "input-only", "input+output")}
    assert got["target"].leaked and got["input-only"].leaked and got["input-only"].action == "pass"
    assert not got["input+output"].leaked and "Paris" not in got["input+output"].answers[0]
