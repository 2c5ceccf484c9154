"""``guard-eval tofu``'s regimes (``guard.eval.tofu_regime``): served (the detector decides) vs worst-case
(every retain / real-author / world-fact question through the method as if flagged), on the real
default model through the real pipeline (keyword detector; refuse and ECO), and their cache keys."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from guard.atomic import write_json
from guard.cli_eval import main as guard_eval
from guard.eval import tofu as T
from guard.eval.cmd_tofu import build_guards
from guard.eval.report import write_tofu_report
from guard.eval.tofu import EvalPlan, System, TofuRun, load_system, run_tofu, system_path
from guard.interventions.registry import available_actions

REFUSAL = "I'm sorry, but I can't share information about that."
TARGETS = ("tofu-basil", "tofu-nikolai")
UTILITY_SPLITS = ("retain", "real", "world")


def _policy(tmp: Path, name: str, action: str, params: dict | None = None) -> Path:
    targets = [{"id": "tofu-basil", "names": ["Basil Mahfouz Al-Kuwaiti"], "action": action},
               {"id": "tofu-nikolai", "names": ["Nikolai Abilov"], "action": action}]
    if params is not None:
        for t in targets:
            t["params"] = params
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "detector": {"kind": "keyword"}, "default_action": "refuse",
                                    "refusal_message": REFUSAL, "targets": targets}))
    return path


@pytest.fixture(scope="module")
def policies(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("policies")
    return {"refuse": _policy(tmp, "refuse", "refuse"),
            # entity: a question that names no target is corrupted on all its content
            "eco": _policy(tmp, "eco", "eco", {"corruption": "rand_noise_first_n", "sigma": 2.0, "select": "entity"}),
            # facts_only: nothing to corrupt in a question with neither the name nor a fact word
            "eco-facts": _policy(tmp, "eco-facts", "eco", {"corruption": "rand_noise_first_n", "sigma": 2.0,
                                                           "select": "facts_only", "facts": ["florist"]})}


def test_regimes_have_distinct_cache_keys_and_files(data_dir, tmp_path, policies):
    plan = EvalPlan("forget01", forget_rows=[1], retain_rows=[0, 1], limit=2)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    served = System("g", "guard", "default", policies["refuse"])
    worst = System("g@worst-case", "guard", "default", policies["refuse"], regime="worst-case")
    fps = [s.fingerprint(plan, 4, 0, data_dir, model_dir) for s in (served, worst)]
    assert "regime" not in fps[0]                      # served rows keep the fingerprint they had before regimes
    assert fps[1]["regime"] == "worst-case" and {k: v for k, v in fps[1].items() if k != "regime"} == fps[0]
    assert system_path(tmp_path, served) != system_path(tmp_path, worst)
    # a served file is not read back as a worst-case row, nor the other way round
    write_json(system_path(tmp_path, served), {"settings": fps[0], "items": {}})
    assert load_system(system_path(tmp_path, served), fps[0]) == {}
    assert load_system(system_path(tmp_path, served), fps[1]) is None


def _cli_args(**kw) -> argparse.Namespace:
    base = {"guard": [], "policy": None, "actions": None, "regime": "served"}
    return argparse.Namespace(**{**base, **kw})


def test_cli_builds_one_row_per_policy_and_regime(policies, tmp_path, capsys):
    guards = build_guards(_cli_args(guard=[f"r={policies['refuse']}"], policy=policies["refuse"], actions="refuse",
                                    regime="served,worst-case"), "default")
    assert [(g.label, g.regime, g.action_override) for g in guards] == [
        ("r", "served", None), ("r@worst-case", "worst-case", None),
        ("guard-refuse", "served", "refuse"), ("guard-refuse@worst-case", "worst-case", "refuse")]
    assert [g.label for g in build_guards(_cli_args(guard=[f"r={policies['refuse']}"], regime="worst-case"),
                                          "default")] == ["r@worst-case"]
    assert guard_eval(["tofu", "--model", "default", "--forget-split", "forget01", "--guard", str(policies["refuse"]),
                       "--regime", "worst", "--out", str(tmp_path)]) == 2
    assert "--regime 'worst'" in capsys.readouterr().err


async def test_worst_case_routes_every_utility_question_through_the_method(data_dir, tmp_path, policies, monkeypatch):
    # forget row 1 names Basil Mahfouz Al-Kuwaiti (flagged); the retain/real/world questions name neither author
    plan = EvalPlan("forget01", forget_rows=[1], retain_rows=[0, 1], limit=2)
    guards = [System("refuse", "guard", "default", policies["refuse"]),
              System("refuse@worst-case", "guard", "default", policies["refuse"], regime="worst-case")]
    has_eco = "eco" in available_actions()
    if has_eco:
        guards += [System("eco@worst-case", "guard", "default", policies["eco"], regime="worst-case"),
                   System("eco-facts@worst-case", "guard", "default", policies["eco-facts"], regime="worst-case")]
    run = TofuRun(data_dir=data_dir, out_dir=tmp_path, plan=plan, target_model="default", guards=guards,
                  max_new_tokens=4, threads=1, progress=False)
    results = await run_tofu(run)
    items = {s["label"]: json.loads((tmp_path / "systems" / f"{s['label']}.json").read_text())["items"]
             for s in results["systems"]}
    metrics = {s["label"]: s["metrics"] for s in results["systems"]}
    target, served, worst = items["target"], items["refuse"], items["refuse@worst-case"]

    for split in UTILITY_SPLITS:
        assert len(worst[split]) == 2
        # served: the detector flags none of them, so the plain model answers
        assert all(r["action"] == "pass" and not r["routed"] and not r["flagged"] for r in served[split])
        # worst case: every one goes to the method; the detector's verdict is kept, the targets taken in turn
        assert all(r["action"] == "refuse" and r["routed"] and not r["flagged"] for r in worst[split])
        assert [r["target"] for r in worst[split]] == list(TARGETS)
        assert all(r["generation"] == REFUSAL and r["gt_loss"] is None for r in worst[split])
        assert metrics["refuse@worst-case"][f"{split}_intervened_rate"] == 1.0
        assert metrics["refuse@worst-case"][f"{split}_routed_rate"] == 1.0
        assert metrics["refuse@worst-case"][f"{split}_flag_rate"] == 0.0
        assert metrics["refuse"][f"{split}_intervened_rate"] == 0.0
    # forget questions are decided as served, identically
    assert worst["forget"] == served["forget"] and served["forget"][0]["action"] == "refuse"
    # a refusal has no teacher-forced score: model utility is not measurable when everything is refused
    assert metrics["refuse"]["model_utility"] == metrics["target"]["model_utility"] is not None
    assert metrics["refuse@worst-case"]["model_utility"] is None
    regimes = {s["label"]: s["regime"] for s in results["systems"]}
    assert regimes["target"] is None and regimes["refuse"] == "served" and regimes["refuse@worst-case"] == "worst-case"

    if has_eco:
        for split in UTILITY_SPLITS:
            eco, facts = items["eco@worst-case"][split], items["eco-facts@worst-case"][split]
            assert all(r["action"] == "eco" and r["routed"] and r["gt_loss"] is not None for r in eco + facts)
            # entity with no name in the question corrupts all of it: every score moves
            for r, t in zip(eco, target[split]):
                assert r["gt_loss"] != pytest.approx(t["gt_loss"], abs=1e-3)
            # facts_only finds nothing to corrupt: the plain model's scores
            for r, t in zip(facts, target[split]):
                assert r["gt_loss"] == pytest.approx(t["gt_loss"], abs=1e-3)
                assert r["perturbed_losses"] == pytest.approx(t["perturbed_losses"], abs=1e-3)
        for key in ("retain_Q_A_Prob", "ra_Q_A_Prob_normalised", "wf_Q_A_Prob_normalised"):
            assert metrics["eco-facts@worst-case"][key] == pytest.approx(metrics["target"][key], rel=1e-3)
            assert metrics["eco@worst-case"][key] != pytest.approx(metrics["target"][key], rel=1e-3)

    report = write_tofu_report(results, tmp_path, "guard-eval tofu ...")["report"].read_text()
    assert "| refuse@worst-case | worst-case |" in report and "| refuse | served |" in report
    assert "retain via method" in report

    # a rerun reuses every row of both regimes
    async def boom(*args, **kwargs):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(T, "evaluate_system", boom)
    again = await run_tofu(run)
    assert [s["metrics"] for s in again["systems"]] == [s["metrics"] for s in results["systems"]]
