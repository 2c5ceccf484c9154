"""The Detector seam: ``screen(texts, deadline) -> Verdict``.

The pipeline hands a detector the texts of a request as the model reads them (every role's content,
names, turn seams; or the completion prompt: ``guard.screened_text``); the detector decides whether
any of it is about a forget target.
Detectors are synchronous and CPU-bound; the server runs them off the event loop, in a thread (or a
separate process for large requests, ``guard.screen_worker``), with
a ``Deadline``: a detector checks it between bounded units of work (a batch of windows, a decoding
step) and stops with ``ScreeningIncomplete`` once it has passed, so an over-budget request stops
costing CPU instead of screening on after its client was answered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class Neighbour:
    target_id: str
    similarity: float
    exemplar: str


@dataclass(frozen=True)
class Verdict:
    flagged: bool
    target_id: str | None = None
    score: float = 0.0
    neighbours: tuple[Neighbour, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def clean(score: float = 0.0) -> "Verdict":
        return Verdict(flagged=False, score=score)


class ScreeningIncomplete(Exception):
    """This request could not be fully screened (too long, over its time budget, too many decoded
    candidates, ...). Never a verdict: the pipeline applies the policy's fail mode (closed: refused
    with an error naming ``param``, the policy field that bounds it; open: passed and counted)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Deadline:
    """When one request's screening must be done (``detector.budget_ms`` after it started).

    ``check()`` between units of work raises ``ScreeningIncomplete`` naming ``param`` once the time
    is up. ``clock`` is injectable so tests can expire a deadline after a given number of checks
    instead of depending on how fast the machine is. ``yield_gil``: each check lets other threads
    run first (screening in a worker thread); false when screening runs on the event loop itself."""

    expires_at: float
    budget_ms: float
    param: str = "detector.budget_ms"
    clock: Callable[[], float] = time.monotonic
    yield_gil: bool = True

    @classmethod
    def after_ms(cls, budget_ms: float, *, clock: Callable[[], float] = time.monotonic) -> "Deadline":
        return cls(clock() + budget_ms / 1000.0, float(budget_ms), clock=clock)

    def remaining_s(self) -> float:
        return self.expires_at - self.clock()

    def expired(self) -> bool:
        return self.remaining_s() <= 0

    def check(self, stage: str = "screening") -> None:
        """Between two units of screening work: let other threads run, then stop if the time is up.

        Screening threads share the GIL with the server's event loop; a zero sleep releases it, so
        the loop runs now instead of after the interpreter's 5 ms switch interval (measured: normal
        requests' p50 ~10x lower next to a busy screening thread)."""
        if self.yield_gil:
            time.sleep(0)
        if self.expired():
            raise ScreeningIncomplete(f"screening did not finish within {self.param} ({self.budget_ms:g} ms; stopped during {stage})",
                                      param=self.param)


@runtime_checkable
class Detector(Protocol):
    def screen(self, texts: Sequence[str], deadline: Deadline | None = None) -> Verdict: ...


class NullDetector:
    """No detector configured: nothing is flagged."""

    inline_below_chars = 1 << 62   # no work: never worth a thread

    def screen(self, texts: Sequence[str], deadline: Deadline | None = None) -> Verdict:
        return Verdict.clean()
