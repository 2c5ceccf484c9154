"""Find descriptors the event loop believes it watches but the kernel no longer does.

The hang seen on CI (a fresh guard server whose connection sits in the kernel's accept queue while
nothing in the loop is pending) is what a *stale selector entry* produces: some code closes a
socket or pipe that is still registered with the loop. The kernel drops the closed descriptor from
the epoll set, but asyncio's selector keeps its entry under that number. The next socket that gets
the same number — a new test server's listening socket — is then "registered" by a ``modify`` that
sees the same events and never calls ``epoll_ctl``: the server listens, the kernel queues the
connection, and the loop is never told.

``stale_entries(loop)`` compares the selector's map with the epoll set the kernel reports in
``/proc/self/fdinfo``; the suite runs it after each test so the test that leaves one is named.
``catch_stale_reuse(loop, found)`` catches the moment a new descriptor lands on a stale entry (the
hang itself), records who registered it and what the stale entry was, and registers it for real.
"""

from __future__ import annotations

import asyncio
import traceback
from pathlib import Path
from typing import Any


def epoll_targets(loop: asyncio.AbstractEventLoop) -> set[int] | None:
    """Descriptor numbers in the loop's epoll set, or None where that cannot be read (not Linux,
    not an epoll selector, uvloop)."""
    epoll = getattr(getattr(loop, "_selector", None), "_selector", None)
    if epoll is None or not hasattr(epoll, "fileno"):
        return None
    try:
        text = Path(f"/proc/self/fdinfo/{epoll.fileno()}").read_text()
    except (OSError, ValueError):
        return None
    return {int(line.split()[1]) for line in text.splitlines() if line.startswith("tfd:")}


def stale_entries(loop: asyncio.AbstractEventLoop | None) -> dict[int, str]:
    """Selector entries whose descriptor is not in the kernel's epoll set: number → what the loop
    would call for it (the reader/writer handles name the transport or server that left it)."""
    if loop is None or loop.is_closed():
        return {}
    targets = epoll_targets(loop)
    if targets is None:
        return {}
    stale = {}
    for key in list(loop._selector.get_map().values()):  # type: ignore[attr-defined]
        if key.fd not in targets:
            reader, writer = key.data if isinstance(key.data, tuple) else (key.data, None)
            stale[key.fd] = f"fd {key.fd} {key.fileobj!r}: reader={reader!r} writer={writer!r}"
    return stale


def drop_stale(loop: asyncio.AbstractEventLoop, fds: list[int]) -> None:
    """Forget stale entries so a later socket with the same number is registered for real."""
    for fd in fds:
        try:
            loop._selector.unregister(fd)  # type: ignore[attr-defined]
        except (KeyError, ValueError, OSError):
            pass


def catch_stale_reuse(loop: asyncio.AbstractEventLoop, found: list[str]) -> None:
    """Wrap the loop selector's ``modify`` so that a descriptor the kernel's epoll set lacks is
    registered for real instead of silently not at all; each such case is appended to ``found``
    with the stale entry (what was left registered) and the stack that tripped over it."""
    selector = getattr(loop, "_selector", None)
    if selector is None or epoll_targets(loop) is None:
        return
    modify = selector.modify

    def checked_modify(fileobj: Any, events: int, data: Any = None) -> Any:
        key = selector.get_key(fileobj)
        targets = epoll_targets(loop)
        if targets is None or key.fd in targets:
            return modify(fileobj, events, data)
        found.append(f"fd {key.fd} was still registered for {key.data!r} (closed without being "
                     f"unregistered) when it was registered again for {data!r} at\n"
                     + "".join(traceback.format_stack(limit=16)[:-1]))
        selector.unregister(fileobj)
        return selector.register(fileobj, events, data)

    selector.modify = checked_modify
