"""The Engine seam.

An engine owns the served model's tokenizer and chat template, and can

* render chat messages to token ids, with the token span of each message's content
  (interventions use the spans to target the user's tokens);
* look up input embeddings for token ids;
* generate, streaming, from token ids **or** from prompt embeddings;
* give the top-k next-token log-probs for a token prefix (step-wise ULD);
* say how long a prompt the model reads (``context_window``), and refuse a longer one with a 400;
* say where its weights are (``model_dir``), where guard-side model work runs (``device``), the
  model's width (``hidden_size``) and identity (``model_identity``: artifacts are checked against it).

What an engine can do beyond that is declared in ``capabilities`` (``EngineCapabilities``), never
discovered from its class or its signatures: a logits-processor hook on generation (the local
engine), streamed top-k log-probs (vLLM: speculative step-wise ULD), and forwarding an untouched
request byte for byte (vLLM: the pass path, ``forward_request``). Callers check the capability and
call the method; an engine without it raises ``UpstreamUnsupported``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Sequence

import torch

from guard.artifacts import model_identity
from guard.engines.context import ContextWindow
from guard.errors import UpstreamUnsupported

if TYPE_CHECKING:
    from guard.engines.forwarding import ForwardedAnswer
    from guard.engines.structured_output import OutputConstraint
    from guard.engines.tool_calls import ToolCall

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""transformers' ``LogitsProcessor`` shape: (input_ids [B, T], scores [B, V]) -> scores [B, V]."""

# vLLM's rule (SamplingParams.__post_init__): 0 < temperature < 0.01 is raised to 0.01; below that the
# logits divided by the temperature overflow and the probabilities turn into NaN.
MIN_SAMPLING_TEMPERATURE = 1e-2


@dataclass(frozen=True)
class MessageSpan:
    """Where one message's *content* sits in the rendered prompt."""

    role: str
    token_start: int
    token_end: int  # exclusive
    char_start: int  # offsets into RenderedPrompt.text
    char_end: int


@dataclass(frozen=True)
class RenderedPrompt:
    text: str
    token_ids: list[int]
    spans: tuple[MessageSpan, ...]
    offsets: tuple[tuple[int, int], ...] = ()  # per-token character offsets into text


@dataclass(frozen=True)
class SamplingParams:
    """How to sample, with OpenAI's meaning (validated upstream of here: ``openai_sampling.sampling_controls``,
    ``structured_output.output_constraint``). ``logprobs``: None for none, k >= 0 for the sampled
    token's log-prob plus the top k per position; ``constraint``: the answer must match it
    (``response_format`` or a forced ``tool_choice``)."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    constraint: "OutputConstraint | None" = None

    def __post_init__(self) -> None:
        if 0.0 < self.temperature < MIN_SAMPLING_TEMPERATURE:
            object.__setattr__(self, "temperature", MIN_SAMPLING_TEMPERATURE)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def reshapes_logits(self) -> bool:
        """Penalties or a logit bias change the distribution sampled from."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)


@dataclass(frozen=True)
class PromptInput:
    """Exactly one of token ids or embeddings ``[seq, hidden]`` (fp32, on CPU)."""

    token_ids: list[int] | None = None
    embeds: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.token_ids is None) == (self.embeds is None):
            raise ValueError("PromptInput needs exactly one of token_ids or embeds")

    @property
    def length(self) -> int:
        return len(self.token_ids) if self.token_ids is not None else int(self.embeds.shape[0])


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine can do beyond the common contract (declared by each engine class)."""

    prompt_embeds: bool = True  # generate from prompt embeddings (vLLM: when the upstream accepts them)
    logits_processors: bool = False  # ``generate(..., logits_processors=...)`` runs them on every step
    streamed_top_logprobs: bool = False  # ``stream_top_logprobs``: a greedy stream with each position's top-k
    forwarding: bool = False  # ``forward_request``: an untouched client request, answered byte for byte


@dataclass(frozen=True)
class PositionLogprobs:
    """One generated position of a streamed greedy completion: the top-k next tokens with their
    log-probs (best first) and the token the engine itself chose there."""

    top: list[tuple[int, float]]
    token: int


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str  # the token's text (``tokenizer.decode([id])``)
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-prob and the top-k at its position (best first), from the
    distribution the method sampled from before penalties, bias and grammar (vLLM's raw log-probs)."""

    token_id: int
    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass
class GenerationChunk:
    """A streamed delta of choice ``index``. Each choice's last chunk carries its ``finish_reason``
    ('stop', 'length' or 'tool_calls'), the prompt's tokens and that choice's completion tokens;
    chunks of different choices may interleave. ``logprobs``: one entry per token of ``token_ids``
    (when asked for). ``tool_calls``: the parsed calls, on a choice's last chunk only.
    ``refusal``: the text is the guard's refusal (``message.refusal`` when the client asked for a
    structured answer)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    index: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_calls: "tuple[ToolCall, ...]" = ()
    refusal: bool = False


class Engine(abc.ABC):
    """One served model. Created by the app factory, started/closed by its cleanup context."""

    kind: str  # "local" | "vllm": for logs and /health only, never branched on
    capabilities: EngineCapabilities = EngineCapabilities()
    served_model_name: str
    model_dir: Path | None = None  # the served model's local folder (None: not a local folder)
    device: str = "cpu"  # where guard-side model work (assistants, embeddings) runs
    context_window: ContextWindow | None = None  # set by start(); None: unknown, nothing is checked
    # what this engine's own answers carry as system_fingerprint (vLLM's, learned from its answers)
    system_fingerprint: str | None = None

    @property
    def answer_model_name(self) -> str:
        """The ``model`` this engine's own answers carry; the guard's answers carry the same."""
        return self.served_model_name

    def check_prompt_length(self, prompt_tokens: int) -> None:
        """The exact check, where the prompt's tokens are known: 400 when it leaves no room for an answer."""
        if self.context_window is not None:
            self.context_window.check_tokens(prompt_tokens)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources (load the model, open connections)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Any: ...

    @abc.abstractmethod
    def render_chat(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                    tools: Sequence[dict[str, Any]] = ()) -> RenderedPrompt:
        """The chat as the model reads it (``tools`` and tool turns through the model's template, or
        the shipped tool template when the model's lacks tool syntax: ``rendering.render_chat``)."""

    @abc.abstractmethod
    def embed(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Input embeddings ``[len, hidden]`` of the served model (fp32, CPU)."""

    @property
    def vocab_size(self) -> int:
        """How many token ids the tokenizer knows, added tokens included (what a client's ``logit_bias``
        keys may name). Read once per engine: ``len(tokenizer)`` on a transformers 5 fast tokenizer
        asks the Rust side for the whole vocabulary (~10 ms on this CPU), which per request was most of
        the guard's CPU at 64 streams. The tokenizer never changes after ``start``."""
        cached = self.__dict__.get("_vocab_size")
        if cached is None:
            cached = self.__dict__["_vocab_size"] = len(self.tokenizer)
        return int(cached)

    @property
    def hidden_size(self) -> int:
        """Width of the served model's input embeddings."""
        return int(self.model_identity()["hidden_size"])

    def model_identity(self) -> dict[str, Any]:
        """The served model's identity (``guard.artifacts.model_identity``), computed once per engine:
        from ``model_dir`` (so it works before ``start``), else from the loaded embeddings."""
        cached = self.__dict__.get("_identity")
        if cached is None:
            cached = self.__dict__["_identity"] = model_identity(self.model_dir if self.model_dir is not None
                                                                 else self.input_embeddings())
        return dict(cached)

    def input_embeddings(self) -> torch.Tensor:
        """The whole input-embedding matrix ``[vocab, hidden]`` (for identity when there is no folder)."""
        raise UpstreamUnsupported(f"the {self.kind} engine has no input-embedding matrix loaded")

    @abc.abstractmethod
    def generate(self, prompt: PromptInput, params: SamplingParams,
                 logits_processors: Sequence[LogitsProcessor] = ()) -> AsyncIterator[GenerationChunk]:
        """Stream the completion. Closing the iterator early cancels the generation.
        ``logits_processors`` only where ``capabilities.logits_processors``."""

    @abc.abstractmethod
    async def top_logprobs(self, token_ids: Sequence[int], k: int) -> list[tuple[int, float]]:
        """The k most likely next tokens after ``token_ids`` with their log-probs, best first."""

    def stream_top_logprobs(self, token_ids: Sequence[int], max_tokens: int, k: int) -> AsyncIterator[PositionLogprobs]:
        """A greedy completion of ``token_ids``, streamed: per position, the top-k and the chosen token.
        Closing the iterator aborts the generation. Only where ``capabilities.streamed_top_logprobs``."""
        raise UpstreamUnsupported(f"the {self.kind} engine does not stream top-k log-probs")

    async def forward_request(self, route: str, body: dict[str, Any], raw: bytes, max_tokens: int, *,
                              limit_field: str = "max_tokens") -> "ForwardedAnswer":
        """Send a validated client request upstream untouched (``raw``; re-serialised only to set the
        upstream's model name or the guard's ``max_tokens`` in ``limit_field`` when the body sets no
        limit: ``max_output_tokens`` on ``/v1/responses``), answered byte for byte. ``route`` is
        the OpenAI path (``/v1/chat/completions`` …). Only where ``capabilities.forwarding``."""
        raise UpstreamUnsupported(f"the {self.kind} engine does not forward requests")

    @abc.abstractmethod
    async def health(self) -> dict[str, Any]:
        """``{"ready": bool, ...}``; never raises."""

    def stop_token_ids(self) -> set[int]:
        tok = self.tokenizer
        ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        for special in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            tid = tok.convert_tokens_to_ids(special)
            if isinstance(tid, int) and tid != tok.unk_token_id and tid >= 0:
                ids.add(tid)
        return ids
