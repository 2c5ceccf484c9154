"""A method's generated text turned into the answer the client asked for: tool calls.

Every method (pass, ECO, SPUL, ULD) and both engines stream plain text chunks; what the text *is*
depends on the request, and is decided here, once, per choice (``GenerationChunk.index``):

* tools with ``tool_choice`` auto (or unset): the model may write hermes blocks
  (``<tool_call>{...}</tool_call>``). Text is streamed until a block may begin; from there it is held
  back and parsed at the choice's end (``parse_hermes_tool_calls``): calls → ``tool_calls`` with
  ``finish_reason: "tool_calls"``; text that does not parse is released as content (never half a call).
* a forced ``tool_choice`` (the answer was constrained to the call's JSON schema): the whole text
  is held and read as calls (``forced_tool_calls``): named → ``finish_reason: "stop"``, required →
  ``"tool_calls"`` (vLLM 0.32's answers); JSON cut by ``max_tokens`` stays content.
* anything else (``tool_choice: "none"``, no tools, ``response_format``): unchanged.

Held-back chunks still go out, with empty text, so their tokens and log-probs reach the answer.
Refusals (``GenerationChunk.refusal``) pass unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, AsyncIterator

from guard.engines.base import GenerationChunk
from guard.engines.tool_calls import (
    TOOL_CALL_START,
    ForcedToolChoice,
    forced_tool_calls,
    parse_hermes_tool_calls,
)

if TYPE_CHECKING:
    from guard.interventions.base import GuardRequest


def _prefix_hold(text: str) -> int:
    """Where hermes-block text may begin in ``text``: the first ``<tool_call>``, or a suffix that
    could still grow into one; ``len(text)`` when neither."""
    at = text.find(TOOL_CALL_START)
    if at >= 0:
        return at
    for n in range(min(len(TOOL_CALL_START) - 1, len(text)), 0, -1):
        if text.endswith(TOOL_CALL_START[:n]):
            return len(text) - n
    return len(text)


@dataclass
class _Choice:
    emitted: str = ""  # text already sent
    held: str = ""  # text held back (a possible tool call)


class ToolCallReader:
    """Per-choice state of one answer (module docstring). ``forced``: the forced choice, if any;
    ``hermes``: whether auto tool calls are read from the text."""

    def __init__(self, forced: ForcedToolChoice | None, hermes: bool) -> None:
        self.forced = forced
        self.hermes = hermes and forced is None
        self._choices: dict[int, _Choice] = {}

    @property
    def active(self) -> bool:
        return self.forced is not None or self.hermes

    def feed(self, chunk: GenerationChunk) -> GenerationChunk:
        if chunk.refusal or not self.active:
            return chunk
        state = self._choices.setdefault(chunk.index, _Choice())
        if self.forced is not None:
            state.held += chunk.text
            text = ""
        else:
            pending = state.held + chunk.text
            if state.held.startswith(TOOL_CALL_START):
                cut = 0  # inside a block: hold everything to the end
            else:
                cut = _prefix_hold(pending)
            text, state.held = pending[:cut], pending[cut:]
            state.emitted += text
        if chunk.finish_reason is None:
            return replace(chunk, text=text)
        return self._finish(chunk, state, text)

    def _finish(self, chunk: GenerationChunk, state: _Choice, text: str) -> GenerationChunk:
        held, state.held = state.held, ""
        if self.forced is not None:
            calls = forced_tool_calls(self.forced, held)
            if not calls:
                return replace(chunk, text=text + held)
            finish = "stop" if self.forced.kind == "named" else "tool_calls"
            return replace(chunk, text=text, tool_calls=calls, finish_reason=finish)
        if not held:
            return replace(chunk, text=text)
        parsed = parse_hermes_tool_calls(held)
        if not parsed.tool_calls:
            return replace(chunk, text=text + held)
        content = parsed.content or ""
        return replace(chunk, text=text + content, tool_calls=parsed.tool_calls, finish_reason="tool_calls")


def tool_call_reader(request: GuardRequest) -> ToolCallReader:
    constraint = request.params.constraint
    forced = constraint.tool_choice if constraint is not None else None
    return ToolCallReader(forced, request.prompt.reads_tool_calls)


async def finish_answer(request: GuardRequest, chunks: AsyncIterator[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
    """``chunks`` with the request's tool calls read out of the text (module docstring). Closing this
    iterator closes ``chunks`` (which cancels the generation)."""
    reader = tool_call_reader(request)
    try:
        async for chunk in chunks:
            yield reader.feed(chunk)
    finally:
        await chunks.aclose()
