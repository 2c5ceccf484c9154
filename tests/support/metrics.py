"""Reading a running guard's ``/metrics`` (to check which action answered, e.g. that a method did)."""

from __future__ import annotations

import aiohttp

METRICS_KEY = "metrics-key-for-tests"  # pass as guard_server(..., metrics_api_key=METRICS_KEY)


async def scrape(base_url: str, key: str = METRICS_KEY) -> str:
    """The Prometheus text of the guard at ``base_url`` (its ``.../v1`` URL)."""
    async with aiohttp.ClientSession() as s, s.get(base_url.removesuffix("/v1") + "/metrics",
                                                   headers={"Authorization": f"Bearer {key}"}) as r:
        r.raise_for_status()
        return await r.text()
