"""Build the detector a policy asks for."""

from __future__ import annotations

from classifiers.base import Detector, NullDetector
from classifiers.keyword import KeywordDetector
from guard.errors import ConfigError
from guard.policy import Policy


def build_detector(policy: Policy) -> Detector:
    kind = policy.detector.kind
    if kind == "none":
        return NullDetector()
    if kind == "keyword":
        return KeywordDetector({t.id: t.all_names for t in policy.targets})
    raise ConfigError(f"detector kind {kind!r} is not available in this version", param="detector.kind")
