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

The same hang has a second form, caught on 2026-12-04: the stale owner *removes* the new
registration. An ``openai.AsyncOpenAI`` client dropped unclosed is collected together with its
connections; their transports' finalizers close the sockets (the loop still lists them), and the
SDK's finalizer schedules ``aclose()``, which aborts those transports and calls
``remove_reader(fd)`` on their old numbers. A test server that was given one of the numbers in
between loses its listening socket's registration ("in the loop's selector False, in its epoll
set False"). The cure is to close clients (the ``sdk`` fixture does); ``catch_stale_removal``
refuses such a removal (the calling transport's socket no longer has that number, and the
registration is someone else's) and records it.
"""

from __future__ import annotations

import asyncio
import sys
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


def _owner(handle: Any) -> Any:
    callback = getattr(handle, "_callback", None)
    return getattr(callback, "__self__", None)


def catch_stale_removal(loop: asyncio.AbstractEventLoop, found: list[str]) -> None:
    """Wrap the loop's ``_remove_reader``/``_remove_writer`` so that a transport whose socket was
    closed behind its back cannot unregister whatever now holds its old descriptor number; each such
    call is skipped and appended to ``found`` with the stack that made it."""
    if getattr(loop, "_selector", None) is None or epoll_targets(loop) is None:
        return

    def guarded(remove: Any, slot: int) -> Any:
        def checked(fd: Any) -> Any:
            caller = sys._getframe(1).f_locals.get("self")
            sock = getattr(caller, "_sock", None)
            if isinstance(fd, int) and sock is not None and getattr(caller, "_sock_fd", None) == fd:
                try:
                    key = loop._selector.get_key(fd)  # type: ignore[attr-defined]
                except (KeyError, ValueError):
                    key = None
                handles = key.data if key is not None and isinstance(key.data, tuple) else (None, None)
                holder = handles[slot]
                if sock.fileno() != fd and holder is not None and _owner(holder) is not caller:
                    found.append(f"{caller!r} (socket closed, was fd {fd}) tried to unregister fd {fd}, now "
                                 f"registered for {holder!r}, at\n" + "".join(traceback.format_stack(limit=16)[:-1]))
                    return False
            return remove(fd)
        return checked

    loop._remove_reader = guarded(loop._remove_reader, 0)  # type: ignore[attr-defined]
    loop._remove_writer = guarded(loop._remove_writer, 1)  # type: ignore[attr-defined]
