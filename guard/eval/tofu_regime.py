"""Which questions of a ``guard-eval tofu`` guard row go through the policy's method: the two regimes.

* ``served`` (default): the detector decides, exactly as the server screens a request. Flagged
  questions get the target's method, the others the plain model. Today's detectors flag almost no
  retain / real-author / world-fact question, so model utility "as served" mostly measures the
  detector, not the method.
* ``worst-case``: every retain, real-author and world-fact question goes through the method **as if
  the detector had flagged it** (issue #16: "every retain / real-author / world-fact question routed
  through the method"). This measures what the method does to questions about other people when
  the detector is wrong, i.e. its model utility at a 100 % false-positive rate. Forget questions are
  decided as served, so forget quality is the served row's.

Which target a routed question is attributed to: the policy's targets **in turn**, in policy order
(question *i* of a split, counted in the plan's order, gets target ``i mod n``). Why not "the
nearest target by the detector's score": a detector reports a target only for flagged text (the
trained detector ranks targets only then; the keyword detector has no score), so for an unflagged
question there is no nearest target to read. Why not "always the first target": a method's
parameters are per target (ECO ``facts_only``'s fact words differ per author), and taking them in
turn puts every target's parameters on an equal share of the questions. The choice is
deterministic, so a cached row is reproducible. A policy without targets routes to its
``default_action`` with no target (the pipeline's fallback for a flag without a known target). A
question the detector did flag keeps its served decision (its target and method).

A routed question's record keeps the detector's verdict in ``flagged`` (false) and says
``routed: true``; its ``action`` is the method that answered it.
"""

from __future__ import annotations

from typing import Sequence

from classifiers.base import Verdict
from guard.errors import ConfigError
from guard.pipeline import Decision, Pipeline

REGIMES = ("served", "worst-case")
DEFAULT_REGIME = "served"
ROUTED_SPLITS = ("retain", "real", "world")   # the splits model utility is computed from


def parse_regimes(text: str) -> list[str]:
    """``served``, ``worst-case`` or both, comma-separated, in the order given, without repeats."""
    regimes: list[str] = []
    for part in text.split(","):
        regime = part.strip()
        if regime not in REGIMES:
            raise ConfigError(f"--regime {text!r}: each entry must be one of {', '.join(REGIMES)}", param="regime")
        if regime not in regimes:
            regimes.append(regime)
    return regimes


def regime_label(label: str, regime: str) -> str:
    """A guard row's label in ``regime``: served rows keep the label, others get ``@<regime>``, so
    both regimes of one policy are distinct rows and files (``systems/<label>.json``)."""
    return label if regime == DEFAULT_REGIME else f"{label}@{regime}"


def route(pipeline: Pipeline, split: str, decisions: Sequence[Decision], regime: str) -> list[Decision]:
    """The decisions a split's questions get under ``regime`` (``decisions``: the served ones, in plan order)."""
    if regime == DEFAULT_REGIME or split not in ROUTED_SPLITS:
        return list(decisions)
    if regime != "worst-case":
        raise ConfigError(f"unknown regime {regime!r}; choose {', '.join(REGIMES)}", param="regime")
    return [d if d.verdict.flagged else _as_flagged(pipeline, d, i) for i, d in enumerate(decisions)]


def _as_flagged(pipeline: Pipeline, served: Decision, position: int) -> Decision:
    targets = pipeline.policy.targets
    target = targets[position % len(targets)] if targets else None
    target_id = target.id if target is not None else None
    action = pipeline.policy.action_for(target_id)
    verdict = Verdict(flagged=True, target_id=target_id, score=served.verdict.score,
                      detail={**served.verdict.detail, "regime": "worst-case"})
    return Decision(action, verdict, target, pipeline.interventions[action], served.screen_seconds)
