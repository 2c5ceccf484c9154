"""Build the output screener a policy asks for (at start-up and on every policy reload, beside
``classifiers.loader.build_detector``).

Names and aliases come from the policy. Facts (dates, titles) come from the trained detector's
artifact when there is one (mined at training time, with the facts that also occur in the shared
negatives or belong to two targets already dropped), else they are mined here from the targets'
forget data with the same functions (``classifiers.facts.target_facts`` and
``classifiers.train_targets.drop_common_facts`` against the policy's keep data and negatives).
The semantic stage is the trained detector itself (``output.semantic``), judging each sentence of
an answer as it judges a request.
"""

from __future__ import annotations

from collections.abc import Mapping

from classifiers.base import Detector
from guard.errors import ConfigError
from guard.output_screen.matchers import NameFactMatcher, TargetFacts
from guard.output_screen.stream import OutputScreener
from guard.policy import Policy


def mined_facts(policy: Policy, target_ids: list[str]) -> dict[str, TargetFacts]:
    """Facts of ``target_ids`` mined from the policy's forget data (no artifact needed)."""
    from classifiers.data import policy_negatives, target_texts
    from classifiers.facts import target_facts
    from classifiers.train_targets import TargetData, drop_common_facts

    tds = []
    keep: list[str] = policy_negatives(policy)
    for i, target in enumerate(policy.targets):
        texts = target_texts(target, i)
        keep += texts.keep
        if target.id in target_ids:
            tds.append(TargetData(target.id, target.all_names, [], [], [], facts=target_facts(texts.documents)))
    drop_common_facts(tds, keep)
    return {td.target_id: TargetFacts.of(td.facts) for td in tds}


def artifact_facts(detector: Detector | None) -> Mapping[str, Mapping[str, list[str]]] | None:
    """The facts stored in a trained detector's artifact (None: not a trained detector)."""
    model = getattr(detector, "model", None)
    facts = getattr(model, "facts", None)
    return facts if isinstance(facts, dict) else None


def build_output_screener(policy: Policy, detector: Detector | None = None) -> OutputScreener:
    """The screener for ``policy``'s ``output`` settings; ``detector``: the request detector
    ``build_detector(policy)`` gave (its facts, and its heads for ``output.semantic``)."""
    actions = policy.output_actions()
    stored = artifact_facts(detector)
    if stored is not None and all(t in stored for t in actions):
        facts = {t: TargetFacts.of(stored[t]) for t in actions}
    else:
        facts = mined_facts(policy, list(actions)) if actions else {}
    matcher = NameFactMatcher({t.id: t.all_names for t in policy.targets if t.id in actions}, facts,
                              approximate=policy.output.approximate_names)
    semantic = None
    if policy.output.semantic and actions:
        if stored is None:
            raise ConfigError("output.semantic needs a trained detector (detector.kind: trained); set output.semantic: false "
                              "or train one with `guard-train classifier`", param="output.semantic")
        semantic = detector
    return OutputScreener(matcher, actions, holdback_tokens=policy.output.holdback_tokens, semantic=semantic,
                          sentence_words=policy.detector.window_words, fail_closed=policy.fail_mode == "closed",
                          budget_ms=policy.detector.budget_ms)
