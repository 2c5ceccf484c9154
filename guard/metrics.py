"""Prometheus metrics, one registry per app (no process-global state).

Labels never carry target names or prompt text: ``action`` is one of the fixed action names and
``route`` one of the fixed routes.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_DETECTOR_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1)


@dataclass
class GuardMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    ttft: Histogram
    detector_latency: Histogram
    flagged: Counter
    screening_failures: Counter
    upstream_errors: Counter
    output_flagged: Counter

    @classmethod
    def create(cls) -> "GuardMetrics":
        reg = CollectorRegistry(auto_describe=True)
        return cls(
            registry=reg,
            requests=Counter("guard_requests", "Requests by route, HTTP status and action", ["route", "status", "action"], registry=reg),
            latency=Histogram("guard_request_latency_seconds", "Total request latency", ["route", "action"], buckets=_LATENCY_BUCKETS, registry=reg),
            ttft=Histogram("guard_time_to_first_token_seconds", "Time to the first streamed content", ["route", "action"], buckets=_LATENCY_BUCKETS, registry=reg),
            detector_latency=Histogram("guard_detector_latency_seconds", "Screening time per request", buckets=_DETECTOR_BUCKETS, registry=reg),
            flagged=Counter("guard_flagged", "Flagged requests by action taken", ["action"], registry=reg),
            screening_failures=Counter("guard_screening_failures", "Requests whose screening failed, by fail mode outcome", ["outcome"], registry=reg),
            upstream_errors=Counter("guard_upstream_errors", "Upstream failures by kind", ["kind"], registry=reg),
            output_flagged=Counter("guard_output_flagged", "Answers stopped by the output screen, by what matched and "
                                   "what replaced them", ["reason", "action"], registry=reg),
        )

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
