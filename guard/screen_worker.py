"""Screening under the policy's limits, and a separate process for large requests.

Screening runs off the event loop, in a thread; but a thread shares the GIL with the loop, and a
long screening (a document of 100,000 words takes about a second) makes every other request wait
for the GIL between its steps: measured on this 2-core machine, a tiny pass-through chat request
took ~10 ms instead of ~1.7 ms while one such document was screened in a thread, and ~1.7 ms while
a separate process kept a core busy. So requests larger than ``detector.isolate_above_chars`` are
screened in a ``ScreenWorker`` process (its own GIL): small ones stay in a thread, where a process
round trip would cost more than the screening. The process is started on the first large request
(that one is screened in a thread meanwhile; see below) and builds its own detector from the policy with the
same factory; if it dies, large requests are screened in a thread again, never skipped. With a
trained detector the process is started with the pipeline (in the background), so the first large
request already finds it.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import multiprocessing
import pickle
import threading
from multiprocessing.connection import Connection
from typing import Any, Callable, Sequence

from classifiers.base import Deadline, Detector, ScreeningIncomplete, Verdict
from classifiers.limits import check_length
from guard.policy import Policy

log = logging.getLogger(__name__)

POLL_S = 0.05
GIVE_UP_AFTER_S = 0.5  # past the deadline, a request stops waiting for the process (the next one finds it busy)


def takes_deadline(detector: Detector) -> bool:
    """Whether ``detector.screen`` takes a ``deadline`` (detectors written before the budget: their
    thread cannot be stopped, only no longer waited for)."""
    try:
        return "deadline" in inspect.signature(detector.screen).parameters
    except (TypeError, ValueError):
        return False


def screen_within_limits(policy: Policy, detector: Detector, texts: list[str], deadline: Deadline, *,
                         with_deadline: bool) -> Verdict:
    """The length limit (``detector.max_screen_tokens`` with ``long_input: fail``), then the detector
    under the deadline (``with_deadline``: ``takes_deadline(detector)``). Raises ``ScreeningIncomplete``."""
    spec = policy.detector
    if spec.long_input == "fail":
        check_length(texts, spec.max_screen_tokens, deadline)
    if with_deadline:
        return detector.screen(texts, deadline=deadline)
    return detector.screen(texts)


def _serve(conn: Connection, policy: Policy, factory: Callable[[Policy], Detector]) -> None:
    """The worker process: build the detector, then answer requests until the pipe closes."""
    detector = factory(policy)
    with_deadline = takes_deadline(detector)
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        request_id, texts, expires_at, budget_ms = msg
        try:
            verdict = screen_within_limits(policy, detector, texts, Deadline(expires_at, budget_ms), with_deadline=with_deadline)
            reply: tuple[Any, ...] = ("ok", request_id, verdict)
        except ScreeningIncomplete as exc:
            reply = ("incomplete", request_id, exc.message, exc.param)
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which applies the fail mode
            reply = ("error", request_id, f"{type(exc).__name__}: {exc}")
        conn.send(reply)


class ScreenWorker:
    """One screening process for large requests (one at a time; the next waits within its deadline).

    ``screen`` is called from a thread, never the event loop: it blocks on the pipe (without the GIL).
    """

    def __init__(self, policy: Policy, factory: Callable[[Policy], Detector]) -> None:
        self.policy = policy
        self.factory = factory
        self._lock = threading.Lock()        # one request on the pipe at a time
        self._start_lock = threading.Lock()
        self._conn: Connection | None = None
        self._proc: Any = None
        self._ready = False
        self._broken = False
        self._ids = itertools.count()

    @staticmethod
    def can_run(factory: Callable[[Policy], Detector]) -> bool:
        """A factory the worker process can rebuild the detector with (importable, not a closure)."""
        try:
            pickle.dumps(factory)
            return True
        except Exception:  # noqa: BLE001 - lambdas and local functions cannot cross processes
            return False

    def start(self) -> None:
        """Start the process now (in the background: this returns at once)."""
        self._start()

    def _start(self) -> None:
        with self._start_lock:
            if self._proc is not None or self._broken:
                return
            ctx = multiprocessing.get_context("spawn")
            parent, child = ctx.Pipe()
            self._proc = ctx.Process(target=_serve, args=(child, self.policy, self.factory), daemon=True, name="guard-screen-worker")
            self._proc.start()
            child.close()
            self._conn = parent

    def _usable(self) -> bool:
        """Whether the process is up and its detector built (starting it on first use)."""
        if self._broken:
            return False
        if self._proc is None:
            self._start()
            return False
        if not self._ready:
            self._take_ready(0)
        return self._ready and not self._broken

    def wait_ready(self, timeout_s: float) -> bool:
        """Start the process if needed and wait until its detector is built (start-up warming, tests)."""
        self._usable()
        if self._conn is None or self._broken:
            return False
        self._take_ready(timeout_s)
        return self._ready and not self._broken

    def _take_ready(self, timeout_s: float) -> None:
        """Read the process's "ready" message if it arrives within ``timeout_s``."""
        with self._lock:
            if not self._ready and self._conn is not None and self._conn.poll(timeout_s):
                try:
                    self._ready = self._conn.recv() == ("ready",)
                except (EOFError, OSError):
                    self._fail("exited while building its detector")

    def _fail(self, why: str) -> None:
        if not self._broken:
            log.error("screening process %s; large requests are screened in threads from now on", why)
        self._broken = True

    def screen(self, texts: Sequence[str], deadline: Deadline) -> Verdict | None:
        """The verdict from the worker process, or None when it is not available (screen in a thread)."""
        if not self._usable():
            return None
        # the previous large request may still be screening: wait for it only within this deadline
        # (so threads never pile up behind a stuck one)
        if not self._lock.acquire(timeout=max(0.0, deadline.remaining_s())):
            raise ScreeningIncomplete(f"the screening process was busy for all of {deadline.param} ({deadline.budget_ms:g} ms)",
                                      param=deadline.param)
        try:
            deadline.check("waiting for the screening process")
            assert self._conn is not None
            request_id = next(self._ids)
            try:
                self._conn.send((request_id, list(texts), deadline.expires_at, deadline.budget_ms))
                while True:
                    while not self._conn.poll(POLL_S):
                        if not self._proc.is_alive():
                            raise EOFError
                        if deadline.remaining_s() < -GIVE_UP_AFTER_S:  # a detector that ignores the deadline
                            raise ScreeningIncomplete(f"screening did not finish within {deadline.param} "
                                                      f"({deadline.budget_ms:g} ms)", param=deadline.param)
                    reply = self._conn.recv()
                    if reply[1] == request_id:  # a late reply to an abandoned request is dropped
                        break
            except (EOFError, OSError, BrokenPipeError):
                self._fail("died")
                return None
        finally:
            self._lock.release()
        if reply[0] == "ok":
            return reply[2]
        if reply[0] == "incomplete":
            raise ScreeningIncomplete(reply[2], param=reply[3])
        raise RuntimeError(f"screening process: {reply[2]}")

    def close(self) -> None:
        """Stop the process (it also exits by itself when this process does)."""
        proc, conn = self._proc, self._conn
        self._broken = True
        if proc is None or conn is None:
            return
        try:
            conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
        conn.close()
