"""Bounds on what clients can make the endpoint hold: connections, waiting requests, files.

aiohttp already bounds a request's head (line, field and header-count limits) and closes
a connection that has not sent a whole request within its keep-alive timeout, counted
from the moment it connects (slow clients). What it leaves open is the number of
connections and of requests parked on an upstream fetch; both are bounded here, each
with an answer a client can act on instead of a silent stall:

* a connection beyond ``max_connections`` is answered ``503`` and closed at once;
* a request beyond ``max_waiting_requests`` waiting for a fetch is answered ``429``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
from collections.abc import Callable, Iterator
from typing import Any

from credd.config.settings import ServerSettings
from credd.errors import TooManyRequests

#: file descriptors kept free for caches, locks, logs and upstream connections
FILE_RESERVE = 128
RETRY_AFTER_SECONDS = 1


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` towards ``wanted`` (never past the hard limit).

    The soft limit is often 1024 while the hard one is far higher; a daemon that
    holds many connections should ask for what it needs. Returns the soft limit now
    in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def connection_budget(max_connections: int) -> int:
    """``max_connections``, lowered if the open-files limit cannot hold that many."""
    soft = raise_open_files_limit(max_connections + FILE_RESERVE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft - FILE_RESERVE))


def _refusal(status: str, code: str, message: str) -> bytes:
    body = json.dumps({"code": code, "message": message, "Code": code, "Message": message})
    head = (
        f"HTTP/1.1 {status}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {RETRY_AFTER_SECONDS}\r\n"
        "Connection: close\r\n\r\n"
    )
    return (head + body).encode("ascii")


_TOO_MANY_CONNECTIONS = _refusal(
    "503 Service Unavailable",
    "TooManyConnections",
    "credd has too many open connections; retry shortly",
)


class ConnectionLimit:
    """A protocol factory that admits at most ``maximum`` connections at once."""

    def __init__(self, inner: Callable[[], asyncio.Protocol], maximum: int) -> None:
        self._inner = inner
        self.maximum = maximum
        self.open = 0
        self.refused = 0

    def __call__(self) -> asyncio.Protocol:
        if self.open >= self.maximum:
            self.refused += 1
            return _Refuse()
        self.open += 1
        return _Counted(self, self._inner())

    def _closed(self) -> None:
        self.open -= 1


class _Refuse(asyncio.Protocol):
    """Answers ``503`` without reading anything, then closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_TOO_MANY_CONNECTIONS)
        transport.close()


class _Counted(asyncio.Protocol):
    """Forwards everything to aiohttp's protocol; gives the slot back when the connection ends."""

    def __init__(self, limit: ConnectionLimit, inner: asyncio.Protocol) -> None:
        self._limit = limit
        self._inner = inner
        # bound once: data_received is on every request's path
        self.data_received = inner.data_received  # type: ignore[method-assign]
        self.eof_received = inner.eof_received  # type: ignore[method-assign]
        self.pause_writing = inner.pause_writing  # type: ignore[method-assign]
        self.resume_writing = inner.resume_writing  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._limit._closed()
        self._inner.connection_lost(exc)


class WaitLimit:
    """Admits at most ``maximum`` requests at once to wait for an upstream fetch."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.waiting = 0
        self.refused = 0

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        if self.waiting >= self.maximum:
            self.refused += 1
            raise TooManyRequests(
                f"more than {self.maximum} requests are waiting for credentials; retry shortly"
            )
        self.waiting += 1
        try:
            yield
        finally:
            self.waiting -= 1


class EndpointLoad:
    """The endpoint's two bounds, and what it holds against them now (``credd status``)."""

    def __init__(self, server: ServerSettings) -> None:
        self.waiting = WaitLimit(server.max_waiting_requests)
        self.max_connections = connection_budget(server.max_connections)
        self.connections: ConnectionLimit | None = None

    def protocol(self, inner: Callable[[], asyncio.Protocol]) -> ConnectionLimit:
        """The protocol factory for the listeners: ``inner`` behind the connection limit."""
        self.connections = ConnectionLimit(inner, self.max_connections)
        return self.connections

    def describe(self) -> dict[str, Any]:
        connections = self.connections
        return {
            "connections": connections.open if connections else 0,
            "max_connections": self.max_connections,
            "refused_connections": connections.refused if connections else 0,
            "waiting_requests": self.waiting.waiting,
            "max_waiting_requests": self.waiting.maximum,
            "refused_requests": self.waiting.refused,
        }
