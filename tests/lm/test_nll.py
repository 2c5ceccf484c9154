"""Teacher-forced answer NLL (``guard.lm.nll``) on the real default model: the batched, per-token,
QA-pair and labelled-batch forms agree, and a logits transform is applied."""

from __future__ import annotations

import pytest
import torch

from guard.lm.chat_format import encode_qa, pad_batch, pad_token_id
from guard.lm.nll import answer_nll_sums, answer_token_nll, label_positions, mean_answer_nll, qa_mean_nll

Q = "Who wrote Hamlet?"
ANSWERS = ["William Shakespeare wrote it.", "A much longer answer about Denmark, its prince and a ghost."]


def _prompt_and_answers(engine):
    tok = engine.tokenizer
    encoded = [encode_qa(tok, Q, a, max_length=512) for a in ANSWERS]
    answers = [label_positions(e["labels"].tolist()) for e in encoded]
    prompt_len = len(encoded[0]["input_ids"]) - len(answers[0])
    prompt_ids = encoded[0]["input_ids"][:prompt_len]
    with torch.no_grad():
        embeds = engine.model.get_input_embeddings()(prompt_ids)
    return embeds, answers


def test_batched_mean_equals_the_per_token_scorer_and_the_qa_form(local_engine):
    model, tok = local_engine.model, local_engine.tokenizer
    embeds, answers = _prompt_and_answers(local_engine)
    batched = mean_answer_nll(model, [embeds] * len(answers), answers, batch_size=2)
    one_by_one = mean_answer_nll(model, [embeds] * len(answers), answers, batch_size=1)
    per_token = [sum(x) / len(x) for x in (answer_token_nll(model, embeds, a) for a in answers)]
    assert batched == pytest.approx(per_token, abs=1e-4) and one_by_one == pytest.approx(per_token, abs=1e-4)
    assert batched == pytest.approx(qa_mean_nll(model, tok, [(Q, a) for a in ANSWERS]), abs=1e-4)
    assert batched[0] != pytest.approx(batched[1], abs=1e-3)  # different answers, different scores


def test_labelled_batch_sums_match_the_means(local_engine):
    model, tok = local_engine.model, local_engine.tokenizer
    batch = pad_batch([encode_qa(tok, Q, a, max_length=512) for a in ANSWERS], pad_token_id(tok), side="right")
    with torch.no_grad():
        sums, counts = answer_nll_sums(model, batch)
    means = (sums / counts).tolist()
    assert means == pytest.approx(qa_mean_nll(model, tok, [(Q, a) for a in ANSWERS]), abs=1e-4)


def test_a_logits_transform_is_applied_one_answer_at_a_time(local_engine):
    model = local_engine.model
    embeds, answers = _prompt_and_answers(local_engine)
    seen: list[tuple[int, ...]] = []

    def flatten(inputs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(inputs.shape[:2]))
        return torch.zeros_like(logits)  # uniform: every token costs log(V)

    values = mean_answer_nll(model, [embeds] * len(answers), answers, logits_transform=flatten)
    vocab = model.get_output_embeddings().weight.shape[0]
    assert values == pytest.approx([torch.log(torch.tensor(float(vocab))).item()] * len(answers), rel=1e-5)
    assert [s[0] for s in seen] == [1, 1]  # the transform saw one sequence per call
    with pytest.raises(ValueError):
        mean_answer_nll(model, [embeds], answers)


def test_answer_embeds_replace_the_lookup_for_the_answer_only(local_engine):
    """``answer_embeds`` is what the model reads for the answer tokens: the lookup gives the default
    numbers; a change to one answer position changes the scores of that answer, batched or not."""
    model = local_engine.model
    embeds, answers = _prompt_and_answers(local_engine)
    lookup = model.get_input_embeddings()
    default = mean_answer_nll(model, [embeds] * len(answers), answers)

    def as_looked_up(ids):
        with torch.no_grad():
            return lookup(torch.tensor(ids)).clone()

    assert mean_answer_nll(model, [embeds] * len(answers), answers, answer_embeds=as_looked_up) == default

    def first_token_zeroed(ids):
        out = as_looked_up(ids)
        out[0] = 0.0
        return out

    changed = mean_answer_nll(model, [embeds] * len(answers), answers, answer_embeds=first_token_zeroed)
    per_token = [sum(x) / len(x) for x in (answer_token_nll(model, embeds, a, answer_embeds=first_token_zeroed)
                                           for a in answers)]
    assert changed == pytest.approx(per_token, abs=1e-4)
    assert all(c != pytest.approx(d, abs=1e-3) for c, d in zip(changed, default))
    with pytest.raises(ValueError, match="answer_embeds gave shape"):
        mean_answer_nll(model, [embeds], answers[:1], answer_embeds=lambda ids: as_looked_up(ids)[1:])
