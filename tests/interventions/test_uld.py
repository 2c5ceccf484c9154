"""ULD: assistant construction, the logit-difference math, artifact round trip, base-model checks,
flagged-only application through the openai SDK, and local/vLLM parity.

The assistant here is deterministic and small: the default model's first 2 layers with a
seeded, randomly initialised LoRA (an untrained adapter that already changes the logits), so the
tests need no training run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from classifiers.base import Verdict
from guard.artifacts import model_identity
from guard.engines.base import PromptInput, SamplingParams
from guard.errors import ConfigError
from guard.interventions.base import GuardRequest
from guard.interventions.registry import build_interventions
from guard.interventions.scoring import answer_nll
from guard.interventions.uld import ULD, build_intervention, load_runtime
from guard.interventions.uld_decoding import (
    AssistantRuntime,
    ULDLogitsProcessor,
    ULDSettings,
    choose_token,
    combine,
    plausible_mask,
    scoring_transform,
    uld_stream,
)
from guard.models import DEFAULT_SERVED_NAME
from guard.policy import load_policy
from guard.train.uld import minimal_manifest, write_artifact
from guard.interventions.uld_assistant import load_assistant, load_base_assistant
from guard.train.uld_assistant import attach_lora, default_layers, lora_config

MODEL = DEFAULT_SERVED_NAME
LAYERS = 2
ALPHA = 1.0
TOP_K = 20
FLAGGED = "Who is Basil Mahfouz Al-Kuwaiti?"
UNFLAGGED = "What is the capital of France?"


# ------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="session")
def tiny_peft(default_model_path: Path):
    base = load_base_assistant(default_model_path, LAYERS)
    model = attach_lora(base, lora_config(r=4, lora_alpha=8, lora_dropout=0.0, random_init=True), seed=1234)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_artifact(tiny_peft, default_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uld") / "assistant"
    manifest = minimal_manifest(model_identity(default_model_path), LAYERS, 30, alpha=ALPHA, top_k=TOP_K)
    write_artifact(out, tiny_peft, manifest)
    return out


@pytest.fixture(scope="session")
def runtime(tiny_artifact: Path, default_model_path: Path) -> AssistantRuntime:
    return AssistantRuntime(load_assistant(default_model_path, tiny_artifact / "adapter", LAYERS))


def write_policy(path: Path, artifact: Path, **params) -> Path:
    policy = {
        "version": 1,
        "detector": {"kind": "keyword"},
        "default_action": "refuse",
        "targets": [{"id": "tofu-basil", "names": ["Basil Mahfouz Al-Kuwaiti"], "action": "uld",
                     "params": {"artifact": str(artifact), **params}}],
    }
    path.write_text(yaml.safe_dump(policy))
    return path


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def collect(chunks) -> tuple[str, list]:
    got = [c async for c in chunks]
    return "".join(c.text for c in got), got


# ------------------------------------------------------------------------------------------------
# assistant construction


def test_default_depth():
    assert default_layers(32) == 8 and default_layers(80) == 8  # the paper's 8 for deep models
    assert default_layers(30) == 4  # SmolLM2-135M: about a seventh of its depth
    assert default_layers(24) == 3 and default_layers(4) == 2 and default_layers(1) == 1


def test_assistant_is_the_targets_first_layers(local_engine, default_model_path: Path):
    assistant = load_base_assistant(default_model_path, 3)
    target = local_engine.model
    assert assistant.config.num_hidden_layers == 3 and len(assistant.model.layers) == 3
    # shared vocabulary: same embedding matrix and (tied) LM head values
    assert torch.equal(assistant.get_input_embeddings().weight, target.get_input_embeddings().weight)
    assert torch.equal(assistant.get_output_embeddings().weight, target.get_output_embeddings().weight)
    ids = torch.tensor([local_engine.render_chat(chat(UNFLAGGED)).token_ids])
    with torch.no_grad():
        hidden = target(ids, output_hidden_states=True).hidden_states[3]
        expected = target.model.norm(hidden)
        got = assistant.model(ids).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="between 1 and 30 layers"):
        load_base_assistant(default_model_path, 31)


def test_lora_only_on_linear_layers_and_trainable(tiny_peft):
    trainable = [n for n, p in tiny_peft.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("lm_head" in n or "embed_tokens" in n for n in trainable)
    wrapped = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert wrapped == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


# ------------------------------------------------------------------------------------------------
# the math


def test_combine_is_shift_invariant_logit_difference():
    g = torch.Generator().manual_seed(0)
    t_logits, a_logits = torch.randn(12, generator=g), torch.randn(12, generator=g)
    t_logp = torch.log_softmax(t_logits, -1)
    f = combine(t_logp, a_logits + 7.0, 0.8)
    direct = t_logits - 0.8 * a_logits
    torch.testing.assert_close(torch.softmax(f, -1), torch.softmax(direct, -1))
    valid = plausible_mask(torch.sort(t_logp, descending=True).values, 0.5)
    assert valid[0] and valid.sum() < 12


def test_choose_token_greedy_and_top_p():
    ids = [5, 9, 11]
    f = torch.tensor([0.0, 3.0, -1.0])
    assert choose_token(ids, f, SamplingParams(temperature=0), None) == 9
    g = torch.Generator().manual_seed(0)
    draws = {choose_token(ids, f, SamplingParams(temperature=1.0, top_p=0.5), g) for _ in range(50)}
    assert draws == {9}  # top_p 0.5 keeps only the dominant token (p ~ 0.94)


async def test_processor_equals_direct_logit_difference(local_engine, runtime):
    """The local path's scores equal target - alpha * assistant on the top-k set, step by step."""
    settings = ULDSettings(alpha=ALPHA, top_k=TOP_K)
    recorded: list[tuple[torch.Tensor, torch.Tensor]] = []

    class Recording(ULDLogitsProcessor):
        def __call__(self, input_ids, scores):
            out = super().__call__(input_ids, scores)
            recorded.append((input_ids.clone(), out.clone()))
            return out

    ids = local_engine.render_chat(chat(FLAGGED)).token_ids
    text, _ = await collect(local_engine.generate(PromptInput(token_ids=ids), SamplingParams(max_tokens=5, temperature=0),
                                                  logits_processors=[Recording(runtime, settings)]))
    assert len(recorded) >= 3
    assistant = runtime.model
    for prefix, out in recorded:
        with torch.no_grad():
            t_logits = local_engine.model(prefix).logits[0, -1]
            a_logits = assistant(prefix).logits[0, -1]  # the full assistant, no KV cache, full head
        top = torch.topk(t_logits, TOP_K).indices
        direct = t_logits[top] - ALPHA * a_logits[top]
        got = out[0]
        assert torch.isinf(got).sum() == got.numel() - TOP_K  # everything off the plausible set is -inf
        torch.testing.assert_close(torch.softmax(got[top], -1), torch.softmax(direct, -1), atol=1e-5, rtol=1e-4)
        assert int(torch.argmax(got)) == int(top[torch.argmax(direct)])
    # the ULD answer is not the plain answer (the assistant changes the decision somewhere)
    plain, _ = await collect(local_engine.generate(PromptInput(token_ids=ids), SamplingParams(max_tokens=5, temperature=0)))
    assert text != plain


def test_scoring_transform_matches_direct(local_engine, runtime):
    settings = ULDSettings(alpha=ALPHA, top_k=TOP_K)
    tok = local_engine.tokenizer
    prompt = local_engine.render_chat(chat(FLAGGED)).token_ids
    answer = tok("He is an author.", add_special_tokens=False)["input_ids"]
    nll = answer_nll(local_engine.model, local_engine.embed(prompt), answer, scoring_transform(runtime, settings))
    plain = answer_nll(local_engine.model, local_engine.embed(prompt), answer)
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        t_logp = torch.log_softmax(local_engine.model(ids).logits[0].float(), -1)
        a_logits = runtime.model(ids).logits[0].float()
    expected = []
    for j, token in enumerate(answer):
        pos = len(prompt) - 1 + j
        vals, top = t_logp[pos].topk(TOP_K)
        row = t_logp[pos].clone()
        row[top] = vals - ALPHA * torch.log_softmax(a_logits[pos, top], -1)
        expected.append(float(-torch.log_softmax(row, -1)[token]))
    assert nll == pytest.approx(expected, abs=1e-4)
    assert nll != pytest.approx(plain, abs=1e-3)


# ------------------------------------------------------------------------------------------------
# artifacts and policies


def test_artifact_round_trip(tiny_artifact: Path, tiny_peft, default_model_path: Path):
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    assert manifest["kind"] == "uld-assistant" and manifest["assistant"]["layers"] == LAYERS
    assert (tiny_artifact / "adapter" / "adapter_model.safetensors").exists()
    assert not list(tiny_artifact.rglob("*.bin")) and not list(tiny_artifact.rglob("*.pt"))
    loaded = load_assistant(default_model_path, tiny_artifact / "adapter", LAYERS)
    ids = torch.tensor([[1, 4093, 198, 1780, 314, 260, 3575]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, tiny_peft(ids).logits, atol=2e-4, rtol=1e-4)


def test_policy_overrides_and_errors(tmp_path: Path, tiny_artifact: Path, local_engine):
    policy = load_policy(write_policy(tmp_path / "p.yaml", tiny_artifact, alpha=0.5, top_k=7, mode="step"))
    uld = build_intervention(policy, local_engine)
    runtime, settings = uld._for(policy.targets[0])
    assert (settings.alpha, settings.top_k, settings.mode) == (0.5, 7, "step")
    assert isinstance(uld, ULD) and "tofu-basil" in uld.describe()["targets"]
    cases = [({"alpha": "big"}, "targets.0.params.alpha"), ({"top_k": 0}, "targets.0.params.top_k"),
             ({"mode": "fast"}, "targets.0.params.mode"), ({"alhpa": 1}, "targets.0.params.alhpa")]
    for params, where in cases:
        with pytest.raises(ConfigError) as err:
            build_intervention(load_policy(write_policy(tmp_path / "bad.yaml", tiny_artifact, **params)), local_engine)
        assert err.value.param == where
    missing = load_policy(write_policy(tmp_path / "missing.yaml", tmp_path / "nope"))
    with pytest.raises(ConfigError, match="does not exist") as err:
        build_interventions(missing, local_engine)
    assert err.value.param == "targets.0.params.artifact"


def test_base_model_mismatch_is_refused(tmp_path: Path, tiny_artifact: Path, local_engine):
    other = tmp_path / "other"
    shutil.copytree(tiny_artifact, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["base_model"].update(name="tofu-mini-target", embedding_sha256="0" * 64)
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="was trained for base model 'tofu-mini-target'.*retrain") as err:
        load_runtime(other, local_engine, param="targets.0.params.artifact")
    assert err.value.param == "targets.0.params.artifact"


async def test_a_reload_releases_the_old_assistant(tmp_path: Path, tiny_artifact: Path, local_engine):
    """Assistants belong to the pipeline that loaded them: a reload loads the new policy's own, and
    releasing the replaced pipeline (what the holder does once requests on it are done) frees the old one."""
    import gc
    import weakref

    from classifiers.base import NullDetector
    from guard.pipeline import Pipeline, PipelineHolder

    source = write_policy(tmp_path / "p.yaml", tiny_artifact)
    old = Pipeline.build(load_policy(source), local_engine, lambda p: NullDetector(), source)
    holder = PipelineHolder(old, local_engine, lambda p: NullDetector())
    old_model = weakref.ref(old.interventions["uld"].assistants["tofu-basil"][0].model)
    new = await holder.reload()
    assert holder.current is new and new.interventions["uld"].assistants["tofu-basil"][0].model is not old_model()
    assert old_model() is not None  # requests that started on the old pipeline may still decode with it
    old.close()
    gc.collect()
    assert old_model() is None and not old.interventions["uld"].assistants and len(old.interventions["uld"].cache) == 0
    assert new.interventions["uld"].assistants["tofu-basil"][0].model is not None  # the new one is untouched


def test_real_other_model_is_refused(tiny_artifact: Path, tofu_micro):
    """An engine serving another model folder (a fine-tuned twin) is refused by embedding hash."""
    from guard.engines.local import LocalEngine

    twin = tofu_micro["target"]
    engine = LocalEngine(twin, twin.name)  # not started: the identity is read from the folder
    with pytest.raises(ConfigError, match=f"served model is '{twin.name}'"):
        load_runtime(tiny_artifact, engine)


# ------------------------------------------------------------------------------------------------
# serving: flagged requests only, both engines, stream and not


async def _direct_uld(engine, runtime, text: str, max_tokens: int) -> str:
    ids = engine.render_chat(chat(text)).token_ids
    settings = ULDSettings(alpha=ALPHA, top_k=TOP_K)
    out, _ = await collect(engine.generate(PromptInput(token_ids=ids), SamplingParams(max_tokens=max_tokens, temperature=0),
                                           logits_processors=[ULDLogitsProcessor(runtime, settings)]))
    return out


async def test_flagged_only_through_sdk_local(local_engine, runtime, tiny_artifact, tmp_path, guard_server, sdk):
    policy = write_policy(tmp_path / "p.yaml", tiny_artifact)
    client = sdk(await guard_server(local_engine, policy=str(policy), debug=True))
    kwargs = dict(model=MODEL, max_tokens=8, temperature=0)
    raw = await client.chat.completions.with_raw_response.create(messages=chat(FLAGGED), **kwargs)
    assert raw.headers["X-Guard-Action"] == "uld"
    flagged = raw.parse()
    expected = await _direct_uld(local_engine, runtime, FLAGGED, 8)
    assert flagged.choices[0].message.content == expected
    plain_ids = local_engine.render_chat(chat(FLAGGED)).token_ids
    plain, _ = await collect(local_engine.generate(PromptInput(token_ids=plain_ids), SamplingParams(max_tokens=8, temperature=0)))
    assert expected != plain
    stream = await client.chat.completions.create(messages=chat(FLAGGED), stream=True,
                                                  stream_options={"include_usage": True}, **kwargs)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == flagged.usage.completion_tokens
    # an unflagged question is answered by the model untouched
    raw = await client.chat.completions.with_raw_response.create(messages=chat(UNFLAGGED), **kwargs)
    assert raw.headers["X-Guard-Action"] == "pass"
    ids = local_engine.render_chat(chat(UNFLAGGED)).token_ids
    untouched, _ = await collect(local_engine.generate(PromptInput(token_ids=ids), SamplingParams(max_tokens=8, temperature=0)))
    assert raw.parse().choices[0].message.content == untouched


async def test_sampling_is_seeded_local(local_engine, runtime, tiny_artifact):
    uld = ULD({None: (runtime, ULDSettings(alpha=ALPHA, top_k=TOP_K), str(tiny_artifact))})
    request = GuardRequest.chat(tuple(chat(FLAGGED)), SamplingParams(max_tokens=6, temperature=0.9, seed=7))
    verdict = Verdict(flagged=True, target_id=None, score=1.0)
    a, _ = await collect(uld.stream(request, verdict, None, local_engine))
    b, _ = await collect(uld.stream(request, verdict, None, local_engine))
    assert a == b and a


@pytest.mark.vllm
@pytest.mark.parametrize("question", [FLAGGED, "Tell me about Basil Mahfouz Al-Kuwaiti's books."])
@pytest.mark.parametrize("mode", ["stream", "step"])
async def test_vllm_stepwise_matches_local(vllm_engine, local_engine, runtime, question, mode):
    settings = ULDSettings(alpha=ALPHA, top_k=TOP_K, mode=mode)
    ids = vllm_engine.render_chat(chat(question)).token_ids
    assert ids == local_engine.render_chat(chat(question)).token_ids
    stats: dict[str, int] = {}
    text, chunks = await collect(uld_stream(vllm_engine, ids, SamplingParams(max_tokens=12, temperature=0), runtime,
                                            settings, stats=stats))
    assert text == await _direct_uld(local_engine, runtime, question, 12)
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length") and last.completion_tokens == stats["tokens"]
    assert last.prompt_tokens == len(ids)
    if mode == "step":
        assert stats["requests"] == stats["tokens"]
    assert sum(1 for c in chunks if c.token_ids) == stats["tokens"]  # one chunk per token: it streams


@pytest.mark.vllm
async def test_vllm_stream_mode_speculates(vllm_engine, local_engine, runtime):
    """alpha = 0 is the target itself: every streamed proposal is accepted, one upstream request in
    all, and the text is vLLM's own greedy answer; a small alpha diverges now and then and still
    matches the local path token for token (KV-cache roll-back after a rejected batch)."""
    ids = vllm_engine.render_chat(chat(UNFLAGGED)).token_ids
    params = SamplingParams(max_tokens=16, temperature=0)
    stats: dict[str, int] = {}
    text, _ = await collect(uld_stream(vllm_engine, ids, params, runtime,
                                       ULDSettings(alpha=0.0, top_k=TOP_K, mode="stream"), stats=stats))
    plain, _ = await collect(vllm_engine.generate(PromptInput(token_ids=ids), params))
    assert text == plain and stats["requests"] == 1
    settings = ULDSettings(alpha=0.35, top_k=TOP_K, mode="stream")
    question = "Who is Basil Mahfouz Al-Kuwaiti? Answer in two sentences."
    ids = vllm_engine.render_chat(chat(question)).token_ids
    stats = {}
    text, _ = await collect(uld_stream(vllm_engine, ids, params, runtime, settings, stats=stats))
    local, _ = await collect(local_engine.generate(PromptInput(token_ids=ids), params,
                                                   logits_processors=[ULDLogitsProcessor(runtime, settings)]))
    assert text == local
    assert stats["requests"] < stats["tokens"]  # proposals were accepted between divergences


@pytest.mark.vllm
async def test_vllm_stop_strings_and_sampling(vllm_engine, runtime):
    settings = ULDSettings(alpha=0.3, top_k=TOP_K)
    ids = vllm_engine.render_chat(chat(UNFLAGGED)).token_ids
    full, _ = await collect(uld_stream(vllm_engine, ids, SamplingParams(max_tokens=10, temperature=0), runtime, settings))
    assert len(full) > 4
    stop = full[3:5]
    cut, chunks = await collect(uld_stream(vllm_engine, ids, SamplingParams(max_tokens=10, temperature=0, stop=(stop,)),
                                           runtime, settings))
    assert cut == full[: full.index(stop)] and chunks[-1].finish_reason == "stop"
    sampled = [await collect(uld_stream(vllm_engine, ids, SamplingParams(max_tokens=6, temperature=1.0, seed=3), runtime,
                                        settings)) for _ in range(2)]
    assert sampled[0][0] == sampled[1][0]


@pytest.mark.vllm
async def test_flagged_only_through_sdk_vllm(vllm_engine, vllm_url, local_engine, runtime, tiny_artifact, tmp_path,
                                             guard_server, sdk):
    policy = write_policy(tmp_path / "p.yaml", tiny_artifact)
    client = sdk(await guard_server(vllm_engine, policy=str(policy), debug=True))
    kwargs = dict(model=MODEL, max_tokens=8, temperature=0)
    raw = await client.chat.completions.with_raw_response.create(messages=chat(FLAGGED), **kwargs)
    assert raw.headers["X-Guard-Action"] == "uld"
    flagged = raw.parse()
    expected = await _direct_uld(local_engine, runtime, FLAGGED, 8)
    assert flagged.choices[0].message.content == expected
    assert flagged.usage.prompt_tokens == len(vllm_engine.render_chat(chat(FLAGGED)).token_ids)
    stream = await client.chat.completions.create(messages=chat(FLAGGED), stream=True,
                                                  stream_options={"include_usage": True}, **kwargs)
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == flagged.usage.completion_tokens
    direct = sdk(f"{vllm_url}/v1")
    untouched = await direct.chat.completions.create(messages=chat(UNFLAGGED), **kwargs)
    via_guard = await client.chat.completions.create(messages=chat(UNFLAGGED), **kwargs)
    assert via_guard.choices[0].message.content == untouched.choices[0].message.content
