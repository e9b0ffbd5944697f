"""The plumbing every operation shares: request ids, call counting, faults, errors.

An :class:`Operation` is a named handler plus the error class of its service.
:func:`invoke` is the only way a request reaches a handler: it counts the call
(``emu.calls``: every request that reached the operation, including those a
fault then answers; ``emu.peak_in_flight``: the most answered at once), acts
out a queued fault, and turns a raised :class:`~.errors.AwsError` into that
service's error response. The middleware
puts ``x-amzn-RequestId`` on every response (protocols.md §1).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

from aiohttp import web

from .errors import REQUEST_ID_HEADER, AwsError
from .faults import apply_fault
from .runtime import Runtime

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID: Final = web.RequestKey("credd.emulator.request_id", str)


@dataclass(frozen=True)
class Operation:
    name: str
    errors: type[AwsError]
    handler: Handler


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[REQUEST_ID] = str(uuid.uuid4())
    response = await handler(request)
    if not response.prepared:
        response.headers.setdefault(REQUEST_ID_HEADER, request[REQUEST_ID])
    return response


async def invoke(
    operation: Operation, request: web.Request, runtime: Runtime
) -> web.StreamResponse:
    runtime.calls[operation.name] += 1
    request_id = request[REQUEST_ID]
    # Read (and cache) the body now: a client that gives up during a fault's
    # latency must not make the handler fail on a half-read request later.
    await request.read()

    async def answer() -> web.StreamResponse:
        try:
            return await operation.handler(request)
        except AwsError as exc:
            return exc.response(request_id)

    name = operation.name
    runtime.in_flight[name] += 1
    runtime.peak_in_flight[name] = max(runtime.peak_in_flight[name], runtime.in_flight[name])
    try:
        fault = runtime.faults.take(name)
        if fault is not None:
            return await apply_fault(fault, request, operation.errors, request_id, answer)
        return await answer()
    finally:
        runtime.in_flight[name] -= 1


def json_ok(members: dict[str, object]) -> web.Response:
    """A rest-json success: HTTP 200 with the output members (protocols.md §1)."""
    return web.Response(body=json.dumps(members).encode(), content_type="application/json")


def endpoint(operation: Operation, runtime: Runtime) -> Handler:
    """An aiohttp handler for a route that always means ``operation``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return await invoke(operation, request, runtime)

    return handle


class Service(Protocol):
    """One emulated API (or the browser pages): its operations and its routes."""

    @property
    def operations(self) -> tuple[Operation, ...]: ...

    def routes(self) -> list[web.RouteDef]: ...
