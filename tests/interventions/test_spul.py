"""SPUL at serving time: where the soft prompt goes, the artifact, the base-model check, and
flagged-only application through the real openai SDK on the local engine and on real vLLM.

The soft prompt here is deterministic (embeddings of seeded random vocabulary tokens): these tests
check the plumbing, not the training (tests/train/test_spul_train.py does that).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from classifiers.base import Verdict
from guard.artifacts import model_identity
from guard.engines.base import MessageSpan, PromptInput, RenderedPrompt, SamplingParams
from guard.errors import ConfigError
from guard.interventions.base import GuardRequest
from guard.interventions.registry import build_interventions
from guard.interventions.scoring import answer_nll
from guard.interventions.spul import (
    SoftPromptUnlearning, build_intervention, completion_insertion_index, insert_soft_prompt, insertion_index,
    load_for_engine, load_soft_prompt, save_soft_prompt,
)
from guard.models import DEFAULT_SERVED_NAME
from guard.policy import load_policy

MODEL = DEFAULT_SERVED_NAME
GREEDY = SamplingParams(max_tokens=16, temperature=0)
FLAGGED = [{"role": "user", "content": "Who is Basil Mahfouz Al-Kuwaiti?"}]
UNFLAGGED = [{"role": "user", "content": "What is the capital of France?"}]


# -- where the vectors go (no model) ----------------------------------------------------------------


def _rendered(n_tokens: int, spans: tuple[MessageSpan, ...]) -> RenderedPrompt:
    return RenderedPrompt(text="", token_ids=list(range(n_tokens)), spans=spans)


def test_insertion_index_last_user_turn_or_end():
    spans = (MessageSpan("system", 3, 6, 0, 0), MessageSpan("user", 11, 12, 0, 0),
             MessageSpan("assistant", 18, 20, 0, 0), MessageSpan("user", 25, 27, 0, 0))
    assert insertion_index(_rendered(31, spans), "user") == 25
    assert insertion_index(_rendered(31, spans), "assistant") == 31
    # no locatable user content (empty message): falls back to the end of the generation prompt
    assert insertion_index(_rendered(10, (MessageSpan("system", 3, 6, 0, 0),)), "user") == 10
    with pytest.raises(ValueError):
        insertion_index(_rendered(10, spans), "middle")


def test_completion_insertion_index_skips_bos():
    assert completion_insertion_index([5, 6, 7], "user", bos_token_id=None) == 0
    assert completion_insertion_index([1, 6, 7], "user", bos_token_id=1) == 1
    assert completion_insertion_index([1, 6, 7], "assistant", bos_token_id=1) == 3


def test_insert_soft_prompt_places_rows_and_keeps_gradient():
    embeds = torch.arange(12, dtype=torch.float32).view(4, 3)
    soft = torch.full((2, 3), -1.0, requires_grad=True)
    out = insert_soft_prompt(embeds, 1, soft)
    assert out.shape == (6, 3)
    assert torch.equal(out[0], embeds[0]) and torch.equal(out[3:], embeds[1:])
    assert torch.equal(out[1:3], soft.detach())
    out.sum().backward()
    assert torch.equal(soft.grad, torch.ones(2, 3))
    with pytest.raises(ValueError):
        insert_soft_prompt(embeds, 5, soft)


# -- artifacts ------------------------------------------------------------------------------------------


def random_soft_prompt(engine, n: int = 8, seed: int = 0) -> torch.Tensor:
    """Embeddings of n seeded random vocabulary tokens: on the embedding manifold, deterministic."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(200, len(engine.tokenizer) - 200, (n,), generator=gen).tolist()
    return engine.embed(ids)


def write_artifact(directory: Path, vectors: torch.Tensor, base_model_dir: Path, position: str = "user") -> Path:
    save_soft_prompt(directory, vectors, {"base_model": model_identity(base_model_dir), "position": position})
    return directory


def write_policy(path: Path, artifact: Path | None, *, extra_params: str = "") -> Path:
    params = f"\n    params: {{artifact: {artifact}{extra_params}}}" if artifact is not None else ""
    path.write_text(f"""
version: 1
detector: {{kind: keyword}}
refusal_message: "No comment."
targets:
  - id: basil
    names: ["Basil Mahfouz Al-Kuwaiti"]
    action: spul{params}
""")
    return path


@pytest.fixture(scope="module")
def soft_vectors(local_engine):
    return random_soft_prompt(local_engine)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, soft_vectors, default_model_path) -> Path:
    return write_artifact(tmp_path_factory.mktemp("spul") / "soft", soft_vectors, default_model_path)


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory, artifact) -> Path:
    return write_policy(tmp_path_factory.mktemp("policy") / "spul.yaml", artifact)


def test_artifact_round_trip(artifact, soft_vectors, default_model_path):
    soft = load_soft_prompt(artifact)
    assert torch.equal(soft.vectors, soft_vectors)
    assert soft.position == "user" and soft.n_tokens == 8
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["kind"] == "spul-soft-prompt" and manifest["hidden_size"] == soft_vectors.shape[1]
    assert manifest["base_model"]["embedding_sha256"] == model_identity(default_model_path)["embedding_sha256"]


def test_tampered_tensor_is_refused(tmp_path, soft_vectors, default_model_path):
    from safetensors.torch import save_file

    art = write_artifact(tmp_path / "soft", soft_vectors, default_model_path)
    save_file({"soft_prompt": soft_vectors + 1.0}, str(art / "soft_prompt.safetensors"))
    with pytest.raises(ConfigError, match="does not match the hash"):
        load_soft_prompt(art)


def test_soft_prompt_for_another_base_model_is_refused(tmp_path, local_engine):
    from transformers import LlamaConfig, LlamaForCausalLM

    other_dir = tmp_path / "other-model"
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(other_dir)
    art = write_artifact(tmp_path / "soft", torch.randn(4, 16), other_dir)
    policy = load_policy(write_policy(tmp_path / "p.yaml", art))
    with pytest.raises(ConfigError) as info:
        build_intervention(policy, local_engine)
    message = str(info.value)
    assert "trained for base model 'other-model'" in message
    assert "smollm2-135m-instruct" in message and "guard-train spul" in message
    assert info.value.param == "targets.0.params.artifact"

    # same width, different weights: the hash still tells them apart
    same_width = write_artifact(tmp_path / "soft2", torch.randn(4, 576), other_dir)
    manifest = json.loads((same_width / "manifest.json").read_text())
    manifest["base_model"]["embedding_shape"] = [49152, 576]
    (same_width / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="trained for base model"):
        load_for_engine(same_width, local_engine)


def test_policy_errors_name_the_field(tmp_path, local_engine, artifact):
    with pytest.raises(ConfigError) as info:
        build_intervention(load_policy(write_policy(tmp_path / "a.yaml", None)), local_engine)
    assert info.value.param == "targets.0.params.artifact" and "guard-train spul" in str(info.value)
    with pytest.raises(ConfigError) as info:
        build_intervention(load_policy(write_policy(tmp_path / "b.yaml", tmp_path / "missing")), local_engine)
    assert info.value.param == "targets.0.params.artifact" and "does not exist" in str(info.value)
    with pytest.raises(ConfigError) as info:
        build_intervention(load_policy(write_policy(tmp_path / "c.yaml", artifact, extra_params=", strenght: 2")), local_engine)
    assert info.value.param == "targets.0.params.strenght"


def test_policy_relative_artifact_path_resolves(tmp_path, soft_vectors, default_model_path, local_engine):
    write_artifact(tmp_path / "artifacts" / "soft", soft_vectors, default_model_path)
    (tmp_path / "policies").mkdir()
    policy = load_policy(write_policy(tmp_path / "policies" / "p.yaml", Path("../artifacts/soft")))
    built = build_interventions(policy, local_engine)
    assert isinstance(built["spul"], SoftPromptUnlearning)
    assert torch.equal(built["spul"].prompts["basil"].vectors, soft_vectors)


# -- the intervention on the local engine -------------------------------------------------------------------


async def _collect(agen):
    chunks = [c async for c in agen]
    return "".join(c.text for c in chunks), chunks[-1]


async def test_stream_inserts_soft_prompt_before_user_content(local_engine, policy_path):
    policy = load_policy(policy_path)
    spul = build_intervention(policy, local_engine)
    request = GuardRequest.chat(tuple(FLAGGED), GREEDY)
    rendered = local_engine.render_chat(FLAGGED)
    soft = spul.prompts["basil"]
    index = rendered.spans[-1].token_start
    assert local_engine.tokenizer.decode(rendered.token_ids[index - 3:index]) == "<|im_start|>user\n"
    expected_embeds = insert_soft_prompt(local_engine.embed(rendered.token_ids), index, soft.vectors)

    text, last = await _collect(spul.stream(request, Verdict(True, "basil", 1.0), policy.targets[0], local_engine))
    direct, _ = await _collect(local_engine.generate(PromptInput(embeds=expected_embeds), GREEDY))
    plain, _ = await _collect(local_engine.generate(PromptInput(token_ids=rendered.token_ids), GREEDY))
    assert text == direct
    assert text != plain, "the soft prompt should change the answer"
    assert last.prompt_tokens == len(rendered.token_ids)  # usage counts the client's tokens only

    embeds, transform = spul.scoring_inputs(request, Verdict(True, "basil", 1.0), policy.targets[0], local_engine)
    assert transform is None and torch.equal(embeds, expected_embeds)
    answer = local_engine.tokenizer(" I don't know.", add_special_tokens=False)["input_ids"]
    guarded = answer_nll(local_engine.model, embeds, answer)
    unguarded = answer_nll(local_engine.model, local_engine.embed(rendered.token_ids), answer)
    assert len(guarded) == len(answer) and guarded != unguarded


async def test_completion_request_gets_soft_prompt_at_start(local_engine, policy_path):
    spul = build_intervention(load_policy(policy_path), local_engine)
    request = GuardRequest.completion("Basil Mahfouz Al-Kuwaiti was born in", GREEDY)
    ids = request.prompt_ids(local_engine)
    embeds, _ = spul.scoring_inputs(request, Verdict(True, "basil", 1.0), None, local_engine)
    assert embeds.shape[0] == len(ids) + 8
    assert torch.equal(embeds[:8], spul.prompts["basil"].vectors)


async def test_guard_applies_spul_to_flagged_requests_only(local_engine, guard_server, sdk, policy_path):
    plain_client = sdk(await guard_server(local_engine))
    client = sdk(await guard_server(local_engine, policy=str(policy_path), debug=True))
    kwargs = dict(model=MODEL, max_tokens=16, temperature=0)

    plain_unflagged = await plain_client.chat.completions.create(messages=UNFLAGGED, **kwargs)
    raw = await client.chat.completions.with_raw_response.create(messages=UNFLAGGED, **kwargs)
    assert raw.headers["X-Guard-Action"] == "pass"
    assert raw.parse().choices[0].message.content == plain_unflagged.choices[0].message.content

    plain_flagged = await plain_client.chat.completions.create(messages=FLAGGED, **kwargs)
    raw = await client.chat.completions.with_raw_response.create(messages=FLAGGED, **kwargs)
    guarded = raw.parse()
    assert raw.headers["X-Guard-Action"] == "spul" and raw.headers["X-Guard-Target"] == "basil"
    assert guarded.choices[0].message.content != plain_flagged.choices[0].message.content
    assert guarded.usage.prompt_tokens == plain_flagged.usage.prompt_tokens

    stream = await client.chat.completions.create(messages=FLAGGED, stream=True, stream_options={"include_usage": True},
                                                  **kwargs)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == guarded.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == guarded.usage.completion_tokens


# -- vLLM: the same soft prompt through prompt_embeds ---------------------------------------------------------


@pytest.mark.vllm
async def test_local_and_vllm_agree_for_the_same_soft_prompt(local_engine, vllm_engine, policy_path):
    policy = load_policy(policy_path)
    local_spul = build_intervention(policy, local_engine)
    vllm_spul = build_intervention(policy, vllm_engine)
    assert torch.equal(local_spul.prompts["basil"].vectors, vllm_spul.prompts["basil"].vectors)
    verdict = Verdict(True, "basil", 1.0)
    for messages in (FLAGGED, [{"role": "user", "content": "Tell me about Basil Mahfouz Al-Kuwaiti's books."}]):
        request = GuardRequest.chat(tuple(messages), SamplingParams(max_tokens=24, temperature=0))
        local_text, local_last = await _collect(local_spul.stream(request, verdict, policy.targets[0], local_engine))
        vllm_text, vllm_last = await _collect(vllm_spul.stream(request, verdict, policy.targets[0], vllm_engine))
        assert local_text and vllm_text == local_text
        assert vllm_last.prompt_tokens == local_last.prompt_tokens == len(local_engine.render_chat(messages).token_ids)
        assert vllm_last.completion_tokens == local_last.completion_tokens


@pytest.mark.vllm
async def test_guard_on_vllm_serves_spul_through_the_sdk(local_engine, vllm_engine, guard_server, sdk, policy_path):
    local_client = sdk(await guard_server(local_engine, policy=str(policy_path)))
    client = sdk(await guard_server(vllm_engine, policy=str(policy_path), debug=True))
    kwargs = dict(model=MODEL, max_tokens=16, temperature=0)

    raw = await client.chat.completions.with_raw_response.create(messages=FLAGGED, **kwargs)
    assert raw.headers["X-Guard-Action"] == "spul"
    guarded = raw.parse().choices[0].message.content
    assert guarded == (await local_client.chat.completions.create(messages=FLAGGED, **kwargs)).choices[0].message.content
    stream = await client.chat.completions.create(messages=FLAGGED, stream=True, **kwargs)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == guarded

    plain_client = sdk(await guard_server(vllm_engine))
    raw = await client.chat.completions.with_raw_response.create(messages=UNFLAGGED, **kwargs)
    assert raw.headers.get("X-Guard-Action") in (None, "pass")  # unflagged: forwarded to vLLM untouched
    plain = await plain_client.chat.completions.create(messages=UNFLAGGED, **kwargs)
    assert raw.parse().choices[0].message.content == plain.choices[0].message.content
