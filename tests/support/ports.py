"""Ports for the suite's servers, without races.

A port "found free" (bind to 0, close, hand the number on) may be taken before its user binds it;
worse, a client that connects to a free local port in the ephemeral range can be given that very
port as its own and connect to itself. So in-process servers bind port 0 themselves (aiohttp's
``TestServer`` does when given no port), an upstream that must be down is a ``RefusedPort`` (bound,
never listening: it refuses every connection and nothing else can take it), and only a subprocess,
which must be told its port, gets a ``free_port()``.
"""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port free right now, for a subprocess that must be told where to listen (vLLM, the CLI)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RefusedPort:
    """A local port that refuses connections until ``release()``: an upstream that is down."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def release(self) -> int:
        """Free the port (to start a server on it: an upstream coming back) and return it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        return self.port
