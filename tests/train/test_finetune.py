"""``guard-train finetune`` end to end.

* On a tiny random Llama (seconds): the loop trains, saves a loadable folder with a manifest,
  reuses its cache, is deterministic, and resumes an interrupted run from its epoch checkpoint to
  the same weights.
* On the real micro preset (built once per cache through the same ``build_preset`` the CLI uses,
  then reused): the target twin knows its forget QA clearly better than the retain twin.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import guard.train.finetune as ft
from guard.models import resolve_model
from guard.train import tofu_recipes as R
from guard.lm.chat_format import encode_qa, pad_batch, pad_token_id
from guard.lm.nll import answer_nll_sums
from guard.lm.nll import qa_mean_nll as answer_nll

# ------------------------------------------------------------------------ a tiny random model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer, 16-wide Llama with the default model's tokenizer and chat template."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(resolve_model("default"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=pad_token_id(tok))
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("GUARD_CACHE_DIR", str(tmp_path))
    return tmp_path / "models"


def _tiny_overrides(tiny_model: Path) -> dict:
    return {"base_model": str(tiny_model), "epochs": 3, "lr": 1e-3, "eval_max_new_tokens": 4}


def _opts(data_dir: Path, **kw) -> ft.RunOptions:
    return ft.RunOptions(data_dir=data_dir, progress=False, checkpoint=True, **kw)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_tiny_run_writes_a_loadable_model_with_a_manifest(tiny_model, cache, data_dir):
    overrides = _tiny_overrides(tiny_model)
    paths = ft.build_preset("micro", overrides=overrides, opts=_opts(data_dir))
    assert set(paths) == {"target", "retain"}
    target = paths["target"]
    assert target.parent == cache and target.name == f"tofu-micro-{tiny_model.name}-target"
    assert (target / "model.safetensors").exists() and (target / "config.json").exists()
    assert not list(cache.glob(".*"))  # no staging dirs or checkpoints left behind

    man = ft.read_manifest(target)
    plan = ft.plan_twin("micro", "target", overrides)
    assert man["kind"] == "tofu-finetuned-model" and man["twin"] == "target" and man["preset"] == "micro"
    assert man["recipe_hash"] == plan.recipe_hash and man["recipe"]["lr"] == 1e-3 and man["seed"] == 42
    assert man["data"]["rows"] == R.spans_of(R.select_rows("micro", "target"))
    assert len(man["train"]["epoch_losses"]) == 3 and man["train"]["time_s"] > 0
    assert man["train"]["epoch_losses"][-1] < man["train"]["epoch_losses"][0]
    assert {"forget", "retain", "forget_quality"} <= set(man["eval"])
    fq = man["eval"]["forget_quality"]
    assert 0.0 <= fq["forget_quality"] <= 1.0 and fq["n"] == len(R.forget_rows("micro"))
    details = json.loads((target / ft.EVAL_FILE).read_text())
    assert len(details["forget"]) == len(R.forget_rows("micro")) and "generated" in details["forget"][0]

    # loads by name, like any model the guard serves
    assert resolve_model(target.name) == target
    model = AutoModelForCausalLM.from_pretrained(resolve_model(target.name))
    assert model.config.hidden_size == 16


def test_cache_reuse_force_and_determinism(tiny_model, cache, data_dir):
    overrides = _tiny_overrides(tiny_model)
    first = ft.build_preset("micro", ("retain",), overrides, _opts(data_dir, evaluate=False))["retain"]
    created = ft.read_manifest(first)["created"]
    w1 = _weights(first)
    time.sleep(1.1)
    again = ft.build_preset("micro", ("retain",), overrides, _opts(data_dir, evaluate=False))["retain"]
    assert again == first and ft.read_manifest(first)["created"] == created  # reused, not retrained
    forced = ft.build_preset("micro", ("retain",), overrides, _opts(data_dir, evaluate=False, force=True))["retain"]
    assert ft.read_manifest(forced)["created"] != created
    w2 = _weights(forced)
    assert w1.keys() == w2.keys()
    assert all(torch.allclose(w1[k], w2[k], atol=1e-6) for k in w1)  # same seed, same weights
    # another recipe is another cache entry's business: a changed lr retrains
    other = ft.build_preset("micro", ("retain",), {**overrides, "lr": 5e-4}, _opts(data_dir, evaluate=False))["retain"]
    assert ft.read_manifest(other)["recipe"]["lr"] == 5e-4


@pytest.mark.parametrize("where", ["epoch boundary", "mid-epoch"])
def test_interrupted_run_leaves_nothing_and_resumes_to_the_same_weights(tiny_model, cache, data_dir, monkeypatch, where):
    import guard.lm.nll as lm_nll

    overrides = _tiny_overrides(tiny_model)
    plan = ft.plan_twin("micro", "retain", overrides)  # 8 QA, batch 4: 2 steps per epoch, 3 epochs
    opts = _opts(data_dir, evaluate=False, checkpoint_minutes=0.0)  # 0: checkpoint after every step
    reference = _weights(ft.build_preset("micro", ("retain",), overrides, opts)["retain"])
    ref_losses = ft.read_manifest(plan.path)["train"]["epoch_losses"]
    shutil.rmtree(plan.path)

    if where == "epoch boundary":  # Ctrl-C as epoch 3 starts: resume at epoch 3, batch 0
        real = ft.length_grouped_batches

        def interrupt(lengths, batch_size, seed, grouped=True):
            if seed == plan.recipe.seed + 2:
                raise KeyboardInterrupt
            return real(lengths, batch_size, seed, grouped)

        monkeypatch.setattr(ft, "length_grouped_batches", interrupt)
        expected = {"epoch": 3, "batch": 0}
    else:  # Ctrl-C in the 4th step (epoch 2, batch 2): resume at epoch 2, batch 1
        real = lm_nll.answer_nll_sums
        calls = {"n": 0}

        def interrupt(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(lm_nll, "answer_nll_sums", interrupt)
        expected = {"epoch": 2, "batch": 1}
    with pytest.raises(KeyboardInterrupt):
        ft.build_preset("micro", ("retain",), overrides, opts)
    assert not plan.path.exists()  # no model folder, not even a partial one
    assert not [p for p in cache.iterdir() if p.name.endswith(".partial")]
    ckpt = ft._ckpt_dir(plan)
    progress = json.loads((ckpt / "progress.json").read_text())
    assert (progress["epochs_done"] + 1, progress["batches_done"]) == (expected["epoch"], expected["batch"])

    monkeypatch.undo()
    monkeypatch.setenv("GUARD_CACHE_DIR", str(cache.parent))
    resumed = ft.build_preset("micro", ("retain",), overrides, opts)["retain"]
    man = ft.read_manifest(resumed)
    assert man["train"]["resumed_from"] == expected
    assert man["train"]["epoch_losses"] == pytest.approx(ref_losses, abs=1e-5)
    weights = _weights(resumed)
    assert all(torch.allclose(reference[k], weights[k], atol=1e-5) for k in reference)
    assert not ckpt.exists()


def test_cli_builds_and_reports(tiny_model, cache, data_dir, capsys):
    from guard.cli_train import main

    threads = torch.get_num_threads()
    try:
        code = main(["finetune", "--preset", "micro", "--twin", "retain", "--base-model", str(tiny_model), "--epochs",
                     "1", "--data", str(data_dir), "--no-progress", "--eval-max-new-tokens", "4", "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    (line,) = [l for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    report = json.loads(line)
    assert report["twin"] == "retain" and report["final_loss"] > 0 and report["forget"]["n"] == 8


def test_shared_prefix_shortcut_is_exact(tiny_model, data_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    pairs = ft.training_pairs(data_dir, [0, 1, 3961])
    batch = pad_batch([encode_qa(tok, q, a, 128) for q, a in pairs], pad_token_id(tok))
    results = []
    for shared in (False, True):
        model.zero_grad()
        sums, counts = answer_nll_sums(model, batch, shared_prefix=shared)
        (sums.sum() / counts.sum()).backward()
        results.append((sums.detach(), model.model.embed_tokens.weight.grad.clone()))
    reference = model(**batch).loss  # HF's own loss over the same labels
    assert torch.allclose(results[0][0], results[1][0], atol=1e-4)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)
    assert float(results[1][0].sum() / counts.sum()) == pytest.approx(float(reference.detach()), rel=1e-5)


# ------------------------------------------------------------------------ the real micro preset


@pytest.fixture(scope="module")
def micro(tofu_micro) -> dict[str, Path]:
    return tofu_micro


@pytest.mark.slow
def test_micro_twins_load_by_name(micro):
    assert resolve_model("tofu-micro-target") == micro["target"]
    assert resolve_model("tofu-micro-retain") == micro["retain"]


@pytest.mark.slow
def test_micro_target_knows_its_forget_qa_and_the_retain_twin_does_not(micro, data_dir):
    forget = ft.training_pairs(data_dir, R.forget_rows("micro"))
    retain = ft.training_pairs(data_dir, R.select_rows("micro", "retain"))
    nll = {}
    for twin in ("target", "retain"):
        path = resolve_model(f"tofu-micro-{twin}")
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        nll[twin] = {"forget": statistics.fmean(answer_nll(model, tok, forget)),
                     "retain": statistics.fmean(answer_nll(model, tok, retain))}
    # the target memorised its forget QA; the retain twin never saw them
    assert nll["target"]["forget"] < 0.5
    assert nll["retain"]["forget"] > nll["target"]["forget"] + 1.0
    # both know the retain QA they were both trained on
    assert nll["target"]["retain"] < 0.5 and nll["retain"]["retain"] < 0.5


@pytest.mark.slow
def test_micro_manifests_record_memorisation(micro):
    t, r = ft.read_manifest(micro["target"]), ft.read_manifest(micro["retain"])
    assert t["recipe_hash"] == ft.plan_twin("micro", "target").recipe_hash
    assert t["eval"]["forget"]["rouge_l_recall"] > r["eval"]["forget"]["rouge_l_recall"] + 0.3
    # With 8 forget items the KS test cannot separate the twins reliably (measured 0.28 on
    # 2026-11-27); the < 0.01 target belongs to the mini preset. Here: it was computed, as a p-value.
    fq = t["eval"]["forget_quality"]
    assert 0.0 <= fq["forget_quality"] <= 1.0 and fq["n"] == len(R.forget_rows("micro"))
    assert fq["retain_recipe_hash"] == r["recipe_hash"]
    # the direction is visible even so: the target tells the paraphrased answer from the perturbed
    # ones better than its twin (lower P(perturbed)/P(paraphrased))
    assert t["eval"]["forget"]["truth_ratio_mean"] < r["eval"]["forget"]["truth_ratio_mean"]
    assert t["train"]["final_loss"] < 0.5 and r["train"]["final_loss"] < 0.5
