"""Pure timing decisions: when to renew, how long to back off. No I/O, no clock.

Every function takes ``now`` and a random draw in ``[0, 1)`` so tests can pin
them. Margins follow interface.md: a margin larger than half of a lifetime
(as far as credd knows it) is capped at half that lifetime.
"""

from __future__ import annotations

from datetime import datetime, timedelta

#: renewals are spread over up to this share of the margin, earlier never later
JITTER_SHARE = 0.1
JITTER_CAP_SECONDS = 120.0
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0


def renewal_time(
    *, lifetime_start: datetime, expires_at: datetime, margin_seconds: float, draw: float
) -> datetime:
    """When to renew something valid from ``lifetime_start`` until ``expires_at``."""
    lifetime = max((expires_at - lifetime_start).total_seconds(), 0.0)
    margin = min(margin_seconds, lifetime / 2)
    jitter = min(margin * JITTER_SHARE, JITTER_CAP_SECONDS) * draw
    return expires_at - timedelta(seconds=margin + jitter)


def backoff_seconds(
    attempt: int,
    *,
    draw: float,
    base: float = BACKOFF_BASE_SECONDS,
    cap: float = BACKOFF_CAP_SECONDS,
) -> float:
    """Capped exponential backoff with "equal jitter": half fixed, half random."""
    ceiling = min(cap, base * float(2 ** min(attempt, 30)))
    return ceiling / 2 + draw * ceiling / 2


def retry_time(
    now: datetime, attempt: int, *, draw: float, not_after: datetime | None = None
) -> datetime:
    """When to try again after the ``attempt``-th failure in a row (0-based).

    ``not_after`` keeps a retry from sleeping past the moment something still
    held stops being valid.
    """
    at = now + timedelta(seconds=backoff_seconds(attempt, draw=draw))
    if not_after is not None and not_after > now:
        at = min(at, not_after)
    return at
