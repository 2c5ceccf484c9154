"""Tool calls in the served model's text, and the JSON schema that forces one.

Two ways a tool call comes out of the model, as on vLLM:

* ``tool_choice: "auto"``: the model writes hermes-style blocks, ``<tool_call>{"name": ...,
  "arguments": {...}}</tool_call>`` (what ``guard/templates/smollm2_tool_chat.jinja`` teaches it and
  vLLM's ``hermes`` parser reads). ``parse_hermes_tool_calls`` reads them back the same way: the
  content before the first block stays content; a block whose JSON does not parse leaves the whole
  text as content (vLLM's rule: never a half tool call).
* ``tool_choice`` named or ``"required"``: the answer is constrained by a JSON schema
  (``forced_tool_schema``: the function's parameters for a named call; an array of
  ``{"name", "parameters"}`` for required, at most one item when ``parallel_tool_calls`` is false),
  exactly the schema vLLM builds (``vllm/tool_parsers/utils.py: get_json_schema_from_tools``), and
  ``forced_tool_calls`` turns the constrained text into calls. This needs no tag syntax, so the same
  schema constrains the local engine (xgrammar) and vLLM's ``/v1/completions`` (``response_format``),
  which is how flagged requests rendered by the guard keep the client's tool contract.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"
_BLOCK = re.compile(re.escape(TOOL_CALL_START) + r"(.*?)" + re.escape(TOOL_CALL_END) + r"|"
                    + re.escape(TOOL_CALL_START) + r"(.*)", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    """One call: the function's name and its arguments as a JSON text (OpenAI's wire form)."""

    name: str
    arguments: str


@dataclass(frozen=True)
class ParsedToolOutput:
    content: str | None
    tool_calls: tuple[ToolCall, ...] = ()


def parse_hermes_tool_calls(text: str) -> ParsedToolOutput:
    """The model's text split into content and hermes-style tool calls (see the module docstring)."""
    start = text.find(TOOL_CALL_START)
    if start < 0:
        return ParsedToolOutput(text)
    calls: list[ToolCall] = []
    for closed, open_ended in _BLOCK.findall(text, start):
        try:
            call = json.loads(closed or open_ended)
        except ValueError:
            return ParsedToolOutput(text)
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return ParsedToolOutput(text)
        arguments = call.get("arguments", {})
        calls.append(ToolCall(call["name"], arguments if isinstance(arguments, str)
                              else json.dumps(arguments, ensure_ascii=False)))
    return ParsedToolOutput(text[:start] or None, tuple(calls))


ForcedKind = Literal["named", "required"]


@dataclass(frozen=True)
class ForcedToolChoice:
    """A ``tool_choice`` that forces a call, with the JSON schema the answer must match."""

    kind: ForcedKind
    schema: dict[str, Any]
    name: str | None = None  # the function, for a named choice


def _function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    """A chat tool nests the function (``{"type": "function", "function": {...}}``); a Responses tool is flat."""
    function = tool.get("function")
    return function if isinstance(function, Mapping) else tool


def _parameters(function: Mapping[str, Any]) -> dict[str, Any]:
    params = function.get("parameters")
    return dict(params) if isinstance(params, Mapping) and params else {"type": "object", "properties": {}}


def forced_tool_choice(tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any,
                       parallel_tool_calls: bool | None = None) -> ForcedToolChoice | None:
    """The forced choice of a request, or None for ``auto``/``none``/no tools. ``tool_choice`` is
    ``"required"``, ``{"type": "function", "function": {"name": ...}}`` (chat) or
    ``{"type": "function", "name": ...}`` (Responses). An unknown name raises ``KeyError`` (the
    caller's validation turns it into a 400 naming ``tool_choice``)."""
    if not tools or tool_choice in (None, "auto", "none"):
        return None
    functions = [_function(t) for t in tools]
    if tool_choice == "required":
        schema: dict[str, Any] = {
            "type": "array", "minItems": 1,
            "items": {"type": "object", "anyOf": [
                {"properties": {"name": {"type": "string", "enum": [f["name"]]}, "parameters": _parameters(f)},
                 "required": ["name", "parameters"]} for f in functions]},
        }
        if parallel_tool_calls is False:
            schema["maxItems"] = 1
        return ForcedToolChoice("required", schema)
    if isinstance(tool_choice, Mapping):
        chosen = tool_choice.get("function", tool_choice)
        name = chosen.get("name") if isinstance(chosen, Mapping) else None
        for function in functions:
            if function.get("name") == name:
                return ForcedToolChoice("named", _parameters(function), name)
        raise KeyError(name)
    return None


def forced_tool_calls(choice: ForcedToolChoice, text: str) -> tuple[ToolCall, ...]:
    """The calls in a constrained answer (empty when it does not parse, e.g. cut by ``max_tokens``).
    Arguments are re-serialised (``json.dumps``, ``ensure_ascii=False``) as vLLM's tool parsers write
    them, whatever whitespace the grammar let the model write (``structured_output``)."""
    if choice.kind == "named":
        try:
            arguments = json.loads(text)
        except ValueError:
            return ()
        return (ToolCall(choice.name or "", json.dumps(arguments, ensure_ascii=False)),)
    try:
        items = json.loads(text)
    except ValueError:
        return ()
    if not isinstance(items, list):
        return ()
    return tuple(ToolCall(item["name"], json.dumps(item.get("parameters", {}), ensure_ascii=False))
                 for item in items if isinstance(item, dict) and isinstance(item.get("name"), str))
