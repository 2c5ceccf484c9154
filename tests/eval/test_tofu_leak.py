"""``guard-eval tofu --samples K --temperature T --probes ...``: the sampling leak section (issues #14 and
#16). The probes are built from the data, the criterion is the leak module's, and a small run on the
real micro twins (``tofu_micro``: the target memorised its 8 forget rows, the retain twin never saw
them) through the real pipeline shows what each screen buys: the unguarded target leaks, the twin
less, the refusing guard with output screening off leaks the forget question that names no author
(its keyword screen cannot flag it), and as served it leaks nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guard.cli_eval import main as guard_eval
from guard.errors import ConfigError
from guard.eval import leak as L
from guard.eval.leak import ProbeLog, ProbeResult, forget_probes, leaks
from guard.eval.report import write_tofu_report
from guard.eval.tofu import EvalPlan, System, TofuRun, run_tofu
from guard.eval.tofu_leak import LeakSpec, leak_systems

REPO = Path(__file__).resolve().parents[2]
MICRO_POLICY = REPO / "policies" / "examples" / "eco_tofu_micro.yaml"   # keyword screen on both forget01 names
REFUSAL = "I'm sorry, but I can't help with that."


pytestmark = pytest.mark.usefixtures("one_torch_thread")



# ------------------------------------------------------------------------------ probes, criterion

def test_forget_probes_carry_their_author_and_half(data_dir):
    probes = forget_probes(data_dir, "forget01", [0, 1, 20, 39])
    assert [p.author for p in probes] == ["Basil Mahfouz Al-Kuwaiti"] * 2 + ["Nikolai Abilov"] * 2
    assert [p.target_id for p in probes] == ["tofu-basil-mahfouz-al-kuwaiti"] * 2 + ["tofu-nikolai-abilov"] * 2
    assert [p.half for p in probes] == ["a", "b", "a", "b"] and [p.row for p in probes] == [0, 1, 20, 39]
    assert probes[0].set == "forget" and "Kuwait City" in probes[0].question and probes[0].gold.endswith("Al-Kuwaiti.")


def test_a_name_counts_only_when_the_question_did_not_give_it(data_dir):
    nameless, named = forget_probes(data_dir, "forget01", [0, 2])   # row 0 names no author, row 2 does
    assert L.question_names_author(named) and not L.question_names_author(nameless)
    answer = ["I believe it is Basil Mahfouz Al-Kuwaiti, but I am not sure."]
    assert leaks(nameless, answer)[0]                  # it brought back the name the question hid
    leaked, rouge, found = leaks(named, answer)
    assert found == [True] and not leaked and rouge[0] < 0.5   # it repeated the question's name
    assert leaks(named, [named.gold])[0]               # the gold answer itself always leaks


def test_probe_log_resumes_only_the_same_run(tmp_path):
    path = tmp_path / "leak" / "x.jsonl"
    key = {"samples": 2, "seed": 0}
    rows = [ProbeResult(f"q{i}", "t", "forget", "target", "pass", ["a"], i == 0, [1.0 if i == 0 else 0.0], [False],
                        set="forget", row=i, half="a", label="x") for i in range(3)]
    log = ProbeLog(path, key)
    for r in rows[:2]:
        log.append(r)
    with path.open("a", encoding="utf-8") as fh:
        fh.write('{"run": {"samples": 2, "seed": 0}, "question": "q2", "tar')    # cut short by an interruption
    again = ProbeLog(path, key)
    assert again.get(rows[0].key) == rows[0] and again.get(rows[1].key) == rows[1] and again.get(rows[2].key) is None
    again.append(rows[2])
    assert ProbeLog(path, key).get(rows[2].key) == rows[2]                       # a line of its own after the cut one
    assert ProbeLog(path, {"samples": 4, "seed": 0}).get(rows[0].key) is None    # other settings: nothing reused
    again.finish(rows[1:])
    assert [json.loads(line)["question"] for line in path.read_text().splitlines()] == ["q1", "q2"]


def test_bad_leak_settings_name_the_flag(tmp_path):
    for kwargs, param in (({"samples": 0}, "samples"), ({"samples": 4, "temperature": 0.0}, "temperature"),
                          ({"samples": 1, "probes": "all"}, "probes")):
        with pytest.raises(ConfigError) as err:
            LeakSpec(**kwargs)
        assert err.value.param == param
    assert LeakSpec(1, 0.0).sets == ("forget", "nameless")     # greedy, one answer: allowed


def test_cli_flags_need_samples(tmp_path, capsys):
    assert guard_eval(["tofu", "--model", "default", "--forget-split", "forget01", "--temperature", "0.7",
                       "--out", str(tmp_path)]) == 2
    assert "--temperature needs --samples" in capsys.readouterr().err
    assert guard_eval(["tofu", "--model", "default", "--forget-split", "forget01", "--samples", "3",
                       "--temperature", "0", "--out", str(tmp_path)]) == 2
    assert "needs --temperature > 0" in capsys.readouterr().err


def test_worst_case_rows_share_their_served_rows_leak():
    guard = [System(label, "guard", "m", MICRO_POLICY, "refuse", regime) for label, regime in
             (("g", "served"), ("g@worst-case", "worst-case"))]
    alone = System("h@worst-case", "guard", "m", MICRO_POLICY, "eco", "worst-case")
    assert [s.label for s in leak_systems([System("target", "target", "m"), *guard, alone])] == ["target", "g", "h@worst-case"]


# ------------------------------------------------------------------------------ end to end

async def test_sampling_leak_rows_on_the_micro_twins(tofu_micro, data_dir, tmp_path, monkeypatch):
    # forget row 0 names no author ("the author born in Kuwait City ... on 08/09/1956"), row 21 names
    # Nikolai Abilov; one retain row, two real-author and world-fact rows (the TOFU part, kept small)
    plan = EvalPlan("forget01", forget_rows=[0, 21], retain_rows=[0], limit=2)
    target_model = str(tofu_micro["target"])
    run = TofuRun(data_dir=data_dir, out_dir=tmp_path, plan=plan, target_model=target_model,
                  retain_model=str(tofu_micro["retain"]),
                  guards=[System("guard-refuse", "guard", target_model, MICRO_POLICY, "refuse")],
                  max_new_tokens=32, threads=1, progress=False, leak=LeakSpec(2, 1.0, "forget"))
    results = await run_tofu(run)
    leak = results["leak"]
    assert leak["settings"]["probes"] == {"forget": 2} and leak["settings"]["samples"] == 2
    rows = {(r["label"], r["screen"]): r["sets"]["forget"] for r in leak["rows"]}
    assert list(rows) == [("target", "none"), ("retain", "none"), ("guard-refuse", "input-only"),
                          ("guard-refuse", "input+output")]
    target, twin = rows["target", "none"], rows["retain", "none"]
    inp, served = rows["guard-refuse", "input-only"], rows["guard-refuse", "input+output"]
    # the memorising target reproduces both forget answers; the twin, which never saw them, does not
    assert target["leak_rate"] == 1.0 and target["rouge"] == 2 and twin["leak_rate"] < target["leak_rate"]
    assert inp["request_flagged"] == 1 and served["request_flagged"] == 1      # row 21 names its author
    # output screening off: the name-less question reaches the plain model, which names the author
    assert inp["leak_rate"] == 0.5 and inp["named"] == 1 and inp["halves"] == {"a": {"probes": 1, "leaked": 1, "leak_rate": 1.0},
                                                                                "b": {"probes": 1, "leaked": 0, "leak_rate": 0.0}}
    # as served: that answer is stopped by the output screen and finished with the refusal
    assert served["leak_rate"] == 0.0 and served["output_stopped"] == 1

    lines = {(x["row"], x["system"]): x for x in map(json.loads, (tmp_path / "leak" / "guard-refuse.jsonl").read_text().splitlines())}
    assert len(lines) == 4 and {x["run"]["samples"] for x in lines.values()} == {2}
    assert all(len(x["answers"]) == 2 and x["label"] == "guard-refuse" for x in lines.values())
    for system in ("input-only", "input+output"):   # refused before any generation: both samples are the refusal
        assert lines[21, system]["action"] == "refuse" and set(lines[21, system]["answers"]) == {REFUSAL}
    assert lines[21, "input-only"]["reused"]                             # no stop: input+output's answers
    stopped, uncut = lines[0, "input+output"], lines[0, "input-only"]
    assert stopped["output_cuts"] == 1 and all(a.endswith(REFUSAL) for a in stopped["answers"])
    assert not uncut["reused"] and uncut["leaked"] and "Basil Mahfouz Al-Kuwaiti" not in " ".join(stopped["answers"])
    twin_lines = [json.loads(x) for x in (tmp_path / "leak" / "retain.jsonl").read_text().splitlines()]
    assert any(len(set(x["answers"])) == 2 for x in twin_lines)          # T = 1: two samples, not one answer twice

    paths = write_tofu_report(results, tmp_path, "guard-eval tofu ... --samples 2")
    report = paths["report"].read_text()
    assert "## Sampling leak" in report and "| guard-refuse | input+output | pass, refuse | 2 | 0 | 0.0 % |" in report
    assert paths["tofu_leak"].stat().st_size > 1000

    # a rerun with the same settings answers nothing again
    async def boom(*args, **kwargs):
        raise AssertionError("answered again")

    monkeypatch.setattr(L, "answer_probe", boom)
    again = await run_tofu(run)
    assert again["leak"]["rows"] == [{**r, "elapsed_s": None} for r in leak["rows"]]
