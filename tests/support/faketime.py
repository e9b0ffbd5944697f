"""A real ``credd serve`` on the test's clock: libfaketime holds its wall clock at a ManualClock.

The emulator runs in the test's process on a
:class:`~credd.clock.ManualClock`; the daemon, a process of its own, reads its
wall clock through libfaketime (Debian ``faketime``; ``.ci/run`` installs it)
from a file that holds that same instant, re-read on every call
(``FAKETIME_NO_CACHE=1``). The instant is absolute, so the daemon's clock
stands still until the test moves both clocks with :meth:`FrozenClock.set` or
:meth:`FrozenClock.advance`: a renewal comes due, a token expires, a backoff
ends exactly when the test says, and never while the test looks away.

``DONT_FAKE_MONOTONIC=1``: asyncio's timers run on the real monotonic clock, as
they do when a laptop resumes (see tests/hostile/test_suspend.py). The cost:
the daemon's planner sleeps in bounded chunks of real time and notices a jump
of the wall clock at the end of its current chunk, so a state the *planner*
brings about after a jump is waited for with :data:`PLANNER_LAG`; what a
request brings about is immediate. ``NO_FAKE_STAT=1``: file times stay real.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from credd.clock import ManualClock
from credd.files.store import atomic_write
from tests.support.process import Daemon, serving
from tests.support.world import World

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
MISSING = f"libfaketime is not installed ({LIBFAKETIME}): apt-get install faketime (.ci/run does)"
#: how long the daemon's planner may take to notice that the faked clock jumped: the end
#: of its current sleep, at most one chunk of credd.clock.SystemClock (60 s), plus a margin
#: for a loaded machine; much less while it waits for anything due soon
PLANNER_LAG = 90.0


class FrozenClock:
    """The emulator's ManualClock, and the daemon's wall clock held at the same instant."""

    def __init__(self, clock: ManualClock, timestamp_file: Path) -> None:
        self.clock = clock
        self._file = timestamp_file
        # libfaketime's absolute times have whole seconds; so does everything the test sets
        self.set(clock.now().replace(microsecond=0))

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        """``env`` with libfaketime preloaded, reading the instant from the file."""
        return {
            **env,
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self._file),
            "FAKETIME_NO_CACHE": "1",
            "DONT_FAKE_MONOTONIC": "1",
            "NO_FAKE_STAT": "1",
            # an absolute faked time is read in the local zone: make that UTC
            "TZ": "UTC",
        }

    def now(self) -> datetime:
        return self.clock.now()

    def set(self, when: datetime) -> None:
        """Both clocks to ``when`` (whole seconds)."""
        when = when.astimezone(UTC)
        assert when.microsecond == 0, f"libfaketime takes whole seconds, not {when}"
        self.clock.set(when)
        # read on every call of the daemon's: written atomically, never half an instant
        atomic_write(self._file, f"{when:%Y-%m-%d %H:%M:%S}\n".encode("ascii"), mode=0o644)

    def advance(self, seconds: int) -> None:
        self.set(self.now() + timedelta(seconds=seconds))


@dataclass(kw_only=True)
class FrozenWorld(World):
    """The one World, whose ``credd serve`` runs on :attr:`frozen` (its CLI on the real clock)."""

    frozen: FrozenClock

    def serving(
        self, *args: str, name: str = "serve", listen: str | None = None
    ) -> AbstractAsyncContextManager[Daemon]:
        return serving(self.frozen.env(self.env), self.logs, *args, name=name, listen=listen)
