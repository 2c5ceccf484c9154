"""The real local engine with a probe on each generation: how many tokens the model computed (counted
in the worker thread, so it includes work no client ever received), optionally held at a token
until the test releases it. Stop tokens are masked, so a generation nobody cancels always runs to
``max_tokens``: a broken cancellation shows as exactly ``max_tokens`` tokens on any hardware."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import torch

from guard.engines.base import GenerationChunk, PromptInput, SamplingParams
from guard.engines.local import LocalEngine


class GenerationProbe:
    """A logits processor for one generation (called once per generated token, in the worker thread)."""

    def __init__(self, stop_ids: Sequence[int], hold_at: int | None) -> None:
        self.tokens = 0
        self._stop_ids = list(stop_ids)
        self._hold_at = hold_at
        self.held = threading.Event()  # the worker thread is waiting at ``hold_at``
        self.release = threading.Event()
        self.finished = asyncio.Event()  # the engine has closed this generation (its thread has ended)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.tokens += 1
        if self.tokens == self._hold_at:
            self.held.set()
            self.release.wait(120)  # bounded: a test that never releases must not hang the suite
        scores[:, self._stop_ids] = float("-inf")
        return scores

    async def wait_held(self, timeout_s: float = 60.0) -> None:
        if not await asyncio.to_thread(self.held.wait, timeout_s):
            raise TimeoutError(f"the generation never reached token {self._hold_at}")


class ProbedLocalEngine(LocalEngine):
    """``LocalEngine`` whose every generation carries a ``GenerationProbe`` (``probes``, in start order).
    Set ``hold_at`` before a request to hold its generation at that token."""

    def __init__(self, model_path: Path | str, served_model_name: str, **kwargs: Any) -> None:
        super().__init__(model_path, served_model_name, **kwargs)
        self.probes: list[GenerationProbe] = []
        self.hold_at: int | None = None

    async def generate(self, prompt: PromptInput, params: SamplingParams,
                       logits_processors: Sequence[Any] = ()) -> AsyncIterator[GenerationChunk]:
        probe = GenerationProbe(sorted(self.stop_token_ids()), self.hold_at)
        self.probes.append(probe)
        inner = super().generate(prompt, params, (*logits_processors, probe))
        try:
            async for chunk in inner:
                yield chunk
        finally:
            # close the real generator now (as the serving code closes this one), not at garbage collection
            await inner.aclose()
            probe.finished.set()


class RecordingEngine:
    """A real engine (local or vLLM), recording the prompt embeddings of every ``generate`` call:
    what a method actually sent the model, step by step."""

    def __init__(self, engine: Any) -> None:
        self._engine, self.prompts = engine, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def generate(self, prompt: PromptInput, params: SamplingParams, logits_processors: Sequence[Any] = ()) -> Any:
        self.prompts.append(prompt.embeds)
        return self._engine.generate(prompt, params, logits_processors)
