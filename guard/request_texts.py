"""Every text the served model reads from the application-level fields of a request, for screening.

Plain chat turns are not the only way text reaches the model. An application also sends tool
definitions, assistant turns that called tools, tool results and structured-output schemas, and a
forget question hidden in any of them must be screened like one in a user turn. This module turns a
parsed request body (``/v1/chat/completions`` or ``/v1/responses``) into:

* ``turns``: one ``{"role", "content", "name"?}`` per message, ``content`` being what the chat
  template renders for that turn (``guard/templates/smollm2_tool_chat.jinja``, in vLLM's hermes
  style): text parts joined as vLLM joins them, an assistant turn's tool calls (function name and
  arguments), a ``tool`` message's result. They are turns, not loose strings, because the template
  renders them as turns: the turn seams of ``guard.screened_text`` then cover a name split between a
  tool result and the next user turn.
* ``extras``: texts outside the conversation: each tool definition (rendered whole into the system
  turn with ``tojson``: function name, description, parameter names, descriptions, titles, enum and
  default strings, anything a client put there) and the ``response_format`` / ``text.format``
  schema (its name, description and every string in it: vLLM does not show the schema to the model,
  but the grammar makes the model *write* its property names, enums and constants).

Texts are the decoded strings, not their JSON spelling: the model reads ``tojson`` output with
``ensure_ascii=False``, so the only difference is the escaping of quotes, backslashes and control
characters, and a name spelled with ``\\u`` escapes in a client's JSON is screened as the name it
decodes to. JSON-Schema keywords (``type``, ``properties`` …) are skipped as keys (property *names*
are kept) and standard ``type`` values are skipped; everything else is kept.

Tool-call ``arguments`` arrive as a JSON string: vLLM parses it before rendering (a string that is
not a JSON object is rendered as ``{}``), the guard's template renders a string verbatim; so the
decoded strings are screened when it parses, the raw string when it does not.

Hostile shapes stay linear: each string is touched once, error paths are built only when an
error is raised, and nesting deeper than ``TextLimits.max_depth`` is a 400 naming the field (so the
recursive walk is at most that many frames deep). Nothing is skipped silently: there is no cap on
how many texts come back (the body size limit bounds them); a caller with a screening budget sends
what exceeds it to the policy's fail mode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

from guard.errors import InvalidRequest
from guard.screened_text import chat_screen_texts, join_parts

# JSON-Schema keywords: skipped as keys (the model reads them, but they carry no client text).
SCHEMA_KEYWORDS = frozenset({
    "$schema", "$id", "$ref", "$defs", "$anchor", "$comment", "$dynamicRef", "$dynamicAnchor", "$vocabulary",
    "type", "properties", "required", "items", "prefixItems", "additionalProperties", "patternProperties",
    "propertyNames", "unevaluatedProperties", "unevaluatedItems", "additionalItems", "definitions",
    "dependentSchemas", "dependentRequired", "dependencies", "contains", "minContains", "maxContains",
    "anyOf", "oneOf", "allOf", "not", "if", "then", "else", "enum", "const", "default", "examples",
    "description", "title", "format", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "multipleOf", "minLength", "maxLength", "minItems", "maxItems", "uniqueItems", "minProperties",
    "maxProperties", "contentEncoding", "contentMediaType", "contentSchema", "deprecated", "readOnly",
    "writeOnly", "nullable", "discriminator", "strict", "name", "parameters", "function", "schema",
})
# Under these keywords the keys are names the client chose (property names, definition names).
NAMING_KEYWORDS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas",
                             "dependentRequired", "dependencies"})
# ``type`` values that are keywords (JSON types, the tool and format kinds), not client text.
TYPE_NAMES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null", "function", "json_schema"})


@dataclass(frozen=True)
class TextLimits:
    """How deep a JSON value (tool parameters, a schema, tool-call arguments) may nest. OpenAI's own
    strict schemas allow 10 levels; deeper values get a 400 rather than an unbounded walk."""

    max_depth: int = 32


@dataclass(frozen=True)
class ExtraText:
    """A screened text outside the conversation turns, with the field it came from (for logs/errors)."""

    field: str
    text: str


@dataclass(frozen=True)
class RequestTexts:
    turns: list[dict[str, str]] = field(default_factory=list)
    extras: list[ExtraText] = field(default_factory=list)

    def screen_texts(self) -> list[str]:
        """Everything to screen: the turns (names, seams, contents) then the extras."""
        return chat_screen_texts(self.turns) + [e.text for e in self.extras if e.text]


class _Path:
    """A JSON path built only when an error names it (linear even for long keys)."""

    __slots__ = ("parent", "segment")

    def __init__(self, parent: "_Path | None", segment: str | int) -> None:
        self.parent, self.segment = parent, segment

    def __str__(self) -> str:
        parts: list[str] = []
        node: _Path | None = self
        while node is not None:
            seg = node.segment
            parts.append(f"[{seg}]" if isinstance(seg, int) else (f".{seg[:40]}" if node.parent else seg[:40]))
            node = node.parent
        path = "".join(reversed(parts))
        return path if len(path) <= 160 else f"{path[:80]}…{path[-72:]}"  # deep paths: head and tail


def _invalid(path: _Path, problem: str, fix: str) -> InvalidRequest:
    where = str(path)
    return InvalidRequest(f"{where} {problem}; {fix}", param=where)


def _json_strings(value: Any, path: _Path, limits: TextLimits, *, schema: bool) -> list[str]:
    """Every string in a JSON value, in document order: values and keys. With ``schema``, JSON-Schema
    keyword keys and standard ``type`` values are left out (property names are kept).

    Recursive, but only ``limits.max_depth`` frames deep at most (deeper is a 400): on the pass path
    this runs for every tool request, and a recursive walk is about twice as fast as an explicit stack."""
    out: list[str] = []
    append = out.append
    max_depth = limits.max_depth

    def too_deep(where: _Path) -> InvalidRequest:
        return _invalid(where, f"nests deeper than {max_depth} levels",
                        "flatten it (the guard screens every text in it and bounds the walk)")

    def walk(node: Any, where: _Path, depth: int, key: str | None, naming: bool) -> None:
        # ``key``: the key the node sits under (a ``type`` value is skipped); ``naming``: its keys are client-chosen names
        if depth >= max_depth:
            raise too_deep(where)
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):  # parsed JSON keys are strings; a Python caller's may not be
                    raise _invalid(where, "has a key that is not a string", "use string keys")
                if not schema or naming or k not in SCHEMA_KEYWORDS:
                    append(k)  # the key itself, as text
                if isinstance(v, str):
                    if not (schema and not naming and k == "type" and v in TYPE_NAMES):
                        append(v)
                elif isinstance(v, (dict, list)):
                    walk(v, _Path(where, k), depth + 1, None if naming else k,
                         schema and not naming and k in NAMING_KEYWORDS)
        else:
            for i, v in enumerate(node):
                if isinstance(v, str):
                    if not (schema and key == "type" and v in TYPE_NAMES):
                        append(v)
                elif isinstance(v, (dict, list)):
                    walk(v, _Path(where, i), depth + 1, key, False)

    if isinstance(value, str):
        append(value)
    elif isinstance(value, (dict, list)):
        walk(value, path, 0, None, False)
    return out


def _text(parts: Sequence[str]) -> str:
    return join_parts(p for p in parts if p)


def _content_text(content: Any, path: _Path) -> str:
    """A message's ``content`` as the model reads it: a string, text parts joined, or nothing."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise _invalid(path, f"is {type(content).__name__}", "send a string or a list of text parts")
    texts: list[str] = []
    for i, part in enumerate(content):
        if not isinstance(part, dict):
            raise _invalid(_Path(path, i), f"is {type(part).__name__}", 'send {"type": "text", "text": ...}')
        text = part.get("text")
        if part.get("type") not in ("text", "input_text", "output_text") or not isinstance(text, str):
            raise _invalid(_Path(path, i), f"has type {part.get('type')!r} without a string text",
                           "send text parts only")
        texts.append(text)
    return join_parts(texts)


def _arguments_texts(arguments: Any, path: _Path, limits: TextLimits) -> list[str]:
    """Tool-call arguments: the decoded strings of a JSON object, else the raw text (see the docstring)."""
    if isinstance(arguments, dict):
        return _json_strings(arguments, path, limits, schema=False)
    if arguments is None:
        return []
    if not isinstance(arguments, str):
        raise _invalid(path, f"is {type(arguments).__name__}", "send the arguments as a JSON string")
    try:
        parsed = json.loads(arguments)
    except RecursionError:
        raise _invalid(path, "nests too deeply to parse", "flatten the arguments") from None
    except ValueError:
        return [arguments]
    if not isinstance(parsed, dict):
        return [arguments]
    # the decoded strings (escapes undone) and the text as sent: a template may render either, and a
    # repeated key's first copy survives only in the raw text
    return _json_strings(parsed, path, limits, schema=False) + [arguments]


def _tool_call_texts(call: Any, path: _Path, limits: TextLimits) -> list[str]:
    if not isinstance(call, dict):
        raise _invalid(path, f"is {type(call).__name__}", 'send {"type": "function", "function": {"name", "arguments"}}')
    function = call.get("function", call)  # chat nests it under "function"; Responses items are flat
    if not isinstance(function, dict):
        raise _invalid(_Path(path, "function"), "is not an object", 'send {"name": ..., "arguments": "..."}')
    name = function.get("name")
    if not isinstance(name, str):
        raise _invalid(_Path(path, "function.name" if function is not call else "name"), "is missing or not a string",
                       "name the function called")
    arguments_path = _Path(path, "function.arguments" if function is not call else "arguments")
    return [name, *_arguments_texts(function.get("arguments"), arguments_path, limits)]


def _messages(messages: Any, path: _Path, limits: TextLimits) -> Iterator[dict[str, str]]:
    if not isinstance(messages, list):
        raise _invalid(path, "is not a list", "send a list of messages")
    for i, message in enumerate(messages):
        where = _Path(path, i)
        if not isinstance(message, dict):
            raise _invalid(where, f"is {type(message).__name__}", "send message objects")
        role = message.get("role")
        if not isinstance(role, str):
            raise _invalid(_Path(where, "role"), "is missing or not a string", "give every message a role")
        parts = [_content_text(message.get("content"), _Path(where, "content"))]
        calls = message.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise _invalid(_Path(where, "tool_calls"), "is not a list", "send a list of tool calls")
            for j, call in enumerate(calls):
                parts.extend(_tool_call_texts(call, _Path(_Path(where, "tool_calls"), j), limits))
        turn = {"role": role, "content": _text(parts)}
        name = message.get("name")
        if name is not None:
            if not isinstance(name, str):
                raise _invalid(_Path(where, "name"), "is not a string", "send the participant name as a string")
            turn["name"] = name
        yield turn


def _tools(tools: Any, path: _Path, limits: TextLimits) -> Iterator[ExtraText]:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise _invalid(path, "is not a list", "send a list of tool definitions")
    for i, tool in enumerate(tools):
        where = _Path(path, i)
        if not isinstance(tool, dict):
            raise _invalid(where, f"is {type(tool).__name__}", 'send {"type": "function", "function": {...}}')
        yield ExtraText(str(where), _text(_json_strings(tool, where, limits, schema=True)))


def _schema_format(fmt: Any, path: _Path, limits: TextLimits) -> Iterator[ExtraText]:
    """``response_format`` (chat: schema under ``json_schema``) or ``text.format`` (Responses: flat)."""
    if fmt is None:
        return
    if not isinstance(fmt, dict):
        raise _invalid(path, "is not an object", 'send {"type": "json_schema", "json_schema": {...}}')
    if fmt.get("type") != "json_schema":
        return  # text / json_object carry no client text
    spec = fmt.get("json_schema", fmt)
    spec_path = _Path(path, "json_schema") if "json_schema" in fmt else path
    if not isinstance(spec, dict):
        raise _invalid(spec_path, "is not an object", 'send {"name": ..., "schema": {...}}')
    yield ExtraText(str(spec_path), _text(_json_strings(spec, spec_path, limits, schema=True)))


def chat_request_texts(body: Mapping[str, Any], limits: TextLimits = TextLimits()) -> RequestTexts:
    """The texts of a ``/v1/chat/completions`` body (see the module docstring)."""
    turns = list(_messages(body.get("messages"), _Path(None, "messages"), limits))
    extras = [*_tools(body.get("tools"), _Path(None, "tools"), limits),
              *_schema_format(body.get("response_format"), _Path(None, "response_format"), limits)]
    return RequestTexts(turns, extras)


def completion_request_texts(body: Mapping[str, Any], limits: TextLimits = TextLimits()) -> RequestTexts:
    """The texts of a ``/v1/completions`` body: the prompt (one string, validated by the schema) and
    the ``response_format`` schema."""
    prompt = body.get("prompt")
    text = prompt[0] if isinstance(prompt, list) and prompt and isinstance(prompt[0], str) else prompt
    turns = [{"role": "user", "content": text}] if isinstance(text, str) else []
    extras = list(_schema_format(body.get("response_format"), _Path(None, "response_format"), limits))
    return RequestTexts(turns, extras)


def responses_request_texts(body: Mapping[str, Any], limits: TextLimits = TextLimits()) -> RequestTexts:
    """The texts of a ``/v1/responses`` body: ``instructions`` (a system turn), ``input`` (a string or
    items: messages, ``function_call`` and ``function_call_output``), ``tools`` and ``text.format``."""
    turns: list[dict[str, str]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _invalid(_Path(None, "instructions"), "is not a string", "send the instructions as a string")
        turns.append({"role": "system", "content": instructions})
    items = body.get("input")
    path = _Path(None, "input")
    if isinstance(items, str):
        turns.append({"role": "user", "content": items})
    elif isinstance(items, list):
        for i, item in enumerate(items):
            where = _Path(path, i)
            if not isinstance(item, dict):
                raise _invalid(where, f"is {type(item).__name__}", "send input items as objects")
            kind = item.get("type", "message")
            if kind == "message":
                turns.append(_input_message(item, where))
            elif kind == "function_call":
                turns.append({"role": "assistant", "content": _text(_tool_call_texts(item, where, limits))})
            elif kind == "function_call_output":
                output = item.get("output")
                turns.append({"role": "tool", "content": _content_text(output, _Path(where, "output"))})
            else:
                raise _invalid(_Path(where, "type"), f"is {kind!r}",
                               "send message, function_call or function_call_output items")
    elif items is not None:
        raise _invalid(path, f"is {type(items).__name__}", "send a string or a list of input items")
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    extras = [*_tools(body.get("tools"), _Path(None, "tools"), limits),
              *_schema_format(fmt, _Path(_Path(None, "text"), "format"), limits)]
    return RequestTexts(turns, extras)


def _input_message(item: dict[str, Any], where: _Path) -> dict[str, str]:
    role = item.get("role")
    if not isinstance(role, str):
        raise _invalid(_Path(where, "role"), "is missing or not a string", "give every message a role")
    return {"role": role, "content": _content_text(item.get("content"), _Path(where, "content"))}
