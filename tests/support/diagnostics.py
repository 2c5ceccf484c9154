"""What a test that timed out leaves behind, for the failure report: where every thread and every
pending asyncio task of the suite's event loop is waiting, and the tail of each vLLM server's log.

A request that hangs on CI (a 120 s SDK timeout, once) cannot be re-run there; at the moment the test
fails, the guard's handler is still pending in the session's loop, so its stack says where it waits.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import traceback
from pathlib import Path
from typing import Iterable

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
            out.write(f"--- task {task.get_name()} {task.get_coro()!r}\n")
            task.print_stack(limit=12, file=out)
    return out.getvalue() or "(no pending task)\n"


def log_tails(paths: Iterable[Path], chars: int = 3000) -> str:
    parts = []
    for path in paths:
        try:
            parts.append(f"--- {path}\n{path.read_text(errors='replace')[-chars:]}")
        except OSError as exc:
            parts.append(f"--- {path}: {exc}")
    return "\n".join(parts) or "(no vLLM server log)"


def hang_report(loop: asyncio.AbstractEventLoop | None, logs: Iterable[Path]) -> str:
    return (f"== threads\n{thread_stacks()}\n== pending asyncio tasks\n{task_stacks(loop)}\n"
            f"== vLLM logs\n{log_tails(logs)}\n")


def safe_hang_report(loop: asyncio.AbstractEventLoop | None, logs: Iterable[Path]) -> str:
    """``hang_report`` that never fails the test run itself (it runs inside a pytest hook)."""
    try:
        return hang_report(loop, logs)
    except Exception as exc:  # noqa: BLE001
        return f"(hang report failed: {type(exc).__name__}: {exc})"
