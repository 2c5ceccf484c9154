"""Several vLLM replicas behind one engine: health checks and least-outstanding-requests balancing.

Each replica counts the requests it is serving (from send until the response is released). A
request goes to the healthy replica with the fewest; a replica that refuses connections is marked
down at once and the request is retried on another (nothing was sent, so a retry is safe). The
engine's background loop calls ``check`` every ``health_interval_s``: it probes every replica's
``/v1/models`` and brings recovered ones back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger(__name__)


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


@dataclass
class Replica:
    url: str
    outstanding: int = 0
    healthy: bool = True
    last_error: str | None = None
    failed_at: float = 0.0
    served: int = 0

    def status(self) -> dict[str, Any]:
        return {"url": self.url, "healthy": self.healthy, "outstanding": self.outstanding, "served": self.served,
                **({"last_error": self.last_error} if self.last_error else {})}


class UpstreamResponse:
    """An ``aiohttp.ClientResponse`` whose release also frees its replica's slot (idempotent)."""

    def __init__(self, response: aiohttp.ClientResponse, replica: Replica) -> None:
        self._response = response
        self.replica = replica
        self._released = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._response, name)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.replica.outstanding -= 1
        self._response.release()


@dataclass
class UpstreamPool:
    replicas: list[Replica]
    health_interval_s: float = 5.0
    _rr: itertools.count = field(default_factory=itertools.count)

    @classmethod
    def from_urls(cls, urls: list[str], health_interval_s: float = 5.0) -> "UpstreamPool":
        return cls([Replica(normalise_url(u)) for u in urls], health_interval_s)

    def candidates(self) -> list[Replica]:
        """Healthy replicas by (outstanding, rotation); then the down ones, longest-failed first."""
        turn = next(self._rr)
        n = len(self.replicas)
        order = {id(r): (i - turn) % n for i, r in enumerate(self.replicas)}
        healthy = sorted((r for r in self.replicas if r.healthy), key=lambda r: (r.outstanding, order[id(r)]))
        down = sorted((r for r in self.replicas if not r.healthy), key=lambda r: r.failed_at)
        return healthy + down

    def mark_down(self, replica: Replica, error: str) -> None:
        if replica.healthy:
            log.warning("upstream %s marked down: %s", replica.url, error)
        replica.healthy, replica.last_error, replica.failed_at = False, error, time.monotonic()

    def mark_up(self, replica: Replica) -> None:
        if not replica.healthy:
            log.info("upstream %s is back", replica.url)
        replica.healthy, replica.last_error = True, None

    async def check(self, session: aiohttp.ClientSession, headers: dict[str, str]) -> None:
        async def probe(replica: Replica) -> None:
            try:
                async with session.get(f"{replica.url}/v1/models", headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=3)) as resp:
                    if resp.status == 200:
                        self.mark_up(replica)
                    else:
                        self.mark_down(replica, f"/v1/models answered {resp.status}")
            except Exception as exc:  # noqa: BLE001 - any failure means "not serving"
                self.mark_down(replica, f"{type(exc).__name__}: {exc}"[:200])

        await asyncio.gather(*(probe(r) for r in self.replicas))
