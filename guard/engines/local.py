"""In-process transformers engine (the default: bundled SmolLM2-135M-Instruct).

Generation runs in worker threads so the event loop stays free. At most ``max_concurrency``
generations run at once; up to ``max_queue`` more wait, beyond that requests get 429. Closing the
stream (client gone) sets a cancel flag that a stopping criterion checks after every token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

import torch

from guard.devices import resolve_device
from guard.engines.base import (
    Engine,
    EngineCapabilities,
    GenerationChunk,
    LogitsProcessor,
    PromptInput,
    RenderedPrompt,
    SamplingParams,
)
from guard.engines.context import ContextWindow, config_context_length
from guard.engines.local_generation import BatchStreamer, ChoiceStreams, controls_of, processor_chain
from guard.engines.openai_sampling import generation_overrides
from guard.engines.rendering import render_chat
from guard.engines.structured_output import StructuredOutputCompiler
from guard.errors import Overloaded

log = logging.getLogger(__name__)


class _Cancelled:
    """Stopping criterion: true once the consumer has gone away."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self._event.is_set(), dtype=torch.bool)


class LocalEngine(Engine):
    kind = "local"
    capabilities = EngineCapabilities(prompt_embeds=True, logits_processors=True, streamed_top_logprobs=False,
                                      forwarding=False)

    def __init__(self, model_path: Path | str, served_model_name: str, *, max_concurrency: int = 1,
                 max_queue: int = 64, threads: int | None = None, device: str = "auto") -> None:
        self.model_path = model_path
        folder = Path(str(model_path)).expanduser()
        self.model_dir = folder.resolve() if folder.is_dir() else None
        self.device = resolve_device(device, param="local.device")
        self.served_model_name = served_model_name
        self._max_concurrency = max_concurrency
        self._max_queue = max_queue
        self._threads = threads
        self._model: Any = None
        self._tokenizer: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._waiting = 0
        self._stop_ids: set[int] = set()
        self._structured: StructuredOutputCompiler | None = None  # made on the first constrained request

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._threads:
            torch.set_num_threads(self._threads)
        await asyncio.to_thread(self._load)
        self._executor = ThreadPoolExecutor(max_workers=self._max_concurrency, thread_name_prefix="guard-gen")
        self._slots = asyncio.Semaphore(self._max_concurrency)

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32).to(self.device)
        self._model.eval()
        self._stop_ids = self.stop_token_ids()
        tokens = config_context_length(self._model.config)
        self.context_window = ContextWindow.for_tokenizer(tokens, self._tokenizer) if tokens else None
        log.info("local engine loaded %s on %s in %.1fs", self.model_path, self.device, time.perf_counter() - started)

    async def close(self) -> None:
        if self._executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def model(self) -> Any:
        return self._model

    def input_embeddings(self) -> torch.Tensor:
        if self._model is None:
            return super().input_embeddings()
        return self._model.get_input_embeddings().weight

    # -- prompt side ------------------------------------------------------------------------------
    def render_chat(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                    tools: Sequence[dict[str, Any]] = ()) -> RenderedPrompt:
        return render_chat(self._tokenizer, messages, add_generation_prompt, tools)

    def embed(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Input embeddings ``[T, H]`` on the CPU (interventions edit them there; generation moves them)."""
        with torch.no_grad():
            ids = torch.tensor([list(token_ids)], device=self.device)
            return self._model.get_input_embeddings()(ids)[0].detach().cpu().clone()

    # -- generation -------------------------------------------------------------------------------
    async def _admit(self) -> None:
        assert self._slots is not None, "engine not started"
        if self._slots.locked() and self._waiting >= self._max_queue:
            raise Overloaded(f"the local engine is busy ({self._max_concurrency} running, {self._waiting} queued); retry shortly")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1

    async def generate(self, prompt: PromptInput, params: SamplingParams,
                       logits_processors: Sequence[LogitsProcessor] = ()) -> AsyncIterator[GenerationChunk]:
        """Stream ``params.n`` choices (one batched generation; chunks of the choices interleave), with
        log-probs, penalties, ``logit_bias`` and the output constraint (``local_generation``)."""
        self.check_prompt_length(prompt.length)
        await self._admit()
        assert self._slots is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        put = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)  # noqa: E731
        future = loop.run_in_executor(self._executor, self._generate_blocking, prompt, params, put, cancel, list(logits_processors))
        choices = ChoiceStreams(self._tokenizer, params, self._stop_ids, prompt.length)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                for chunk in choices.step(item):
                    yield chunk
                if choices.all_done:
                    cancel.set()
                    return
            for chunk in choices.finish():
                yield chunk
        finally:
            cancel.set()
            try:
                await asyncio.shield(future)
            except Exception:  # the error, if any, was already delivered through the queue
                pass
            self._slots.release()

    @property
    def _end_id(self) -> int:
        """The stop token a generation ends on when nothing else is allowed (the tokenizer's EOS)."""
        eos = self._tokenizer.eos_token_id
        return eos if eos in self._stop_ids else min(self._stop_ids)

    def _grammar(self, params: SamplingParams, compact: bool) -> Any:
        """A fresh grammar processor for ``params.constraint`` (the compiler is made once, on first use);
        ``compact`` JSON under a method's own processor (``StructuredOutputCompiler`` says why)."""
        if self._structured is None:
            self._structured = StructuredOutputCompiler(self._tokenizer, self._model.config.vocab_size, self._stop_ids)
        return self._structured.logits_processor(params.constraint, compact=compact)

    def _generate_blocking(self, prompt: PromptInput, params: SamplingParams, put: Callable[[Any], None],
                           cancel: threading.Event, method_processors: list[Any]) -> None:
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        try:
            max_new = params.max_tokens
            if self.context_window is not None:
                max_new = self.context_window.answer_room(prompt.length, max_new)
            config = GenerationConfig(
                max_new_tokens=max_new,
                do_sample=not params.greedy,
                temperature=params.temperature if not params.greedy else None,
                top_p=params.top_p if not params.greedy else None,
                top_k=None,
                eos_token_id=sorted(self._stop_ids),
                pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
                **generation_overrides(controls_of(params)),
            )
            kwargs: dict[str, Any] = {}
            if prompt.token_ids is not None:
                ids = torch.tensor([prompt.token_ids], device=self.device)
                kwargs.update(input_ids=ids, attention_mask=torch.ones_like(ids))
            else:
                embeds = prompt.embeds.to(device=self.device, dtype=self._model.dtype).unsqueeze(0)
                kwargs.update(inputs_embeds=embeds,
                              attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device))
            prompt_length = len(prompt.token_ids) if prompt.token_ids is not None else 0  # what input_ids shows
            processors, recorder = processor_chain(params, method_processors, prompt_length,
                                                   lambda: self._grammar(params, bool(method_processors)), self._end_id)
            if params.seed is not None:
                torch.manual_seed(params.seed)
            with torch.no_grad():
                self._model.generate(
                    **kwargs,
                    generation_config=config,
                    streamer=BatchStreamer(put, recorder),
                    stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
                    logits_processor=LogitsProcessorList(processors),
                )
        except BaseException as exc:  # delivered to the consumer, re-raised there
            put(exc)
        finally:
            put(None)

    async def top_logprobs(self, token_ids: Sequence[int], k: int) -> list[tuple[int, float]]:
        self.check_prompt_length(len(token_ids))

        def run() -> list[tuple[int, float]]:
            with torch.no_grad():
                logits = self._model(torch.tensor([list(token_ids)], device=self.device)).logits[0, -1]
                values, indices = torch.log_softmax(logits.float(), -1).topk(k)
            return list(zip(indices.tolist(), values.tolist()))

        return await asyncio.to_thread(run)

    async def health(self) -> dict[str, Any]:
        return {"ready": self._model is not None, "engine": "local", "model": str(self.model_path), "device": self.device,
                "context_length": self.context_window.tokens if self.context_window else None}
