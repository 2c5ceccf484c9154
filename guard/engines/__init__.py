"""Engines: the model behind the guard, in-process (``local``) or a vLLM server (``vllm``)."""

from guard.engines.base import (
    Engine,
    GenerationChunk,
    MessageSpan,
    PromptInput,
    RenderedPrompt,
    SamplingParams,
)

__all__ = ["Engine", "GenerationChunk", "MessageSpan", "PromptInput", "RenderedPrompt", "SamplingParams"]
