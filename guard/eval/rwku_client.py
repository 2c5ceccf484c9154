"""The black-box client of ``guard-eval rwku``: completions and chat completions (greedy, stop
strings, log-probs) from any OpenAI-compatible URL, with retries and the server's error message."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import aiohttp

from guard.errors import ConfigError, UpstreamError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- client

class RequestFailed(Exception):
    """A request the server rejected for this item only (e.g. the prompt is longer than its context)."""


@dataclass
class Completion:
    text: str
    action: str | None = None  # the guard's X-Guard-Action header, when it runs with debug
    logprobs: dict[str, Any] | None = None
    prompt_tokens: int | None = None
    # the guard's X-Guard-Output headers (debug, whole answers): "pass" or "flagged", and the
    # flagged answer's target id and reason; None: no output screen (or no guard, or no debug)
    output: str | None = None
    output_target: str | None = None
    output_reason: str | None = None

    @classmethod
    def from_headers(cls, text: str, headers: dict[str, str], **fields: Any) -> "Completion":
        """``text`` with the guard's debug headers (lower-cased names) read from ``headers``."""
        return cls(text=text, action=headers.get("x-guard-action"), output=headers.get("x-guard-output"),
                   output_target=headers.get("x-guard-output-target"),
                   output_reason=headers.get("x-guard-output-reason"), **fields)

    def guard_record(self) -> dict[str, Any]:
        """The guard's decisions as an item record's fields (``output_*`` only when the header came)."""
        record: dict[str, Any] = {"action": self.action}
        if self.output is not None:
            record.update(output_screen=self.output, output_target=self.output_target,
                          output_reason=self.output_reason)
        return record


class OpenAICompatClient:
    """A small aiohttp client for ``/v1/completions`` and ``/v1/chat/completions``.

    Retries 429/5xx/connection errors with backoff; 401/403/404 raise :class:`ConfigError` at once
    (wrong key, model or URL: every request would fail); other 4xx fail that item only.
    """

    def __init__(self, url: str, *, api_key: str | None = None, concurrency: int = 4, timeout_s: float = 600.0,
                 retries: int = 4) -> None:
        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.api_key = api_key
        self.retries = retries
        self._sem = asyncio.Semaphore(max(1, concurrency))
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=10)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "OpenAICompatClient":
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._session:
            await self._session.close()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def models(self) -> list[dict[str, Any]]:
        assert self._session is not None
        try:
            async with self._session.get(f"{self.base}/models", headers=self._headers()) as resp:
                if resp.status != 200:
                    raise ConfigError(f"GET {self.base}/models answered {resp.status}: {(await resp.text())[:300]}", param="url")
                return list((await resp.json()).get("data") or [])
        except aiohttp.ClientError as exc:
            raise ConfigError(f"cannot reach {self.base} ({type(exc).__name__}: {exc}); is the server running?", param="url") from None

    async def post(self, path: str, payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        assert self._session is not None
        delay = 1.0
        last = ""
        for attempt in range(self.retries + 1):
            async with self._sem:
                try:
                    async with self._session.post(f"{self.base}{path}", json=payload, headers=self._headers()) as resp:
                        text = await resp.text()
                        if resp.status == 200:
                            return json.loads(text), {k.lower(): v for k, v in resp.headers.items()}
                        message = error_message(text)
                        if resp.status in (401, 403, 404):
                            raise ConfigError(f"{self.base}{path} answered {resp.status}: {message}", param="url")
                        if resp.status not in (429, 500, 502, 503, 504):
                            raise RequestFailed(f"{resp.status}: {message}")
                        last = f"{resp.status}: {message}"
                except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 16.0)
        raise UpstreamError(f"{self.base}{path} kept failing after {self.retries + 1} tries ({last}); "
                            "is the server up and not overloaded? (lower --concurrency)")

    async def complete(self, model: str, prompt: str, max_tokens: int, stop: Sequence[str] = (),
                       **extra: Any) -> Completion:
        payload: dict[str, Any] = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, **extra}
        if stop:
            payload["stop"] = list(stop)
        data, headers = await self.post("/completions", payload)
        choice = data["choices"][0]
        return Completion.from_headers(choice.get("text") or "", headers, logprobs=choice.get("logprobs"),
                                       prompt_tokens=(data.get("usage") or {}).get("prompt_tokens"))

    async def chat(self, model: str, user: str, max_tokens: int, stop: Sequence[str] = ()) -> Completion:
        payload: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": user}],
                                   "max_tokens": max_tokens, "temperature": 0.0}
        if stop:
            payload["stop"] = list(stop)
        data, headers = await self.post("/chat/completions", payload)
        message = data["choices"][0].get("message") or {}
        return Completion.from_headers(message.get("content") or "", headers)


def error_message(text: str) -> str:
    try:
        return str(json.loads(text)["error"]["message"])[:500]
    except Exception:  # noqa: BLE001
        return text.strip()[:500]
