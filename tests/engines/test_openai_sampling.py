"""OpenAI sampling controls on the real default model, with vLLM 0.32's rules and semantics."""

import pytest
import torch

from guard.engines.openai_sampling import (LogprobRecorder, OpenAIPenaltiesProcessor, SamplingControls, SamplingLimits,
                                           generation_overrides, logits_processors, sampling_controls)
from guard.errors import InvalidRequest

THE = 504  # "The" in SmolLM2's vocabulary


@pytest.fixture(scope="module")
def limits(local_engine):
    return SamplingLimits(vocab_size=local_engine.model.config.vocab_size)


def prompt_ids(engine, text="Say hello."):
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)


def generate(engine, processors, max_new_tokens=4, **kwargs):
    inputs = prompt_ids(engine)
    with torch.no_grad():
        out = engine.model.generate(**inputs, max_new_tokens=max_new_tokens, logits_processor=processors,
                                    pad_token_id=2, eos_token_id=[2], **kwargs)
    return out[:, inputs["input_ids"].shape[1]:], inputs["input_ids"].shape[1]


@pytest.mark.parametrize("body, greedy, param", [
    ({"presence_penalty": 2.5}, False, "presence_penalty"),
    ({"frequency_penalty": "high"}, False, "frequency_penalty"),
    ({"n": 2}, True, "n"),
    ({"n": 0}, False, "n"),
    ({"n": 99}, False, "n"),
    ({"logit_bias": {"the": 5}}, False, "logit_bias"),
    ({"logit_bias": {"99999999": 5}}, False, "logit_bias"),
    ({"logit_bias": {"504": 101}}, False, "logit_bias"),
    ({"logit_bias": [504]}, False, "logit_bias"),
    ({"top_logprobs": 3}, False, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, False, "top_logprobs"),
    ({"logprobs": 2}, False, "logprobs"),
])
def test_bad_controls_are_400s_naming_the_field(limits, body, greedy, param):
    with pytest.raises(InvalidRequest) as err:
        sampling_controls(body, limits, chat=True, greedy=greedy)
    assert err.value.param == param


def test_controls_read_both_routes(limits):
    chat = sampling_controls({"n": 3, "logprobs": True, "top_logprobs": 2, "presence_penalty": 0.5,
                              "logit_bias": {"504": -100}}, limits, chat=True, greedy=False)
    assert chat == SamplingControls(n=3, top_logprobs=2, presence_penalty=0.5, logit_bias=((THE, -100.0),))
    assert sampling_controls({"logprobs": True}, limits, chat=True, greedy=True).top_logprobs == 0
    assert sampling_controls({"logprobs": 5}, limits, chat=False, greedy=True).top_logprobs == 5
    assert sampling_controls({}, limits, chat=False, greedy=True) == SamplingControls()
    assert logits_processors(SamplingControls(), 10) == []
    assert generation_overrides(chat) == {"num_return_sequences": 3}


def test_logit_bias_forces_and_forbids_a_token(local_engine, limits):
    force = sampling_controls({"logit_bias": {str(THE): 100}}, limits, chat=True, greedy=True)
    tokens, _ = generate(local_engine, logits_processors(force, 0), do_sample=False)
    assert tokens[0].tolist() == [THE] * 4  # vLLM answers "TheTheTheThe" to the same request
    plain, _ = generate(local_engine, [], max_new_tokens=1, do_sample=False)
    first = int(plain[0, 0])
    forbid = sampling_controls({"logit_bias": {str(first): -100}}, limits, chat=True, greedy=True)
    tokens, _ = generate(local_engine, logits_processors(forbid, 0), max_new_tokens=1, do_sample=False)
    assert int(tokens[0, 0]) != first


def test_penalties_subtract_counts_of_generated_tokens_only(local_engine):
    """``logit -= frequency * count + presence * (count > 0)`` on the model's real logits; tokens
    that are only in the prompt are not penalised (vLLM's and OpenAI's rule)."""
    inputs = prompt_ids(local_engine)
    prompt = inputs["input_ids"]
    generated = torch.tensor([[THE, THE, 9906]])
    ids = torch.cat([prompt, generated], dim=1)
    with torch.no_grad():
        scores = local_engine.model(ids).logits[:, -1, :]
    out = OpenAIPenaltiesProcessor(presence=0.5, frequency=1.5, prompt_length=prompt.shape[1])(ids, scores.clone())
    delta = scores - out
    assert delta[0, THE].item() == pytest.approx(1.5 * 2 + 0.5)
    assert delta[0, 9906].item() == pytest.approx(1.5 + 0.5)
    prompt_only = int(prompt[0, -2])
    assert prompt_only not in (THE, 9906) and delta[0, prompt_only].item() == 0
    assert torch.count_nonzero(delta).item() == 2
    # negative penalties reward repetition, as documented by OpenAI
    boosted = OpenAIPenaltiesProcessor(presence=-1.0, frequency=0.0, prompt_length=prompt.shape[1])(ids, scores.clone())
    assert (boosted - scores)[0, THE].item() == pytest.approx(1.0)


def test_n_gives_n_sampled_choices_reproducible_with_a_seed(local_engine, limits):
    controls = sampling_controls({"n": 3}, limits, chat=True, greedy=False)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)  # the engine's seed handling (SamplingParams.seed)
        tokens, _ = generate(local_engine, logits_processors(controls, 0), do_sample=True, temperature=1.0,
                             **generation_overrides(controls))
        runs.append(tokens.tolist())
    assert len(runs[0]) == 3 and runs[0] == runs[1]


def test_recorded_logprobs_are_the_models_raw_log_softmax(local_engine):
    """First in the list, the recorder sees the raw logits (vLLM's default ``raw_logprobs``), even
    when a later processor (here a bias) changes which token is sampled."""
    recorder = LogprobRecorder(k=3, prompt_length=prompt_ids(local_engine)["input_ids"].shape[1])
    bias = logits_processors(SamplingControls(logit_bias=((THE, 3.0),)), 0)
    tokens, prompt_length = generate(local_engine, [recorder, *bias], max_new_tokens=3, do_sample=False)
    inputs = prompt_ids(local_engine)
    full = torch.cat([inputs["input_ids"], tokens], dim=1)
    records = recorder.finish(full)[0]
    assert [r.token for r in records] == tokens[0].tolist()
    with torch.no_grad():
        raw = torch.log_softmax(local_engine.model(full).logits[0].float(), dim=-1)
    for step, record in enumerate(records):
        row = raw[prompt_length - 1 + step]
        assert record.logprob == pytest.approx(row[record.token].item(), abs=1e-4)
        top_ids = [t for t, _ in record.top]
        assert top_ids == row.topk(3).indices.tolist()
        assert record.top[0][1] >= record.top[1][1] >= record.top[2][1]
