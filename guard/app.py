"""The app factory: ``build_app(settings)`` creates the engine, pipeline, metrics and service once,
stores them under typed keys, and starts/stops them through ``cleanup_ctx``.

Tests pass a ready ``engine`` (shared between apps, not closed by them) and/or a
``detector_factory``; nothing needs patching.
"""

from __future__ import annotations

import logging
import time
from typing import AsyncIterator, Callable

from aiohttp import web

from guard import app_keys as keys
from guard.api import (
    add_routes,
    auth_middleware,
    body_middleware,
    echo_request_id,
    errors_middleware,
    inflight_middleware,
    request_id_middleware,
)
from guard.config import Settings
from guard.engines.base import Engine
from guard.metrics import GuardMetrics
from guard.models import resolve_model, served_name_for
from guard.pipeline import DetectorFactory, Pipeline, PipelineHolder
from guard.policy import empty_policy, load_policy
from guard.serving import GenerationService

log = logging.getLogger(__name__)


def default_detector_factory(policy):  # type: ignore[no-untyped-def]
    """The policy's detector, behind de-obfuscation (base64, leetspeak, homoglyphs, invisible characters)."""
    from classifiers.base import NullDetector
    from classifiers.loader import build_detector
    from classifiers.normalize import NormalizingDetector

    detector = build_detector(policy)
    return detector if isinstance(detector, NullDetector) else NormalizingDetector(detector)


def create_engine(settings: Settings) -> Engine:
    """The engine the settings describe (not started)."""
    model_path = resolve_model(settings.model)
    if settings.upstream.kind == "vllm":
        from guard.engines.vllm import VllmEngine

        up = settings.upstream
        return VllmEngine(up.urls, model_path, settings.served_model_name, upstream_model=up.model,
                          api_key=up.api_key, connect_timeout_s=up.connect_timeout_s, read_timeout_s=up.read_timeout_s)
    from guard.engines.local import LocalEngine

    return LocalEngine(model_path, settings.served_model_name or served_name_for(settings.model),
                       max_concurrency=settings.local.max_concurrency, max_queue=settings.local.max_queue,
                       threads=settings.local.threads, device=settings.local.device)


def build_app(settings: Settings, *, engine: Engine | None = None,
              detector_factory: DetectorFactory | None = None) -> web.Application:
    # Order: authenticate, then read the body (bounded in time), then count the request as in flight.
    middlewares = [request_id_middleware, errors_middleware, auth_middleware, body_middleware, inflight_middleware]
    # keepalive_timeout: aiohttp closes a connection that has not delivered a full request head in that
    # time (from opening or its last response), which is the header timeout. auto_decompress off:
    # guard.request_body decodes Content-Encoding itself, with OpenAI errors and a size cap.
    handler_args = {"keepalive_timeout": settings.header_timeout_s, "auto_decompress": False}
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=middlewares, handler_args=handler_args)
    owns_engine = engine is None
    app[keys.SETTINGS] = settings
    app[keys.ENGINE] = engine if engine is not None else create_engine(settings)
    app[keys.METRICS] = GuardMetrics.create()
    app[keys.STARTED] = int(time.time())
    app[keys.INFLIGHT] = keys.InflightGate()
    factory: Callable = detector_factory or default_detector_factory
    eng = app[keys.ENGINE]
    # Policy and detector load here, before the server binds: a bad policy fails at start-up.
    policy = load_policy(settings.policy) if settings.policy else empty_policy()
    app[keys.PIPELINES] = PipelineHolder(Pipeline.build(policy, eng, factory, settings.policy), eng, factory)
    app[keys.SERVICE] = GenerationService(settings, eng, app[keys.PIPELINES], app[keys.METRICS])

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        if owns_engine:
            await eng.start()
        log.info("guard ready: engine=%s model=%s targets=%d", eng.kind, eng.served_model_name, len(policy.targets))
        yield
        if owns_engine:
            await eng.close()

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(echo_request_id)
    add_routes(app)
    return app
