"""The one source of "now" and of sleeping.

Expiries are wall-clock instants (aware UTC datetimes). asyncio sleeps on the
monotonic clock, which stops while a laptop is suspended, so every long wait
here sleeps in bounded chunks and re-reads the wall clock: a timer that fires
late, or a suspend that lasts past a deadline, never leaves a loop asleep past
the instant it was waiting for. Tests swap in :class:`ManualClock`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

import anyio


class Clock(Protocol):
    """What the rest of credd knows of time."""

    def now(self) -> datetime:
        """The current wall-clock time, timezone-aware, in UTC."""
        ...

    async def sleep_until(self, deadline: datetime) -> None:
        """Return once the wall clock has reached ``deadline``."""
        ...


class SystemClock:
    """The real wall clock, slept on in chunks so that suspend cannot fool it."""

    def __init__(self, max_chunk_seconds: float = 60.0) -> None:
        # A minute: an idle daemon wakes at most once a minute (issue 10's idle goal),
        # and a laptop that resumed past a deadline notices within a minute.
        self._max_chunk = max_chunk_seconds

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, deadline: datetime) -> None:
        # Polling on purpose: the wall clock is the event (rule 5 of design.md).
        while (remaining := (deadline - self.now()).total_seconds()) > 0:  # noqa: ASYNC110
            await anyio.sleep(min(remaining, self._max_chunk))


class ManualClock:
    """A clock that moves only when told to; sleepers wake as soon as it passes them."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = (start or datetime.now(UTC)).astimezone(UTC)
        # Made on first use: an anyio.Event needs a running event loop.
        self._moved: anyio.Event | None = None

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward, like a suspend or a long wait would."""
        self.set(self._now + timedelta(seconds=seconds))

    def set(self, when: datetime) -> None:
        self._now = when.astimezone(UTC)
        moved, self._moved = self._moved, None
        if moved is not None:
            moved.set()

    async def sleep_until(self, deadline: datetime) -> None:
        while self._now < deadline:
            if self._moved is None:
                self._moved = anyio.Event()
            await self._moved.wait()


async def sleep_for(clock: Clock, seconds: float) -> None:
    """Sleep ``seconds`` of wall-clock time on ``clock``."""
    await clock.sleep_until(clock.now() + timedelta(seconds=seconds))
