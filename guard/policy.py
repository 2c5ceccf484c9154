"""Forget policies: which targets, how to recognise them, what to do when a request is about one.

A policy is a YAML file validated on load; every error names the field (``targets.2.action``).
Relative paths inside a policy are relative to the policy file.

```yaml
version: 1
detector:
  kind: keyword            # none | keyword | trained
  artifact: null           # for 'trained': directory written by `guard-train classifier`
  budget_ms: 2000          # one request's screening time; past it, the fail mode applies
  max_screen_tokens: 120000  # words screened in full; above: long_input (fail | cover)
fail_mode: closed          # closed: a request that cannot be screened is refused (503); open: passed, logged
default_action: refuse     # for targets without their own action
refusal_message: "I'm sorry, but I can't help with that."
output:                    # screening what the model answers (docs/output-screening.md)
  screen: true             # default for every target whose action is not 'pass'
  holdback_tokens: 16      # a stream is released this many tokens behind the model
  semantic: false          # also judge each answer sentence with the trained detector
  approximate_names: false # also stop misspelt / transliterated names ("Nikolai Abil")
targets:
  - id: basil-mahfouz-al-kuwaiti
    names: ["Basil Mahfouz Al-Kuwaiti"]
    aliases: ["Basil Al-Kuwaiti"]
    description: a fictitious author from TOFU
    action: refuse           # pass | refuse | eco | spul | uld
    params: {}               # action-specific parameters / artifact paths
    output: {screen: true, action: method}   # on a hit: method (re-answer via the action) | refuse
```
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from guard.config import format_validation_error, load_yaml_mapping

Action = Literal["pass", "refuse", "eco", "spul", "uld"]
ACTIONS: tuple[str, ...] = ("pass", "refuse", "eco", "spul", "uld")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Screening limits, from benchmarks/screening_cost.py on a 2-core CPU (docs/detector.md, "Long inputs
# and the screening budget"): the served stack screens ~100,000 words of prose in 1-1.5 s, so this
# many words fit the budget (a 100,000-word document is screened in full).
DEFAULT_BUDGET_MS = 2000.0
DEFAULT_MAX_SCREEN_TOKENS = 120_000
DEFAULT_ISOLATE_ABOVE_CHARS = 32_768  # ~5,000 words: screening them in a thread costs normal requests ~50 ms of GIL
# Output screening (guard/output_screen/, docs/output-screening.md): the tokens a stream is held back
# by. Measured (TOFU forget10 gold answers, tofu-micro-target's answers): 12 catch 99.6 % of the
# names/dates/titles whole, 14 all of them; 16 leaves a margin for longer titles.
DEFAULT_HOLDBACK_TOKENS = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSource(_Strict):
    """Documents a target is given by (forget data) or that must keep working (keep data)."""

    path: Path
    format: Literal["tofu_qa", "rwku_intro", "rwku_passage", "jsonl_text", "json_text", "text"] = "tofu_qa"
    rows: str | None = Field(None, description="python-style slice of rows, e.g. '3960:3980' (an optional ':STEP' is allowed)")
    field: str | None = Field(None, description="for jsonl_text: the key holding the text")
    half: Literal["a", "b"] | None = Field(
        None, description="keep only the texts whose hash falls in half 'a' or 'b' (disjoint halves of one file, e.g. train vs. evaluation)")

    @field_validator("rows")
    @classmethod
    def _slice(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"-?\d*:-?\d*(:-?[1-9]\d*)?", value.strip()):
            raise ValueError(f"rows {value!r} must look like 'START:END' (or 'START:END:STEP')")
        return value


class TargetOutput(_Strict):
    """How one target's answers are screened (``targets.N.output``)."""

    screen: bool | None = Field(None, description="screen answers for this target (null: the policy's output.screen)")
    action: Literal["refuse", "method"] = Field(
        "method", description="on a hit: refuse (the refusal text) or method (re-answer through the target's action; "
                              "a target whose action is refuse or pass gets the refusal)")


class OutputSpec(_Strict):
    """Screening what the model answers (``output``), see docs/output-screening.md."""

    screen: bool = Field(True, description="screen answers against the targets (each target may override it)")
    holdback_tokens: int = Field(DEFAULT_HOLDBACK_TOKENS, ge=1, le=1024,
                                 description="tokens of a streamed answer held back until screened (the longest name/fact that "
                                             "can be stopped before any of it is sent is holdback_tokens - 1 tokens)")
    semantic: bool = Field(False, description="also judge each answer sentence with the trained detector (holds a stream "
                                              "back to the end of the sentence)")
    approximate_names: bool = Field(
        False, description="also stop misspelt or transliterated names in answers (\"Nikolai Abil\", \"Николай Абилов\"), "
                           "as the keyword detector finds them in requests; off by default: it costs ~7x the exact "
                           "matching per screening and stops more answers that only look like a name "
                           "(docs/output-screening.md)")


class Target(_Strict):
    id: str
    names: tuple[str, ...] = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    description: str | None = None
    forget_data: tuple[DataSource, ...] = ()
    keep_data: tuple[DataSource, ...] = ()
    example_queries: tuple[str, ...] = ()
    action: Action | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    output: TargetOutput = TargetOutput()

    @field_validator("output")
    @classmethod
    def _output_method_has_a_method(cls, value: TargetOutput, info: ValidationInfo) -> TargetOutput:
        if info.data.get("action") == "pass" and "action" in value.model_fields_set and value.action == "method":
            raise ValueError("output.action 'method' re-answers through the target's action, but the target has action 'pass': "
                             "set output.action: refuse, or output.screen: false")
        return value

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not _ID_RE.match(value):
            raise ValueError(f"id {value!r} must be 1-128 characters of letters, digits, '.', '_' or '-'")
        return value

    @field_validator("names", "aliases")
    @classmethod
    def _non_blank(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not v.strip() for v in value):
            raise ValueError("names and aliases must not be blank")
        return value

    @property
    def all_names(self) -> tuple[str, ...]:
        return self.names + self.aliases


class DetectorSpec(_Strict):
    kind: Literal["none", "keyword", "trained"] = "keyword"
    artifact: Path | None = None
    threshold: float | None = Field(None, ge=0.0, le=1.0, description="overrides the calibrated threshold")
    # --- trained detector (classifiers/): how `guard-train classifier` builds it -------------------
    embedder: str = Field("default", description="sentence-transformers model: 'default' (bundled all-MiniLM-L6-v2), a folder or a hub id")
    embedder_kind: Literal["static", "sentence", "cascade"] = Field(
        "cascade", description="static: distilled token vectors (fast); sentence: the transformer; cascade: static first, transformer when unsure")
    target_fpr: float = Field(0.005, gt=0.0, lt=0.5, description="false-positive rate the threshold is calibrated to on held-out negatives")
    neighbour_fpr: float = Field(0.05, gt=0.0, lt=0.5, description="false-positive rate allowed on questions about entities the forget documents mention")
    negatives: tuple[DataSource, ...] = Field((), description="policy-wide keep data / negatives (besides the built-in general-instruction pool)")
    general_pool: int = Field(4000, ge=0, description="size of the built-in general-instruction negative pool")
    hard_negatives: bool = Field(True, description="also train against questions about other entities named in the forget documents (protects neighbours)")
    passage_focus: Literal["all", "mentions", "contrast"] = Field(
        "contrast", description="passage sentences as positives: all; only those that mention the target (name, name part or a "
                                "sentence-opening pronoun); or those, with the other sentences as hard negatives")
    window_words: int = Field(48, ge=8, le=512, description="long inputs are screened in windows of this many words")
    max_windows: int = Field(256, ge=1, description="with long_input: cover, inputs over max_screen_tokens are screened in about "
                                                    "this many windows, widened to cover all of the text")
    # --- screening limits (any detector kind): never an unbounded wait, never a silent skip ----------
    budget_ms: float = Field(DEFAULT_BUDGET_MS, gt=0, le=60_000,
                             description="time one request's screening may take; past it, screening stops and the request "
                                         "gets the policy's fail_mode (closed: 503 screening_unavailable)")
    max_screen_tokens: int = Field(DEFAULT_MAX_SCREEN_TOKENS, ge=1,
                                   description="words (whitespace-separated, all screened texts of a request together) screened "
                                               "in full; above it, long_input decides")
    isolate_above_chars: int | None = Field(
        DEFAULT_ISOLATE_ABOVE_CHARS, ge=0,
        description="requests with more characters than this are screened in a separate process, so their CPU work does not hold "
                    "the GIL the server's event loop needs (null: all in threads)")
    inline_below_chars: int | None = Field(
        None, ge=0,
        description="requests of at most this many characters are screened on the server's event loop instead of a worker "
                    "thread (a thread hop costs more than screening a short text); null: what the detector declares "
                    "(keyword: 1024, trained: 0), 0: always in a thread")
    long_input: Literal["fail", "cover"] = Field(
        "fail", description="above max_screen_tokens: fail: the policy's fail_mode (closed: 400 naming detector.max_screen_tokens); "
                            "cover: screened in max_windows wide windows that cover the whole text (a short question in a wide "
                            "window is diluted, so recall drops)")
    update_missing: bool = Field(True, description="targets in the policy but not in the artifact are trained at load (seconds) instead of refused")

    @model_validator(mode="after")
    def _artifact_for_trained(self) -> "DetectorSpec":
        if self.kind == "trained" and self.artifact is None:
            raise ValueError("detector.kind is 'trained' but detector.artifact is missing: run `guard-train classifier` and set its output directory")
        return self


class Policy(_Strict):
    version: Literal[1] = 1
    detector: DetectorSpec = DetectorSpec()
    fail_mode: Literal["closed", "open"] = "closed"
    default_action: Action = "refuse"
    refusal_message: str = "I'm sorry, but I can't help with that."
    output: OutputSpec = OutputSpec()
    targets: tuple[Target, ...] = ()

    @model_validator(mode="after")
    def _unique_ids(self) -> "Policy":
        seen: set[str] = set()
        for target in self.targets:
            if target.id in seen:
                raise ValueError(f"duplicate target id {target.id!r}")
            seen.add(target.id)
        return self

    def target(self, target_id: str) -> Target:
        for t in self.targets:
            if t.id == target_id:
                return t
        raise KeyError(target_id)

    def output_actions(self) -> dict[str, str]:
        """target id -> what a hit in its answers does (``refuse`` or ``method``), for every target
        whose answers are screened (by default every target whose action is not ``pass``); ``method``
        only where the target's action is a method."""
        out: dict[str, str] = {}
        for t in self.targets:
            default = self.output.screen and self.action_for(t.id) != "pass"
            if t.output.screen if t.output.screen is not None else default:
                method = t.output.action == "method" and self.action_for(t.id) in ("eco", "spul", "uld")
                out[t.id] = "method" if method else "refuse"
        return out

    def action_for(self, target_id: str | None) -> str:
        if target_id is None:
            return self.default_action
        try:
            return self.target(target_id).action or self.default_action
        except KeyError:
            return self.default_action


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str((base / value).resolve())
        return value

    det = data.get("detector")
    if isinstance(det, dict) and "artifact" in det:
        det["artifact"] = fix(det["artifact"])
    if isinstance(det, dict):
        for src in det.get("negatives") or []:
            if isinstance(src, dict) and "path" in src:
                src["path"] = fix(src["path"])
    for target in data.get("targets") or []:
        if not isinstance(target, dict):
            continue
        for key in ("forget_data", "keep_data"):
            for src in target.get(key) or []:
                if isinstance(src, dict) and "path" in src:
                    src["path"] = fix(src["path"])
        params = target.get("params")
        if isinstance(params, dict) and "artifact" in params:
            params["artifact"] = fix(params["artifact"])
    return data


def parse_policy(data: dict[str, Any], source: str = "policy") -> Policy:
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, source) from None


def load_policy(path: Path) -> Policy:
    path = Path(path)
    data = _resolve_paths(load_yaml_mapping(path, "policy"), path.resolve().parent)
    return parse_policy(data, f"policy {path}")


def empty_policy() -> Policy:
    return Policy(detector=DetectorSpec(kind="none"))
