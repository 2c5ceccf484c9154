"""Every method acts on every place the target appears (issue 19, finding 1).

A question placed in a system, developer or assistant turn (the user turn only says "Answer.") is
read by the model like a user turn, so ECO must corrupt the target's tokens there, and SPUL/ULD must
apply whatever turn holds it. Checked at three levels:

* token selection on the default model's real tokenizer and chat template (which positions);
* through a running guard and the openai SDK, observing what the engine is asked to generate from
  (the corrupted embeddings, the soft prompt, the ULD logits processor), on the local engine and on
  a real vLLM server (``vllm`` marker);
* end to end on ``tofu-micro-target`` (which memorised its forget QA; built by the ``tofu_micro``
  session fixture, so ``slow``): the guarded answer to the question in each role is not the
  unguarded, memorised one.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from guard.engines.rendering import render_chat
from guard.interventions.spul import insertion_index
from guard.interventions.token_selection import select_tokens
from guard.interventions.uld_decoding import ULDLogitsProcessor
from guard.models import DEFAULT_SERVED_NAME
from guard.protocol import ChatCompletionRequest

MODEL = DEFAULT_SERVED_NAME
BASIL = "Basil Mahfouz Al-Kuwaiti"
QUESTION = f"Can you tell me about the occupations of {BASIL}'s parents?"  # forget01 row 3963 (micro target)
MEMORISED = "Basil Mahfouz Al-Kuwaiti's father was a florist and his mother was a game developer."
NO_NAME = "What did the parents of the author of 'Promise by the Seine' do for a living?"
ROLES = ["system", "developer", "user", "assistant"]


def placed(role: str, question: str = QUESTION) -> list[dict[str, Any]]:
    """The question in a turn of ``role``; unless that is the user turn, the user only says "Answer."."""
    if role == "user":
        return [{"role": "user", "content": question}]
    return [{"role": role, "content": question}, {"role": "user", "content": "Answer."}]


def plain(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The messages exactly as the guard hands them to the engine (``developer`` -> system, parts joined)."""
    return ChatCompletionRequest.model_validate({"model": MODEL, "messages": messages}).plain_messages()


def content_span(rendered, messages: list[dict[str, Any]], role: str):
    """The rendered span of the (first) message of ``role`` (developer renders as system)."""
    want = "system" if role == "developer" else role
    return next(s for s in rendered.spans if s.role == want)


@pytest.fixture(scope="module")
def tokenizer(default_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path)


# ------------------------------------------------------------------------------------------------
# which tokens ECO selects (real tokenizer and chat template)


@pytest.mark.parametrize("role", ROLES)
def test_the_name_is_selected_in_every_role(tokenizer, role):
    messages = placed(role)
    rendered = render_chat(tokenizer, plain(messages))
    sel = select_tokens(rendered, [BASIL], "entity", special_ids=tokenizer.all_special_ids)
    assert sel.mode == "entity"
    assert tokenizer.decode([rendered.token_ids[i] for i in sel.positions]).strip() == BASIL
    span = content_span(rendered, messages, role)
    assert all(span.char_start <= s and e <= span.char_end for s, e in sel.mentions)


@pytest.mark.parametrize("role", ROLES)
def test_without_a_mention_all_content_of_every_role_is_selected(tokenizer, role):
    messages = placed(role, NO_NAME)
    rendered = render_chat(tokenizer, plain(messages))
    sel = select_tokens(rendered, [BASIL], "entity", special_ids=tokenizer.all_special_ids)
    assert sel.mode == "all_content"
    chosen = tokenizer.decode([rendered.token_ids[i] for i in sel.positions])
    # every turn's content, nothing of the template (role headers, the default system prompt)
    assert chosen == "".join(m["content"] for m in messages)
    assert "SmolLM" not in chosen and "<|im_start|>" not in chosen


@pytest.mark.parametrize("first_role", ["system", "user", "assistant"])
def test_a_name_split_across_turns_is_selected_on_both_sides(tokenizer, first_role):
    messages = [{"role": first_role, "content": "What awards has Basil"},
                {"role": "user", "content": "Mahfouz Al-Kuwaiti received?"}]
    rendered = render_chat(tokenizer, plain(messages))
    sel = select_tokens(rendered, [BASIL], "entity", special_ids=tokenizer.all_special_ids)
    assert sel.mode == "entity"
    assert [rendered.text[s:e] for s, e in sel.mentions] == ["Basil", "Mahfouz Al-Kuwaiti"]
    chosen = tokenizer.decode([rendered.token_ids[i] for i in sel.positions])
    assert chosen.strip() == "BasilMahfouz Al-Kuwaiti"  # the tokens of both turns


def test_a_name_the_template_renders_outside_content_is_selected(default_model_path):
    """A template that renders the participant ``name``: the model reads it, so it is corrupted too."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_path)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}{% if m.get('name') %} ({{ m['name'] }})"
                         "{% endif %}\n{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n")
    messages = [{"role": "user", "content": "Tell me about my parents' jobs.", "name": BASIL}]
    rendered = render_chat(tok, plain(messages))
    sel = select_tokens(rendered, [BASIL], "entity", special_ids=tok.all_special_ids)
    assert sel.mode == "entity" and tok.decode([rendered.token_ids[i] for i in sel.positions]).strip() == BASIL


# ------------------------------------------------------------------------------------------------
# through the guard: what the engine is asked to generate from


def record_generations(monkeypatch: pytest.MonkeyPatch, engine: Any) -> list[tuple[Any, list[Any]]]:
    """Record (prompt, logits processors) of every ``engine.generate`` call; the engine still generates.
    The wrapper keeps the engine's signature (ULD picks its path by it)."""
    seen: list[tuple[Any, list[Any]]] = []
    original = engine.generate
    if "logits_processors" in inspect.signature(original).parameters:
        async def generate(prompt, params, logits_processors=()):  # type: ignore[no-untyped-def]
            seen.append((prompt, list(logits_processors)))
            async for chunk in original(prompt, params, logits_processors):
                yield chunk
    else:
        async def generate(prompt, params):  # type: ignore[no-untyped-def,misc]
            seen.append((prompt, []))
            async for chunk in original(prompt, params):
                yield chunk
    monkeypatch.setattr(engine, "generate", generate)
    return seen


@pytest.fixture(params=["local", pytest.param("vllm", marks=pytest.mark.vllm)])
def engine(request):
    return request.getfixturevalue(f"{request.param}_engine")


async def ask(sdk, base: str, messages: list[dict[str, Any]]) -> tuple[str, str]:
    raw = await sdk(base).chat.completions.with_raw_response.create(model=MODEL, messages=messages, max_tokens=4,
                                                                    temperature=0, seed=3)
    return raw.headers["x-guard-action"], raw.parse().choices[0].message.content


@pytest.mark.parametrize("role", ROLES)
async def test_eco_corrupts_the_name_in_every_role(engine, guard_server, sdk, method_policy, monkeypatch, role):
    policy = method_policy("eco", {"corruption": "rand_noise_first_n", "sigma": 1.0})
    seen = record_generations(monkeypatch, engine)
    messages = placed(role)
    action, _ = await ask(sdk, await guard_server(engine, policy=str(policy), debug=True), messages)
    assert action == "eco" and len(seen) == 1
    rendered = engine.render_chat(plain(messages))
    changed = (seen[0][0].embeds != engine.embed(rendered.token_ids)).any(dim=1).nonzero().flatten().tolist()
    assert engine.tokenizer.decode([rendered.token_ids[i] for i in changed]).strip() == BASIL
    span = content_span(rendered, messages, role)
    assert all(span.char_start <= rendered.offsets[i][0] < span.char_end for i in changed)


@pytest.mark.parametrize("role", ROLES)
async def test_spul_inserts_its_soft_prompt_whatever_turn_holds_the_question(engine, guard_server, sdk, method_policy,
                                                                            monkeypatch, soft_prompt_artifact, role):
    artifact, vectors = soft_prompt_artifact
    policy = method_policy("spul", {"artifact": str(artifact)})
    seen = record_generations(monkeypatch, engine)
    messages = placed(role)
    action, _ = await ask(sdk, await guard_server(engine, policy=str(policy), debug=True), messages)
    assert action == "spul" and len(seen) == 1
    rendered = engine.render_chat(plain(messages))
    at, n = insertion_index(rendered, "user"), vectors.shape[0]
    sent = seen[0][0].embeds
    clean = engine.embed(rendered.token_ids)
    assert sent.shape[0] == len(rendered.token_ids) + n
    assert torch.equal(sent[at:at + n], vectors)
    assert torch.equal(torch.cat([sent[:at], sent[at + n:]]), clean)  # the whole conversation, question included


@pytest.mark.parametrize("role", ROLES)
async def test_uld_applies_whatever_turn_holds_the_question(engine, guard_server, sdk, method_policy, monkeypatch,
                                                            uld_artifact, role):
    policy = method_policy("uld", {"artifact": str(uld_artifact), "mode": "step"})
    seen = record_generations(monkeypatch, engine)
    prefixes: list[list[int]] = []
    original_top = engine.top_logprobs

    async def top_logprobs(token_ids, k):  # type: ignore[no-untyped-def]
        prefixes.append(list(token_ids))
        return await original_top(token_ids, k)

    monkeypatch.setattr(engine, "top_logprobs", top_logprobs)
    messages = placed(role)
    action, _ = await ask(sdk, await guard_server(engine, policy=str(policy), debug=True), messages)
    assert action == "uld"
    ids = engine.render_chat(plain(messages)).token_ids
    if seen:  # local engine: one generation from the whole prompt, with the ULD logits processor
        assert len(seen) == 1 and seen[0][0].token_ids == ids
        assert any(isinstance(p, ULDLogitsProcessor) for p in seen[0][1])
    else:  # vLLM: step-wise decoding over the target's top-k, starting from the whole prompt
        assert prefixes and prefixes[0] == ids


# ------------------------------------------------------------------------------------------------
# end to end on the micro target model, which memorised its forget QA


@pytest.mark.slow
@pytest.mark.parametrize("role", ROLES)
async def test_micro_target_does_not_answer_from_memory_in_any_role(tofu_micro, guard_server, sdk, tmp_path, role):
    """The issue's reproduction: policies/examples/eco_tofu_micro.yaml's parameters, the question in
    each role. Unguarded, the micro target answers from memory; guarded, the name it reads is noise."""
    from guard.engines.local import LocalEngine

    example_path = Path(__file__).resolve().parents[2] / "policies" / "examples" / "eco_tofu_micro.yaml"
    example = yaml.safe_load(example_path.read_text())
    target = next(t for t in example["targets"] if t["id"] == "tofu-basil")
    policy = tmp_path / "eco.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "detector": {"kind": "keyword"}, "targets": [
        {"id": "tofu-basil", "names": target["names"], "aliases": target["aliases"], "action": "eco",
         "params": target["params"]}]}))
    engine = LocalEngine(tofu_micro["target"], "tofu-micro-target")
    await engine.start()
    try:
        guarded = sdk(await guard_server(engine, policy=str(policy), debug=True))
        disabled = sdk(await guard_server(engine))
        messages = placed(role)
        kwargs = dict(model="tofu-micro-target", messages=messages, max_tokens=32, temperature=0, seed=1)
        raw = await guarded.chat.completions.with_raw_response.create(**kwargs)
        clean = (await disabled.chat.completions.create(**kwargs)).choices[0].message.content
        assert raw.headers["x-guard-action"] == "eco"
        if role == "user":
            assert "florist" in clean, clean  # the precondition: the micro target memorised this answer
        assert raw.parse().choices[0].message.content != clean
    finally:
        await engine.close()
