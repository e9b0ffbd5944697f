"""The record every kept thing shares: errors classified once, backoff on every fault, 15 s.

:mod:`credd.engine.record` on its own, with a fixed draw and instants chosen
by the test: no clock, no I/O, nothing left to luck.
"""

from __future__ import annotations

import errno
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from credd.engine.record import MIN_SERVE_SECONDS, Fault, Record, classify
from credd.engine.schedule import BACKOFF_CAP_SECONDS
from credd.errors import (
    AssertionRequired,
    ConfigError,
    CreddError,
    InternalFailure,
    LoginRequired,
    UpstreamError,
)
from credd.files.store import CacheChanged, CacheCorrupt, CacheWriteError
from credd.secret import Secret

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
OWNER = "my-sso"
CACHE = Path("/home/user/.aws/sso/cache/token.json")


def fixed(value: float = 0.5) -> float:
    return value


def record(name: str = OWNER) -> Record[str]:
    return Record(name, fixed)


def internal_failure() -> InternalFailure:
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        return InternalFailure(exc)


#: every kind of error a renewal meets, and what it means for the record of ``OWNER``
KINDS: list[tuple[str, CreddError, Fault]] = [
    (
        "own session dead",
        LoginRequired(OWNER, "the refresh token was refused (InvalidGrantException)"),
        Fault.DEAD,
    ),
    ("another session dead", LoginRequired("other-sso", "logged out"), Fault.ELSEWHERE),
    ("assertion refused", AssertionRequired(OWNER, "the IdP's JWT expired"), Fault.REFUSED),
    ("configuration", ConfigError("sso_region is not a region"), Fault.REFUSED),
    (
        "refused upstream",
        UpstreamError("AccessDenied", aws_code="AccessDeniedException", transient=False),
        Fault.REFUSED,
    ),
    ("outage", UpstreamError("CreateToken answered 503", status=503), Fault.TRANSIENT),
    ("throttled", UpstreamError("slow down", aws_code="ThrottlingException"), Fault.TRANSIENT),
    ("disk full", CacheWriteError(CACHE, OSError(errno.ENOSPC, "No space")), Fault.TRANSIENT),
    ("read-only", CacheWriteError(CACHE, OSError(errno.EROFS, "Read-only")), Fault.TRANSIENT),
    ("torn file", CacheCorrupt(CACHE, "not valid JSON"), Fault.TRANSIENT),
    ("another writer", CacheChanged(CACHE), Fault.TRANSIENT),
    ("a bug", internal_failure(), Fault.TRANSIENT),
    ("anything else", CreddError("something odd"), Fault.TRANSIENT),
]


@pytest.mark.parametrize(
    ("error", "fault"), [(e, f) for _, e, f in KINDS], ids=[k for k, _, _ in KINDS]
)
def test_every_kind_of_error_is_classified_once_here(error: CreddError, fault: Fault) -> None:
    assert classify(error, OWNER) is fault


def test_a_login_required_is_dead_only_for_the_session_it_names() -> None:
    error = LoginRequired(OWNER, "logged out")
    assert classify(error, OWNER) is Fault.DEAD
    # the same error, seen by a profile or a trusted-identity session sourced from it
    assert classify(error, "profile dev") is Fault.ELSEWHERE
    assert classify(error, "analyst") is Fault.ELSEWHERE


BACKING_OFF = [
    ("transient", UpstreamError("CreateToken answered 500"), Fault.TRANSIENT),
    ("refused", ConfigError("no such role"), Fault.REFUSED),
    ("elsewhere", LoginRequired("other-sso", "logged out"), Fault.ELSEWHERE),
]


@pytest.mark.parametrize(
    ("error", "fault"), [(e, f) for _, e, f in BACKING_OFF], ids=[k for k, _, _ in BACKING_OFF]
)
def test_every_fault_but_dead_backs_off_growing_and_capped(error: CreddError, fault: Fault) -> None:
    books = record()
    delays: list[float] = []
    for failures in range(1, 16):
        books.failed(error, T0)
        assert books.fault is fault
        assert books.failures == failures
        assert books.retry_at is not None, f"{fault} must back off, not park"
        delays.append((books.retry_at - T0).total_seconds())
        # nothing is retried before its backoff is over
        assert not books.retry_due(T0)
        assert not books.retry_due(books.retry_at - timedelta(milliseconds=1))
        assert books.retry_due(books.retry_at)

    assert delays[0] > 0
    capped = delays.index(max(delays))
    assert capped > 0
    assert all(a < b for a, b in itertools.pairwise(delays[: capped + 1])), delays
    assert max(delays) <= BACKOFF_CAP_SECONDS
    assert delays[capped:] == [delays[capped]] * (len(delays) - capped), "the cap holds"


@pytest.mark.parametrize(
    ("error", "fault"), [(e, f) for _, e, f in BACKING_OFF], ids=[k for k, _, _ in BACKING_OFF]
)
def test_a_backoff_never_sleeps_past_the_last_servable_moment(
    error: CreddError, fault: Fault
) -> None:
    books = record()
    expires = T0 + timedelta(seconds=60)
    books.hold("held", expires)
    serve_until = expires - timedelta(seconds=MIN_SERVE_SECONDS)
    assert books.serve_until == serve_until
    retries = []
    for _ in range(12):
        books.failed(error, T0)
        assert books.retry_at is not None
        retries.append(books.retry_at)
    assert all(T0 < at <= serve_until for at in retries), retries
    # the backoff grew into the limit rather than past it: the last try comes while the
    # held value may still be served
    assert retries[-1] == serve_until


def test_a_dead_session_is_parked_until_a_login() -> None:
    books = record()
    books.hold("held", T0 + timedelta(hours=1))
    books.failed(LoginRequired(OWNER, "refresh token refused"), T0)
    assert books.fault is Fault.DEAD
    assert books.parked
    assert books.retry_at is None
    assert not books.retry_due(T0 + timedelta(days=365)), "no backoff ends a dead session"
    # failing again changes nothing: no count, no retry time
    books.failed(LoginRequired(OWNER, "still refused"), T0)
    assert books.retry_at is None
    books.succeeded()
    assert not books.parked
    assert books.retry_due(T0)


def test_failed_says_whether_the_failure_is_a_new_kind() -> None:
    books = record()
    assert books.failed(UpstreamError("500"), T0) is True
    assert books.failed(UpstreamError("503"), T0) is False, "the same kind: not warned twice"
    assert books.failed(ConfigError("role"), T0) is True
    books.succeeded()
    assert books.failed(ConfigError("role"), T0) is True, "after a success, news again"


def test_success_clears_the_books() -> None:
    books = record()
    for _ in range(5):
        books.failed(UpstreamError("500"), T0)
    books.succeeded()
    assert (books.problem, books.fault, books.failures, books.retry_at) == (None, None, 0, None)
    books.failed(UpstreamError("500"), T0)
    first = record()
    first.failed(UpstreamError("500"), T0)
    assert books.retry_at == first.retry_at, "the backoff starts over from the first step"


def test_a_failure_blamed_elsewhere_is_due_as_soon_as_that_record_holds_a_new_value() -> None:
    session: Record[object] = Record(OWNER, fixed)
    profile: Record[object] = Record("profile dev", fixed)
    session.failed(LoginRequired(OWNER, "logged out"), T0)

    profile.failed(LoginRequired(OWNER, "logged out"), T0, waits_on=session)
    assert profile.fault is Fault.ELSEWHERE
    assert not profile.other_changed()
    assert not profile.retry_due(T0), "still backing off: the session has not changed"

    # the session failing again is no news for the profile: its value is the same
    session.failed(LoginRequired(OWNER, "still logged out"), T0)
    assert not profile.retry_due(T0)

    session.hold("a new login", T0 + timedelta(hours=1))  # a login landed
    assert profile.other_changed()
    assert profile.retry_due(T0), "due at once, the backoff not waited out"


def test_a_failure_blamed_elsewhere_waits_on_the_generation_it_failed_at() -> None:
    session: Record[object] = Record(OWNER, fixed)
    profile: Record[object] = Record("profile dev", fixed)
    session.hold("first login", T0 + timedelta(hours=1))
    session.hold("second login", T0 + timedelta(hours=1))
    # failed after both: neither is news
    profile.failed(LoginRequired(OWNER, "refused"), T0, waits_on=session)
    assert not profile.retry_due(T0)
    session.hold(None, None)  # a logout is a change too
    assert profile.retry_due(T0)


def test_held_values_are_served_until_15_seconds_before_expiry() -> None:
    assert MIN_SERVE_SECONDS == 15
    books = record()
    expires = T0 + timedelta(hours=1)
    books.hold("keys", expires)
    assert books.usable(T0) == "keys"
    assert books.usable(expires - timedelta(seconds=15, microseconds=1)) == "keys"
    assert books.usable(expires - timedelta(seconds=15)) is None
    assert books.usable(expires) is None
    # an outage across the renewal point: still served from 30 s down to 15 s
    assert books.usable(expires - timedelta(seconds=29)) == "keys"
    assert books.usable(expires - timedelta(seconds=16)) == "keys"


def test_nothing_held_is_never_usable() -> None:
    books = record()
    assert books.usable(T0) is None
    books.hold("keys", T0 + timedelta(hours=1))
    books.hold(None, None)
    assert books.usable(T0) is None
    assert books.serve_until is None


def test_every_value_held_is_a_new_generation() -> None:
    books = record()
    seen = [books.generation]
    for value in ("a", "a", None):
        books.hold(value, T0 + timedelta(hours=1) if value else None)
        seen.append(books.generation)
    assert seen == sorted(set(seen)), "the same value again is still a new generation"


def test_the_jitter_is_drawn_once_per_value() -> None:
    draws = iter([0.1, 0.2, 0.3, 0.4])
    books: Record[str] = Record(OWNER, lambda: next(draws))
    assert books.jitter == 0.1
    books.hold("a", T0 + timedelta(hours=1))
    assert books.jitter == 0.2
    assert books.usable(T0) == "a"
    assert books.jitter == 0.2, "reading the value draws nothing"


@pytest.mark.parametrize("value", ["AKIASECRETVALUE", Secret("s3cr3t-refresh-token")])
def test_repr_never_shows_the_value(value: object) -> None:
    books: Record[object] = Record(OWNER, fixed)
    books.hold(value, T0 + timedelta(hours=1))
    books.failed(UpstreamError("CreateToken answered 500"), T0)
    shown = repr(books) + str(books) + f"{books!r}"
    assert OWNER in shown
    for secret in ("AKIASECRETVALUE", "s3cr3t-refresh-token"):
        assert secret not in shown
