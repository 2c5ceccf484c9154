"""ULD (Ji et al., NeurIPS 2024): answer flagged requests with ``target - alpha * assistant`` logits.

The assistant (``guard-train uld``) is the served model's first K layers plus a LoRA adapter,
trained to *remember* the forget data and to be uniform on retain data. Subtracting its logits on
the target's plausible tokens removes exactly the knowledge it holds (see
``guard.interventions.uld_decoding`` for the math and the two engines).

Policy parameters (``targets.N.params``):

```yaml
action: uld
params:
  artifact: artifacts/uld-forget01   # required: the directory `guard-train uld` wrote
  alpha: 0.8                         # optional overrides of the artifact's decoding settings
  top_k: 20                          # plausible-set size (<= vLLM's --max-logprobs)
  min_prob_ratio: 0.0                # keep plausible tokens with p >= ratio * p_max (0: off)
  mode: step                         # vLLM only: step (one request per token, default) | stream (speculative)
```

An artifact trained for another base model is refused at policy load (embedding hash mismatch).
Only flagged requests reach this intervention; unflagged traffic never touches the assistant.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import torch

from classifiers.base import Verdict
from guard.artifacts import check_identity, read_manifest
from guard.engines.base import Engine, GenerationChunk, SamplingParams
from guard.errors import ConfigError
from guard.interventions.base import ContractUnsupported, GuardRequest, Intervention
from guard.interventions.prompts import render_for_method
from guard.interventions.scoring import LogitsTransform
from guard.interventions.uld_assistant import load_assistant
from guard.interventions.uld_decoding import (
    AssistantRuntime,
    ULDLogitsProcessor,
    ULDSettings,
    scoring_transform,
    uld_stream,
)
from guard.policy import Policy, Target

log = logging.getLogger(__name__)

KIND = "uld-assistant"
MANIFEST = "manifest.json"
ADAPTER_DIR = "adapter"
RETRAIN = "guard-train uld --policy POLICY --out DIR"
MODES = ("stream", "step")


class AssistantCache:
    """Merged assistants loaded for one policy, keyed by what they are built from (artifact, adapter
    file version, model folder, depth, device): targets sharing an artifact share one model. Owned by
    the ``ULD`` intervention of one pipeline; ``clear`` (on reload) lets the models go."""

    def __init__(self) -> None:
        self._runtimes: dict[tuple[Any, ...], AssistantRuntime] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], load: Callable[[], AssistantRuntime]) -> AssistantRuntime:
        with self._lock:
            runtime = self._runtimes.get(key)
        if runtime is None:
            runtime = load()
            with self._lock:
                runtime = self._runtimes.setdefault(key, runtime)
        return runtime

    def __len__(self) -> int:
        return len(self._runtimes)

    def clear(self) -> None:
        with self._lock:
            self._runtimes.clear()


def _model_dir(engine: Engine, param: str) -> Path:
    if engine.model_dir is None:
        raise ConfigError(f"ULD builds its assistant from the served model's weights, so the engine needs a local model "
                          f"folder (it serves {engine.served_model_name!r} without one); start the guard with --model "
                          "pointing at it", param=param)
    return engine.model_dir


def load_runtime(artifact: Path, engine: Engine, *, param: str = "params.artifact",
                 cache: AssistantCache | None = None) -> tuple[AssistantRuntime, dict[str, Any]]:
    """Read and check an artifact, then build (or take from ``cache``) its merged assistant for
    ``engine``'s model, on ``engine.device`` (the local engine's; the vLLM path runs it in the guard, on CPU)."""
    return load_assistant_runtime(artifact, engine.model_identity(), lambda: _model_dir(engine, param), str(engine.device),
                                  param=param, cache=cache)


def load_assistant_runtime(artifact: Path, identity: Any, model_dir: Callable[[], Path], device: str, *,
                           param: str, cache: AssistantCache | None = None) -> tuple[AssistantRuntime, dict[str, Any]]:
    """``load_runtime`` for any holder of the model: its identity (``check_identity``), its folder
    (asked for only once the artifact is known good) and a device; also the SPUL trainer's ULD teacher."""
    manifest = read_manifest(artifact, kind=KIND, filename=MANIFEST, param=param, retrain=RETRAIN)
    check_identity(manifest, identity, artifact=artifact, retrain=RETRAIN, param=param)
    layers = manifest.get("assistant", {}).get("layers")
    if not isinstance(layers, int) or layers < 1:
        raise ConfigError(f"artifact {artifact} has no valid assistant.layers in its manifest; rerun `{RETRAIN}`", param=param)
    model_dir = model_dir()
    adapter = Path(artifact) / ADAPTER_DIR
    weights = adapter / "adapter_model.safetensors"
    key = (str(Path(artifact).resolve()), weights.stat().st_mtime_ns if weights.exists() else None, str(model_dir), layers,
           device)

    def load() -> AssistantRuntime:
        return AssistantRuntime(load_assistant(model_dir, adapter, layers, merge=True, param=param).to(device))

    return (cache or AssistantCache()).get(key, load), manifest


def settings_from(manifest: dict[str, Any], params: dict[str, Any], where: str) -> ULDSettings:
    """The artifact's decoding settings with the policy's overrides, validated."""
    dec = dict(manifest.get("decoding") or {})
    base = ULDSettings(**{k: dec[k] for k in ("alpha", "top_k", "min_prob_ratio") if k in dec})
    changes: dict[str, Any] = {}
    if "alpha" in params:
        value = params["alpha"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) <= 10:
            raise ConfigError(f"alpha must be a number between 0 and 10, got {value!r}", param=f"{where}.alpha")
        changes["alpha"] = float(value)
    if "top_k" in params:
        value = params["top_k"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            raise ConfigError(f"top_k must be an integer between 1 and 1000 (<= vLLM's --max-logprobs on the vllm engine), "
                              f"got {value!r}", param=f"{where}.top_k")
        changes["top_k"] = value
    if "min_prob_ratio" in params:
        value = params["min_prob_ratio"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) < 1:
            raise ConfigError(f"min_prob_ratio must be in [0, 1), got {value!r}", param=f"{where}.min_prob_ratio")
        changes["min_prob_ratio"] = float(value)
    if "mode" in params:
        if params["mode"] not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {params['mode']!r}", param=f"{where}.mode")
        changes["mode"] = params["mode"]
    unknown = sorted(set(params) - {"artifact", "alpha", "top_k", "min_prob_ratio", "mode", "refusal_message"})
    if unknown:
        raise ConfigError(f"unknown ULD parameter(s) {', '.join(unknown)} (known: artifact, alpha, top_k, min_prob_ratio, mode)",
                          param=f"{where}.{unknown[0]}")
    return replace(base, **changes)


def choice_params(params: SamplingParams) -> list[SamplingParams]:
    """One ``n=1`` parameter set per choice; with a seed, choice i samples with ``seed + i`` (n
    identical samples would not be n choices)."""
    return [replace(params, n=1, seed=params.seed + i if params.seed is not None else None) for i in range(params.n)]


def check_stepwise_contract(params: SamplingParams) -> None:
    """Step-wise ULD (an engine without guard-side logits processors: vLLM) chooses each token
    guard-side from the upstream's top-k: it has no grammar matcher and no penalty state there, so
    a structured answer, penalties and ``logit_bias`` cannot be honoured (``ContractUnsupported``,
    answered per the policy: a refusal in the client's shape by default). Log-probs and ``n`` can."""
    constraint = params.constraint
    if constraint is not None:
        field = "tool_choice" if constraint.tool_choice is not None else "response_format"
        raise ContractUnsupported(f"ULD on a vLLM upstream decodes step by step and cannot enforce {field}; "
                                  "use the local engine, or ECO/SPUL for this target", param=field, method="uld")
    for field in ("presence_penalty", "frequency_penalty", "logit_bias"):
        if getattr(params, field):
            raise ContractUnsupported(f"ULD on a vLLM upstream decodes step by step and does not apply {field}; "
                                      "leave it unset, or use the local engine", param=field, method="uld")


class ULD(Intervention):
    name = "uld"

    def __init__(self, assistants: dict[str | None, tuple[AssistantRuntime, ULDSettings, str]],
                 cache: AssistantCache | None = None) -> None:
        """``assistants``: target id -> (runtime, settings, artifact path); key ``None`` is the fallback.
        ``cache``: the models they were loaded into (released with them)."""
        self.assistants = assistants
        self.cache = cache or AssistantCache()

    def release(self) -> None:
        """Let the assistants go (a reload replaced this pipeline); requests still decoding keep theirs."""
        self.assistants = {}
        self.cache.clear()

    def _for(self, target: Target | None) -> tuple[AssistantRuntime, ULDSettings]:
        entry = self.assistants.get(target.id if target is not None else None) or self.assistants.get(None)
        if entry is None:  # build_intervention guarantees a fallback; keep a clear message anyway
            raise ConfigError(f"no ULD assistant for target {target.id if target else None!r}", param="targets")
        return entry[0], entry[1]

    def describe(self) -> dict[str, Any]:
        return {"action": self.name,
                "targets": {str(k): {"artifact": v[2], **v[1].describe()} for k, v in self.assistants.items()}}

    async def stream(self, request: GuardRequest, verdict: Verdict, target: Target | None,
                     engine: Engine) -> AsyncIterator[GenerationChunk]:
        runtime, settings = self._for(target)
        in_engine = engine.capabilities.logits_processors
        if not in_engine:
            check_stepwise_contract(request.params)
        # the logit difference applies to every generated token whatever turn holds the question;
        # rendering runs in a thread so a long flagged prompt does not hold the event loop
        prompt = await request.render_off_loop(engine)
        # the assistant's state is one sequence's: n choices are n generations, one after the other
        for index, params in enumerate(choice_params(request.params)):
            if in_engine:
                chunks = engine.generate(prompt.input, params, logits_processors=[ULDLogitsProcessor(runtime, settings)])
            else:
                chunks = uld_stream(engine, prompt.rendered.token_ids, params, runtime, settings)
            async for chunk in chunks:
                yield replace(chunk, index=index)

    def scoring_inputs(self, request: GuardRequest, verdict: Verdict, target: Target | None,
                       engine: Engine) -> tuple[torch.Tensor, LogitsTransform | None]:
        runtime, settings = self._for(target)
        return render_for_method(request.prompt, engine).embeds(engine), scoring_transform(runtime, settings)


def build_intervention(policy: Policy, engine: Engine) -> ULD:
    """Load one assistant per distinct artifact of the targets whose action is ``uld``."""
    assistants: dict[str | None, tuple[AssistantRuntime, ULDSettings, str]] = {}
    cache = AssistantCache()
    for i, target in enumerate(policy.targets):
        if policy.action_for(target.id) != "uld":
            continue
        where = f"targets.{i}.params"
        artifact = target.params.get("artifact")
        if not artifact:
            raise ConfigError(f"target {target.id!r} uses action 'uld' but has no params.artifact: train an assistant "
                              f"with `{RETRAIN}` and set its directory", param=f"{where}.artifact")
        runtime, manifest = load_runtime(Path(str(artifact)), engine, param=f"{where}.artifact", cache=cache)
        settings = settings_from(manifest, target.params, where)
        if not engine.capabilities.logits_processors and settings.top_k > 50:
            log.warning("%s.top_k=%d: the vLLM upstream must run with --max-logprobs >= %d", where, settings.top_k, settings.top_k)
        assistants[target.id] = (runtime, settings, str(artifact))
        assistants.setdefault(None, (runtime, settings, str(artifact)))
    if not assistants:
        raise ConfigError(f"action 'uld' is used (default_action) but no target has action 'uld' with params.artifact; "
                          f"give at least one target `action: uld` and an artifact from `{RETRAIN}`", param="default_action")
    return ULD(assistants, cache)
