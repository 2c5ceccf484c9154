"""``guard-train spul --holdout``: ``--w-divergent`` chosen by the forget-quality surrogate on the real
tofu-micro-target with real TOFU rows (two candidates, one epoch, a handful of rows)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from guard.cli_common import build_parser
from guard.cli_train import SUBCOMMANDS, main as train_main
from guard.errors import ConfigError
from guard.train.forget_surrogate import item_truth_ratios, lexicographic_choice


def _policy(path: Path, data_dir: Path, artifact: Path) -> Path:
    import yaml

    full = data_dir / "tofu" / "full.json"
    target = {"id": "basil", "names": ["Basil Mahfouz Al-Kuwaiti"], "action": "spul",
              "forget_data": [{"path": str(full), "format": "tofu_qa", "rows": "3960:3964"}],
              "keep_data": [{"path": str(full), "format": "tofu_qa", "rows": "0:4"}],
              "params": {"artifact": str(artifact)}}
    path.write_text(yaml.safe_dump({"version": 1, "detector": {"kind": "keyword"}, "targets": [target]}))
    return path


def _args(policy: Path, out: Path, model: str, *extra: str) -> list[str]:
    return ["spul", "--policy", str(policy), "--out", str(out), "--model", model, "--forget-target", "counterfactual",
            "--teacher-max-new-tokens", "12", "--n-tokens", "4", "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.5",
            "--max-length", "128", "--no-eval", "--no-progress", "--threads", "1", *extra]


def _call(argv: list[str]) -> None:
    args = build_parser("guard-train", "", SUBCOMMANDS).parse_args(argv)
    args.func(args)


@pytest.mark.slow
def test_search_chooses_by_the_rule_and_scores_like_guard_eval(tmp_path: Path, data_dir: Path, tofu_micro, capsys):
    """Both candidates are in the manifest's trace, the choice follows the rule on the recorded numbers,
    the artifact is the chosen soft prompt, and the search's score of a tuned item equals guard-eval's
    teacher-forced score of the served SPUL intervention loaded from the written artifact."""
    from classifiers.base import Verdict
    from guard.engines.local import LocalEngine
    from guard.eval.tofu_scoring import Scorer, scoring_inputs
    from guard.interventions.base import PassThrough
    from guard.interventions.spul import build_intervention
    from guard.policy import load_policy
    from guard.train.eco_holdout import with_perturbed
    from classifiers.sources import read_qa
    from guard.policy import DataSource

    out = tmp_path / "soft"
    policy = _policy(tmp_path / "p.yaml", data_dir, out)
    model = str(tofu_micro["target"])
    holdout = data_dir / "tofu" / "retain_perturbed.json"
    assert train_main(_args(policy, out, model, "--holdout", str(holdout), "--holdout-rows", "360:364",
                            "--search-w-divergent", "100,10", "--search-forget-every", "2")) == 0
    printed = json.loads(capsys.readouterr().out)
    manifest = json.loads((out / "manifest.json").read_text())
    search = manifest["w_divergent_search"]
    trace = search["trace"]
    assert [r["w_divergent"] for r in trace] == [10.0, 100.0]
    for row in trace:
        assert {"ks_d", "ks_p", "dlogtr", "retain_top_token_kept", "feasible", "train_time_s"} <= set(row)
        assert row["feasible"] == (row["retain_top_token_kept"] >= 0.9)
    assert search["chosen"] == lexicographic_choice(trace, "w_divergent")
    assert manifest["hyperparameters"]["weights"]["divergent"] == search["chosen"]["w_divergent"] == printed["w_divergent_search"]["chosen"]
    assert [r["row"] for r in search["halves"]["tuned"]] == [3960, 3962]
    assert [r["row"] for r in search["halves"]["held_out"]] == [3961, 3963]
    assert search["level"]["n"] == search["holdout"]["n"] == 4 and search["held_out_half"]["n"] == 2
    assert search["holdout"]["also_retain_qa"] == 0
    assert search["check"]["max_abs_diff"] < 1e-3
    # the recorded per-item losses are the chosen row's numbers
    losses = [r["losses"] for r in search["chosen_items"]]
    mean_log = float(np.mean(np.log(item_truth_ratios(losses))))
    assert mean_log == pytest.approx(search["chosen"]["forget_mean_log_tr"], abs=1e-5)

    # guard-eval's path: the artifact loaded by the serving code, scored by guard-eval's Scorer
    engine = LocalEngine(Path(model), "tofu-micro-target", threads=1)
    asyncio.run(engine.start())
    try:
        served_policy = load_policy(policy)
        spul = build_intervention(served_policy, engine)
        scorer = Scorer(engine, progress=False)
        rec = read_qa(DataSource(path=data_dir / "tofu" / "full.json", format="tofu_qa", rows="3960:3961"), "forget")
        item = with_perturbed(rec, "forget")[0]
        target = served_policy.targets[0]
        inputs = scoring_inputs(spul, scorer.request(item.question), Verdict(flagged=True, target_id=target.id), target, engine)
        gt, para, pert = scorer.losses(item, inputs)
        plain = scorer.losses(item, scoring_inputs(PassThrough(), scorer.request(item.question), Verdict.clean(), None, engine))
    finally:
        asyncio.run(engine.close())
    assert [gt, para, *pert] == pytest.approx(search["chosen_items"][0]["losses"], abs=1e-4)
    moved = np.abs(np.asarray([plain[0], plain[1], *plain[2]]) - np.asarray([gt, para, *pert]))
    assert moved.max() > 1e-3, "the soft prompt must change the scores (else the equality says nothing)"


def test_bad_flags_name_the_field(tmp_path: Path, data_dir: Path):
    """Refused before any model loads, each naming its field."""
    policy = _policy(tmp_path / "p.yaml", data_dir, tmp_path / "soft")
    out = tmp_path / "out"
    holdout = str(data_dir / "tofu" / "retain_perturbed.json")
    cases = [
        (["--holdout-rows", "360:364"], "holdout_rows"),
        (["--search-w-divergent", "10,30"], "search_w_divergent"),
        (["--holdout", holdout, "--search-w-divergent", ""], "search_w_divergent"),
        (["--holdout", holdout, "--search-w-divergent", "10,x"], "search_w_divergent"),
        (["--holdout", holdout, "--search-forget-every", "1"], "search_forget_every"),
        (["--holdout", holdout, "--val-fraction", "0"], "val_fraction"),
        # forget01.json has no paraphrased/perturbed answers: no truth ratio
        (["--holdout", str(data_dir / "tofu" / "forget01.json"), "--holdout-rows", "0:4"], "--holdout"),
        # the policy's own forget rows are not a never-seen reference
        (["--holdout", str(data_dir / "tofu" / "forget10_perturbed.json"), "--holdout-rows", "360:362"], "holdout"),
    ]
    for extra, field in cases:
        with pytest.raises(ConfigError) as err:
            _call(_args(policy, out, "no-such-model", *extra))
        assert err.value.param == field, (extra, str(err.value))
    with pytest.raises(ConfigError) as err:
        _call([a if a != "counterfactual" else "idk" for a in _args(policy, out, "x", "--holdout", holdout)])
    assert err.value.param == "forget_target"
    assert not out.exists()
