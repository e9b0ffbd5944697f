"""One record for everything credd keeps alive: a session's access token, a profile's credentials.

Whatever the kind, the books are the same (the EKS Pod Identity Agent's
cache entry is the model): the value held and until when it may be served,
the problem of the last attempt, how that problem is classified, the failures
in a row, and when to try again. Errors are classified here, once
(:func:`classify`), and every classification backs off: no fault, on any
path, makes credd call upstream more than about once a second (issue 10).

A record whose fault lies with another record (a profile whose session needs
a login, a trusted-identity session whose signer is refused) remembers that
record's *generation* when it failed: as soon as the other one holds a new
value (a login landed), it is due again, without waiting out its backoff.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Generic, TypeVar

from credd.engine.schedule import retry_time
from credd.errors import AssertionRequired, ConfigError, CreddError, LoginRequired, UpstreamError

#: held values this close to expiry are not served: the caller could not use them. The EKS
#: Pod Identity Agent serves down to 15 s; so does credd (issue 10, item 7).
MIN_SERVE_SECONDS = 15.0
_MIN_SERVE = timedelta(seconds=MIN_SERVE_SECONDS)

T = TypeVar("T")


class Fault(StrEnum):
    """What a failure says about the record, and so what is done about it."""

    #: an outage, throttling, garbage, a full disk: keep serving, retry with backoff
    TRANSIENT = "transient"
    #: refused for a reason retrying alone will not fix (a permission, the configuration)
    REFUSED = "refused"
    #: the record's own session needs a new login: nothing is retried until one lands
    DEAD = "dead"
    #: another record is at fault (its session needs a login): back off, and try again
    #: as soon as that one changes
    ELSEWHERE = "elsewhere"


def classify(error: CreddError, owner: str) -> Fault:
    """What ``error``, raised while renewing ``owner``, means for ``owner``."""
    if isinstance(error, LoginRequired):
        return Fault.DEAD if error.session == owner else Fault.ELSEWHERE
    if isinstance(error, AssertionRequired | ConfigError):
        return Fault.REFUSED
    if isinstance(error, UpstreamError) and not error.transient:
        return Fault.REFUSED
    return Fault.TRANSIENT


class Record(Generic[T]):
    """The books of one thing kept alive."""

    __slots__ = (
        "_draw",
        "_serve_until",
        "_waits_on",
        "failures",
        "fault",
        "generation",
        "jitter",
        "name",
        "problem",
        "retry_at",
        "value",
    )

    def __init__(self, name: str, draw: Callable[[], float]) -> None:
        self.name = name
        self._draw = draw
        self.value: T | None = None
        self._serve_until: datetime | None = None
        #: counts the values held: whoever waits on this record sees it move
        self.generation = 0
        #: where in its jitter window this value's renewal falls, drawn once per value
        self.jitter = draw()
        self.problem: CreddError | None = None
        self.fault: Fault | None = None
        self.failures = 0
        self.retry_at: datetime | None = None
        self._waits_on: tuple[Record[object], int] | None = None

    def __repr__(self) -> str:  # never the value: it is a secret
        return f"Record({self.name!r}, generation={self.generation}, fault={self.fault})"

    # ------------------------------------------------------------------ the value

    def hold(self, value: T | None, expires_at: datetime | None) -> None:
        """Hold ``value``, valid until ``expires_at`` (``None`` with it: nothing held)."""
        self.value = value
        # worked out once per value, not once per request
        self._serve_until = expires_at - _MIN_SERVE if value is not None and expires_at else None
        self.generation += 1
        self.jitter = self._draw()

    def usable(self, now: datetime) -> T | None:
        """The value, while it may still be served; else ``None``."""
        until = self._serve_until
        return self.value if until is not None and now < until else None

    @property
    def serve_until(self) -> datetime | None:
        return self._serve_until

    # ------------------------------------------------------------------ outcomes

    def succeeded(self) -> None:
        self.problem = None
        self.fault = None
        self.failures = 0
        self.retry_at = None
        self._waits_on = None

    def failed(
        self,
        error: CreddError,
        now: datetime,
        *,
        fault: Fault | None = None,
        waits_on: Record[object] | None = None,
    ) -> bool:
        """Record a failure; whether it is a new kind of failure (worth one warning).

        Every fault but :attr:`Fault.DEAD` backs off (capped, jittered), never
        past the moment the held value stops being servable; a dead record
        waits for a new login, which a change of its cache brings.
        """
        first = type(self.problem) is not type(error) or self.problem is None
        self.problem = error
        self.fault = fault or classify(error, self.name)
        self._waits_on = (waits_on, waits_on.generation) if waits_on is not None else None
        if self.fault is Fault.DEAD:
            self.retry_at = None
            return first
        self.retry_at = retry_time(
            now, self.failures, draw=self._draw(), not_after=self._serve_until
        )
        self.failures += 1
        return first

    @property
    def parked(self) -> bool:
        """Only a new login brings it back: nothing is retried until its cache changes."""
        return self.fault is Fault.DEAD

    def other_changed(self) -> bool:
        """Whether the record this one's fault lies with holds a new value since."""
        waits = self._waits_on
        return waits is not None and waits[0].generation != waits[1]

    def retry_due(self, now: datetime) -> bool:
        """Whether trying again now is allowed: no problem, the backoff is over, or the
        record at fault has changed since."""
        if self.problem is None or self.other_changed():
            return True
        if self.retry_at is None:
            return False  # parked
        return now >= self.retry_at
