"""``guard-train eco --holdout``: the grid search on the forget-quality surrogate, end to end on the TOFU
micro target: it scores what ``guard-eval tofu`` scores (the served ECO, ``answer_names`` included),
chooses by the rule, writes an artifact the guard serves as its default, and never opens the retain twin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from classifiers.sources import read_qa
from guard.cli_train import main as guard_train
from guard.errors import ConfigError
from guard.policy import DataSource
from guard.train.forget_surrogate import lexicographic_choice

MICRO = "tofu-micro-target"
BASIL = "Basil Mahfouz Al-Kuwaiti"
FACTS = ["al-kuwaiti", "basil", "florist", "kuwait", "mahfouz"]


def _policy(path: Path, data_dir: Path, *, forget: str = "forget01_perturbed.json", rows: str = "0:4",
            keep_rows: str | None = "40:42", params: dict | None = None) -> Path:
    tofu = data_dir / "tofu"
    target = {"id": "tofu-basil", "names": [BASIL], "aliases": ["Al-Kuwaiti"], "action": "eco",
              "forget_data": [{"path": str(tofu / forget), "format": "tofu_qa", "rows": rows}],
              "params": params or {"artifact": str(path.parent / "not-yet-written"), "select": "facts_only", "facts": FACTS,
                                   "answer_names": True}}
    if keep_rows:
        target["keep_data"] = [{"path": str(tofu / "retain_perturbed.json"), "format": "tofu_qa", "rows": keep_rows}]
    path.write_text(yaml.safe_dump({"version": 1, "detector": {"kind": "keyword"}, "targets": [target]}))
    return path


GRID = ["--sigmas", "0,0.3,1.2", "--ks", "576", "--corruptions", "rand_noise_first_n,flip_sign_top_k"]


@pytest.fixture(scope="module")
def micro_search(tofu_micro, data_dir, tmp_path_factory):
    """The search on the micro target (2 tuned + 2 held-out forget QA, 4 holdout QA, 2 keep QA, 4 grid points),
    with every model load recorded."""
    import transformers

    import guard.models

    tmp = tmp_path_factory.mktemp("eco-holdout")
    policy = _policy(tmp / "policy.yaml", data_dir)
    out = tmp / "artifact"
    loaded: list[str] = []
    resolved: list[str] = []
    real_load = transformers.AutoModelForCausalLM.from_pretrained
    real_resolve = guard.models.resolve_model

    def load(path, *args, **kwargs):
        loaded.append(str(path))
        return real_load(path, *args, **kwargs)

    def resolve(name):
        resolved.append(name)
        return real_resolve(name)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transformers.AutoModelForCausalLM, "from_pretrained", load)
        mp.setattr(guard.models, "resolve_model", resolve)
        rc = guard_train(["eco", "--policy", str(policy), "--model", MICRO, "--out", str(out), "--quiet",
                          "--holdout", str(data_dir / "tofu" / "retain_perturbed.json"), "--holdout-rows", "360:364", *GRID,
                          "--report-answers", "1", "--max-new-tokens", "8"])
    assert rc == 0
    return policy, out, json.loads((out / "manifest.json").read_text()), loaded, resolved


@pytest.mark.slow
def test_search_chooses_by_the_rule_and_records_its_trace(micro_search):
    _, out, manifest, _, _ = micro_search
    search = manifest["search"]
    trace = search["trace"]
    assert [(r["corruption"], r["sigma"], r["k"]) for r in trace] == [
        ("rand_noise_first_n", 0.0, None), ("rand_noise_first_n", 0.3, None), ("rand_noise_first_n", 1.2, None),
        ("flip_sign_top_k", None, 576)]
    for row in trace:
        assert {"strength", "ks_d", "ks_p", "forget_mean_log_tr", "keep_top_token_kept", "keep_nll_rise", "feasible"} <= set(row)
    # the rule, on the trace: no feasible point has a smaller KS statistic, nor an equal one at a smaller strength
    chosen = search["chosen"]
    assert chosen == lexicographic_choice(trace, "strength") and chosen["feasible"]
    for row in trace:
        if row["feasible"]:
            assert (round(row["ks_d"], 9), row["strength"]) >= (round(chosen["ks_d"], 9), chosen["strength"])
    # strength: sigma 0 is the clean model (nothing changes, the keep answers are untouched), noise grows with sigma,
    # flipping every sign of a row is a change of twice its norm
    clean = trace[0]
    assert clean["strength"] == 0 and clean["keep_top_token_kept"] == 1.0 and clean["keep_nll_rise"] == 0
    assert 0 < trace[1]["strength"] < trace[2]["strength"]
    assert trace[3]["strength"] == pytest.approx(2.0, abs=1e-4)
    assert trace[2]["ks_d"] != clean["ks_d"] or trace[2]["forget_mean_log_tr"] != clean["forget_mean_log_tr"]
    # the target memorised its forget answers: greedy decoding reproduces more of them than of never-seen ones
    assert all(0 <= r["forget_gold_top1"] <= 1 for r in trace)
    assert clean["forget_gold_top1"] > search["level"]["gold_top1"]
    # the halves, the holdout and the keep questions are recorded; the held-out half is reported at the choice
    assert [r["row"] for r in search["halves"]["tuned"]] == [0, 2] and [r["row"] for r in search["halves"]["held_out"]] == [1, 3]
    assert search["holdout"]["n"] == 4 and len(search["keep_items"]) == 2 and search["held_out_half"]["n"] == 2
    assert manifest["chosen"] == {"corruption": chosen["corruption"], "sigma": chosen["sigma"], "k": chosen["k"],
                                  "select": "facts_only", "answer_names": True}
    assert manifest["searched_with"]["tofu-basil"]["facts"] == FACTS
    answers = search["answers"]  # --report-answers: greedy answers at the choice, and the clean model's on holdout QA
    assert len(answers["forget"]) == 1 and len(answers["holdout_clean"]) == 1 and answers["max_new_tokens"] == 8
    assert 0 <= answers["forget_rougeL_recall"] <= 1 and answers["forget"][0]["answer"]
    assert search["check"]["max_abs_diff"] < 1e-4  # the search's forward shortcut = guard-eval's scorer
    assert not list(out.parent.glob(".artifact*"))  # written atomically


@pytest.mark.slow
def test_search_never_opens_the_retain_twin(micro_search, tofu_micro, tmp_path, capsys):
    _, _, manifest, loaded, resolved = micro_search
    target_dir = str(Path(tofu_micro["target"]))
    assert loaded and all(Path(p).resolve() == Path(target_dir).resolve() for p in loaded)
    assert resolved == [MICRO] and manifest["objective"]["retain_twin"] == "never read"
    with pytest.raises(SystemExit) as exit_info:  # the option is gone: argparse refuses it
        guard_train(["eco", "--policy", "p.yaml", "--out", str(tmp_path / "o"), "--retain-model", "tofu-micro-retain"])
    assert exit_info.value.code == 2 and "--retain-model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def micro_engine(tofu_micro):
    import asyncio

    from guard.engines.local import LocalEngine

    engine = LocalEngine(tofu_micro["target"], MICRO)
    asyncio.run(engine.start())
    yield engine
    asyncio.run(engine.close())


@pytest.mark.slow
def test_artifact_is_the_served_default_and_the_search_scores_what_is_served(micro_search, micro_engine, data_dir, tmp_path):
    """The manifest loads back as the served ECO's defaults, and a tuned item's truth ratio in the trace is the
    one ``guard-eval tofu``'s scorer gives through the guard built from the artifact."""
    from classifiers.base import Verdict
    from guard.eval.tofu_scoring import Scorer, scoring_inputs
    from guard.interventions.eco import build_intervention, parse_params
    from guard.policy import load_policy
    from guard.train.forget_surrogate import item_truth_ratios, truth_ratio_items

    _, out, manifest, _, _ = micro_search
    chosen = manifest["chosen"]
    engine = micro_engine
    config = parse_params({"artifact": str(out), "facts": FACTS}, engine=engine, hidden=engine.hidden_size)
    assert (config.corruption, config.sigma, config.k, config.select, config.answer_names) == (
        chosen["corruption"], chosen["sigma"], chosen["k"], "facts_only", True)
    serve = _policy(tmp_path / "serve.yaml", data_dir, params={"artifact": str(out), "facts": FACTS})
    policy = load_policy(serve)
    eco = build_intervention(policy, engine)
    scorer = Scorer(engine, seed=0, progress=False)
    item = truth_ratio_items(read_qa(DataSource(path=data_dir / "tofu" / "forget01_perturbed.json", format="tofu_qa",
                                                rows="0:1"), "forget_data"), "forget_data")[0]
    request = scorer.request(item.question)
    gt, para, pert = scorer.losses(item, scoring_inputs(eco, request, Verdict(flagged=True, target_id="tofu-basil"),
                                                        policy.targets[0], engine))
    recorded = manifest["search"]["chosen_items"][0]
    assert recorded["row"] == 0
    assert recorded["gold_nll"] == pytest.approx(gt, abs=1e-5)
    assert recorded["truth_ratio"] == pytest.approx(float(item_truth_ratios([[gt, para, *pert]])[0]), rel=1e-5)


@pytest.mark.slow
def test_answer_names_reach_the_search_scores(micro_engine, data_dir, tmp_path):
    """The search's scorer reads the target's name in each candidate answer corrupted when the policy says
    answer_names (the gold answer of row 0 names the target; its question does not), as the eval does."""
    from guard.policy import load_policy
    from guard.train.eco_served_scoring import ServedScoring
    from guard.train.forget_surrogate import truth_ratio_items

    engine = micro_engine
    item = truth_ratio_items(read_qa(DataSource(path=data_dir / "tofu" / "forget01_perturbed.json", format="tofu_qa",
                                                rows="0:1"), "forget_data"), "forget_data")[0]
    assert BASIL in item.answer and BASIL not in item.question
    point = {"corruption": "rand_noise_first_n", "sigma": 1.0, "k": None}
    scores = {}
    for names in (True, False):
        params = {"select": "facts_only", "facts": ["florist"], "answer_names": names}
        scoring = ServedScoring(engine, load_policy(_policy(tmp_path / f"{names}.yaml", data_dir, params=params)),
                                ["tofu-basil"], seed=0)
        scores[names], inputs, _ = scoring.losses(scoring.intervention(point), item, "tofu-basil")
        # the question names neither the target nor a fact word: facts_only leaves the prompt clean
        assert torch.equal(inputs.prompt_embeds, scoring.clean_prompt(item.question))
    assert scores[False] == pytest.approx(ServedScoring(engine, load_policy(tmp_path / "False.yaml"), ["tofu-basil"], 0)
                                          .losses(None, item, None)[0], abs=1e-6)
    assert abs(scores[True][0] - scores[False][0]) > 1e-3  # the corrupted name changes the gold answer's score
    # the gold answer's top-1 agreement is that of an independent full forward (gold_scan)
    clean = ServedScoring(engine, load_policy(tmp_path / "False.yaml"), ["tofu-basil"], 0)
    values, inputs, top1 = clean.losses(None, item, None)
    nll, top, changed = clean.gold_scan(inputs, item.question, item.answer)
    ids = clean.scorer.answer_ids(item.question, item.answer)
    assert not changed and nll == pytest.approx(values[0], abs=1e-5)
    assert top1 == pytest.approx(float(np.mean(top == np.asarray(ids))))


def test_forget_rows_without_perturbed_answers_take_them_from_tofu(data_dir):
    """full.json / forget01.json rows get their paraphrased and perturbed answers from the *_perturbed split."""
    from guard.train.eco_holdout import with_perturbed

    tofu = data_dir / "tofu"
    want = with_perturbed(read_qa(DataSource(path=tofu / "forget01_perturbed.json", format="tofu_qa", rows="0:3"), "f"), "f")
    for name, rows in (("full.json", "3960:3963"), ("forget01.json", "0:3")):
        got = with_perturbed(read_qa(DataSource(path=tofu / name, format="tofu_qa", rows=rows), "f"), "f")
        assert [(g.question, g.answer, g.paraphrased, g.perturbed) for g in got] == \
               [(w.question, w.answer, w.paraphrased, w.perturbed) for w in want]
    with pytest.raises(ConfigError, match="perturbed_answer") as err:  # full.json rows 400-3599 have none
        with_perturbed(read_qa(DataSource(path=tofu / "full.json", format="tofu_qa", rows="500:501"), "targets.0.forget_data.0"),
                       "targets.0.forget_data.0")
    assert err.value.param == "targets.0.forget_data.0"


def test_input_errors_are_reported_before_a_model_loads(data_dir, tmp_path, capsys):
    holdout = ["--holdout", str(data_dir / "tofu" / "retain_perturbed.json"), "--holdout-rows", "360:362"]
    policy = _policy(tmp_path / "p.yaml", data_dir)
    for extra, needle in ((["--corruptions", "blur"], "blur"), (["--sigmas", "0,-1"], "--sigmas"),
                          (["--search-forget-every", "1"], "--search-forget-every")):
        assert guard_train(["eco", "--policy", str(policy), "--out", str(tmp_path / "o"), *holdout, *extra]) == 2
        assert needle in capsys.readouterr().err
    # a never-seen reference that holds the policy's forget questions is refused
    same = ["--holdout", str(data_dir / "tofu" / "forget01_perturbed.json"), "--holdout-rows", "0:6"]
    assert guard_train(["eco", "--policy", str(policy), "--out", str(tmp_path / "o"), *same]) == 2
    assert "forget questions" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_relative_change_is_the_size_of_the_corruption():
    from guard.interventions.corruption import get_corruption
    from guard.train.eco_served_scoring import relative_change

    g = torch.Generator().manual_seed(0)
    clean = torch.randn(6, 64, generator=g) * 0.1
    mask = torch.tensor([False, True, True, False, True, False])
    noisy = get_corruption("rand_noise_first_n")(clean, mask, sigma=0.2, k=None, generator=torch.Generator().manual_seed(1))
    flipped = get_corruption("flip_sign_top_k")(clean, mask, sigma=None, k=64, generator=None)
    assert relative_change([(clean, clean)]) == 0
    assert relative_change([(flipped, clean)]) == pytest.approx(2.0)
    assert relative_change([(noisy, clean)]) == pytest.approx(2.0, rel=0.15)  # sigma / RMS of the rows
    assert np.isfinite(relative_change([(noisy, clean), (clean, clean)]))
