"""Engine backed by a vLLM OpenAI-compatible server.

* ``forward``: the fast path for unflagged traffic. The client's body goes upstream unchanged and
  the upstream's bytes come back unchanged (status, content type, SSE chunks).
* ``generate``: ``/v1/completions`` with a token-id prompt or base64 ``prompt_embeds`` (the server
  must run with ``--enable-prompt-embeds``), streamed.
* ``top_logprobs``: one-token completions with ``logprobs=k`` and token ids as keys;
  ``stream_top_logprobs``: a streamed greedy completion with ``logprobs=k``, position by position.

vLLM's wire format (payloads, SSE, error bodies, top-k log-probs) is read here and nowhere else.

The tokenizer and the input-embedding matrix come from a local copy of the served model; only the
embedding tensor is read from its safetensors, not the whole model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import aiohttp
import numpy as np
import torch

from guard.engines.base import (
    Engine,
    EngineCapabilities,
    GenerationChunk,
    LogitsProcessor,
    PositionLogprobs,
    PromptInput,
    RenderedPrompt,
    SamplingParams,
)
from guard.engines.context import ContextWindow, config_context_length
from guard.engines.forwarding import OPENAI_CONTENT_TYPES, ForwardedAnswer
from guard.engines.rendering import render_chat, token_logprob
from guard.engines.sse import iter_sse_data
from guard.engines.upstreams import UpstreamPool, UpstreamResponse
from guard.engines.vllm_wire import (
    LOGPROBS_HINT,
    choice_logprobs,
    completion_payload,
    encode_prompt_embeds,
    error_message,
    token_id,
    top_pairs,
)
from guard.engines.weights import load_input_embeddings  # noqa: F401 - where callers have found it
from guard.errors import ConfigError, GuardError, InvalidRequest, UpstreamError, UpstreamTimeout, UpstreamUnsupported

log = logging.getLogger(__name__)

_PROMPT_EMBEDS_DISABLED = "enable-prompt-embeds"  # in vLLM's 400: "You must set `--enable-prompt-embeds` to input `prompt_embeds`."
_PROMPT_EMBEDS_HELP = ("the upstream at {url} was started without --enable-prompt-embeds: requests whose action is "
                       "eco or spul will fail with 502 until vLLM is restarted with --enable-prompt-embeds")

class VllmEngine(Engine):
    kind = "vllm"
    capabilities = EngineCapabilities(prompt_embeds=True, logits_processors=False, streamed_top_logprobs=True,
                                      forwarding=True)

    def __init__(self, url: str | Sequence[str], model_path: Path | str, served_model_name: str | None, *,
                 upstream_model: str | None = None, api_key: str | None = None,
                 connect_timeout_s: float = 5.0, read_timeout_s: float = 300.0,
                 health_interval_s: float = 5.0) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        self.pool = UpstreamPool.from_urls(urls, health_interval_s)
        self.url = self.pool.replicas[0].url if len(urls) == 1 else ",".join(r.url for r in self.pool.replicas)
        self._health_task: asyncio.Task | None = None
        self.model_path = model_path
        self.model_dir = Path(str(model_path)).expanduser().resolve() if Path(str(model_path)).expanduser().is_dir() else None
        self.device = "cpu"  # guard-side model work (ULD's assistant, embeddings) runs in this process
        self._served_override = served_model_name
        self.served_model_name = served_model_name or upstream_model or ""
        self.upstream_model = upstream_model
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._tokenizer: Any = None
        self._embeddings: torch.Tensor | None = None
        # capability probe: does the upstream accept prompt_embeds? None = not known yet
        self.prompt_embeds_supported: bool | None = None
        self.prompt_embeds_detail: str = "not probed yet"
        self._context_from_upstream = False  # context_window.tokens is the upstream's max_model_len

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout, connector=aiohttp.TCPConnector(limit=0))
        await asyncio.to_thread(self._load_local_parts)
        await self.refresh_health()
        if not any(r.healthy for r in self.pool.replicas):
            errors = "; ".join(f"{r.url}: {r.last_error}" for r in self.pool.replicas)
            log.warning("upstream not reachable at start-up (%s); will retry on first request", errors)
        if not self._served_override:
            self.served_model_name = self.upstream_model or Path(str(self.model_path)).name
        # /health answers from what this loop last saw: a health check never costs an upstream call.
        self._health_task = asyncio.create_task(self._health_loop())

    def _load_local_parts(self) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        if Path(str(self.model_path)).is_dir():
            self._embeddings = load_input_embeddings(Path(str(self.model_path)))
        try:  # the model's own limit, until the upstream tells its max_model_len
            tokens = config_context_length(AutoConfig.from_pretrained(self.model_path))
        except Exception:  # noqa: BLE001 - no readable config: learn the limit from the upstream only
            tokens = None
        if tokens:
            self.context_window = ContextWindow.for_tokenizer(tokens, self._tokenizer)

    def _learn_context_length(self, card: dict[str, Any]) -> None:
        tokens = card.get("max_model_len")
        if not isinstance(tokens, int) or tokens <= 0:
            return
        if self.context_window is None:
            self.context_window = ContextWindow.for_tokenizer(tokens, self._tokenizer)
        elif self.context_window.tokens != tokens:
            self.context_window = self.context_window.with_tokens(tokens)
        self._context_from_upstream = True

    async def close(self) -> None:
        if self._health_task:
            self._health_task.cancel()
        if self._session:
            await self._session.close()

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "engine not started"
        return self._session

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    # -- prompt side ------------------------------------------------------------------------------
    def render_chat(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                    tools: Sequence[dict[str, Any]] = ()) -> RenderedPrompt:
        return render_chat(self._tokenizer, messages, add_generation_prompt, tools)

    def input_embeddings(self) -> torch.Tensor:
        if self._embeddings is None:
            return super().input_embeddings()
        return self._embeddings

    def embed(self, token_ids: Sequence[int]) -> torch.Tensor:
        if self._embeddings is None:
            raise ConfigError("the vllm engine needs a local model folder (--model) to compute prompt embeddings", param="model")
        # a numpy gather (single-threaded): torch's parallel indexing kernels stall for a scheduler
        # tick on a loaded CPU (tens of ms for 50 ids instead of microseconds)
        return torch.from_numpy(self._embeddings.numpy()[np.asarray(list(token_ids), dtype=np.int64)])

    # -- HTTP plumbing ----------------------------------------------------------------------------
    def _translate(self, exc: BaseException) -> UpstreamError:
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return UpstreamTimeout(f"the upstream at {self.url} did not answer in time; check the vLLM server's load or raise upstream.read_timeout_s")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamError(f"cannot connect to the upstream at {self.url} ({exc.os_error.strerror if exc.os_error else exc}); is the vLLM server running?")
        if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
            return UpstreamError(f"the upstream at {self.url} closed the connection mid-response")
        return UpstreamError(f"upstream request to {self.url} failed: {type(exc).__name__}: {exc}")

    def _primary_url(self) -> str:
        """The replica to use for one-off calls (model discovery, capability probes)."""
        return self.pool.candidates()[0].url

    async def _read_model_card(self) -> str:
        """GET /v1/models: the upstream's model (discovered when not configured) and its max_model_len."""
        try:
            async with self.session.get(f"{self._primary_url()}/v1/models", headers=self.headers(),
                                        timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status != 200:
                    raise UpstreamError(f"GET {self.url}/v1/models answered {resp.status}")
                data = await resp.json()
        except UpstreamError:
            raise
        except Exception as exc:  # noqa: BLE001 - every transport error becomes an UpstreamError
            raise self._translate(exc) from None
        cards = [m for m in (data.get("data") or []) if isinstance(m, dict) and m.get("id")]
        if not cards:
            raise UpstreamError(f"the upstream at {self.url} serves no models")
        card = next((m for m in cards if m["id"] == self.upstream_model), cards[0])
        self.upstream_model = self.upstream_model or card["id"]
        self._learn_context_length(card)
        return self.upstream_model

    @property
    def answer_model_name(self) -> str:
        """vLLM writes its served model name into its answers, whatever name the guard serves."""
        return self.upstream_model or self.served_model_name

    def _learn_fingerprint(self, answer: dict[str, Any]) -> None:
        """Keep the ``system_fingerprint`` vLLM stamps on its answers, for the guard's answers to carry."""
        fingerprint = answer.get("system_fingerprint")
        if isinstance(fingerprint, str):
            self.system_fingerprint = fingerprint

    async def ensure_model(self) -> str:
        if not self.upstream_model:
            await self._read_model_card()
            if not self.served_model_name:
                self.served_model_name = self.upstream_model
        assert self.upstream_model is not None
        return self.upstream_model

    async def forward(self, path: str, body: bytes, request_id: str | None = None) -> UpstreamResponse:
        """POST ``body`` unchanged to ``path`` on the least-busy healthy replica; the caller streams
        the response and releases it. A replica that refuses the connection is marked down and the
        next one is tried (nothing was sent). ``request_id`` goes as ``X-Request-Id``, which vLLM
        uses for its response id (``chatcmpl-<request_id>``)."""
        headers = {"Content-Type": "application/json", **self.headers()}
        if request_id:
            headers["X-Request-Id"] = request_id
        last: BaseException | None = None
        for replica in self.pool.candidates():
            replica.outstanding += 1
            try:
                response = await self.session.post(f"{replica.url}{path}", data=body, headers=headers)
            except aiohttp.ClientConnectorError as exc:
                replica.outstanding -= 1
                self.pool.mark_down(replica, str(exc)[:200])
                last = exc
                continue
            except Exception as exc:  # noqa: BLE001
                replica.outstanding -= 1
                raise self._translate(exc) from None
            self.pool.mark_up(replica)
            replica.served += 1
            return UpstreamResponse(response, replica)
        assert last is not None
        raise self._translate(last) from None

    async def forward_request(self, route: str, body: dict[str, Any], raw: bytes, max_tokens: int, *,
                              limit_field: str = "max_tokens") -> ForwardedAnswer:
        upstream_model = await self.ensure_model()
        patch: dict[str, Any] = {}
        if body.get("model") != upstream_model:
            patch["model"] = upstream_model
        limits = ("max_tokens", "max_completion_tokens") if limit_field == "max_tokens" else (limit_field,)
        if all(body.get(name) is None for name in limits):
            patch[limit_field] = max_tokens  # the guard's default, as on every other path, never above the limit
        if patch:
            raw = json.dumps({**body, **patch}).encode()
        upstream = await self.forward(route, raw, request_id=uuid.uuid4().hex)
        try:
            if upstream.status >= 500:
                text = (await upstream.text())[:500]
                raise UpstreamError(f"the upstream answered {upstream.status}: {text}")
            if upstream.content_type not in OPENAI_CONTENT_TYPES:  # an HTML error page, a proxy's banner, ...
                raise UpstreamError(f"the upstream answered {upstream.status} with content type {upstream.content_type!r}, "
                                    "not an OpenAI response; is upstream.url a vLLM server?")
        except BaseException:
            upstream.release()
            raise
        return ForwardedAnswer(upstream)

    async def _post_stream(self, payload: dict[str, Any], hint: str = "") -> AsyncIterator[dict[str, Any]]:
        """The JSON chunks of a streamed ``/v1/completions``; closing the iterator closes the response,
        which makes vLLM abort the generation."""
        resp = await self.forward("/v1/completions", json.dumps(payload).encode())
        try:
            if resp.status != 200:
                raise await self._error_from(resp, payload, hint)
            async for data in iter_sse_data(resp.content):
                if data == "[DONE]":
                    return
                try:
                    yield json.loads(data)
                except json.JSONDecodeError:
                    raise UpstreamError(f"the upstream at {self.url} sent a malformed stream chunk") from None
        except (UpstreamError, InvalidRequest):
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc) from None
        finally:
            resp.release()  # unread: aiohttp closes the connection, and vLLM aborts the request

    async def _error_from(self, resp: aiohttp.ClientResponse, payload: dict[str, Any], hint: str = "") -> GuardError:
        message = error_message((await resp.text())[:2000])
        if resp.status == 400 and "response_format" in payload and "grammar" in message.lower():  # the client's schema
            return InvalidRequest(f"the JSON schema (response_format, or the forced tool's parameters) cannot be enforced "
                                  f"({message.strip()[:200]}); fix or simplify it", param="response_format")
        if "prompt_embeds" in payload and _PROMPT_EMBEDS_DISABLED in message.replace("_", "-"):
            self.prompt_embeds_supported = False
            self.prompt_embeds_detail = _PROMPT_EMBEDS_HELP.format(url=self.url)
            return UpstreamUnsupported(
                f"the upstream at {self.url} rejected prompt embeddings ({message.strip()[:300]}); "
                "start vLLM with --enable-prompt-embeds to use ECO/SPUL")
        if "prompt_embeds" in payload and "embed" in message.lower():
            return UpstreamError(
                f"the upstream at {self.url} rejected the prompt embeddings ({message.strip()[:300]}); check that "
                "the guard's --model is the model vLLM serves (same hidden size and dtype family)")
        hint = hint if "logprob" in message.lower() else ""
        return UpstreamError(f"the upstream at {self.url} answered {resp.status}: {message.strip()[:500]}{hint}")

    async def probe_prompt_embeds(self) -> bool | None:
        """Send a 1-token ``prompt_embeds`` completion; record (and return) whether the upstream accepts it.

        ``False`` means vLLM runs without ``--enable-prompt-embeds`` (logged as an error: ECO/SPUL
        requests will get 502); ``None`` means it could not be told (upstream down, no local model).
        """
        if self._embeddings is None:
            self.prompt_embeds_supported, self.prompt_embeds_detail = None, "no local model folder: cannot build prompt embeddings"
            return None
        try:
            model = await self.ensure_model()
        except UpstreamError as exc:
            self.prompt_embeds_detail = f"not probed: {exc.message}"
            return None
        token = self._tokenizer.eos_token_id if self._tokenizer is not None and self._tokenizer.eos_token_id is not None else 0
        payload = {"model": model, "prompt_embeds": encode_prompt_embeds(self._embeddings[[token]]),
                   "max_tokens": 1, "temperature": 0.0}
        try:
            resp = await self.session.post(f"{self._primary_url()}/v1/completions", json=payload, headers=self.headers(),
                                           timeout=aiohttp.ClientTimeout(total=60))
        except Exception as exc:  # noqa: BLE001
            self.prompt_embeds_supported, self.prompt_embeds_detail = None, f"not probed: {self._translate(exc).message}"
            return None
        known_refused = self.prompt_embeds_supported is False
        try:
            if resp.status == 200:
                self.prompt_embeds_supported, self.prompt_embeds_detail = True, "accepted"
                try:
                    self._learn_fingerprint(await resp.json())
                except Exception:  # noqa: BLE001 - the probe's verdict does not depend on its body
                    log.debug("probe answer not readable", exc_info=True)
            else:
                err = await self._error_from(resp, payload)
                if not isinstance(err, UpstreamUnsupported):
                    self.prompt_embeds_supported, self.prompt_embeds_detail = None, f"probe failed: {err.message}"
        finally:
            resp.release()
        if self.prompt_embeds_supported is False and not known_refused:
            log.error("%s", self.prompt_embeds_detail)
        return self.prompt_embeds_supported

    # -- generation -------------------------------------------------------------------------------
    async def generate(self, prompt: PromptInput, params: SamplingParams,
                       logits_processors: Sequence[LogitsProcessor] = ()) -> AsyncIterator[GenerationChunk]:
        if logits_processors:
            raise UpstreamUnsupported("the vllm engine runs no guard-side logits processors (capabilities.logits_processors)")
        self.check_prompt_length(prompt.length)
        await self.ensure_model()
        # encoding prompt embeddings (torch.save + base64 of [seq, hidden]) is CPU work: off the event loop
        payload = (await asyncio.to_thread(completion_payload, self.upstream_model, prompt, params) if prompt.embeds is not None
                   else completion_payload(self.upstream_model, prompt, params))
        finish: dict[int, str] = {}
        tokens: dict[int, int] = {}
        usage: dict[str, int] = {}
        async for chunk in self._post_stream(payload):
            if chunk.get("usage"):
                usage = chunk["usage"]
            self._learn_fingerprint(chunk)
            for choice in chunk.get("choices") or []:
                index = int(choice.get("index") or 0)
                ids = list(choice.get("token_ids") or [])
                tokens[index] = tokens.get(index, 0) + len(ids)
                if choice.get("finish_reason"):
                    finish[index] = choice["finish_reason"]
                logprobs = ([token_logprob(self._tokenizer, t, lp, top)
                             for t, lp, top in choice_logprobs(choice.get("logprobs"), params.logprobs)]
                            if params.logprobs is not None else [])
                if choice.get("text") or ids:
                    yield GenerationChunk(text=choice.get("text") or "", token_ids=ids, index=index, logprobs=logprobs)
        if prompt.embeds is not None:
            self.prompt_embeds_supported, self.prompt_embeds_detail = True, "accepted"
        for index in range(params.n):  # each choice's last chunk, once usage is known
            completion = tokens.get(index, 0) if params.n > 1 else usage.get("completion_tokens", tokens.get(0, 0))
            yield GenerationChunk(finish_reason=finish.get(index, "stop"), index=index,
                                  prompt_tokens=usage.get("prompt_tokens", prompt.length), completion_tokens=completion)

    async def top_logprobs(self, token_ids: Sequence[int], k: int) -> list[tuple[int, float]]:
        self.check_prompt_length(len(token_ids))
        await self.ensure_model()
        payload = {"model": self.upstream_model, "prompt": list(token_ids), "max_tokens": 1, "temperature": 0.0,
                   "logprobs": k, "return_tokens_as_token_ids": True}
        resp = await self.forward("/v1/completions", json.dumps(payload).encode())
        try:
            if resp.status != 200:
                raise await self._error_from(resp, payload, LOGPROBS_HINT)
            data = await resp.json()
        except UpstreamError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._translate(exc) from None
        finally:
            resp.release()
        self._learn_fingerprint(data)
        return top_pairs(data["choices"][0]["logprobs"]["top_logprobs"][0], k)

    async def stream_top_logprobs(self, token_ids: Sequence[int], max_tokens: int, k: int) -> AsyncIterator[PositionLogprobs]:
        model = await self.ensure_model()
        payload = {"model": model, "prompt": list(token_ids), "max_tokens": max_tokens, "temperature": 0.0,
                   "logprobs": k, "return_tokens_as_token_ids": True, "stream": True}
        async for chunk in self._post_stream(payload, LOGPROBS_HINT):
            for choice in chunk.get("choices") or []:
                lp = choice.get("logprobs") or {}
                for token, top in zip(lp.get("tokens") or [], lp.get("top_logprobs") or []):
                    yield PositionLogprobs(top_pairs(top, k), token_id(token))

    # -- health -----------------------------------------------------------------------------------
    async def refresh_health(self) -> None:
        """Probe every replica; then, if one serves, learn what is still unknown (the upstream's
        max_model_len, whether it takes prompt embeddings: a refusal is a 400 before any generation)."""
        await self.pool.check(self.session, self.headers())
        if not any(r.healthy for r in self.pool.replicas):
            return
        if not self._context_from_upstream or not self.upstream_model:
            try:
                await self._read_model_card()
            except UpstreamError as exc:
                log.debug("model card not read: %s", exc.message)
        if self.prompt_embeds_supported is not True and self._embeddings is not None:
            await self.probe_prompt_embeds()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.pool.health_interval_s)
            try:
                await self.refresh_health()
            except Exception:  # noqa: BLE001 - the loop must outlive any one failed round
                log.warning("upstream health check failed", exc_info=True)

    async def health(self) -> dict[str, Any]:
        """What the health loop (and the traffic itself) last saw; never a call upstream."""
        ready = any(r.healthy for r in self.pool.replicas)
        detail: dict[str, Any] = {"replicas": [r.status() for r in self.pool.replicas]}
        if not ready:
            detail["error"] = "; ".join(f"{r.url}: {r.last_error}" for r in self.pool.replicas)
        embeds = {"prompt_embeds": self.prompt_embeds_supported}
        if self.prompt_embeds_supported is not True:
            embeds["prompt_embeds_detail"] = self.prompt_embeds_detail
        context = self.context_window.tokens if self.context_window else None
        return {"ready": ready, "engine": "vllm", "upstream": self.url, "model": str(self.model_path),
                "context_length": context, **detail, **embeds}
