"""The Detector seam: ``screen(texts) -> Verdict``.

The pipeline hands a detector the texts of every non-assistant turn of a request (system and user
messages, or the completion prompt); the detector decides whether any of it is about a forget target.
Detectors are synchronous and CPU-bound; the server runs them off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable


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


@runtime_checkable
class Detector(Protocol):
    def screen(self, texts: Sequence[str]) -> Verdict: ...


class NullDetector:
    """No detector configured: nothing is flagged."""

    def screen(self, texts: Sequence[str]) -> Verdict:
        return Verdict.clean()
