"""SPUL: soft-prompt unlearning (Bhaila et al., "Soft Prompting for Unlearning in Large Language
Models").

A soft prompt is ``n`` trainable input-embedding vectors (``[n, hidden]``) learned with the LLM
frozen (``guard-train spul``, see ``guard.train.spul``). For a **flagged** request only, the
vectors are inserted into the prompt's input embeddings and the engine generates from those
embeddings: ``inputs_embeds`` on the local engine, ``prompt_embeds`` on vLLM (started with
``--enable-prompt-embeds``). Unflagged requests never reach this intervention.

Where the vectors go (``position`` in the artifact's manifest, fixed at training time):

* ``user`` (default): right before the content of the **last user message**, inside the user
  turn (after ``<|im_start|>user\\n`` for ChatML templates). The paper prepends the soft prompt to
  the query (``[P; x]``); this is that, kept inside the chat structure: the system prompt and the
  turn markers stay exactly as the model was tuned on, and the assistant turn begins normally, so
  the answer starts where the model expects an answer to start. The last user turn is the one
  being answered, whichever turn the detector flagged: a question placed in a system, developer or
  assistant turn gets the same soft prompt, since the vectors condition everything generated after
  them (tests/interventions/test_roles.py checks each role).
* ``assistant``: right after the assistant header of the generation prompt (the last thing before
  the answer). Stronger conditioning, but the vectors sit inside the assistant turn.

Text-completion requests (no template) get the vectors at the start of the prompt (``user``) or at
its end (``assistant``). A chat whose last user message cannot be located in the rendered prompt
(empty content, a template that rewrites content) falls back to ``assistant``.

Training and serving share ``insertion_index`` and ``insert_soft_prompt``
(``guard.interventions.prompts``, re-exported here), so the vectors are used exactly where they
were trained.

Artifact: a directory with ``soft_prompt.safetensors`` (one tensor ``soft_prompt`` ``[n, hidden]``,
float32) and ``manifest.json`` (kind ``spul-soft-prompt``, base-model identity with the hash of its
embedding matrix, position, data, hyperparameters, train-time metrics). Loading it for a different
base model is refused (``guard.artifacts.check_identity``).

Policy: ``action: spul`` with ``params: {artifact: DIR}`` per target (relative to the policy file).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Literal

import torch

from classifiers.base import Verdict
from guard.artifacts import check_identity, read_manifest
from guard.engines.base import Engine, GenerationChunk
from guard.errors import ConfigError
from guard.interventions.base import GuardRequest, Intervention
from guard.interventions.prompts import (  # noqa: F401 - shared with training (guard.train.spul*)
    POSITIONS,
    MethodPrompt,
    SoftPromptSpec,
    completion_insertion_index,
    insert_soft_prompt,
    insertion_index,
    render_for_method,
)
from guard.interventions.refuse import Refuse
from guard.interventions.scoring import LogitsTransform
from guard.policy import Policy, Target

log = logging.getLogger(__name__)

KIND = "spul-soft-prompt"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSOR_FILE = "soft_prompt.safetensors"
TENSOR_KEY = "soft_prompt"
Position = Literal["user", "assistant"]
PARAMS = ("artifact",)
RETRAIN = "guard-train spul --policy POLICY --out DIR"


# -- where the vectors go ------------------------------------------------------------------------


# -- the artifact ----------------------------------------------------------------------------------


def tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()).hexdigest()


@dataclass(frozen=True)
class SoftPrompt:
    vectors: torch.Tensor  # [n, hidden], float32, CPU
    position: str
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def spec(self) -> SoftPromptSpec:
        return SoftPromptSpec(self.vectors, self.position)


def save_soft_prompt(directory: Path, vectors: torch.Tensor, manifest: dict[str, Any]) -> None:
    """Write ``vectors`` and ``manifest`` into ``directory`` (the caller stages it atomically)."""
    from safetensors.torch import save_file

    from guard.atomic import write_json

    vectors = vectors.detach().to(torch.float32).contiguous().cpu()
    if vectors.ndim != 2:
        raise ValueError(f"a soft prompt is [n, hidden], got shape {tuple(vectors.shape)}")
    position = manifest.get("position")
    if position not in POSITIONS:
        raise ValueError(f"manifest position must be one of {POSITIONS}, got {position!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({TENSOR_KEY: vectors}, str(directory / TENSOR_FILE), metadata={"format": "pt", "kind": KIND})
    full = {**manifest, "kind": KIND, "format_version": FORMAT_VERSION, "n_tokens": int(vectors.shape[0]),
            "hidden_size": int(vectors.shape[1]), "tensor_file": TENSOR_FILE, "tensor_sha256": tensor_sha256(vectors)}
    write_json(directory / MANIFEST, full)


def load_soft_prompt(directory: Path | str, *, param: str | None = None) -> SoftPrompt:
    """Read an artifact written by ``guard-train spul`` (no identity check: see ``load_for_engine``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    manifest = read_manifest(directory, kind=KIND, filename=MANIFEST, param=param, retrain=RETRAIN)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"soft prompt {directory} has format version {manifest.get('format_version')!r}; this guard "
                          f"reads version {FORMAT_VERSION}: retrain it with `{RETRAIN}`", param=param)
    tensor_path = directory / manifest.get("tensor_file", TENSOR_FILE)
    try:
        tensors = load_file(str(tensor_path))
    except FileNotFoundError:
        raise ConfigError(f"soft prompt {directory} lacks {tensor_path.name}; rerun `{RETRAIN}`", param=param) from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {tensor_path}: {exc}", param=param) from None
    vectors = tensors.get(TENSOR_KEY)
    if vectors is None or vectors.ndim != 2:
        raise ConfigError(f"{tensor_path} has no [n, hidden] tensor {TENSOR_KEY!r}", param=param)
    vectors = vectors.to(torch.float32)
    expected_shape = [manifest.get("n_tokens"), manifest.get("hidden_size")]
    if list(vectors.shape) != expected_shape:
        raise ConfigError(f"{tensor_path} holds a {list(vectors.shape)} tensor but its manifest says {expected_shape}",
                          param=param)
    if manifest.get("tensor_sha256") and manifest["tensor_sha256"] != tensor_sha256(vectors):
        raise ConfigError(f"{tensor_path} does not match the hash in its manifest (changed or corrupted); "
                          f"retrain it with `{RETRAIN}`", param=param)
    if not torch.isfinite(vectors).all():
        raise ConfigError(f"{tensor_path} contains NaN or infinite values; retrain it", param=param)
    position = manifest.get("position")
    if position not in POSITIONS:
        raise ConfigError(f"soft prompt {directory}: unknown position {position!r} (expected one of {POSITIONS})",
                          param=param)
    return SoftPrompt(vectors=vectors, position=position, manifest=manifest, path=directory)


def load_for_engine(directory: Path | str, engine: Engine, *, param: str | None = None) -> SoftPrompt:
    """``load_soft_prompt`` plus the base-model check: refuses a soft prompt trained for another model."""
    soft = load_soft_prompt(directory, param=param)
    served = check_identity(soft.manifest, engine.model_identity(), artifact=f"soft prompt {directory}", retrain=RETRAIN, param=param)
    if soft.vectors.shape[1] != served["hidden_size"]:  # same hash implies same width; defensive
        raise ConfigError(f"soft prompt {directory} is {soft.vectors.shape[1]} wide, the served model's embeddings are "
                          f"{served['hidden_size']}", param=param)
    return soft


# -- prompts with the soft prompt in them --------------------------------------------------------


def prompt_with_soft_prompt(request: GuardRequest, soft: SoftPrompt, engine: Engine) -> MethodPrompt:
    """The request's prompt embeddings ``[P+n, H]`` with ``soft`` inserted (``P``: ``prompt_tokens``)."""
    return render_for_method(request.prompt, engine, soft_prompt=soft.spec)


class SoftPromptUnlearning(Intervention):
    """Answers flagged requests from the prompt embeddings with the target's soft prompt inserted."""

    name = "spul"

    def __init__(self, prompts: dict[str, SoftPrompt], refusal_message: str) -> None:
        self.prompts = prompts
        self.refusal = Refuse(refusal_message)
        unique = {id(p) for p in prompts.values()}
        # a flagged request without a target (or with one that has another action) uses the
        # policy's soft prompt when there is exactly one; otherwise it is refused (fail closed)
        self.fallback = next(iter(prompts.values())) if len(unique) == 1 else None

    def soft_prompt_for(self, target: Target | None) -> SoftPrompt | None:
        if target is not None and target.id in self.prompts:
            return self.prompts[target.id]
        return self.fallback

    def describe(self) -> dict[str, Any]:
        return {"action": self.name,
                "targets": {tid: {"artifact": str(p.path), "n_tokens": p.n_tokens, "position": p.position}
                            for tid, p in self.prompts.items()}}

    async def stream(self, request: GuardRequest, verdict: Verdict, target: Target | None,
                     engine: Engine) -> AsyncIterator[GenerationChunk]:
        soft = self.soft_prompt_for(target)
        if soft is None:
            log.warning("spul: no soft prompt for target %r; refusing", target.id if target else None)
            async for chunk in self.refusal.stream(request, verdict, target, engine):
                yield chunk
            return
        # rendering and the embedding lookup in a thread: a long flagged prompt must not hold the event loop
        prompt = await request.render_off_loop(engine, soft_prompt=soft.spec)
        async for chunk in engine.generate(prompt.input, request.params):
            if chunk.finish_reason is not None:
                # usage counts the client's tokens, not the virtual ones
                chunk.prompt_tokens = prompt.prompt_tokens
            yield chunk

    def scoring_inputs(self, request: GuardRequest, verdict: Verdict, target: Target | None,
                       engine: Engine) -> tuple[torch.Tensor, LogitsTransform | None]:
        soft = self.soft_prompt_for(target)
        if soft is None:
            raise ConfigError(f"spul: no soft prompt for target {target.id if target else None!r} to score with",
                              param="targets")
        return prompt_with_soft_prompt(request, soft, engine).embeds(engine), None


def build_intervention(policy: Policy, engine: Engine) -> SoftPromptUnlearning:
    """Load (once) the soft prompt of every target whose action is ``spul`` and check it fits the engine."""
    by_path: dict[Path, SoftPrompt] = {}
    prompts: dict[str, SoftPrompt] = {}
    for i, target in enumerate(policy.targets):
        if (target.action or policy.default_action) != "spul":
            continue
        where = f"targets.{i}.params"
        unknown = sorted(set(target.params) - set(PARAMS))
        if unknown:
            raise ConfigError(f"unknown spul parameter(s) {', '.join(unknown)}; spul takes: {', '.join(PARAMS)}",
                              param=f"{where}.{unknown[0]}")
        artifact = target.params.get("artifact")
        if not artifact or not isinstance(artifact, str):
            raise ConfigError(f"target {target.id!r} uses action spul but has no params.artifact: train a soft prompt "
                              f"with `{RETRAIN}` and set params.artifact to DIR", param=f"{where}.artifact")
        path = Path(artifact)
        if path not in by_path:
            by_path[path] = load_for_engine(path, engine, param=f"{where}.artifact")
        prompts[target.id] = by_path[path]
    return SoftPromptUnlearning(prompts, policy.refusal_message)
