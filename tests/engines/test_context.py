"""The context window (issue 19, finding 6): the cheap lower bound on a text's tokens never exceeds
the real count (so it never refuses a prompt that fits), and each engine knows its limit: the local
model's config, or the vLLM server's ``max_model_len``."""

from __future__ import annotations

import random

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from guard.engines.base import PromptInput, SamplingParams
from guard.engines.context import ContextWindow, max_chars_per_token
from guard.engines.vllm import VllmEngine
from guard.errors import ContextLengthExceeded
from guard.models import DEFAULT_SERVED_NAME
from tests.support.ports import RefusedPort


def _adversarial_texts() -> list[str]:
    rng = random.Random(7)
    unicode_soup = "".join(chr(rng.choice([rng.randrange(0x20, 0x7F), rng.randrange(0xA0, 0x2FFF),
                                           rng.randrange(0x1F300, 0x1F6FF)])) for _ in range(3000))
    return [
        "#" * 5000,  # the vocabulary's longest tokens are runs like these
        "\n" + " " * 5000,
        "=" * 3000 + "-" * 3000,
        "e\u0301" * 2000,  # combining marks
        "\u1100\u1161\u11a8" * 1000,  # Hangul jamo, which NFC composes 3 -> 1
        "<|im_start|>" * 300,  # special tokens typed as text
        unicode_soup,
        " the" * 3000,
    ]


@pytest.mark.parametrize("index", range(len(_adversarial_texts())))
def test_the_cheap_bound_never_exceeds_the_real_token_count(local_engine, index):
    text = _adversarial_texts()[index]
    tokenizer = local_engine.tokenizer
    window = ContextWindow.for_tokenizer(8192, tokenizer)
    real = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert window.min_tokens(len(text)) <= real, (window.min_tokens(len(text)), real)


def test_a_tokenizer_that_drops_whitespace_gets_no_bound():
    class Folding:  # decodes "a  b" as "a b": some characters cost no token at all
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(range(len(text.split())))}

        def decode(self, ids):
            return " ".join("x" for _ in ids)

        def get_vocab(self):
            return {"x": 0}

    assert max_chars_per_token(Folding()) is None
    window = ContextWindow(100, None)
    window.check_chars(10**9, "messages")  # no bound: only the exact check applies
    with pytest.raises(ContextLengthExceeded):
        window.check_tokens(100)


def test_checks_name_the_limit_and_the_field():
    window = ContextWindow(1000, 10)
    window.check_chars(9_990, "messages")  # at least 999 tokens: may fit
    with pytest.raises(ContextLengthExceeded) as info:
        window.check_chars(10_000, "messages")
    assert info.value.param == "messages" and "1000" in info.value.message and info.value.status == 400
    window.check_tokens(999)
    with pytest.raises(ContextLengthExceeded):
        window.check_tokens(1000)  # no room left for an answer
    assert window.answer_room(990, 512) == 10 and window.answer_room(10, 512) == 512


async def test_vllm_engine_learns_max_model_len_from_the_upstream(default_model_path):
    async def models(request):
        return web.json_response({"object": "list", "data": [
            {"id": "other", "object": "model", "max_model_len": 4096},
            {"id": DEFAULT_SERVED_NAME, "object": "model", "max_model_len": 64}]})

    async def completions(request):  # accepts the start-up prompt-embeds probe
        return web.json_response({"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": ""}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    engine = VllmEngine(str(server.make_url("")), default_model_path, None, upstream_model=DEFAULT_SERVED_NAME,
                        health_interval_s=3600)
    await engine.start()
    try:
        assert engine.context_window is not None and engine.context_window.tokens == 64
        assert (await engine.health())["context_length"] == 64
        with pytest.raises(ContextLengthExceeded):
            async for _ in engine.generate(PromptInput(token_ids=[1] * 64), SamplingParams(max_tokens=4)):
                pass
    finally:
        await engine.close()
        await server.close()


async def test_vllm_engine_falls_back_to_the_model_config(default_model_path):
    """Upstream down at start-up: the local model's max_position_embeddings until it answers."""
    down = RefusedPort()
    engine = VllmEngine(down.url, default_model_path, DEFAULT_SERVED_NAME,
                        upstream_model=DEFAULT_SERVED_NAME, health_interval_s=3600)
    await engine.start()
    try:
        from transformers import AutoConfig

        assert engine.context_window.tokens == AutoConfig.from_pretrained(default_model_path).max_position_embeddings
    finally:
        await engine.close()
