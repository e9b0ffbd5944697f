"""Single-flight: at most one run of a piece of work at a time, every caller joins it.

The work runs in a task group owned by the daemon, never in the caller's task:
a caller that gives up (an HTTP request past its deadline) stops waiting
without cancelling a token exchange half-way through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskGroup

from credd.errors import CreddError

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[T]):
    def __init__(self, task_group: TaskGroup, work: Callable[[], Awaitable[T]]) -> None:
        self._task_group = task_group
        self._work = work
        self._current: _Flight[T] | None = None

    @property
    def in_flight(self) -> bool:
        return self._current is not None

    async def run(self) -> T:
        """Start the work unless it is running already, then wait for its outcome."""
        flight = self._current
        if flight is None:
            flight = self._current = _Flight()
            self._task_group.start_soon(self._drive, flight)
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.result  # type: ignore[return-value]  # set whenever error is None

    async def _drive(self, flight: _Flight[T]) -> None:
        try:
            flight.result = await self._work()
        except Exception as exc:  # handed to every waiter, who decides what it means
            flight.error = exc
        except BaseException:  # cancelled (the daemon is stopping): waiters must not hang
            flight.error = CreddError("credd is stopping", hint="try again in a moment")
            raise
        finally:
            self._current = None
            flight.done.set()
