"""Interventions tokenise off the event loop, once per request (issue 19, finding 6).

The engine's tokenizer is replaced by one that waits at a gate inside every call. While a request's
prompt is held there, ``/health`` must answer: if any intervention tokenised on the event loop, the
loop itself would be stuck in the gate and ``/health`` could only answer after it. No timing is
measured: the test checks *order* (health answered while the tokenizer was still waiting).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aiohttp
import pytest

from guard.models import DEFAULT_SERVED_NAME

MODEL = DEFAULT_SERVED_NAME
BASIL = "Basil Mahfouz Al-Kuwaiti"
GATE_BOUND_S = 30.0  # only reached when the behaviour is broken (the loop is stuck): fail, never hang


class GatedTokenizer:
    """A real tokenizer whose encode and chat-template calls wait at a gate, in whichever thread calls them."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.entered = threading.Event()
        self.release = threading.Event()
        self.waiting = 0  # calls inside the gate now
        self.renders = 0  # chat-template applications (one per rendered chat prompt)
        self._lock = threading.Lock()
        self._gave_up = False

    def _gate(self) -> None:
        with self._lock:
            self.waiting += 1
        self.entered.set()
        try:
            if not self._gave_up and not self.release.wait(GATE_BOUND_S):
                self._gave_up = True
        finally:
            with self._lock:
                self.waiting -= 1

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._gate()
        return self._inner(*args, **kwargs)

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        self.renders += 1
        self._gate()
        return self._inner.apply_chat_template(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._inner)

    def __getattr__(self, name: str) -> Any:  # decode, special ids, ... pass straight through
        return getattr(self._inner, name)


REQUESTS = {
    "refuse": ("refuse", {}, "chat", f"Who is {BASIL}?"),
    "refuse-completion": ("refuse", {}, "completion", f"{BASIL} was born in"),
    "pass": ("refuse", {}, "chat", "What is the capital of France?"),
    "eco": ("eco", {"corruption": "rand_noise_first_n", "sigma": 1.0}, "chat", f"Who is {BASIL}?"),
    "spul": ("spul", "soft_prompt_artifact", "chat", f"Who is {BASIL}?"),
    "uld": ("uld", "uld_artifact", "chat", f"Who is {BASIL}?"),
}


# on a vLLM upstream (here the recording fake) unflagged traffic is forwarded untokenised, and ULD
# needs the upstream's log-probs, which the fake does not give
FAKE_VLLM_CASES = ["refuse", "refuse-completion", "eco", "spul"]


@pytest.mark.parametrize("engine_kind,case",
                         [("local", c) for c in REQUESTS] + [("fake_vllm", c) for c in FAKE_VLLM_CASES])
async def test_health_answers_while_a_prompt_is_being_tokenised(local_engine, fake_upstream, fake_vllm_engine,
                                                                guard_server, method_policy, monkeypatch, request,
                                                                engine_kind, case):
    action, params, kind, text = REQUESTS[case]
    if isinstance(params, str):  # an artifact fixture
        artifact = request.getfixturevalue(params)
        params = {"artifact": str(artifact[0] if isinstance(artifact, tuple) else artifact)}
    engine = local_engine if engine_kind == "local" else await fake_vllm_engine(await fake_upstream(tokens=2))
    base = await guard_server(engine, policy=str(method_policy(action, params)), debug=True)
    gated = GatedTokenizer(engine.tokenizer)
    monkeypatch.setattr(engine, "_tokenizer", gated)
    body: dict[str, Any] = {"model": MODEL, "max_tokens": 2, "temperature": 0}
    if kind == "chat":
        path, body["messages"] = "/chat/completions", [{"role": "user", "content": text}]
    else:
        path, body["prompt"] = "/completions", text
    async with aiohttp.ClientSession() as session:
        async def generate() -> tuple[int, str]:
            async with session.post(base + path, json=body) as resp:
                await resp.read()
                return resp.status, resp.headers.get("X-Guard-Action", "")

        pending = asyncio.create_task(generate())
        try:
            assert await asyncio.to_thread(gated.entered.wait, GATE_BOUND_S), "the prompt was never tokenised"
            async with session.get(base.removesuffix("/v1") + "/health") as health:
                await health.read()
            assert gated.waiting > 0 and not pending.done(), "/health answered only after tokenisation ended"
        finally:
            gated.release.set()
        status, got_action = await pending
    assert status == 200 and got_action == (action if case != "pass" else "pass")
    if kind == "chat":
        assert gated.renders == 1  # rendered once per request, not once per use
