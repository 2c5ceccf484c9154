"""screen -> decide -> act.

A ``Pipeline`` is immutable: policy, detector and interventions built together. Reloading a
policy builds a new one and swaps it in (``PipelineHolder``); requests in flight keep the one they
started with, and a failed reload leaves the old one serving.

Screening runs in a worker thread (never on the event loop) under the policy's limits: inputs over
``detector.max_screen_tokens`` words are not screened in full, and screening has ``detector.budget_ms``
(a ``Deadline`` the detector checks between units of work, so an over-budget thread stops; the
pipeline also stops waiting for it then). A request that could not be fully screened, for whatever
reason, gets the policy's fail mode: closed, an OpenAI error (400 naming the limit for an input the
guard will not screen, 503 for a budget overrun or a detector failure); open, passed and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from classifiers.base import Deadline, Detector, ScreeningIncomplete, Verdict
from classifiers.limits import LENGTH_PARAM
from guard.engines.base import Engine
from guard.errors import GuardError, InvalidRequest, ScreeningUnavailable
from guard.interventions.base import Intervention
from guard.interventions.refuse import Refuse
from guard.interventions.registry import build_interventions
from guard.output_screen import OutputScreener, build_output_screener
from guard.policy import Policy, Target, empty_policy, load_policy
from guard.screen_worker import ScreenWorker, screen_within_limits

log = logging.getLogger(__name__)

DetectorFactory = Callable[[Policy], Detector]
BUDGET_PARAM = "detector.budget_ms"
WAIT_GRACE_S = 0.1   # past its deadline a detector stops at its next check; this long is waited for it


@dataclass(frozen=True)
class Decision:
    action: str
    verdict: Verdict
    target: Target | None
    intervention: Intervention
    screen_seconds: float
    failure: str | None = None   # why screening failed (the limit's policy field, or the error type)

    @property
    def screening_failed(self) -> bool:
        """Passed unscreened under ``fail_mode: open``."""
        return self.failure is not None


@dataclass(frozen=True)
class Pipeline:
    policy: Policy
    detector: Detector
    interventions: dict[str, Intervention]
    source: Path | None = None
    # ``detector.screen`` takes a ``deadline``: the ``classifiers.base.Detector`` contract, so always
    # true for pipelines built here; a detector that ignores it is no longer waited for once it passes
    takes_deadline: bool = field(default=True)
    # the process that screens requests over ``detector.isolate_above_chars`` (None: all in threads)
    worker: ScreenWorker | None = None
    # what the model answers is screened with (``output``; None or inactive: answers pass unscreened)
    output_screener: OutputScreener | None = None
    # requests of at most this many characters are screened on the event loop (``inline_chars``)
    inline_below_chars: int = 0

    @classmethod
    def build(cls, policy: Policy, engine: Engine, detector_factory: DetectorFactory, source: Path | None = None) -> "Pipeline":
        interventions = build_interventions(policy, engine)
        detector = detector_factory(policy)
        isolate = (policy.detector.isolate_above_chars is not None and policy.detector.kind != "none"
                   and ScreenWorker.can_run(detector_factory))
        worker = ScreenWorker(policy, detector_factory) if isolate else None
        if worker is not None and policy.detector.kind == "trained":
            worker.start()  # building a trained detector takes seconds: not on the first large request
        return cls(policy=policy, detector=detector, interventions=interventions, source=source,
                   worker=worker, output_screener=build_output_screener(policy, detector),
                   inline_below_chars=inline_chars(policy, detector))

    def refusal(self) -> Intervention:
        """The policy's refusal (a flagged target's own ``refusal_message`` still wins in ``stream``):
        what answers when a method cannot keep the client's contract or an answer leaks."""
        return self.interventions.get("refuse") or Refuse(self.policy.refusal_message)

    def _screen_now(self, texts: list[str], deadline: Deadline) -> Verdict:
        """Runs in a worker thread: a large request in the screening process when it is up, the
        rest here; the length limit, then the detector under the deadline."""
        limit = self.policy.detector.isolate_above_chars
        if self.worker is not None and limit is not None and sum(len(t) for t in texts) > limit:
            verdict = self.worker.screen(texts, deadline)
            if verdict is not None:
                return verdict
        return screen_within_limits(self.policy, self.detector, texts, deadline, with_deadline=self.takes_deadline)

    def close(self) -> None:
        """Release what this pipeline holds once a reload replaced it: its interventions' models (ULD's
        assistants) and its screening process."""
        for intervention in self.interventions.values():
            intervention.release()
        if self.worker is not None:
            self.worker.close()

    async def screen(self, texts: Sequence[str]) -> Verdict:
        """The verdict, or ``ScreeningIncomplete`` once ``detector.budget_ms`` has passed. A short
        request is screened right here, on the event loop (``inline_below_chars``); the rest in a
        worker thread (or the screening process), which the loop waits for within the budget."""
        deadline = Deadline.after_ms(self.policy.detector.budget_ms)
        texts = list(texts)
        if sum(len(t) for t in texts) <= self.inline_below_chars:
            return self._screen_now(texts, replace(deadline, yield_gil=False))
        task = asyncio.ensure_future(asyncio.to_thread(self._screen_now, texts, deadline))
        task.add_done_callback(_retrieve)  # an abandoned task's outcome is not an unhandled error
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout=max(0.0, deadline.remaining_s()) + WAIT_GRACE_S)
        except asyncio.TimeoutError:
            raise ScreeningIncomplete(f"screening did not finish within {BUDGET_PARAM} ({deadline.budget_ms:g} ms)",
                                      param=BUDGET_PARAM) from None

    async def decide(self, texts: Sequence[str]) -> Decision:
        started = time.perf_counter()
        failure: str | None = None
        try:
            verdict = await self.screen(texts)
        except Exception as exc:  # noqa: BLE001 - whatever stopped screening, the fail mode decides
            failure = self._fail(exc)
            verdict = Verdict.clean()
        elapsed = time.perf_counter() - started
        if not verdict.flagged:
            return Decision("pass", verdict, None, self.interventions["pass"], elapsed, failure)
        target = None
        if verdict.target_id is not None:
            try:
                target = self.policy.target(verdict.target_id)
            except KeyError:
                target = None
        action = self.policy.action_for(verdict.target_id)
        return Decision(action, verdict, target, self.interventions[action], elapsed)

    def _fail(self, exc: Exception) -> str:
        """Apply the fail mode to a request whose screening did not complete: raise the client's error
        (closed), or return why it was not screened (open: the caller passes and counts it)."""
        incomplete = isinstance(exc, ScreeningIncomplete)
        reason = (exc.param or "incomplete") if incomplete else type(exc).__name__
        detail = exc.message if incomplete else f"{type(exc).__name__}: {exc}"
        if self.policy.fail_mode == "open":
            log.warning("screening incomplete, passing unscreened (fail_mode=open): %s", detail)
            return reason
        log.error("screening incomplete, refusing (fail_mode=closed): %s", detail)
        raise _closed_error(exc) from None


def inline_chars(policy: Policy, detector: Detector) -> int:
    """Up to how many characters a request is screened on the event loop: the policy's
    ``detector.inline_below_chars`` when set, else what the detector declares (``inline_below_chars``:
    the keyword screen's 1,024; a detector that declares nothing, e.g. the trained one or a custom
    factory's, is always screened in a thread)."""
    if policy.detector.inline_below_chars is not None:
        return policy.detector.inline_below_chars
    return int(getattr(detector, "inline_below_chars", 0))


def _closed_error(exc: Exception) -> GuardError:
    """The error a fail-closed guard answers: the input's fault (400, naming the limit) when the
    request asks for more screening than the policy allows; the guard's (503) otherwise."""
    if isinstance(exc, ScreeningIncomplete) and exc.param == LENGTH_PARAM:
        return InvalidRequest(f"the input is too long to screen: {exc.message}", param=LENGTH_PARAM, code="input_too_long_to_screen")
    if isinstance(exc, ScreeningIncomplete) and exc.param == BUDGET_PARAM:
        return ScreeningUnavailable(f"the request could not be screened in time ({exc.message}) and this guard is fail-closed; "
                                    "send a shorter input or retry later", param=BUDGET_PARAM)
    if isinstance(exc, ScreeningIncomplete):
        return InvalidRequest(f"the input could not be fully screened: {exc.message}", param=exc.param, code="input_not_screenable")
    return ScreeningUnavailable("the request could not be screened and this guard is fail-closed; retry later")


def _retrieve(task: "asyncio.Future[Verdict]") -> None:
    if not task.cancelled():
        task.exception()


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
            old, self.current = self.current, pipeline
            # requests still screening with the old pipeline finish within its budget; then it is released
            loop = asyncio.get_running_loop()
            loop.call_later(old.policy.detector.budget_ms / 1000 + 5, lambda: loop.run_in_executor(None, old.close))
            self.last_reload_error = None
            self.last_reload_param = None
            log.info("policy reloaded from %s: %d targets", source, len(policy.targets))
            return pipeline
