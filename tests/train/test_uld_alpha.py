"""``guard-train uld``'s alpha search: the closed-form ULD score against the served scoring path,
the surrogate's choice rule, and the search end to end in the trainer's manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from classifiers.sources import read_qa
from guard.cli_train import main as train_main
from guard.errors import ConfigError
from guard.policy import DataSource
from guard.train.forget_surrogate import Level, lexicographic_choice, surrogate, truth_ratio_items


@pytest.fixture(scope="module")
def micro_uld(tofu_micro):
    """tofu-micro-target, its tokenizer and a 2-layer assistant with a random (untrained) LoRA, merged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from guard.interventions.uld_decoding import AssistantRuntime
    from guard.train.uld_assistant import attach_lora, load_base_assistant, lora_config

    model_dir = Path(tofu_micro["target"])
    target = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    peft = attach_lora(load_base_assistant(model_dir, 2), lora_config(r=4, lora_alpha=8, lora_dropout=0.0, random_init=True),
                       seed=7)
    return target, AutoTokenizer.from_pretrained(str(model_dir)), AssistantRuntime(peft.merge_and_unload().eval())


def forget_item(data_dir: Path, row: int):
    src = DataSource(path=data_dir / "tofu" / "forget01_perturbed.json", format="tofu_qa", rows=f"{row}:{row + 1}")
    return truth_ratio_items(read_qa(src, "forget_data"), "forget_data")[0]


@pytest.mark.parametrize("alpha,ratio", [(0.0, 0.0), (0.45, 0.0), (0.8, 0.0), (2.0, 0.0), (0.8, 0.05)])
def test_closed_form_equals_served_scoring(micro_uld, data_dir: Path, alpha: float, ratio: float):
    """Every answer's per-token NLL from the cache equals ``answer_nll`` with the served ``scoring_transform``."""
    from guard.interventions.scoring import answer_nll
    from guard.interventions.uld_decoding import ULDSettings, scoring_transform
    from guard.lm.chat_format import encode_prompt, encode_qa
    from guard.lm.nll import label_positions
    from guard.train.uld_alpha import cache_answers, uld_token_nll

    target, tok, runtime = micro_uld
    item = forget_item(data_dir, 1)
    cached = cache_answers(target, runtime, tok, item, top_k=12)
    assert len(cached) == 2 + len(item.perturbed) == 7
    with torch.no_grad():
        prompt = target.get_input_embeddings()(torch.tensor([encode_prompt(tok, item.question)]))[0]
    transform = scoring_transform(runtime, ULDSettings(alpha=alpha, top_k=12, min_prob_ratio=ratio))
    moved = []
    for answer, cache in zip(item.answers, cached):
        ids = label_positions(encode_qa(tok, item.question, answer, 100_000)["labels"].tolist())
        served = np.asarray(answer_nll(target, prompt, ids, transform))
        plain = np.asarray(answer_nll(target, prompt, ids))
        mine = uld_token_nll(cache, alpha, ratio)
        assert mine.shape == served.shape
        np.testing.assert_allclose(mine, served, atol=2e-4, rtol=1e-4)
        moved.append(float(np.abs(served - plain).max()))
    if alpha == 0.0:
        assert max(moved) < 1e-4  # alpha 0 is the plain target
    else:
        assert max(moved) > 0.05  # the assistant changes the scores: the comparison above is not vacuous


def test_top_token_kept_matches_served_greedy_choice(micro_uld, data_dir: Path):
    """``top_token_kept`` says whether ULD's greedy token (the served ``uld_full_scores``) is the target's top token."""
    from guard.interventions.uld_decoding import ULDSettings, uld_full_scores
    from guard.lm.chat_format import encode_qa
    from guard.lm.nll import label_positions
    from guard.train.uld_alpha import cache_answers, top_token_kept

    target, tok, runtime = micro_uld
    item = forget_item(data_dir, 2)
    cache = cache_answers(target, runtime, tok, item, top_k=12)[0]
    enc = encode_qa(tok, item.question, item.answer, 100_000)
    n = len(label_positions(enc["labels"].tolist()))
    ids = enc["input_ids"][None]
    with torch.no_grad():
        logits = target(input_ids=ids).logits[0]
        hidden = runtime.decoder(input_ids=ids).last_hidden_state[0].float()
    start = ids.shape[1] - n
    for alpha in (0.0, 1.0, 3.0):
        scores = uld_full_scores(logits[start - 1: start - 1 + n], hidden[start - 1: start - 1 + n], runtime,
                                 ULDSettings(alpha=alpha, top_k=12))
        served_kept = (scores.argmax(-1) == logits[start - 1: start - 1 + n].argmax(-1)).numpy()
        np.testing.assert_array_equal(top_token_kept(cache, alpha), served_kept)
        if alpha == 0.0:
            assert served_kept.all()
    assert not top_token_kept(cache, 3.0).all()  # a large alpha changes some greedy token


def test_surrogate_and_lexicographic_rule():
    level = Level(np.array([0.8, 1.0, 1.2, 1.5]), 3.0)
    same = surrogate(np.array([0.8, 1.0, 1.2, 1.5]), level)
    assert same["ks_d"] == 0 and same["J"] == pytest.approx(0) and same["ks_p"] == pytest.approx(1)
    low = surrogate(np.array([0.1, 0.2, 0.3, 0.4]), level)
    assert low["ks_d"] == 1 and low["dlogtr"] > 1
    rows = [{"alpha": 0.2, "ks_d": 0.5, "feasible": True}, {"alpha": 0.5, "ks_d": 0.25, "feasible": True},
            {"alpha": 0.45, "ks_d": 0.25, "feasible": True}, {"alpha": 0.6, "ks_d": 0.1, "feasible": False}]
    assert lexicographic_choice(rows, "alpha")["alpha"] == 0.45  # the infeasible best is skipped; ties -> least alpha
    assert lexicographic_choice([dict(r, feasible=False) for r in rows], "alpha")["alpha"] == 0.6


def test_holdout_rows_need_perturbed_answers(data_dir: Path):
    src = DataSource(path=data_dir / "tofu" / "forget01.json", format="tofu_qa", rows="0:2")
    with pytest.raises(ConfigError, match="perturbed_answer") as err:
        truth_ratio_items(read_qa(src, "--holdout"), "--holdout")
    assert err.value.param == "--holdout"


def search_policy(path: Path, data_dir: Path, keep_rows: str) -> Path:
    import yaml

    tofu = data_dir / "tofu"
    target = {"id": "tofu-basil", "names": ["Basil Mahfouz Al-Kuwaiti"], "action": "uld",
              "forget_data": [{"path": str(tofu / "forget01_perturbed.json"), "format": "tofu_qa", "rows": "0:4"}],
              "keep_data": [{"path": str(tofu / "retain_perturbed.json"), "format": "tofu_qa", "rows": keep_rows}],
              "params": {"artifact": str(path.parent / "artifact")}}
    path.write_text(yaml.safe_dump({"version": 1, "detector": {"kind": "keyword"}, "targets": [target]}))
    return path


@pytest.mark.slow
def test_guard_train_uld_chooses_alpha(tmp_path: Path, data_dir: Path, capsys):
    """``--holdout``: the manifest's decoding.alpha is the search's choice, with its trace; a holdout
    the assistant trained on is refused."""
    out = tmp_path / "artifact"
    common = ["--layers", "1", "--epochs", "1", "--batch-size", "4", "--no-paraphrases", "--val-fraction", "0.25",
              "--max-length", "128", "--top-k", "12", "--no-progress", "--holdout", str(data_dir / "tofu" / "retain_perturbed.json"),
              "--alphas", "0,0.4,0.8,1.6", "--search-forget-every", "2"]
    policy = search_policy(tmp_path / "p.yaml", data_dir, "40:46")
    assert train_main(["uld", "--policy", str(policy), "--out", str(out), "--holdout-rows", "360:364", *common]) == 0
    printed = json.loads(capsys.readouterr().out)
    manifest = json.loads((out / "manifest.json").read_text())
    search = manifest["alpha_search"]
    assert [r["alpha"] for r in search["trace"]] == [0.0, 0.4, 0.8, 1.6]
    assert manifest["decoding"]["alpha"] == search["chosen"]["alpha"] == printed["decoding"]["alpha"]
    assert manifest["decoding"]["alpha_from"] == "alpha_search"
    assert search["chosen"] == lexicographic_choice(search["trace"], "alpha")
    alpha0 = search["trace"][0]
    assert alpha0["retain_top_token_kept"] == 1.0 and alpha0["retain_nll_rise"] == 0.0 and alpha0["feasible"]
    assert [r["row"] for r in search["forget_items"]] == [0, 2] and [r["row"] for r in search["forget_items_not_searched"]] == [1, 3]
    assert search["holdout"]["n"] == 4 and len(search["retain_items"]) == 2
    assert search["check"]["served_nll"] == pytest.approx(search["check"]["closed_form_nll"], abs=1e-3)
    # a "never-seen" reference the assistant trained on (keep_data rows) is refused
    overlapping = search_policy(tmp_path / "q.yaml", data_dir, "360:366")
    assert train_main(["uld", "--policy", str(overlapping), "--out", str(tmp_path / "o2"), "--holdout-rows", "360:364",
                       *common]) == 2
    assert "trained on" in capsys.readouterr().err and not (tmp_path / "o2").exists()
