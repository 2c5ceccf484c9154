"""Detection: which requests are about a forget target."""

from classifiers.base import Detector, Neighbour, Verdict

__all__ = ["Detector", "Neighbour", "Verdict"]
