"""Both engines on the real default model: the prompt-side operations and generation agree."""

from __future__ import annotations

import pytest
import torch

from guard.engines.base import PromptInput, SamplingParams
from guard.engines.vllm import load_input_embeddings

GREEDY = SamplingParams(max_tokens=24, temperature=0)
MESSAGES = [{"role": "user", "content": "Name three primary colors."}]


async def _text(engine, prompt, params=GREEDY):
    chunks = [c async for c in engine.generate(prompt, params)]
    return "".join(c.text for c in chunks), chunks[-1]


async def test_local_ids_and_embeds_agree(local_engine):
    rendered = local_engine.render_chat(MESSAGES)
    by_ids, last = await _text(local_engine, PromptInput(token_ids=rendered.token_ids))
    by_embeds, _ = await _text(local_engine, PromptInput(embeds=local_engine.embed(rendered.token_ids)))
    assert by_ids and by_ids == by_embeds
    assert last.prompt_tokens == len(rendered.token_ids) and last.completion_tokens > 0


def test_device_choice_is_resolved_and_checked():
    from guard.devices import resolve_device
    from guard.errors import ConfigError

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    bad = ["tpu", "not a device"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:1"])
    for device in bad:
        with pytest.raises(ConfigError) as info:
            resolve_device(device, param="local.device")
        assert info.value.param == "local.device" and device in info.value.message


async def test_local_engine_reports_its_device_and_keeps_embeddings_on_the_cpu(local_engine):
    assert (await local_engine.health())["device"] == str(next(local_engine.model.parameters()).device.type)
    assert local_engine.embed([1, 2, 3]).device.type == "cpu"


async def test_local_top_logprobs_match_greedy_choice(local_engine):
    rendered = local_engine.render_chat(MESSAGES)
    top = await local_engine.top_logprobs(rendered.token_ids, 5)
    first = [c async for c in local_engine.generate(PromptInput(token_ids=rendered.token_ids), SamplingParams(max_tokens=1, temperature=0))]
    assert first[0].token_ids == [top[0][0]]
    assert all(a[1] >= b[1] for a, b in zip(top, top[1:]))


def test_embedding_matrix_read_from_safetensors_matches_model(local_engine, default_model_path):
    matrix = load_input_embeddings(default_model_path)
    assert torch.equal(matrix, local_engine.model.get_input_embeddings().weight.detach())


@pytest.mark.vllm
async def test_vllm_token_prompt_matches_local(vllm_engine, local_engine):
    rendered = vllm_engine.render_chat(MESSAGES)
    assert rendered.token_ids == local_engine.render_chat(MESSAGES).token_ids
    remote, last = await _text(vllm_engine, PromptInput(token_ids=rendered.token_ids))
    local, _ = await _text(local_engine, PromptInput(token_ids=rendered.token_ids))
    assert remote == local and last.finish_reason in ("stop", "length")


@pytest.mark.vllm
async def test_vllm_clean_prompt_embeds_equal_plain_prompt(vllm_engine):
    rendered = vllm_engine.render_chat(MESSAGES)
    plain, _ = await _text(vllm_engine, PromptInput(token_ids=rendered.token_ids))
    embedded, _ = await _text(vllm_engine, PromptInput(embeds=vllm_engine.embed(rendered.token_ids)))
    assert plain == embedded


@pytest.mark.vllm
async def test_vllm_noised_prompt_embeds_change_the_answer(vllm_engine):
    rendered = vllm_engine.render_chat(MESSAGES)
    embeds = vllm_engine.embed(rendered.token_ids)
    gen = torch.Generator().manual_seed(0)
    noised = embeds + torch.randn(embeds.shape, generator=gen) * embeds.std() * 3
    plain, _ = await _text(vllm_engine, PromptInput(embeds=embeds))
    corrupted, _ = await _text(vllm_engine, PromptInput(embeds=noised))
    assert plain != corrupted


@pytest.mark.vllm
async def test_vllm_top_logprobs_agree_with_local(vllm_engine, local_engine):
    ids = vllm_engine.render_chat(MESSAGES).token_ids
    remote = await vllm_engine.top_logprobs(ids, 10)
    local = await local_engine.top_logprobs(ids, 10)
    assert remote[0][0] == local[0][0]
    assert [t for t, _ in remote[:3]] == [t for t, _ in local[:3]]
    assert abs(remote[0][1] - local[0][1]) < 1e-2
