"""Fault injection: make the next requests of one operation slow, broken or failing.

A :class:`Fault` is queued per operation name and consumed by the requests that
reach that operation, first in, first out; ``count=None`` never runs out.
A fault may delay the request (``latency``, in real seconds) and then do one of:

* answer with an AWS error (``error_code`` / ``status``), built by the
  operation's own error class, so it is exactly what the service would send;
* answer with ``body`` verbatim (garbage, wrong types) and ``status`` (200);
* answer ``huge_body`` bytes, streamed in chunks without a length: a JSON object
  (XML for STS) padded to that size, so a client that reads it whole parses it;
* close the connection without any answer (``drop_connection``);
* ``hang``: answer nothing until the client gives up and closes the connection
  (its read timeout), or the emulator stops;
* nothing else: with only ``latency`` the request then proceeds normally.

``truncate_at`` cuts whatever the answer would have been (``body``, an error, or
the operation's real answer, whose side effects then happen as they would
upstream): the headers announce the whole ``Content-Length``, only the first
``truncate_at`` bytes follow, and the connection closes.

A fault that names no effect at all is an error: the operation's default fault
code (``InternalServerException`` 500, STS ``InternalFailure`` 500).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, cast

from aiohttp import web

from .errors import REQUEST_ID_HEADER, AwsError

#: how often a hanging request looks whether its client gave up
HANG_POLL_SECONDS = 0.01
#: the chunks a huge body is streamed in
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Fault:
    operation: str
    error_code: str | None = None
    status: int | None = None
    message: str | None = None
    #: how many requests this fault affects; ``None``: every one until cleared
    count: int | None = 1
    latency: float = 0.0
    drop_connection: bool = False
    body: bytes | None = None
    #: send only this many bytes of the answer, under its full Content-Length, then close
    truncate_at: int | None = None
    #: stream an answer of this many bytes
    huge_body: int | None = None
    #: answer nothing until the client closes the connection
    hang: bool = False

    @property
    def answers_as_usual(self) -> bool:
        """Whether the operation's own answer is given (after ``latency``; maybe truncated).

        A fault with no effect at all is the operation's default error instead.
        """
        return (
            (self.latency > 0 or self.truncate_at is not None)
            and self.error_code is None
            and self.status is None
            and self.body is None
            and self.huge_body is None
            and not self.drop_connection
            and not self.hang
        )

    def describe(self) -> dict[str, object]:
        """JSON-friendly, for ``GET /_emulator/faults``."""
        described = asdict(self)
        described["body"] = None if self.body is None else self.body.decode("latin-1")
        return described


class FaultPlan:
    """The queues of pending faults, one per operation."""

    def __init__(self, operations: Iterable[str] = ()) -> None:
        self._operations = frozenset(operations)
        self._queues: dict[str, deque[Fault]] = {}

    def allow(self, operations: Iterable[str]) -> None:
        """Declare operation names faults may name (a typo is an error, not a no-op)."""
        self._operations |= frozenset(operations)

    def add(
        self,
        operation: str,
        *,
        error_code: str | None = None,
        status: int | None = None,
        message: str | None = None,
        count: int | None = 1,
        latency: float = 0.0,
        drop_connection: bool = False,
        body: bytes | None = None,
        truncate_at: int | None = None,
        huge_body: int | None = None,
        hang: bool = False,
    ) -> Fault:
        fault = Fault(
            operation,
            error_code,
            status,
            message,
            count,
            latency,
            drop_connection,
            body,
            truncate_at,
            huge_body,
            hang,
        )
        self._check(fault)
        self._queues.setdefault(operation, deque()).append(fault)
        return fault

    def add_from_json(self, spec: Mapping[str, object]) -> Fault:
        """``POST /_emulator/faults``: the keyword arguments of :meth:`add`; ``body`` is text."""
        unknown = set(spec) - {f.name for f in fields(Fault)}
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        kwargs = dict(spec)
        body = kwargs.pop("body", None)
        if body is not None and not isinstance(body, str):
            raise ValueError("body must be a string")
        kwargs["body"] = None if body is None else body.encode()
        try:
            # Field types are checked by _check, like those of any other fault.
            return self.add(**cast("dict[str, Any]", kwargs))
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    def clear(self, operation: str | None = None) -> None:
        if operation is None:
            self._queues.clear()
        else:
            self._queues.pop(operation, None)

    def pending(self) -> list[Fault]:
        return [fault for queue in self._queues.values() for fault in queue]

    def take(self, operation: str) -> Fault | None:
        """The fault for this request of ``operation``, if any, counting it down."""
        queue = self._queues.get(operation)
        if not queue:
            return None
        fault = queue[0]
        if fault.count is not None:
            if fault.count <= 1:
                queue.popleft()
            else:
                queue[0] = replace(fault, count=fault.count - 1)
        return fault

    def _check(self, fault: Fault) -> None:
        if fault.operation not in self._operations:
            known = ", ".join(sorted(self._operations))
            raise ValueError(f"unknown operation {fault.operation!r}; known: {known}")
        _check_types(fault)
        if fault.count is not None and fault.count < 1:
            raise ValueError("count must be at least 1, or None for every request")
        if fault.latency < 0:
            raise ValueError("latency must not be negative")
        if fault.status is not None and not 200 <= fault.status <= 599:
            raise ValueError("status must be an HTTP status code")
        if fault.truncate_at is not None and fault.truncate_at < 0:
            raise ValueError("truncate_at must not be negative")
        if fault.huge_body is not None and fault.huge_body < 1:
            raise ValueError("huge_body must be at least 1 byte")
        answers = [
            fault.drop_connection,
            fault.hang,
            fault.huge_body is not None,
            fault.body is not None or fault.error_code is not None,
        ]
        if sum(answers) > 1:
            raise ValueError(
                "a fault answers one way: drop_connection, hang, huge_body, or body/error_code"
            )
        if fault.truncate_at is not None and (
            fault.drop_connection or fault.hang or fault.huge_body is not None
        ):
            raise ValueError("truncate_at cuts a body, an error or the real answer")


def _check_types(fault: Fault) -> None:
    expected: dict[str, tuple[type, ...]] = {
        "error_code": (str, type(None)),
        "status": (int, type(None)),
        "message": (str, type(None)),
        "count": (int, type(None)),
        "latency": (int, float),
        "drop_connection": (bool,),
        "body": (bytes, type(None)),
        "truncate_at": (int, type(None)),
        "huge_body": (int, type(None)),
        "hang": (bool,),
    }
    for name, types in expected.items():
        value = getattr(fault, name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"fault field {name} has the wrong type")


Answer = Callable[[], Awaitable[web.StreamResponse]]


async def apply_fault(
    fault: Fault,
    request: web.Request,
    error_class: type[AwsError],
    request_id: str,
    answer: Answer,
) -> web.StreamResponse:
    """Act out ``fault``; ``answer`` runs the operation as usual."""
    if fault.latency:
        await asyncio.sleep(fault.latency)
    if fault.drop_connection:
        return _drop(request)
    if fault.hang:
        await _until_client_gives_up(request)
        return _drop(request)
    if fault.huge_body is not None:
        return await _stream_huge(request, fault, error_class, request_id)
    response: web.StreamResponse
    if fault.body is not None:
        response = web.Response(
            status=fault.status or 200, body=fault.body, content_type=error_class.CONTENT_TYPE
        )
    elif fault.answers_as_usual:
        response = await answer()
    else:
        response = error_class.injected(fault.error_code, fault.status, fault.message).response(
            request_id
        )
    if fault.truncate_at is None:
        return response
    return await _truncate(request, response, fault.truncate_at, request_id)


def _drop(request: web.Request) -> web.StreamResponse:
    # Closing the transport before the handler returns makes aiohttp discard the
    # response: the client sees the connection end with no status line at all.
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


async def _until_client_gives_up(request: web.Request) -> None:
    # aiohttp does not cancel a handler whose client went away; its transport says so.
    while (transport := request.transport) is not None and not transport.is_closing():  # noqa: ASYNC110  # polling the transport is the only way to see the client leave
        await asyncio.sleep(HANG_POLL_SECONDS)


async def _truncate(
    request: web.Request, whole: web.StreamResponse, keep: int, request_id: str
) -> web.StreamResponse:
    """``whole`` under its full Content-Length, but only its first ``keep`` bytes, then close."""
    if not isinstance(whole, web.Response) or not isinstance(whole.body, bytes):
        raise TypeError("only a complete answer can be truncated")
    body = whole.body
    cut = web.StreamResponse(status=whole.status, headers=whole.headers)
    cut.headers.setdefault(REQUEST_ID_HEADER, request_id)
    cut.content_length = len(body)
    await cut.prepare(request)
    await cut.write(body[:keep])
    return _drop(request)


async def _stream_huge(
    request: web.Request, fault: Fault, error_class: type[AwsError], request_id: str
) -> web.StreamResponse:
    """``fault.huge_body`` bytes of one padded JSON object (XML element), chunk by chunk."""
    xml = "xml" in error_class.CONTENT_TYPE
    head, tail = (b"<Padding>", b"</Padding>") if xml else (b'{"padding": "', b'"}')
    response = web.StreamResponse(
        status=fault.status or 200, headers={REQUEST_ID_HEADER: request_id}
    )
    response.content_type = error_class.CONTENT_TYPE
    response.enable_chunked_encoding()
    await response.prepare(request)
    filler = b"x" * CHUNK_BYTES
    remaining = max(fault.huge_body or 0, len(head) + len(tail)) - len(head) - len(tail)
    try:
        await response.write(head)
        while remaining > 0:
            chunk = filler[: min(remaining, CHUNK_BYTES)]
            await response.write(chunk)
            remaining -= len(chunk)
        await response.write(tail)
        await response.write_eof()
    except ConnectionError:  # the client stopped reading and closed: that is its right
        return _drop(request)
    return response
