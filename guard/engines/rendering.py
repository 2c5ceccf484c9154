"""Tokenizer-side helpers shared by both engines: chat rendering with spans, incremental decoding,
and stop-string matching that never leaks a partial stop string into a stream."""

from __future__ import annotations

import bisect
import json
from typing import Any, Sequence

from guard.engines.base import MessageSpan, RenderedPrompt, TokenLogprob, TopLogprob


def _uses_tools(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> bool:
    return bool(tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def chat_template_for(tokenizer: Any, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> str | None:
    """The template to render with: the model's own, unless the chat uses tools and the model's
    template has no tool syntax (it never mentions ``tools``/``tool_calls``), then the shipped tool
    template (``guard.templates``: hermes style, what vLLM runs with ``--chat-template``). None: the
    tokenizer's own."""
    own = getattr(tokenizer, "chat_template", None) or ""
    if not _uses_tools(messages, tools) or ("tools" in own and "tool_calls" in own):
        return None
    from guard.templates import read_template

    return read_template()


def _arguments(arguments: Any) -> Any:
    """A tool call's arguments as vLLM renders them: a JSON-object string becomes the object,
    any other string ``{}`` (``vllm/renderers/chat_utils.py``); objects stay."""
    if not isinstance(arguments, str):
        return arguments
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def template_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as the template reads them: assistant tool-call arguments parsed (``_arguments``)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {**message, "tool_calls": [
                {**call, "function": {**call.get("function", {}), "arguments": _arguments(call.get("function", {}).get("arguments"))}}
                for call in calls]}
        out.append(dict(message))
    return out


def _span_texts(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """(role, text) of every text the model reads from the request, in template order: each
    message's content, then its tool calls' arguments (as the template writes them: ``tojson``,
    i.e. ``json.dumps`` with ``ensure_ascii=False``); tool definitions (role ``tools``) come first,
    in the system turn."""
    texts: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        content = message.get("content") or ""
        if i == 0 and tools and message.get("role") != "system":
            texts.extend(("tools", json.dumps(t, ensure_ascii=False)) for t in tools)
        if isinstance(content, str) and content:
            texts.append((message["role"], content))
        if i == 0 and tools and message.get("role") == "system":
            texts.extend(("tools", json.dumps(t, ensure_ascii=False)) for t in tools)
        for call in message.get("tool_calls") or ():
            arguments = call.get("function", {}).get("arguments")
            if arguments not in (None, {}):
                texts.append((message["role"], arguments if isinstance(arguments, str)
                              else json.dumps(arguments, ensure_ascii=False)))
    return texts


def render_chat(tokenizer: Any, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                tools: Sequence[dict[str, Any]] = ()) -> RenderedPrompt:
    """Render with the model's chat template (``chat_template_for``) and locate each text the model
    reads in tokens: message contents, tool-call arguments, tool definitions (``_span_texts``).

    Texts are found verbatim in the rendered text, in order; templates that rewrite content
    (rare) leave that text without a span rather than with a wrong one.
    """
    messages = template_messages(messages)
    template = chat_template_for(tokenizer, messages, tools)
    extra: dict[str, Any] = {"chat_template": template} if template is not None else {}
    if tools:
        extra["tools"] = [dict(t) for t in tools]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    starts = [o[0] for o in offsets]
    spans: list[MessageSpan] = []
    cursor = 0
    for role, content in _span_texts(messages, tools):
        pos = text.find(content, cursor)
        if pos < 0:
            continue
        end = pos + len(content)
        cursor = end
        tok_start = max(bisect.bisect_right(starts, pos) - 1, 0)
        if offsets[tok_start][1] <= pos:
            tok_start += 1
        while tok_start > 0 and offsets[tok_start - 1][1] > pos:  # byte tokens of one multi-byte first char
            tok_start -= 1
        tok_end = bisect.bisect_left(starts, end)
        spans.append(MessageSpan(role, tok_start, tok_end, pos, end))
    return RenderedPrompt(text=text, token_ids=ids, spans=tuple(spans), offsets=tuple(offsets))


def render_text_prompt(tokenizer: Any, prompt: str) -> RenderedPrompt:
    """A text-completion prompt as a ``RenderedPrompt``: no template, the whole prompt is one
    user-content span, tokenised with the tokenizer's default special tokens (as the engines
    generate from it)."""
    enc = tokenizer(prompt, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = tuple(tuple(o) for o in enc["offset_mapping"])
    content = [i for i, (s, e) in enumerate(offsets) if e > s]
    start, end = (content[0], content[-1] + 1) if content else (0, 0)
    spans = (MessageSpan("user", start, end, 0, len(prompt)),) if content else ()
    return RenderedPrompt(text=prompt, token_ids=ids, spans=spans, offsets=offsets)


def token_logprob(tokenizer: Any, token: int, logprob: float, top: Sequence[tuple[int, float]]) -> TokenLogprob:
    """A generated token's log-prob entry, with each token's text (``decode([id])``, as vLLM shows it)."""
    return TokenLogprob(token, tokenizer.decode([token]), logprob,
                        tuple(TopLogprob(t, tokenizer.decode([t]), lp) for t, lp in top))


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas, holding back incomplete UTF-8."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._emitted = 0

    def push(self, token_ids: Sequence[int]) -> str:
        self._ids.extend(token_ids)
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        delta = text[self._emitted:]
        self._emitted = len(text)
        return delta


class StopMatcher:
    """Feeds text deltas; returns what may be emitted and whether a stop string was reached.

    The stop string itself is not emitted (OpenAI semantics). Text that could still become a stop
    string is held back until it cannot.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False

    def feed(self, delta: str) -> str:
        if self.stopped:
            return ""
        if not self._stops:
            return delta
        buf = self._pending + delta
        hits = [(buf.find(s), s) for s in self._stops if s in buf]
        if hits:
            self.stopped = True
            self._pending = ""
            return buf[: min(h[0] for h in hits)]
        hold = 0
        for s in self._stops:
            for n in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        self._pending = buf[len(buf) - hold:] if hold else ""
        return buf[: len(buf) - hold]

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return "" if self.stopped else out
