"""Chat-templated QA encoding (labels on answer tokens only) and padding (``guard.lm.chat_format``)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from guard.models import resolve_model
from guard.lm.chat_format import IGNORE_INDEX, encode_prompt, encode_qa, pad_batch, pad_token_id

Q = "Who wrote the novel 'Sand and Sorrow'?"
A = "The novel 'Sand and Sorrow' was written by Basil Mahfouz Al-Kuwaiti."


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(resolve_model("default"))


def test_prompt_is_exactly_what_the_engine_generates_from(tok):
    ids = encode_prompt(tok, Q)
    expected = tok.apply_chat_template([{"role": "user", "content": Q}], tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if not isinstance(expected, list) else expected
    assert ids == list(expected)


def test_labels_cover_the_answer_and_end_of_turn_only(tok):
    ex = encode_qa(tok, Q, A, max_length=256)
    ids, labels, mask = ex["input_ids"], ex["labels"], ex["attention_mask"]
    assert ids.shape == labels.shape == mask.shape and int(mask.sum()) == ids.shape[0]
    prompt = encode_prompt(tok, Q)
    assert ids[: len(prompt)].tolist() == prompt
    assert (labels[: len(prompt)] == IGNORE_INDEX).all()
    answer = labels[len(prompt):]
    assert (answer != IGNORE_INDEX).all()
    assert answer[-1].item() == tok.eos_token_id  # <|im_end|>, not the template's trailing newline
    assert tok.decode(answer[:-1]) == A
    assert (ids[len(prompt):] == answer).all()


def test_system_prompt_replaces_the_templates_default(tok):
    ex = encode_qa(tok, Q, A, max_length=256, system_prompt="Be brief.")
    text = tok.decode(ex["input_ids"])
    assert "Be brief." in text and "SmolLM" not in text


def test_truncation_keeps_the_prompt_and_cuts_the_answer(tok):
    full = encode_qa(tok, Q, A, max_length=512)
    prompt_len = len(encode_prompt(tok, Q))
    short = encode_qa(tok, Q, A, max_length=prompt_len + 3)
    assert short["input_ids"].shape[0] == prompt_len + 3
    assert (short["labels"] != IGNORE_INDEX).sum() == 3
    assert short["input_ids"].tolist() == full["input_ids"][: prompt_len + 3].tolist()
    with pytest.raises(ValueError, match="max_length"):
        encode_qa(tok, Q, A, max_length=prompt_len)


def test_pad_batch_right_and_left(tok):
    a, b = encode_qa(tok, Q, A, 256), encode_qa(tok, "Hi?", "Hello.", 256)
    pad = pad_token_id(tok)
    right = pad_batch([a, b], pad)
    n_a, n_b = a["input_ids"].shape[0], b["input_ids"].shape[0]
    assert right["input_ids"].shape == (2, max(n_a, n_b))
    short = 1 if n_b < n_a else 0
    n_short = min(n_a, n_b)
    assert (right["attention_mask"][short, n_short:] == 0).all()
    assert (right["labels"][short, n_short:] == IGNORE_INDEX).all()
    assert (right["input_ids"][short, n_short:] == pad).all()
    left = pad_batch([a, b], pad, side="left")
    assert (left["attention_mask"][short, : max(n_a, n_b) - n_short] == 0).all()
    assert left["input_ids"][short, -1] == right["input_ids"][short, n_short - 1]
    prompts = pad_batch([{"input_ids": torch.tensor([5, 6]), "attention_mask": torch.ones(2, dtype=torch.long)},
                         {"input_ids": torch.tensor([7]), "attention_mask": torch.ones(1, dtype=torch.long)}], 0, side="left")
    assert "labels" not in prompts and prompts["input_ids"].tolist() == [[5, 6], [0, 7]]
    with pytest.raises(ValueError):
        pad_batch([a], pad, side="middle")
