"""Evidence of a hang recorded while it happens, not after.

A client that times out closes its connection, and aiohttp then cancels the guard's handler: by the
time the failing test is reported, the task that waited is gone. So the suite watches its loop as it
runs (``HangWatch``):

- a task of the session loop samples, every ``interval_s``, every pending task older than ``stuck_s``
  and keeps its latest stack (a handler that waits on a lock shows where, even once cancelled);
- a thread checks that the loop answers: when it has not for ``stuck_s`` while running, the loop
  thread's own stack is recorded (a blocking call on the loop shows up here, not as a task).

``report(since)`` gives what was recorded after ``since`` (the failing test's start).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field


@dataclass
class Sighting:
    """One stuck thing: when first and last seen (monotonic seconds) and its latest stack."""
    what: str
    first_seen: float
    last_seen: float
    stack: str


@dataclass
class HangWatch:
    loop: asyncio.AbstractEventLoop
    stuck_s: float = 20.0
    interval_s: float = 2.0
    sightings: dict[str, Sighting] = field(default_factory=dict)
    _born: dict[int, float] = field(default_factory=dict)
    _answered: float = field(default_factory=time.monotonic)
    _stop: threading.Event = field(default_factory=threading.Event)

    forks: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.loop.create_task(self._sample_tasks(), name="hang-watch")
        threading.Thread(target=self._watch_loop, name="hang-watch", daemon=True).start()
        # a fork (not fork+exec) copies the loop's epoll descriptor and sockets into the child: a
        # classic cause of a server that stops accepting; record where one happens
        os.register_at_fork(before=self._record_fork)

    def _record_fork(self) -> None:
        if len(self.forks) < 20:
            self.forks.append("".join(traceback.format_stack()[-12:-1]))

    def stop(self) -> None:
        self._stop.set()

    # -- tasks ---------------------------------------------------------------------------------------
    async def _sample_tasks(self) -> None:
        me = asyncio.current_task()
        while not self._stop.is_set():
            now = time.monotonic()
            self._answered = now
            alive = set()
            for task in asyncio.all_tasks(self.loop):
                if task is me or task.done():
                    continue
                alive.add(id(task))
                born = self._born.setdefault(id(task), now)
                if now - born >= self.stuck_s:
                    self._see(f"task {task.get_name()} {task.get_coro()!r}", born, now, task_stack(task))
            self._born = {k: v for k, v in self._born.items() if k in alive}
            await asyncio.sleep(self.interval_s)

    # -- the loop itself -------------------------------------------------------------------------------
    def _watch_loop(self) -> None:
        loop_thread = None
        while not self._stop.wait(self.interval_s):
            if self.loop.is_closed():
                return
            if not self.loop.is_running():  # between async tests: nothing to answer
                self._answered = time.monotonic()
                continue
            loop_thread = loop_thread or _running_thread(self.loop)
            silent = time.monotonic() - self._answered
            if silent >= self.stuck_s and loop_thread is not None:
                frame = sys._current_frames().get(loop_thread)
                if frame is not None:
                    now = time.monotonic()
                    self._see("event loop blocked (its thread's stack)", now - silent, now,
                              "".join(traceback.format_stack(frame)[-25:]))

    def _see(self, what: str, first: float, now: float, stack: str) -> None:
        self.sightings[what] = Sighting(what, first, now, stack)

    def report(self, since: float) -> str:
        seen = [s for s in self.sightings.values() if s.last_seen >= since]
        forks = "".join(f"--- the test process forked (not exec) here\n{stack}\n" for stack in self.forks)
        if not seen:
            return f"(nothing was pending or blocked for {self.stuck_s:g} s or more during the test)\n{forks}"
        return forks + "".join(f"--- {s.what}: stuck {s.last_seen - s.first_seen:.0f} s when last seen "
                       f"({time.monotonic() - s.last_seen:.0f} s before this report)\n{s.stack}\n" for s in seen)


def task_stack(task: asyncio.Task) -> str:
    """The task's whole await chain, innermost last (``Task.get_stack`` gives only the outer frame of
    a suspended coroutine), ending with what the innermost one waits for (a future, a lock's waiter)."""
    lines: list[str] = []
    awaited: object = task.get_coro()
    for _ in range(50):
        frame = next((getattr(awaited, a) for a in ("cr_frame", "gi_frame", "ag_frame") if getattr(awaited, a, None)), None)
        if frame is None:
            lines.append(f"  waiting on {awaited!r}\n"[:400])
            break
        lines.append(f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}\n')
        awaited = next((getattr(awaited, a) for a in ("cr_await", "gi_yieldfrom", "ag_await") if getattr(awaited, a, None)), None)
        if awaited is None:
            break
    return "".join(lines) or "(no frames)\n"


def _running_thread(loop: asyncio.AbstractEventLoop) -> int | None:
    """The id of the thread running ``loop`` (the main thread in this suite)."""
    thread_id = getattr(loop, "_thread_id", None)
    return thread_id if isinstance(thread_id, int) else threading.main_thread().ident
