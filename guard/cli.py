"""``guard``: run the proxy (``guard serve``)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

from aiohttp import web

from guard import app_keys as keys
from guard.config import load_settings
from guard.errors import ConfigError


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the OpenAI-compatible guard proxy")
    p.add_argument("--config", type=Path, help="YAML config file (see guard.example.yaml)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--model", help="'default' (bundled SmolLM2-135M-Instruct), a cached name, a local folder or a hub id")
    p.add_argument("--served-model-name", dest="served_model_name")
    p.add_argument("--upstream", choices=["local", "vllm"], help="where generation runs (default: local)")
    p.add_argument("--upstream-url", dest="upstream_url", help="vLLM server base URL, e.g. http://127.0.0.1:8011")
    p.add_argument("--upstream-model", dest="upstream_model", help="model name on the upstream (default: discovered)")
    p.add_argument("--policy", type=Path, help="policy YAML (forget targets and actions)")
    p.add_argument("--api-key", dest="api_keys", action="append", help="accepted client key, NAME:KEY or KEY (repeatable)")
    p.add_argument("--admin-api-key", dest="admin_api_key")
    p.add_argument("--max-concurrency", dest="max_concurrency", type=int)
    p.add_argument("--max-queue", dest="max_queue", type=int)
    p.add_argument("--debug", action="store_true", default=None, help="show target ids and scores in response headers")
    p.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--event-loop", dest="event_loop", choices=["auto", "uvloop", "asyncio"], default="auto",
                   help="the server's event loop (auto: uvloop when installed, else asyncio's; "
                        "benchmarks/proxy_overhead.py measures both)")
    p.set_defaults(func=serve)


def _event_loop(choice: str) -> asyncio.AbstractEventLoop | None:
    """The loop ``guard serve`` runs on (None: asyncio's own). uvloop (libuv) costs 12-22 % less CPU
    per streamed request on the pass path (README, proxy overhead), which is what bounds throughput
    at high concurrency."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("uvloop is not installed (pip install uvloop), or use --event-loop asyncio",
                              param="event_loop") from None
        return None
    return uvloop.new_event_loop()


_FLAG_FIELDS = {
    "host": "host", "port": "port", "model": "model", "served_model_name": "served_model_name",
    "upstream": "upstream.kind", "upstream_url": "upstream.url", "upstream_model": "upstream.model",
    "policy": "policy", "api_keys": "api_keys", "admin_api_key": "admin_api_key",
    "max_concurrency": "local.max_concurrency", "max_queue": "local.max_queue", "debug": "debug",
    "log_level": "log_level",
}


def serve(args: argparse.Namespace) -> int:
    overrides = {field: getattr(args, name) for name, field in _FLAG_FIELDS.items()}
    if overrides["upstream.url"] and not overrides["upstream.kind"]:
        overrides["upstream.kind"] = "vllm"  # --upstream-url alone implies a vLLM upstream
    if overrides["policy"] is not None:
        overrides["policy"] = str(overrides["policy"])
    settings = load_settings(args.config, overrides)
    logging.getLogger().setLevel(settings.log_level.upper())
    from guard.app import build_app

    event_loop = _event_loop(args.event_loop)  # before the models load: a missing uvloop fails at once
    app = build_app(settings)

    async def on_startup(app: web.Application) -> None:
        loop = asyncio.get_running_loop()

        def reload() -> None:
            async def run() -> None:
                try:
                    await app[keys.PIPELINES].reload()
                except Exception:  # noqa: BLE001 - logged by reload; the old policy keeps serving
                    pass

            loop.create_task(run())

        loop.add_signal_handler(signal.SIGHUP, reload)
        # What start-up loaded (models, name tables, policies: ~250k objects) lives as long as the
        # process; left to the collector, every full collection walks it again (~70 ms, the whole
        # event loop paused, every stream with it). Frozen, collections see only what serving made.
        gc.collect()
        gc.freeze()

    app.on_startup.append(on_startup)
    print(f"guard: serving {settings.model} on http://{settings.host}:{settings.port}/v1 "
          f"(event loop: {'uvloop' if event_loop is not None else 'asyncio'})", file=sys.stderr)
    # Per-request access lines only at debug level: at info they cost more than the proxy itself.
    access_log = logging.getLogger("aiohttp.access") if settings.log_level == "debug" else None
    web.run_app(app, host=settings.host, port=settings.port, print=None, handler_cancellation=True,
                shutdown_timeout=settings.shutdown_timeout_s, access_log=access_log, loop=event_loop)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="guard", description="unlearning-guard: an OpenAI-compatible forgetting proxy")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _serve_parser(sub)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"guard: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
