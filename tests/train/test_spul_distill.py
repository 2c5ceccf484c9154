"""``guard-train spul --forget-target distill``: the teacher reads the true answer about a stand-in
(never the target's name); the student's forget term is the KL to it at the answer tokens both
share, zero when the student reads as the teacher does, and it falls as the soft prompt trains.
``--forget-target uld``: the teacher is ULD's logit difference along the true answer (a ULD artifact
for the served model; one for another model is refused)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from guard.cli_train import main as guard_train
from guard.errors import ConfigError
from guard.policy import load_policy
from guard.train.spul import SpulConfig, collect_data, load_frozen_model
from guard.train.spul_distill import aligned_positions, attach_teacher, attach_uld_teacher, load_uld_teacher
from guard.train.spul_objective import ALIGNED, TEACHER_IDS, TEACHER_LOGP, Weights, spul_losses
from tests.train.test_spul_counterfactual import ALIASES, NAME, micro_policy


@pytest.fixture(scope="module")
def micro(tofu_micro):
    path = tofu_micro["target"]
    return load_frozen_model(path, "cpu"), AutoTokenizer.from_pretrained(path), path


def test_alignment_keeps_the_tokens_outside_the_name():
    student = [5, 6, 70, 71, 72, 8, 9]   # "... Basil Mahfouz Al-Kuwaiti ..." = 70 71 72
    teacher = [5, 6, 80, 81, 8, 9]       # "... Tobias Wrenfield ..." = 80 81
    assert aligned_positions(student, teacher) == [(0, 0), (1, 1), (5, 4), (6, 5)]
    assert aligned_positions([], [1, 2]) == []


def test_distill_teacher_never_sees_the_target_and_matches_itself(tmp_path, data_dir, micro):
    model, tokenizer, _ = micro
    policy = load_policy(micro_policy(tmp_path, data_dir))
    cfg = SpulConfig(forget_target="distill", val_fraction=0.0)
    data = collect_data(policy, tokenizer, cfg)
    stand_in = data.sources["distill"]["stand_ins"]["basil"]
    for ex in data.forget_train:
        assert ex.answer == ex.gold  # the student reads the true answer
        asked, answer = ex.meta["teacher_question"], ex.meta["teacher_answer"]
        assert not any(n.lower() in (asked + answer).lower() for n in (NAME, *ALIASES, "Basil", "Al-Kuwaiti"))
    assert any(stand_in in ex.meta["teacher_answer"] for ex in data.forget_train)
    taught = attach_teacher(model, tokenizer, data.forget_train, position=cfg.position, max_length=cfg.max_length)
    for ex in taught:
        mask = ex.meta[ALIGNED]
        assert mask.shape[0] == len(ex.answer_ids) and ex.meta[TEACHER_LOGP].shape[0] == int(mask.sum())
        assert 0 < int(mask.sum()) <= len(ex.answer_ids)
    soft = torch.zeros(2, model.get_input_embeddings().weight.shape[1])
    kl = spul_losses(model, soft, taught, [], Weights(retain=0, kl=0))["forget_ce"]
    assert float(kl) > 0.05, "the model reads the target's answer unlike an unknown person's"
    # a teacher that is the student itself (no name swapped) gives a KL of (about) zero
    same = [type(ex)(ex.prompt_ids, ex.answer_ids, ex.insert_at, ex.question, ex.answer, ex.gold,
                     {**ex.meta, "teacher_question": ex.question, "teacher_answer": ex.answer})
            for ex in data.forget_train]
    self_taught = attach_teacher(model, tokenizer, same, position=cfg.position, max_length=cfg.max_length)
    empty = torch.zeros(0, soft.shape[1])  # no vectors: the student reads exactly what the teacher read
    assert float(spul_losses(model, empty, self_taught, [], Weights(retain=0, kl=0))["forget_ce"]) < 1e-3


def test_distill_rejects_divergent_weights():
    with pytest.raises(ConfigError, match="distill"):
        SpulConfig(forget_target="distill", weights=Weights(divergent=10.0)).validate()


@pytest.mark.slow
def test_cli_trains_toward_the_teacher_and_records_it(tmp_path, data_dir, micro):
    out = tmp_path / "soft"
    rc = guard_train(["spul", "--policy", str(micro_policy(tmp_path, data_dir)), "--model", "tofu-micro-target",
                      "--forget-target", "distill", "--stand-in", "Tobias Wrenfield", "--out", str(out),
                      "--epochs", "2", "--n-tokens", "2", "--val-fraction", "0", "--w-retain", "0", "--w-kl", "0",
                      "--no-eval", "--no-progress", "--threads", "1"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hyperparameters"]["forget_target"] == "distill"
    assert manifest["data"]["distill"]["stand_ins"] == {"basil": "Tobias Wrenfield"}
    losses = [e["train"]["forget_ce"] for e in manifest["metrics"]["history"]]
    assert losses[-1] < losses[0], "the KL to the teacher falls as the soft prompt trains"


def uld_teacher_artifact(model_dir, out, *, alpha: float = 1.0):
    """A 2-layer ULD assistant of ``model_dir`` with a seeded random LoRA (it already changes the logits)."""
    from guard.artifacts import model_identity
    from guard.train.uld import minimal_manifest, write_artifact
    from guard.train.uld_assistant import attach_lora, load_base_assistant, lora_config

    base = load_base_assistant(model_dir, 2)
    assistant = attach_lora(base, lora_config(r=4, lora_alpha=8, lora_dropout=0.0, random_init=True), seed=1234).eval()
    write_artifact(out, assistant, minimal_manifest(model_identity(model_dir), 2, 30, alpha=alpha, top_k=20))
    return out


@pytest.fixture(scope="module")
def micro_uld(micro, tmp_path_factory):
    return uld_teacher_artifact(micro[2], tmp_path_factory.mktemp("uld-teacher") / "assistant")


def test_uld_teacher_is_the_logit_difference_along_every_answer_token(tmp_path, data_dir, micro, micro_uld):
    from dataclasses import replace

    model, tokenizer, path = micro
    policy = load_policy(micro_policy(tmp_path, data_dir))
    cfg = SpulConfig(forget_target="uld", teacher_artifact=str(micro_uld), val_fraction=0.0)
    data = collect_data(policy, tokenizer, cfg)
    runtime, settings, record = load_uld_teacher(micro_uld, path, "cpu")
    assert record["alpha"] == settings.alpha == 1.0 and record["top_k"] == 20
    taught = attach_uld_teacher(model, data.forget_train, runtime, settings)
    for ex in taught:
        assert ex.answer == ex.gold and bool(ex.meta[ALIGNED].all())
        # ULD's plausible set per answer token: the target's 20 most likely ids, the teacher's mass on them
        assert ex.meta[TEACHER_LOGP].shape == ex.meta[TEACHER_IDS].shape == (len(ex.answer_ids), 20)
        assert torch.allclose(ex.meta[TEACHER_LOGP].exp().sum(-1), torch.ones(len(ex.answer_ids)), atol=1e-4)
    empty = torch.zeros(0, model.get_input_embeddings().weight.shape[1])
    kl = float(spul_losses(model, empty, taught, [], Weights(retain=0, kl=0))["forget_ce"])
    assert kl > 0.01, "the logit difference moves the model's distribution along the true answer"
    # alpha 0 subtracts nothing: the teacher is the plain model, which the student without vectors is
    plain = attach_uld_teacher(model, data.forget_train, runtime, replace(settings, alpha=0.0))
    assert float(spul_losses(model, empty, plain, [], Weights(retain=0, kl=0))["forget_ce"]) < 1e-3


def test_uld_teacher_for_another_model_or_missing_is_refused(tmp_path, micro, default_model_path):
    other = uld_teacher_artifact(default_model_path, tmp_path / "other")
    with pytest.raises(ConfigError) as info:
        load_uld_teacher(other, micro[2], "cpu")
    assert info.value.param == "teacher_artifact"
    for cfg in (SpulConfig(forget_target="uld"), SpulConfig(forget_target="distill", teacher_artifact=str(other))):
        with pytest.raises(ConfigError) as info:
            cfg.validate()
        assert info.value.param == "teacher_artifact"


@pytest.mark.slow
def test_cli_trains_toward_the_uld_teacher_and_records_it(tmp_path, data_dir, micro, micro_uld):
    out = tmp_path / "soft"
    rc = guard_train(["spul", "--policy", str(micro_policy(tmp_path, data_dir)), "--model", "tofu-micro-target",
                      "--forget-target", "uld", "--teacher-artifact", str(micro_uld), "--out", str(out),
                      "--epochs", "2", "--n-tokens", "2", "--val-fraction", "0", "--w-retain", "0", "--w-kl", "0",
                      "--no-eval", "--no-progress", "--threads", "1"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hyperparameters"]["forget_target"] == "uld"
    assert manifest["data"]["uld_teacher"]["artifact"] == str(micro_uld) and manifest["data"]["uld_teacher"]["alpha"] == 1.0
    losses = [e["train"]["forget_ce"] for e in manifest["metrics"]["history"]]
    assert losses[-1] < losses[0], "the KL to ULD's distribution falls as the soft prompt trains"
