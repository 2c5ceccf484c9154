"""What a test that timed out leaves behind, for the failure report: where every thread and every
pending asyncio task of the suite's event loop is waiting, and the tail of each vLLM server's log.

A request that hangs on CI (a 120 s SDK timeout, once; a 300 s aiohttp one, once) cannot be re-run
there. By the time the test fails the client has hung up and aiohttp has cancelled the guard's
handler, so what was stuck is recorded while it is stuck (``tests.support.watchdog.HangWatch``); this
adds what is still pending at the failure, each task with its whole await chain.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Iterable

from tests.support.selector_audit import epoll_targets
from tests.support.watchdog import task_stack

TIMEOUT_NAMES = ("Timeout", "TimedOut")


def is_timeout(exc: BaseException | None) -> bool:
    """A timeout anywhere in the exception's chain (``openai.APITimeoutError``, ``asyncio.TimeoutError`` …)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, TimeoutError) or any(n in type(exc).__name__ for n in TIMEOUT_NAMES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _idle(stack: traceback.StackSummary) -> bool:
    """An executor worker waiting for work (most of the suite's threads, most of the time)."""
    return any(f.name == "_worker" and "work_queue.get" in (f.line or "") for f in stack)


def thread_stacks() -> str:
    names = {t.ident: t.name for t in threading.enumerate()}
    out = io.StringIO()
    idle = 0
    for ident, frame in sys._current_frames().items():
        if ident == threading.main_thread().ident:
            continue  # the report itself
        stack = traceback.extract_stack(frame)
        if _idle(stack):
            idle += 1
            continue
        out.write(f"--- thread {names.get(ident, ident)}\n{''.join(traceback.format_list(stack[-12:]))}")
    out.write(f"({idle} idle executor workers)\n")
    return out.getvalue()


def task_stacks(loop: asyncio.AbstractEventLoop | None) -> str:
    if loop is None or loop.is_closed():
        return "(no event loop)\n"
    out = io.StringIO()
    for task in asyncio.all_tasks(loop):
        if not task.done():
            out.write(f"--- task {task.get_name()} {task.get_coro()!r}\n{task_stack(task)}")
    return out.getvalue() or "(no pending task)\n"


def log_tails(paths: Iterable[Path], chars: int = 3000) -> str:
    parts = []
    for path in paths:
        try:
            parts.append(f"--- {path}\n{path.read_text(errors='replace')[-chars:]}")
        except OSError as exc:
            parts.append(f"--- {path}: {exc}")
    return "\n".join(parts) or "(no vLLM server log)"


def _own_socket_fds() -> dict[str, int]:
    """Socket inode → descriptor number, for this process's sockets."""
    out = {}
    for link in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(link)
        except OSError:
            continue
        if target.startswith("socket:["):
            out[target[8:-1]] = int(link.name)
    return out


def waiting_connections(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """Local listening sockets with connections the kernel accepted but no process has taken yet
    (``/proc/net/tcp``: a LISTEN socket's rx_queue is its accept queue): a server whose loop stopped
    watching its socket shows up here, with nothing pending in the loop. For this process's own,
    whether the loop's selector and the kernel's epoll set hold its descriptor (a selector entry
    the epoll set lacks is a stale one: ``tests.support.selector_audit``)."""
    own = _own_socket_fds()
    selector_map = getattr(getattr(loop, "_selector", None), "get_map", lambda: {})() if loop is not None else {}
    targets = epoll_targets(loop) if loop is not None else None
    lines = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A":  # LISTEN
                queued = int(fields[4].split(":")[1], 16)
                if queued:
                    where = "another process's"
                    if (fd := own.get(fields[9])) is not None:
                        where = (f"this process's fd {fd}: in the loop's selector {fd in selector_map}, "
                                 f"in its epoll set {None if targets is None else fd in targets}")
                    lines.append(f"port {int(fields[1].split(':')[1], 16)}: {queued} connection(s) waiting to be "
                                 f"accepted ({where})")
    return "\n".join(lines) or "(no listening socket has connections waiting)"


def child_processes() -> str:
    """This process's children (pid, name, state): a forked helper that shares the loop's descriptors."""
    me = str(os.getpid())
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name_end = text.rfind(")")
        rest = text[name_end + 2:].split()
        if len(rest) > 1 and rest[1] == me:
            out.append(f"{stat.parent.name} {text[text.find('(') + 1:name_end]} state={rest[0]}")
    return "\n".join(sorted(out)) or "(none)"


def hang_report(loop: asyncio.AbstractEventLoop | None, logs: Iterable[Path]) -> str:
    return (f"== threads\n{thread_stacks()}\n== pending asyncio tasks\n{task_stacks(loop)}\n"
            f"== sockets\n{waiting_connections(loop)}\n== child processes\n{child_processes()}\n"
            f"== vLLM logs\n{log_tails(logs)}\n")


def safe_hang_report(loop: asyncio.AbstractEventLoop | None, logs: Iterable[Path]) -> str:
    """``hang_report`` that never fails the test run itself (it runs inside a pytest hook)."""
    try:
        return hang_report(loop, logs)
    except Exception as exc:  # noqa: BLE001
        return f"(hang report failed: {type(exc).__name__}: {exc})"
