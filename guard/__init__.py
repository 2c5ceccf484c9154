"""unlearning-guard: an OpenAI-compatible proxy that makes an LLM forget chosen targets at inference time."""

__version__ = "0.1.0"
