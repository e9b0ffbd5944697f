"""credd.engine.schedule: when to renew and how long to back off, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from credd.engine.schedule import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    JITTER_CAP_SECONDS,
    JITTER_SHARE,
    backoff_seconds,
    renewal_time,
    retry_time,
)

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
DRAWS = (0.0, 0.25, 0.5, 0.75, 0.999999)


def renew(lifetime: float, margin: float, draw: float) -> datetime:
    return renewal_time(
        lifetime_start=T0,
        expires_at=T0 + timedelta(seconds=lifetime),
        margin_seconds=margin,
        draw=draw,
    )


def test_renews_exactly_margin_before_expiry_without_jitter() -> None:
    expires = T0 + timedelta(hours=8)
    assert renew(8 * 3600, 1200, 0.0) == expires - timedelta(seconds=1200)


def test_margin_is_capped_at_half_the_lifetime() -> None:
    # a 15-minute token with a 20-minute margin renews at half-life, not before it was issued
    assert renew(900, 1200, 0.0) == T0 + timedelta(seconds=450)
    # exactly half is left alone
    assert renew(2400, 1200, 0.0) == T0 + timedelta(seconds=1200)


@pytest.mark.parametrize("draw", DRAWS)
@pytest.mark.parametrize(
    ("lifetime", "margin"),
    [(3600, 1200), (8 * 3600, 1200), (12 * 3600, 7200), (900, 1200), (60, 600), (10, 0)],
)
def test_jitter_only_earlier_and_bounded(lifetime: float, margin: float, draw: float) -> None:
    expires = T0 + timedelta(seconds=lifetime)
    effective_margin = min(margin, lifetime / 2)
    latest = expires - timedelta(seconds=effective_margin)
    bound = min(effective_margin * JITTER_SHARE, JITTER_CAP_SECONDS)
    at = renew(lifetime, margin, draw)
    assert at <= latest  # never later than the margin asks
    assert at >= latest - timedelta(seconds=bound)  # never earlier than the jitter allows
    assert at >= T0  # never before the thing was even valid
    assert at == latest - timedelta(seconds=bound * draw)


def test_jitter_is_capped_in_absolute_terms() -> None:
    # a 12-hour margin: 10% would be 72 minutes; the cap keeps it to two minutes
    lifetime, margin = 48 * 3600, 12 * 3600
    latest = T0 + timedelta(seconds=lifetime - margin)
    assert renew(lifetime, margin, 0.999999) > latest - timedelta(seconds=JITTER_CAP_SECONDS)
    assert renew(lifetime, margin, 0.5) == latest - timedelta(seconds=JITTER_CAP_SECONDS / 2)


def test_larger_draw_means_earlier_renewal() -> None:
    times = [renew(3600, 1200, draw) for draw in DRAWS]
    assert times == sorted(times, reverse=True)
    assert len(set(times)) == len(times)


def test_already_expired_lifetime_renews_at_expiry() -> None:
    # expiry before start: no lifetime to speak of, so no margin and no jitter
    at = renewal_time(
        lifetime_start=T0, expires_at=T0 - timedelta(seconds=5), margin_seconds=600, draw=0.9
    )
    assert at == T0 - timedelta(seconds=5)


def test_backoff_grows_then_caps() -> None:
    ceilings = [backoff_seconds(attempt, draw=0.999999) for attempt in range(15)]
    floors = [backoff_seconds(attempt, draw=0.0) for attempt in range(15)]
    assert floors[0] == BACKOFF_BASE_SECONDS / 2
    assert floors[1] == BACKOFF_BASE_SECONDS
    assert floors[2] == 2 * BACKOFF_BASE_SECONDS
    # non-decreasing, strictly growing until the cap
    assert floors == sorted(floors)
    assert ceilings == sorted(ceilings)
    assert floors[8] > floors[7]
    assert max(ceilings) < BACKOFF_CAP_SECONDS
    assert floors[-1] == BACKOFF_CAP_SECONDS / 2
    assert backoff_seconds(10_000, draw=0.0) == BACKOFF_CAP_SECONDS / 2


@pytest.mark.parametrize("draw", DRAWS)
@pytest.mark.parametrize("attempt", [0, 1, 2, 5, 8, 9, 20, 31, 1000])
def test_backoff_within_half_ceiling_and_ceiling(attempt: int, draw: float) -> None:
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)
    value = backoff_seconds(attempt, draw=draw)
    assert ceiling / 2 <= value <= ceiling


def test_backoff_custom_base_and_cap() -> None:
    assert backoff_seconds(0, draw=0.0, base=10, cap=25) == 5
    assert backoff_seconds(1, draw=0.0, base=10, cap=25) == 10
    assert backoff_seconds(2, draw=0.0, base=10, cap=25) == 12.5
    assert backoff_seconds(2, draw=0.5, base=10, cap=25) == 18.75


def test_retry_time_without_not_after() -> None:
    assert retry_time(T0, 3, draw=0.5) == T0 + timedelta(seconds=backoff_seconds(3, draw=0.5))


def test_retry_time_never_sleeps_past_not_after() -> None:
    not_after = T0 + timedelta(seconds=30)
    # attempt 10: the backoff would be minutes; the held credentials lapse in 30 s
    assert retry_time(T0, 10, draw=0.5, not_after=not_after) == not_after


def test_retry_time_before_a_far_not_after_keeps_the_backoff() -> None:
    not_after = T0 + timedelta(hours=1)
    expected = T0 + timedelta(seconds=backoff_seconds(4, draw=0.3))
    assert retry_time(T0, 4, draw=0.3, not_after=not_after) == expected


@pytest.mark.parametrize("offset", [0, -1, -3600])
def test_retry_time_ignores_a_not_after_already_past(offset: float) -> None:
    # nothing valid is held any more: retry on the backoff, never "in the past"
    not_after = T0 + timedelta(seconds=offset)
    at = retry_time(T0, 2, draw=0.0, not_after=not_after)
    assert at == T0 + timedelta(seconds=backoff_seconds(2, draw=0.0))
    assert at > T0
