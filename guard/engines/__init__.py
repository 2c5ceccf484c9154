"""Engines: the model behind the guard, in-process (``local``) or a vLLM server (``vllm``)."""

from guard.engines.base import (
    Engine,
    EngineCapabilities,
    GenerationChunk,
    MessageSpan,
    PromptInput,
    RenderedPrompt,
    SamplingParams,
)

__all__ = ["Engine", "EngineCapabilities", "GenerationChunk", "MessageSpan", "PromptInput", "RenderedPrompt", "SamplingParams"]
