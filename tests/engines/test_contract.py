"""The Engine contract: what callers may rely on is declared (capabilities, model folder, device,
width, identity), and an engine asked for what it does not declare says so with an error."""

from __future__ import annotations

import pytest

from guard.artifacts import model_identity
from guard.engines.base import PromptInput, SamplingParams
from guard.engines.local import LocalEngine
from guard.errors import UpstreamUnsupported


def test_an_unstarted_engine_knows_its_model_folder_width_and_identity(default_model_path):
    engine = LocalEngine(default_model_path, "smollm", device="cpu")
    assert engine.model_dir == default_model_path.resolve() and engine.device == "cpu"
    identity = engine.model_identity()
    assert identity == model_identity(default_model_path) and engine.hidden_size == identity["hidden_size"] == 576
    identity["name"] = "changed"  # callers get a copy: the engine's own record stays as read
    assert engine.model_identity()["name"] == default_model_path.resolve().name


def test_vocab_size_counts_added_tokens_and_is_read_from_the_tokenizer_once(local_engine, monkeypatch):
    """``logit_bias`` keys are checked against it on every request; ``len(tokenizer)`` rebuilds the
    vocabulary (milliseconds), so the engine asks once."""
    tokenizer = local_engine.tokenizer
    assert local_engine.vocab_size == len(tokenizer) == 49152
    calls = []
    monkeypatch.setattr(type(tokenizer), "__len__", lambda self: calls.append(1) or 0)
    assert local_engine.vocab_size == 49152 and not calls


async def test_local_engine_declares_processors_and_refuses_what_it_lacks(local_engine):
    caps = local_engine.capabilities
    assert caps.logits_processors and caps.prompt_embeds and not caps.forwarding and not caps.streamed_top_logprobs
    with pytest.raises(UpstreamUnsupported, match="top-k"):
        [p async for p in local_engine.stream_top_logprobs([1, 2], 2, 5)]
    with pytest.raises(UpstreamUnsupported, match="forward"):
        await local_engine.forward_request("/v1/completions", {}, b"{}", 4)
    seen = []

    def processor(input_ids, scores):
        seen.append(input_ids.shape[1])
        return scores

    ids = local_engine.render_chat([{"role": "user", "content": "Hi"}]).token_ids
    chunks = [c async for c in local_engine.generate(PromptInput(token_ids=ids), SamplingParams(max_tokens=3, temperature=0),
                                                     logits_processors=[processor])]
    assert chunks[-1].completion_tokens == len(seen) and seen[0] == len(ids)  # called once per generated token


async def test_vllm_engine_declares_forwarding_and_refuses_processors(fake_engine):
    caps = fake_engine.capabilities
    assert caps.forwarding and caps.streamed_top_logprobs and not caps.logits_processors
    with pytest.raises(UpstreamUnsupported, match="logits processors"):
        [c async for c in fake_engine.generate(PromptInput(token_ids=[1, 2]), SamplingParams(max_tokens=2),
                                               logits_processors=[lambda ids, scores: scores])]
