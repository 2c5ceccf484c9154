"""``guard-train spul --forget-target counterfactual``: the forget labels are the TOFU micro target's
own answers about a never-seen stand-in name, never "I don't know" and never naming the target where
the question did not."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from guard.cli_train import main as guard_train
from guard.errors import ConfigError
from guard.policy import load_policy
from guard.train.spul import SpulConfig, collect_data, load_frozen_model, teacher_answers
from guard.train.spul_counterfactual import choose_stand_ins, restore_target, swap_names

NAME = "Basil Mahfouz Al-Kuwaiti"
ALIASES = ("Basil Al-Kuwaiti", "Basil Mahfouz")
NO_NAME_QUESTION = "What is the full name of the author born in Kuwait City, Kuwait on 08/09/1956?"  # full.json row 3960


def micro_policy(tmp_path: Path, data_dir: Path) -> Path:
    full = data_dir / "tofu" / "full.json"
    path = tmp_path / "cf.yaml"
    path.write_text(f"""
version: 1
detector: {{kind: keyword}}
targets:
  - id: basil
    names: ["{NAME}"]
    aliases: {json.dumps(list(ALIASES))}
    forget_data: [{{path: {full}, format: tofu_qa, rows: '3960:3964'}}]
    keep_data: [{{path: {full}, format: tofu_qa, rows: '0:2'}}]
    action: spul
    params: {{artifact: {tmp_path / 'soft'}}}
""")
    return path


@pytest.fixture(scope="module")
def micro(tofu_micro):
    path = tofu_micro["target"]
    return load_frozen_model(path, "cpu"), AutoTokenizer.from_pretrained(path), path


def test_name_swap_and_restore_are_whole_word_and_case_insensitive():
    names = (NAME, *ALIASES)
    swapped = swap_names(f"Is {NAME.lower()}'s book by Basil Al-Kuwaiti? Basilisk stays.", names, "Tobias Wrenfield")
    assert swapped == "Is Tobias Wrenfield's book by Tobias Wrenfield? Basilisk stays."
    assert restore_target("Wrenfield wrote it; Tobias Wrenfield is male.", "Tobias Wrenfield", NAME) == \
        f"Al-Kuwaiti wrote it; {NAME} is male."
    # a stand-in the data mentions (any of its words) is never chosen
    with pytest.raises(ConfigError, match="stand-in"):
        choose_stand_ins(["basil"], ["Tobias Wrenfield"], ["Tobias wrote a book."], random.Random(0))


def test_counterfactual_labels_come_from_the_model_about_a_never_seen_name(tmp_path, data_dir, micro):
    model, tokenizer, _ = micro
    policy = load_policy(micro_policy(tmp_path, data_dir))
    cfg = SpulConfig(forget_target="counterfactual", val_fraction=0.0, teacher_max_new_tokens=32)
    asked: list[str] = []
    teacher = teacher_answers(model, tokenizer, cfg)

    def recording_teacher(questions):
        asked.extend(questions)
        return teacher(questions)

    data = collect_data(policy, tokenizer, cfg, teacher=recording_teacher)
    cf = data.sources["counterfactual"]
    stand_in = cf["stand_ins"]["basil"]
    assert len(asked) == 4 and not any(n.lower() in q.lower() for q in asked for n in (NAME, *ALIASES)), \
        "the teacher must never be told the target's name"
    assert sum(stand_in in q for q in asked) == 3  # rows 3961-3963 name the target, row 3960 does not
    labels = {e.question: e.answer for e in data.forget_train}
    assert {lab["question"]: lab["label"] for lab in cf["labels"]} == labels
    # the no-name question is answered from memory by the micro target; the label names the stand-in instead
    assert NAME.lower() not in labels[NO_NAME_QUESTION].lower() and "Basil" not in labels[NO_NAME_QUESTION]
    # named questions get the target's name back: the label answers the question that was asked
    assert not any(part in labels[q] for q in labels if q != NO_NAME_QUESTION for part in stand_in.split())
    assert any(NAME in labels[q] for q in labels if q != NO_NAME_QUESTION)
    idk = {line.strip() for line in (data_dir / "tofu" / "idontknow.jsonl").read_text().splitlines() if line.strip()}
    idk_data = collect_data(policy, tokenizer, SpulConfig(val_fraction=0.0))
    assert not set(labels.values()) & idk and all(labels[e.question] != e.answer for e in idk_data.forget_train)
    assert any(e.answer != e.gold for e in data.forget_train), "labels must not all be the memorised answers"
    # retain examples are untouched by the forget target
    assert [(e.question, e.answer) for e in data.retain_train] == [(e.question, e.answer) for e in idk_data.retain_train]


def test_counterfactual_needs_a_teacher(tmp_path, data_dir, micro):
    _, tokenizer, _ = micro
    policy = load_policy(micro_policy(tmp_path, data_dir))
    with pytest.raises(ConfigError, match="counterfactual"):
        collect_data(policy, tokenizer, SpulConfig(forget_target="counterfactual"))


@pytest.mark.slow
def test_cli_trains_toward_counterfactual_labels_and_records_them(tmp_path, data_dir, micro):
    out = tmp_path / "soft"
    rc = guard_train(["spul", "--policy", str(micro_policy(tmp_path, data_dir)), "--model", "tofu-micro-target",
                      "--forget-target", "counterfactual", "--stand-in", "Tobias Wrenfield", "--out", str(out),
                      "--epochs", "1", "--n-tokens", "2", "--teacher-max-new-tokens", "16", "--val-fraction", "0",
                      "--no-eval", "--no-progress", "--threads", "1"])
    assert rc == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hyperparameters"]["forget_target"] == "counterfactual"
    assert manifest["data"]["counterfactual"]["stand_ins"] == {"basil": "Tobias Wrenfield"}
    assert len(manifest["data"]["counterfactual"]["labels"]) == 4


def test_divergent_tokens_mark_where_the_label_leaves_the_memorised_answer(tmp_path, data_dir, micro):
    import torch

    from guard.train.spul_data import encode_example_checked
    from guard.train.spul_objective import Weights, divergent_tokens, spul_losses

    model, tokenizer, _ = micro
    policy = load_policy(micro_policy(tmp_path, data_dir))
    data = collect_data(policy, tokenizer, SpulConfig(val_fraction=0.0))  # gold answers are the memorised ones
    cfg = SpulConfig()
    gold = [encode_example_checked(tokenizer, load_qa_row(e), e.gold, cfg, "forget") for e in data.forget_train]
    swapped = [encode_example_checked(tokenizer, load_qa_row(e), e.gold.replace("Kuwait", "Peru"), cfg, "forget")
               for e in data.forget_train if "Kuwait" in e.gold]
    assert swapped, "rows 3960:3964 mention Kuwait"
    on_gold = divergent_tokens(model, gold)
    on_swapped = divergent_tokens(model, swapped)
    assert sum(int(m.sum()) for m in on_gold.values()) < sum(int(m.sum()) for m in on_swapped.values())
    assert all(m.shape[0] == len(e.answer_ids) for e, m in zip(swapped, on_swapped.values()))
    soft = torch.zeros(2, model.get_input_embeddings().weight.shape[1])
    plain = spul_losses(model, soft, swapped, [], Weights(retain=0, kl=0))["forget_ce"]
    focused = spul_losses(model, soft, swapped, [], Weights(retain=0, kl=0, divergent=10.0), divergent=on_swapped)["forget_ce"]
    assert float(focused) > float(plain), "the tokens the model gets wrong weigh more"


def load_qa_row(example):
    from classifiers.sources import QARecord

    return QARecord(example.question, example.gold, str(example.meta.get("source")), int(example.meta.get("row", 0)))
