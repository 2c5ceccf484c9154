"""Typed keys for what ``build_app`` stores on the aiohttp application and requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from guard.config import Settings
    from guard.engines.base import Engine
    from guard.metrics import GuardMetrics
    from guard.pipeline import PipelineHolder
    from guard.serving import GenerationService

@dataclass
class InflightGate:
    count: int = 0


SETTINGS: web.AppKey["Settings"] = web.AppKey("settings")
ENGINE: web.AppKey["Engine"] = web.AppKey("engine")
PIPELINES: web.AppKey["PipelineHolder"] = web.AppKey("pipelines")
METRICS: web.AppKey["GuardMetrics"] = web.AppKey("metrics")
SERVICE: web.AppKey["GenerationService"] = web.AppKey("service")
STARTED: web.AppKey[int] = web.AppKey("started")
INFLIGHT: web.AppKey[InflightGate] = web.AppKey("inflight")
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id")
KEY_NAME: web.RequestKey[str] = web.RequestKey("api_key_name")  # which API key authenticated the request
BODY: web.RequestKey[bytes] = web.RequestKey("body")  # a generation request's body, read and decoded before the in-flight gate
