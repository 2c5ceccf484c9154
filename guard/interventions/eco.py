"""ECO: embedding-corrupted prompts (Liu et al., NeurIPS 2024, "Large Language Model Unlearning via
Embedding-Corrupted Prompts").

For a flagged request the prompt is rendered with the served model's chat template, the tokens to
corrupt are picked (``guard.interventions.token_selection``: the target's name mentions wherever the
model reads them, in every role's content, else all content of every role), their input embeddings
are looked up and corrupted (``guard.interventions.corruption``), and the model generates from the
embeddings. The local engine passes ``inputs_embeds``; the vLLM engine sends base64
``prompt_embeds`` to ``/v1/completions`` (vLLM must run with ``--enable-prompt-embeds``; otherwise
the request fails with a 502 that says so, it never falls back to the clean prompt). Unflagged
traffic never reaches this module.

Per-target parameters (``targets.N.params``)::

    corruption: rand_noise_first_n   # | zero_out_top_k | flip_sign_top_k
    sigma: 0.6                       # noise standard deviation (rand_noise_first_n)
    k: null                          # dimensions: first k (noise; null = all) or top-k (zero/flip)
    select: entity                   # | all_content (all_user: its older name) | facts_only
    facts: [florist, Kuwait]         # facts_only: the target's distinctive fact words (see below)
    answer_names: false              # true: also corrupt the target's name in the model's own answer
    artifact: DIR                    # optional: output of `guard-train eco` (its chosen values)

``answer_names: true`` corrupts each mention of the target's names that the model writes, as it reads
it back for the following tokens (``guard.interventions.eco_answer``: generation restarts from the
corrupted prompt plus the corrupted answer so far; both engines, through ``prompt_embeds`` on vLLM).
Teacher-forced scoring reads a given answer the same way: ``scoring_inputs`` gives the corrupted
prompt and ``scoring_answer_embeds`` the answer's embeddings with its name mentions corrupted
(``eco_answer.answer_reader``), so ``guard-eval tofu``'s probabilities and truth ratios see what the
model reads when it writes that answer.

``select: entity`` corrupts the target's name mentions, and all content when the request does not name
the target (the detector flagged it for another reason). ``select: facts_only`` corrupts the name
mentions and the target's distinctive fact words (``facts``: words of its forget data that questions
about other people do not use), and **nothing** when the request holds neither: a false positive
then gets the plain answer instead of an all-content-corrupted one (measured on tofu-mini: worst-case
model utility 1.00x vs 0.13x with ``entity``; docs/eval.md). A flagged request with no known target
(the fallback) is corrupted on all its content either way.

Values from an artifact are the defaults; keys written in the policy override them. The artifact
must have been searched on the served model (checked through the embedding-matrix hash).

Noise is drawn from a generator seeded with the request's ``seed`` when the client sends one (so a
request is reproducible, and identical on both engines), else from a fresh random seed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Collection, Mapping, Sequence

import torch

from classifiers.base import Verdict
from guard.artifacts import check_identity, read_manifest
from guard.engines.base import Engine, GenerationChunk, RenderedPrompt
from guard.errors import ConfigError, InvalidRequest
from guard.interventions.base import ContractUnsupported, GuardRequest, Intervention
from guard.interventions.corruption import (
    corrupt_positions,
    get_corruption,
    validate_params,
)
from guard.interventions.eco_answer import AnswerCorruption, answer_reader, stream_with_answer_names
from guard.interventions.prompts import MethodPrompt, render_for_method
from guard.interventions.scoring import LogitsTransform
from guard.interventions.token_selection import (
    MODES,
    Selection,
    canonical_mode,
    content_regions,
    mentions_as_read,
    select_tokens,
    tokens_overlapping,
)
from guard.lm.nll import AnswerEmbeds
from guard.policy import Policy, Target

log = logging.getLogger(__name__)

ARTIFACT_KIND = "eco"
MANIFEST = "manifest.json"
PARAM_KEYS = ("corruption", "sigma", "k", "select", "facts", "answer_names", "artifact")
FACTS_ONLY = "facts_only"
SELECT_MODES = (*MODES, FACTS_ONLY)
RETRAIN = "guard-train eco --policy POLICY --out DIR"
SCORING_SEED = 0  # teacher-forced scoring without a request seed uses this one (reproducible evals)


@dataclass(frozen=True)
class EcoConfig:
    corruption: str
    sigma: float | None = None
    k: int | None = None
    select: str = "entity"
    artifact: str | None = None
    answer_names: bool = False
    facts: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_artifact(directory: Path | str, engine: Engine | None = None, *, param: str | None = None) -> dict[str, Any]:
    """The manifest of a ``guard-train eco`` artifact, checked against the served model when given."""
    manifest = read_manifest(Path(directory), kind=ARTIFACT_KIND, filename=MANIFEST, param=param, retrain=RETRAIN)
    chosen = manifest.get("chosen")
    if not isinstance(chosen, dict) or "corruption" not in chosen:
        raise ConfigError(f"artifact {directory} has no chosen parameters (manifest 'chosen'); rerun `{RETRAIN}`",
                          param=param)
    if engine is not None:
        check_identity(manifest, engine.model_identity(), artifact=f"ECO artifact {directory}", retrain=RETRAIN,
                       param=param)
    return manifest


def parse_params(params: Mapping[str, Any], *, where: str = "params", engine: Engine | None = None,
                 hidden: int | None = None) -> EcoConfig:
    """Validate a target's ECO parameters (merging its artifact); errors name ``<where>.<key>``."""
    unknown = sorted(set(params) - set(PARAM_KEYS))
    if unknown:
        raise ConfigError(f"unknown ECO parameter {unknown[0]!r}; ECO takes {', '.join(PARAM_KEYS)}",
                          param=f"{where}.{unknown[0]}")
    values: dict[str, Any] = {"corruption": "rand_noise_first_n", "sigma": None, "k": None, "select": "entity",
                              "answer_names": False, "facts": None}
    artifact = params.get("artifact")
    if artifact is not None:
        if not isinstance(artifact, (str, Path)):
            raise ConfigError(f"artifact must be a directory path, got {artifact!r}", param=f"{where}.artifact")
        manifest = load_artifact(artifact, engine, param=f"{where}.artifact")
        values.update({k: v for k, v in manifest["chosen"].items() if k in values})
    values.update({k: v for k, v in params.items() if k in values})
    if values["select"] not in SELECT_MODES:
        raise ConfigError(f"select must be one of {', '.join(SELECT_MODES)}, got {values['select']!r}",
                          param=f"{where}.select")
    if values["select"] != FACTS_ONLY:
        values["select"] = canonical_mode(values["select"])
    facts = _parse_facts(values["facts"], values["select"], where)
    if not isinstance(values["answer_names"], bool):
        raise ConfigError(f"answer_names must be true or false, got {values['answer_names']!r}",
                          param=f"{where}.answer_names")
    if not isinstance(values["corruption"], str):
        raise ConfigError(f"corruption must be a name, got {values['corruption']!r}", param=f"{where}.corruption")
    corruption = validate_params(values["corruption"], values["sigma"], values["k"], hidden, where)
    return EcoConfig(corruption=corruption.name,
                     sigma=float(values["sigma"]) if values["sigma"] is not None else None,
                     k=values["k"], select=values["select"],
                     artifact=str(artifact) if artifact is not None else None, answer_names=values["answer_names"],
                     facts=facts)


def _parse_facts(facts: Any, select: str, where: str) -> tuple[str, ...]:
    if facts is None:
        if select == FACTS_ONLY:
            raise ConfigError("select: facts_only needs facts (the target's distinctive fact words, e.g. "
                              "[florist, Kuwait]); without them only the names would be corrupted",
                              param=f"{where}.facts")
        return ()
    if select != FACTS_ONLY:
        raise ConfigError(f"facts are used only with select: facts_only (select is {select!r})", param=f"{where}.facts")
    if not isinstance(facts, (list, tuple)) or not facts or not all(isinstance(w, str) and w.strip() for w in facts):
        raise ConfigError(f"facts must be a non-empty list of words, got {facts!r}", param=f"{where}.facts")
    return tuple(w.strip() for w in facts)


def select_for_eco(rendered: RenderedPrompt, names: Sequence[str], config: EcoConfig,
                   special_ids: Collection[int] = ()) -> Selection:
    """The prompt positions ECO corrupts: ``select_tokens`` for entity/all_content; for facts_only the
    mentions of the names and fact words (the detector's matcher), else nothing."""
    if config.select != FACTS_ONLY:
        return select_tokens(rendered, names, config.select, special_ids=special_ids)
    n = len(rendered.token_ids)
    regions = content_regions(rendered)
    mentions = mentions_as_read(rendered, regions, [*names, *config.facts])
    # and each fact word as written (whole word, any case): the matcher reads words as names, which
    # leaves out a listed possessive form ("abilov's", "thieves'") that the measured setting corrupts
    words = re.compile("|".join(rf"(?<!\w){re.escape(w)}(?!\w)" for w in config.facts), re.IGNORECASE)
    for region in regions:
        text = rendered.text[region.char_start:region.char_end]
        mentions += [(region.char_start + m.start(), region.char_start + m.end()) for m in words.finditer(text)]
    chosen = tokens_overlapping(rendered, mentions, special_ids) if mentions else []
    return Selection(tuple(chosen), FACTS_ONLY if chosen else "none", tuple(sorted(set(mentions))), n)


def corrupt_prompt(rendered: RenderedPrompt, embeds: torch.Tensor, config: EcoConfig, names: Sequence[str],
                   seed: int, special_ids: Collection[int] = ()) -> tuple[torch.Tensor, Selection]:
    """Corrupt ``embeds`` (the input embeddings of ``rendered``) as ECO does for a target with ``names``."""
    selection = select_for_eco(rendered, names, config, special_ids)
    generator = torch.Generator().manual_seed(int(seed))
    corrupted = get_corruption(config.corruption)(embeds, selection.mask(embeds.shape[0]), sigma=config.sigma,
                                                  k=config.k, generator=generator)
    return corrupted, selection


def answer_corruption(config: EcoConfig, seed: int) -> AnswerCorruption:
    """``config``'s corruption of answer positions (``corrupt_positions``: one draw per position from ``seed``)."""
    corruption = get_corruption(config.corruption)

    def corrupt_answer(embeds: torch.Tensor, positions: Sequence[int]) -> torch.Tensor:
        return corrupt_positions(embeds, positions, corruption, sigma=config.sigma, k=config.k, seed=seed)

    return corrupt_answer


def _scoring_seed(request: GuardRequest) -> int:
    return request.params.seed if request.params.seed is not None else SCORING_SEED


class EcoIntervention(Intervention):
    name = "eco"

    def __init__(self, configs: Mapping[str, EcoConfig], fallback: EcoConfig | None) -> None:
        self.configs = dict(configs)
        self.fallback = fallback

    def config_for(self, target: Target | None) -> EcoConfig:
        if target is not None and target.id in self.configs:
            return self.configs[target.id]
        if self.fallback is None:  # build_intervention prevents this; kept as a clear failure
            raise ConfigError("no ECO parameters apply to this request", param="targets")
        return self.fallback

    def method_prompt(self, request: GuardRequest, target: Target | None, engine: Engine,
                      seed: int) -> tuple[MethodPrompt, Selection]:
        """The request's prompt embeddings, corrupted as ECO does for ``target``, and the tokens chosen."""
        config = self.config_for(target)
        names = target.all_names if target is not None else ()
        special = engine.tokenizer.all_special_ids
        chosen: list[Selection] = []

        def corrupt(rendered: RenderedPrompt, embeds: torch.Tensor) -> torch.Tensor:
            if not rendered.token_ids:
                raise InvalidRequest("the prompt is empty", param="prompt")
            corrupted, selection = corrupt_prompt(rendered, embeds, config, names, seed, special)
            chosen.append(selection)
            return corrupted

        prompt = render_for_method(request.prompt, engine, transform=corrupt)
        return prompt, chosen[0]

    def prepare(self, request: GuardRequest, target: Target | None, engine: Engine,
                seed: int) -> tuple[RenderedPrompt, torch.Tensor, Selection]:
        prompt, selection = self.method_prompt(request, target, engine, seed)
        return prompt.rendered, prompt.embeds(engine), selection

    async def stream(self, request: GuardRequest, verdict: Verdict, target: Target | None,
                     engine: Engine) -> AsyncIterator[GenerationChunk]:
        seed = request.params.seed if request.params.seed is not None else secrets.randbits(63)
        # rendering, the embedding lookup and the corruption are CPU work proportional to the prompt:
        # in a thread, so a long flagged prompt does not hold the event loop
        prompt, selection = await asyncio.to_thread(self.method_prompt, request, target, engine, seed)
        log.debug("eco: target=%s select=%s corrupted %d/%d tokens (seed %d)", target.id if target else None,
                  selection.mode, len(selection.positions), prompt.prompt_tokens, seed)
        config = self.config_for(target)
        names = target.all_names if target is not None else ()
        if not (config.answer_names and names):
            async for chunk in engine.generate(prompt.input, request.params):
                yield chunk
            return
        if request.params.constraint is not None:
            raise ContractUnsupported("ECO with answer_names restarts generation after each name the model writes, "
                                      "which a constrained answer (response_format or a forced tool_choice) cannot "
                                      "resume; send the request without it, or set the target's answer_names: false",
                                      param="response_format", method=self.name)
        async for chunk in stream_with_answer_names(engine, prompt.embeds(engine), request.params, names,
                                                    answer_corruption(config, seed)):
            yield chunk

    def scoring_inputs(self, request: GuardRequest, verdict: Verdict, target: Target | None,
                       engine: Engine) -> tuple[torch.Tensor, LogitsTransform | None]:
        _, corrupted, _ = self.prepare(request, target, engine, _scoring_seed(request))
        return corrupted, None

    def scoring_answer_embeds(self, request: GuardRequest, verdict: Verdict, target: Target | None,
                              engine: Engine) -> AnswerEmbeds | None:
        """How a teacher-forced score reads the answer: with ``answer_names``, each candidate answer's
        name mentions corrupted as generation re-reads them (same positions, same per-position draws
        from the request's seed); ``None`` (the plain lookup) otherwise."""
        config = self.config_for(target)
        names = target.all_names if target is not None else ()
        if not (config.answer_names and names):
            return None
        return answer_reader(engine, names, answer_corruption(config, _scoring_seed(request)))

    def describe(self) -> dict[str, Any]:
        return {"action": self.name, "targets": {tid: c.as_dict() for tid, c in self.configs.items()},
                "fallback": self.fallback.as_dict() if self.fallback else None}


def build_intervention(policy: Policy, engine: Engine) -> EcoIntervention:
    """One ECO intervention for every target whose action (own or default) is ``eco``."""
    hidden = engine.hidden_size
    configs: dict[str, EcoConfig] = {}
    for i, target in enumerate(policy.targets):
        if (target.action or policy.default_action) != "eco":
            continue
        configs[target.id] = parse_params(target.params, where=f"targets.{i}.params", engine=engine, hidden=hidden)
    fallback = None
    if configs:
        # a flagged request without a known target: the first ECO target's corruption, on all content
        first = next(iter(configs.values()))
        fallback = EcoConfig(first.corruption, first.sigma, first.k, "all_content", first.artifact, first.answer_names)
    elif policy.default_action == "eco":
        raise ConfigError("default_action is 'eco' but no target carries ECO parameters, so a flagged request "
                          "could not be corrupted; give a target action: eco with params (sigma/k or an artifact) "
                          "or choose another default_action", param="default_action")
    return EcoIntervention(configs, fallback)
