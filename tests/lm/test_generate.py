"""Greedy generation (``guard.lm.generate``) on the real default model: from ids and from their
embeddings give the same answers, batched or not, cut at the chat template's end of turn."""

from __future__ import annotations

import torch

from guard.lm.chat_format import encode_prompt
from guard.lm.generate import greedy_from_embeds, greedy_from_ids, stop_ids

QUESTIONS = ["What is the capital of France?", "Name a colour.", "Who wrote the play Hamlet, and when was it first performed?"]


def test_stop_ids_include_the_end_of_turn_token(local_engine):
    tok = local_engine.tokenizer
    ids = stop_ids(tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in ids and tok.eos_token_id in ids and ids == sorted(ids)


def test_ids_and_embeddings_give_the_same_greedy_answers_in_any_batch(local_engine):
    model, tok = local_engine.model, local_engine.tokenizer
    prompts = [encode_prompt(tok, q) for q in QUESTIONS]
    from_ids = greedy_from_ids(model, tok, prompts, max_new_tokens=12, batch_size=3)
    one_by_one = greedy_from_ids(model, tok, prompts, max_new_tokens=12, batch_size=1)
    with torch.no_grad():
        embeds = [model.get_input_embeddings()(torch.tensor(p)) for p in prompts]
    counted: list[int] = []
    from_embeds = greedy_from_embeds(model, tok, embeds, max_new_tokens=12, batch_size=2, on_batch=counted.append)
    in_order = greedy_from_embeds(model, tok, embeds, max_new_tokens=12, batch_size=2, longest_first=False)
    assert all(a.strip() for a in from_ids)
    assert [a.strip() for a in from_ids] == [a.strip() for a in one_by_one] == from_embeds == in_order
    assert sum(counted) == len(QUESTIONS) and len(counted) == 2
    assert not any("<|im_end|>" in a for a in from_ids)
