"""One planner on wall-clock deadlines: it decides when every kept thing has its next turn.

Sessions and profiles are *jobs*: each says when it next has work
(:meth:`Job.wake`, a wall-clock instant, or ``None`` while only an outside
event can help) and does that work in :meth:`Job.turn`. One task sleeps until
the earliest wake and starts the turns that are due; a job is re-planned after
each turn and whenever something about it changes (:meth:`Planner.plan`: a
cache file changed, a request came, a login landed). Whatever the number of
sessions and profiles, an idle daemon has one sleeping task.

The sleep is the clock's (:meth:`credd.clock.Clock.sleep_until`), which
re-reads the wall clock in bounded chunks: asyncio's monotonic clock stops
during a suspend, and a laptop that wakes past a deadline must not keep
sleeping (design.md rule 5).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import anyio
import anyio.abc
import structlog

from credd.clock import Clock
from credd.errors import InternalFailure

log = structlog.get_logger(__name__)


class Job(Protocol):
    """Anything the planner drives."""

    @property
    def name(self) -> str: ...

    def wake(self, now: datetime) -> datetime | None:
        """When the job next has work; ``None`` while it waits for an outside event."""
        ...

    async def turn(self) -> None:
        """Do the work that is due; failures are the job's to record, never raised."""
        ...


class Planner:
    """The heap of next turns, and the one task that keeps them."""

    def __init__(
        self,
        clock: Clock,
        task_group: anyio.abc.TaskGroup,
        *,
        after_turn: Callable[[], None] = lambda: None,
    ) -> None:
        self._clock = clock
        self._task_group = task_group
        #: told after every turn: what a status line shows may have changed
        self._after_turn = after_turn
        self._heap: list[tuple[datetime, int, Job]] = []
        #: the number of each job's live entry in the heap; older entries are skipped
        self._entries: dict[Job, int] = {}
        self._numbers = itertools.count()
        #: jobs whose turn is running: planned again when it ends
        self._busy: set[Job] = set()
        #: jobs dropped while their turn ran: not planned again when it ends
        self._dropped: set[Job] = set()
        self._sleep: anyio.CancelScope | None = None
        self._sleep_until: datetime | None = None

    def plan(self, job: Job) -> datetime | None:
        """Work out ``job``'s next wake and plan it; returns it (``None``: nothing planned)."""
        if job in self._busy:
            return None  # planned when its turn ends
        when = job.wake(self._clock.now())
        if when is None:
            self._entries.pop(job, None)
            return None
        number = self._entries[job] = next(self._numbers)
        heapq.heappush(self._heap, (when, number, job))
        if self._sleep is not None and (self._sleep_until is None or when < self._sleep_until):
            self._sleep.cancel()  # the task sleeps past it: wake it to look again
        return when

    def drop(self, job: Job) -> None:
        """Plan nothing more for ``job`` (a reload removed it), even if its turn is running."""
        self._entries.pop(job, None)
        if job in self._busy:
            self._dropped.add(job)

    def planned(self, job: Job) -> bool:
        return job in self._entries or job in self._busy

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start the turns that are due, then sleep until the next; until cancelled."""
        task_status.started()
        while True:
            now = self._clock.now()
            while self._heap and self._heap[0][0] <= now:
                _when, number, job = heapq.heappop(self._heap)
                if self._entries.get(job) != number:
                    continue  # planned again since, or dropped
                del self._entries[job]
                self._busy.add(job)
                self._task_group.start_soon(self._turn, job, name=f"turn:{job.name}")
            with anyio.CancelScope() as self._sleep:
                self._sleep_until = self._heap[0][0] if self._heap else None
                if self._sleep_until is None:
                    await anyio.sleep_forever()
                else:
                    await self._clock.sleep_until(self._sleep_until)
            self._sleep = None
            self._sleep_until = None

    async def _turn(self, job: Job) -> None:
        try:
            await job.turn()
        except Exception as exc:  # a bug: logged and planned again, never the daemon's end
            # no traceback: an exception's message may quote a token
            log.error("turn_bug", job=job.name, error=InternalFailure(exc).message)  # noqa: TRY400
        finally:
            self._busy.discard(job)
            if job in self._dropped:
                self._dropped.discard(job)
            else:
                self.plan(job)
            self._after_turn()
