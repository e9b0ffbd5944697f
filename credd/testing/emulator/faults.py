"""Fault injection: make the next requests of one operation slow, broken or failing.

A :class:`Fault` is queued per operation name and consumed by the requests that
reach that operation, first in, first out; ``count=None`` never runs out.
A fault may delay the request (``latency``, in real seconds) and then do one of:

* answer with an AWS error (``error_code`` / ``status``), built by the
  operation's own error class, so it is exactly what the service would send;
* answer with ``body`` verbatim (garbage, truncated JSON) and ``status`` (200);
* close the connection without any answer (``drop_connection``);
* nothing else: with only ``latency`` the request then proceeds normally.

A fault that names no effect at all is an error: the operation's default fault
code (``InternalServerException`` 500, STS ``InternalFailure`` 500).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, cast

from aiohttp import web

from .errors import AwsError


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

    @property
    def is_latency_only(self) -> bool:
        return (
            self.latency > 0
            and self.error_code is None
            and self.status is None
            and self.body is None
            and not self.drop_connection
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
    ) -> Fault:
        fault = Fault(operation, error_code, status, message, count, latency, drop_connection, body)
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


def _check_types(fault: Fault) -> None:
    expected: dict[str, tuple[type, ...]] = {
        "error_code": (str, type(None)),
        "status": (int, type(None)),
        "message": (str, type(None)),
        "count": (int, type(None)),
        "latency": (int, float),
        "drop_connection": (bool,),
        "body": (bytes, type(None)),
    }
    for name, types in expected.items():
        value = getattr(fault, name)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise ValueError(f"fault field {name} has the wrong type")


async def apply_fault(
    fault: Fault, request: web.Request, error_class: type[AwsError], request_id: str
) -> web.StreamResponse | None:
    """Act out ``fault``; ``None`` means: now run the operation as usual."""
    if fault.latency:
        await asyncio.sleep(fault.latency)
    if fault.is_latency_only:
        return None
    if fault.drop_connection:
        return _drop(request)
    if fault.body is not None:
        return web.Response(
            status=fault.status or 200, body=fault.body, content_type=error_class.CONTENT_TYPE
        )
    return error_class.injected(fault.error_code, fault.status, fault.message).response(request_id)


def _drop(request: web.Request) -> web.StreamResponse:
    # Closing the transport before the handler returns makes aiohttp discard the
    # response: the client sees the connection end with no status line at all.
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)
