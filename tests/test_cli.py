"""`guard serve` as a user runs it: a real process, SIGHUP reload, config errors, clean shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from benchmarks.proxy_overhead import MODEL, start_fake
from tests.support.ports import free_port


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _wait(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    raise AssertionError(f"{url} never came up")


@pytest.fixture
def fake_upstream():
    proc, url = start_fake(0.0)
    yield url
    proc.terminate()


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_sighup_reloads_policy_and_sigterm_stops(tmp_path: Path, fake_upstream: str, event_loop: str):
    """On either event loop (``--event-loop``): serves, reloads its policy on SIGHUP, exits 0 on SIGTERM."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("detector: {kind: keyword}\ntargets: [{id: a, names: [Alpha Centauri]}]\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "guard.cli", "serve", "--upstream-url", fake_upstream,
                             "--port", str(port), "--policy", str(policy), "--upstream-model", MODEL,
                             "--event-loop", event_loop],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "GUARD_LOG_LEVEL": "warning"})
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{base}/health", proc)
        ask = {"model": MODEL, "messages": [{"role": "user", "content": "Who is Zorblax?"}]}
        status, body = _post(f"{base}/v1/chat/completions", ask)
        assert status == 200 and "tok0" in body["choices"][0]["message"]["content"]  # passed to the fake upstream

        policy.write_text("detector: {kind: keyword}\ntargets: [{id: z, names: [Zorblax]}]\n")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, body = _post(f"{base}/v1/chat/completions", ask)
            if "sorry" in body["choices"][0]["message"]["content"].lower():
                break
            time.sleep(0.2)
        else:
            raise AssertionError("SIGHUP did not reload the policy")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert f"(event loop: {event_loop})" in proc.stderr.read().decode()


def test_config_error_exits_2_naming_the_field(tmp_path: Path):
    cfg = tmp_path / "guard.yaml"
    cfg.write_text("upstream: {kind: vllm}\n")
    res = subprocess.run([sys.executable, "-m", "guard.cli", "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "upstream.url is missing" in res.stderr and "Traceback" not in res.stderr


def test_bad_policy_fails_at_start(tmp_path: Path, fake_upstream: str):
    policy = tmp_path / "policy.yaml"
    policy.write_text("targets: [{id: a, names: [A], action: forget}]\n")
    res = subprocess.run([sys.executable, "-m", "guard.cli", "serve", "--upstream-url", fake_upstream, "--policy", str(policy),
                          "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "targets.0.action" in res.stderr and "Traceback" not in res.stderr


def test_missing_detector_artifact_fails_at_start(tmp_path: Path, fake_upstream: str):
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"detector: {{kind: trained, artifact: {tmp_path / 'no-such-artifact'}}}\ntargets: [{{id: a, names: [Alpha]}}]\n")
    res = subprocess.run([sys.executable, "-m", "guard.cli", "serve", "--upstream-url", fake_upstream, "--policy", str(policy),
                          "--port", str(free_port())], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "detector.artifact" in res.stderr and "guard-train classifier" in res.stderr and "Traceback" not in res.stderr


def test_sigterm_drains_in_flight_streams(tmp_path: Path):
    """SIGTERM: the port closes to new connections at once, the stream in flight runs to its end, exit 0."""
    import socket
    import threading

    fake, upstream = start_fake(60.0)  # 64 tokens at 60 ms: a ~4 s stream
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "guard.cli", "serve", "--upstream-url", upstream, "--port", str(port),
                             "--upstream-model", MODEL, "--served-model-name", MODEL],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "GUARD_LOG_LEVEL": "warning"})
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{base}/health", proc)
        body = json.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Count slowly."}]}).encode()
        req = urllib.request.Request(f"{base}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
        received: dict = {}
        first = threading.Event()

        def read() -> None:
            with urllib.request.urlopen(req, timeout=60) as resp:
                chunks = [resp.readline()]
                first.set()
                for line in resp:
                    chunks.append(line)
                received["raw"] = b"".join(chunks).decode()

        reader = threading.Thread(target=read)
        reader.start()
        assert first.wait(30), "the stream never started"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):  # no new connections while draining
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        reader.join(60)
        raw = received.get("raw", "")
        assert raw.endswith("data: [DONE]\n\n") and raw.count("tok") == 64 and '"error"' not in raw
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        fake.terminate()
