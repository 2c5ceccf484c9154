"""screen -> decide -> act.

A ``Pipeline`` is immutable: policy, detector and interventions built together. Reloading a
policy builds a new one and swaps it in (``PipelineHolder``); requests in flight keep the one they
started with, and a failed reload leaves the old one serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from classifiers.base import Detector, Verdict
from guard.engines.base import Engine
from guard.errors import ScreeningUnavailable
from guard.interventions.base import Intervention
from guard.interventions.registry import build_interventions
from guard.policy import Policy, Target, empty_policy, load_policy

log = logging.getLogger(__name__)

DetectorFactory = Callable[[Policy], Detector]


@dataclass(frozen=True)
class Decision:
    action: str
    verdict: Verdict
    target: Target | None
    intervention: Intervention
    screen_seconds: float
    screening_failed: bool = False


@dataclass(frozen=True)
class Pipeline:
    policy: Policy
    detector: Detector
    interventions: dict[str, Intervention]
    source: Path | None = None

    @classmethod
    def build(cls, policy: Policy, engine: Engine, detector_factory: DetectorFactory, source: Path | None = None) -> "Pipeline":
        interventions = build_interventions(policy, engine)
        return cls(policy=policy, detector=detector_factory(policy), interventions=interventions, source=source)

    async def decide(self, texts: Sequence[str]) -> Decision:
        started = time.perf_counter()
        failed = False
        try:
            verdict = await asyncio.to_thread(self.detector.screen, list(texts))
        except Exception as exc:  # noqa: BLE001 - any detector failure is handled by the fail mode
            elapsed = time.perf_counter() - started
            if self.policy.fail_mode == "closed":
                log.error("screening failed, refusing (fail_mode=closed): %s: %s", type(exc).__name__, exc)
                raise ScreeningUnavailable("the request could not be screened and this guard is fail-closed; retry later") from None
            log.warning("screening failed, passing unscreened (fail_mode=open): %s: %s", type(exc).__name__, exc)
            verdict, failed = Verdict.clean(), True
        elapsed = time.perf_counter() - started
        if not verdict.flagged:
            return Decision("pass", verdict, None, self.interventions["pass"], elapsed, failed)
        target = None
        if verdict.target_id is not None:
            try:
                target = self.policy.target(verdict.target_id)
            except KeyError:
                target = None
        action = self.policy.action_for(verdict.target_id)
        return Decision(action, verdict, target, self.interventions[action], elapsed)


class PipelineHolder:
    """The pipeline currently in force, swapped atomically on reload."""

    def __init__(self, pipeline: Pipeline, engine: Engine, detector_factory: DetectorFactory) -> None:
        self.current = pipeline
        self._engine = engine
        self._detector_factory = detector_factory
        self._lock = asyncio.Lock()
        self.last_reload_error: str | None = None   # the full message (admin answer, log; /health only in debug)
        self.last_reload_param: str | None = None   # the policy field it names, if any

    async def reload(self, path: Path | None = None) -> Pipeline:
        """Re-read the policy file (or ``path``) and swap; on error keep serving the old policy."""
        async with self._lock:
            source = path or self.current.source
            try:
                policy = await asyncio.to_thread(load_policy, source) if source else empty_policy()
                pipeline = await asyncio.to_thread(Pipeline.build, policy, self._engine, self._detector_factory, source)
            except Exception as exc:
                self.last_reload_error = str(exc)
                self.last_reload_param = getattr(exc, "param", None)
                log.error("policy reload failed, still serving the previous policy: %s", exc)
                raise
            self.current = pipeline
            self.last_reload_error = None
            self.last_reload_param = None
            log.info("policy reloaded from %s: %d targets", source, len(policy.targets))
            return pipeline
