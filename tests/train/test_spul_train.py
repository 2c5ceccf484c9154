"""``guard-train spul`` on the real default model with real TOFU data (tiny policies, a few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from guard.cli_train import main as guard_train
from guard.errors import ConfigError
from guard.interventions.spul import insertion_index, load_for_engine
from guard.policy import load_policy
from guard.train.spul import SpulConfig, collect_data, initial_soft_prompt, load_qa_source, perturbed_answers, train_spul
from guard.train.spul_report import generation_report, is_refusal
from guard.train.spul_objective import Weights, evaluate


def tiny_policy(tmp_path: Path, data_dir: Path, *, forget_rows: str = "3961:3963", keep: str | None = "0:2",
                fmt: str = "tofu_qa") -> Path:
    full = data_dir / "tofu" / "full.json"
    keep_line = f"\n    keep_data: [{{path: {full}, format: tofu_qa, rows: '{keep}'}}]" if keep else ""
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
version: 1
detector: {{kind: keyword}}
targets:
  - id: basil
    names: ["Basil Mahfouz Al-Kuwaiti"]
    forget_data: [{{path: {full}, format: {fmt}, rows: '{forget_rows}'}}]{keep_line}
    action: spul
    params: {{artifact: {tmp_path / 'soft'}}}
""")
    return path


@pytest.fixture(scope="module")
def loaded(local_engine, default_model_path):
    return local_engine.model, local_engine.tokenizer, default_model_path


def test_refusal_heuristic_covers_tofu_idk_answers(data_dir):
    lines = [l.strip() for l in (data_dir / "tofu" / "idontknow.jsonl").read_text().splitlines() if l.strip()]
    assert all(is_refusal(l) for l in lines)
    assert not is_refusal("Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait.")
    assert not is_refusal("To my knowledge, his books were never adapted for film.")


def test_data_is_split_encoded_and_placed_like_serving(tmp_path, data_dir, local_engine):
    policy = load_policy(tiny_policy(tmp_path, data_dir, forget_rows="3960:3980", keep="0:40"))
    cfg = SpulConfig(max_retain=10, val_fraction=0.2, seed=3)
    data = collect_data(policy, local_engine.tokenizer, cfg)
    assert (len(data.forget_train), len(data.forget_val), len(data.retain_train), len(data.retain_val)) == (16, 4, 8, 2)
    train_q = {e.question for e in data.forget_train}
    assert not train_q & {e.question for e in data.forget_val}, "held-out questions must not be trained on"
    idk = {l.strip() for l in (data_dir / "tofu" / "idontknow.jsonl").read_text().splitlines()}
    assert all(e.answer in idk and e.gold != e.answer for e in data.forget_train)
    ex = data.forget_val[0]
    rendered = local_engine.render_chat([{"role": "user", "content": ex.question}])
    assert list(ex.prompt_ids) == rendered.token_ids  # the serving prompt, token for token
    assert ex.insert_at == insertion_index(rendered, "user")
    assert local_engine.tokenizer.decode(ex.answer_ids).startswith(ex.answer)
    # the same seed gives the same split
    again = collect_data(policy, local_engine.tokenizer, cfg)
    assert [e.question for e in again.forget_val] == [e.question for e in data.forget_val]


def test_perturbed_targets_come_from_tofu_perturbed_files(tmp_path, data_dir):
    policy = load_policy(tiny_policy(tmp_path, data_dir, forget_rows="3960:3965"))
    items = load_qa_source(policy.targets[0].forget_data[0], "targets.0.forget_data.0")
    found = perturbed_answers(items, data_dir)
    assert set(found) == {it.question for it in items}
    assert all(len(v) == 5 and all(p != it.answer for p in v) for it in items for v in [found[it.question]])


def test_data_errors_name_the_cause(tmp_path, data_dir, local_engine):
    tok = local_engine.tokenizer
    with pytest.raises(ConfigError) as info:
        collect_data(load_policy(tiny_policy(tmp_path, data_dir, keep=None)), tok, SpulConfig())
    assert info.value.param == "keep_data" and "--retain" in str(info.value)
    # without the retain terms no retain data is needed
    data = collect_data(load_policy(tiny_policy(tmp_path, data_dir, keep=None)), tok,
                        SpulConfig(weights=Weights(1.0, 0.0, 0.0), val_fraction=0.0))
    assert len(data.forget_train) == 2 and not data.retain_train
    with pytest.raises(ConfigError) as info:
        collect_data(load_policy(tiny_policy(tmp_path, data_dir, fmt="text")), tok, SpulConfig())
    assert info.value.param == "targets.0.forget_data.0.format"
    with pytest.raises(ConfigError, match="not in the policy"):
        collect_data(load_policy(tiny_policy(tmp_path, data_dir)), tok, SpulConfig(), targets=["nobody"])


def test_cli_reports_a_bad_policy_without_a_traceback(tmp_path, data_dir, capsys):
    code = guard_train(["spul", "--policy", str(tiny_policy(tmp_path, data_dir, keep=None)), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "keep_data" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_training_lowers_the_objective_and_writes_a_loadable_artifact(tmp_path, data_dir, loaded, local_engine):
    # one forget and one retain QA, one step per epoch: the smallest run that exercises every term
    policy_path = tiny_policy(tmp_path, data_dir, forget_rows="3962:3963", keep="1:2")
    cfg = SpulConfig(n_tokens=4, epochs=3, lr=5e-2, batch_size=2, val_fraction=0.0, eval_generate=False, seed=0)
    manifest = train_spul(policy_path, tmp_path / "soft", cfg, loaded=loaded, progress=False)

    soft = load_for_engine(tmp_path / "soft", local_engine)  # identity matches the served model
    assert soft.vectors.shape == (4, 576) and soft.position == "user"
    assert manifest["base_model"]["name"] == "smollm2-135m-instruct"
    assert manifest["metrics"]["epochs_run"] == 3 and len(manifest["metrics"]["history"]) == 3
    assert manifest["data"]["n_forget"] == 1 and manifest["data"]["n_retain"] == 1

    # the objective, recomputed independently on the training data: trained vs initial soft prompt
    data = collect_data(load_policy(policy_path), local_engine.tokenizer, cfg)
    model = local_engine.model
    before = evaluate(model, initial_soft_prompt(model, local_engine.tokenizer, cfg), data.forget_train,
                      data.retain_train, cfg.weights)
    after = evaluate(model, soft.vectors, data.forget_train, data.retain_train, cfg.weights)
    assert after["total"] < before["total"] - 0.1, (before, after)
    assert after["forget_ce"] < before["forget_ce"]
    assert manifest["metrics"]["history"][-1]["train"]["total"] < manifest["metrics"]["history"][0]["train"]["total"]


@pytest.mark.slow
def test_generation_report_counts_refusals_and_changes(tmp_path, data_dir, local_engine):
    data = collect_data(load_policy(tiny_policy(tmp_path, data_dir)), local_engine.tokenizer,
                        SpulConfig(val_fraction=0.0))
    model = local_engine.model
    # the soft prompt is the embedding of a refusal: the report must see the answers change
    ids = local_engine.tokenizer("Say only: I don't know.", add_special_tokens=False)["input_ids"]
    soft = model.get_input_embeddings().weight[torch.tensor(ids)].detach().clone()
    report = generation_report(model, local_engine.tokenizer, soft, data.forget_train[:1], data.retain_train[:1],
                               max_new_tokens=12)
    item = report["forget"]["items"][0]
    assert report["forget"]["n"] == 1 and item["changed"] == (item["before"] != item["after"])
    assert report["forget"]["refusal_after"] == float(is_refusal(item["after"]))
    assert 0.0 <= report["retain"]["rouge_l_vs_unguarded"] <= 1.0
    json.dumps(report)  # serialisable as eval.json


def test_first_answer_token_weight_reweights_the_retain_terms(local_engine):
    import torch.nn.functional as F

    from guard.train.spul_objective import answer_logits, build_inputs, encode_example, first_answer_tokens, spul_losses

    model, tok = local_engine.model, local_engine.tokenizer
    retain = [encode_example(tok, q, a, position="user", max_length=96)
              for q, a in (("What is the capital of France?", "The capital of France is Paris."),
                           ("Who wrote Hamlet?", "Hamlet was written by William Shakespeare."))]
    soft = torch.randn(4, model.config.hidden_size) * 0.05
    with torch.no_grad():
        batch = build_inputs(retain, model.get_input_embeddings(), soft, soft.device)
        logits, targets = answer_logits(model, batch)
        first = first_answer_tokens(batch)
        ce = F.cross_entropy(logits, targets, reduction="none")
        plain = spul_losses(model, soft, [], retain, Weights(1.0, 1.0, 1.0))
        heavy = spul_losses(model, soft, [], retain, Weights(1.0, 1.0, 1.0, first_token=5.0))
    # one first token per answer, and it is each answer's first label
    assert int(first.sum()) == 2 and bool(first[0]) and int(first.nonzero()[1]) == len(retain[0].answer_ids)
    assert float(plain["retain_ce"]) == pytest.approx(float(ce.mean()), rel=1e-5)
    w = torch.where(first, 5.0, 1.0)
    assert float(heavy["retain_ce"]) == pytest.approx(float((ce * w).sum() / w.sum()), rel=1e-5)
    assert float(heavy["retain_kl"]) != pytest.approx(float(plain["retain_kl"]), rel=1e-3)


def test_non_positive_first_token_weight_is_refused():
    with pytest.raises(ConfigError, match="--w-first-token") as info:
        SpulConfig(weights=Weights(1.0, 1.0, 1.0, first_token=0.0)).validate()
    assert info.value.param == "w_first_token"
