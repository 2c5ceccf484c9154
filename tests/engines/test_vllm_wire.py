"""What the vLLM engine sends on /v1/completions for the OpenAI sampling fields (issue #13), and how
it reads a streamed choice's log-probs back (the server side is checked in
tests/interventions/test_method_surface.py::test_eco_on_vllm_keeps_the_contract_through_prompt_embeds)."""

from __future__ import annotations

import torch

from guard.engines.base import PromptInput, SamplingParams
from guard.engines.structured_output import output_constraint
from guard.engines.vllm_wire import choice_logprobs, completion_payload

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


def test_payload_carries_every_sampling_field_and_the_constraint():
    params = SamplingParams(max_tokens=5, temperature=0.5, seed=9, n=3, logprobs=2, presence_penalty=0.5,
                            frequency_penalty=-1.0, logit_bias=((504, 100.0), (7, -100.0)),
                            constraint=output_constraint({"response_format": {"type": "json_schema",
                                                                              "json_schema": {"name": "x", "schema": SCHEMA}}}))
    payload = completion_payload("m", PromptInput(embeds=torch.zeros(2, 4)), params)
    assert payload["n"] == 3 and payload["seed"] == 9
    assert payload["logprobs"] == 2 and payload["return_tokens_as_token_ids"] is True and payload["return_token_ids"] is True
    assert payload["presence_penalty"] == 0.5 and payload["frequency_penalty"] == -1.0
    assert payload["logit_bias"] == {"504": 100.0, "7": -100.0}
    assert payload["response_format"] == {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}}
    assert "prompt_embeds" in payload and "prompt" not in payload


def test_payload_without_the_fields_stays_as_before():
    payload = completion_payload("m", PromptInput(token_ids=[1, 2]), SamplingParams(max_tokens=5))
    assert not {"n", "logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "response_format"} & set(payload)


def test_choice_logprobs_read_token_ids_and_keep_the_top_k():
    logprobs = {"tokens": ["token_id:5", "token_id:9"], "token_logprobs": [-0.1, -2.0],
                "top_logprobs": [{"token_id:5": -0.1, "token_id:6": -3.0}, {"token_id:8": -0.5, "token_id:9": -2.0,
                                                                              "token_id:1": -1.0}]}
    assert choice_logprobs(logprobs, 2) == [(5, -0.1, [(5, -0.1), (6, -3.0)]), (9, -2.0, [(8, -0.5), (1, -1.0)])]
    assert choice_logprobs(None, 2) == []
