"""What every kind of session does alike: adopt the cache, record outcomes, renew in a loop.

A session holds the token a sign-in left in a cache file and renews it ahead
of expiry. Whatever the kind, :class:`RenewingSession` keeps the books:

* **adoption**: the cache file's mtime is watched, and what another process
  wrote (a login, a logout, the AWS CLI's own refresh) is adopted, not fought;
* **outcomes**: every renewal runs through one single-flight and its outcome is
  recorded in one place. A failure that proves the session dead parks it until
  a login (one warning, one desktop notification); any other keeps what is held
  and retries with capped, jittered backoff, never past the held token's expiry
  (design.md rule 7);
* **the shield**: an exchange that may rotate a refresh token and the write that
  follows run shielded from cancellation under a deadline (:func:`shielded`,
  rule 8);
* **the loop**: :meth:`RenewingSession.run` renews at each wake and sleeps in
  short chunks on the wall clock, so a login elsewhere is picked up within
  seconds and a suspend never oversleeps (rule 5).

:class:`SharedCacheSession` adds what the sessions whose cache entry the AWS
CLI shares (Identity Center's ``aws sso login``, Sign-In's ``aws login``) have
in common: the refresh under the cross-process lock, their status and their
wakes. Only a login brings one of those back once its refresh token is dead.
"""

from __future__ import annotations

import abc
import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

import anyio
import anyio.abc
import structlog
from anyio.abc import TaskGroup

from credd.aws import AwsClients
from credd.clock import Clock
from credd.engine.flight import SingleFlight
from credd.engine.schedule import renewal_time, retry_time
from credd.errors import CreddError, InternalFailure, LoginRequired, UpstreamError
from credd.files.store import CacheCorrupt, TokenCache
from credd.secret import Secret
from credd.sessions import SessionState, SessionStatus

log = structlog.get_logger(__name__)

#: a token this close to expiry is not handed out: the call it is for must finish in time
MIN_SERVE_SECONDS = 30.0
#: how long a refresh (the exchange and the write after it) may run, shielded from cancellation
REFRESH_DEADLINE_SECONDS = 30.0
#: how often the loop looks at the cache file (a login, a logout, another tool's refresh)
CACHE_POLL_SECONDS = 2.0


class NamedSpec(Protocol):
    @property
    def name(self) -> str: ...


class HeldToken(Protocol):
    @property
    def expires_at(self) -> datetime: ...


SpecT = TypeVar("SpecT", bound=NamedSpec)
TokenT = TypeVar("TokenT", bound=HeldToken)


@dataclass(frozen=True)
class SessionContext:
    """What the daemon gives every session to renew with."""

    clock: Clock
    #: where renewals run, so that a caller giving up never cancels one half-way
    task_group: TaskGroup
    #: renew this long before expiry (capped at half a lifetime)
    margin_seconds: float
    #: told ``(name to log in, reason)`` once a session needs a login
    on_login_required: Callable[[str, str], None] | None = None
    #: a random draw in ``[0, 1)`` for jitter and backoff
    draw: Callable[[], float] = random.random


@contextlib.contextmanager
def shielded(deadline: float, what: str) -> Iterator[None]:
    """Shield the block from cancellation, under ``deadline`` seconds.

    Once an exchange has rotated a refresh token upstream, the new one must
    reach the disk whatever happens (design.md rule 8); a block that overruns
    is an :class:`UpstreamError` (``what`` took longer than the deadline).
    """
    try:
        with anyio.CancelScope(shield=True), anyio.fail_after(deadline):
            yield
    except TimeoutError as exc:
        raise UpstreamError(f"{what} took longer than {deadline:.0f} s") from exc


class RenewingSession(abc.ABC, Generic[SpecT, TokenT]):
    """The bookkeeping of one session: what it holds, what it last saw, how it is failing."""

    kind: str

    def __init__(self, spec: SpecT, context: SessionContext) -> None:
        self._spec = spec
        self.name = spec.name
        self._clock = context.clock
        self.margin_seconds = context.margin_seconds
        self._draw = context.draw
        self._on_login_required = context.on_login_required
        self._token: TokenT | None = None
        self._seen_mtime: float | None = None
        self._problem: CreddError | None = None
        self._failures = 0
        self._retry_at: datetime | None = None
        #: where in the jitter window this token's renewal falls, drawn once per token
        self._jitter = self._draw()
        #: an access token a consumer saw refused: renewed even if it looks valid
        self._rejected: Secret | None = None
        self._flight: SingleFlight[TokenT] = SingleFlight(context.task_group, self._renew_tracked)

    @property
    def spec(self) -> SpecT:
        return self._spec

    @property
    def login_name(self) -> str:
        """The name ``credd login`` takes to bring this session back."""
        return self.name

    @property
    def login_command(self) -> str:
        return f"credd login {self.login_name}"

    def _login_required(self, reason: str) -> LoginRequired:
        return LoginRequired(self.name, reason, action=self.login_command)

    @property
    def _parked(self) -> bool:
        """Only a new login brings it back: nothing is retried until one is adopted."""
        problem = self._problem
        return isinstance(problem, LoginRequired) and problem.session == self.name

    def _usable(self, now: datetime) -> TokenT | None:
        token = self._token
        if token and token.expires_at - now > timedelta(seconds=MIN_SERVE_SECONDS):
            return token
        return None

    # ------------------------------------------------------------------ the cache

    @abc.abstractmethod
    def _cache_mtime(self) -> float | None:
        """The modification time of the session's cache file; ``None`` while there is none."""

    @abc.abstractmethod
    def _read(self) -> TokenT | None:
        """What the cache holds; raises :class:`LoginRequired` when that cannot be used."""

    @staticmethod
    @abc.abstractmethod
    def _same(a: TokenT, b: TokenT) -> bool:
        """Whether ``a`` and ``b`` are the same token (a rewrite of the file need not change it)."""

    def _mark_seen(self) -> None:
        """The cache file as it is now has been read (or written) by this session."""
        self._seen_mtime = self._cache_mtime()

    def _adopt_if_changed(self, now: datetime) -> None:
        """Pick up what another process wrote: a login, a logout, another tool's refresh."""
        mtime = self._cache_mtime()
        if mtime == self._seen_mtime:
            return
        self._seen_mtime = mtime
        self._load(now)

    def sync(self) -> None:
        """Re-read the cache now (after ``credd login`` or ``credd logout`` in another process)."""
        self._mark_seen()
        self._load(self._clock.now())

    def _load(self, now: datetime) -> None:
        try:
            token = self._read()
        except LoginRequired as exc:
            self._set_token(None, now)
            self._problem = exc
            return
        if token is None:
            if self._token is not None:
                log.info("session_logged_out", session=self.name)
            self._nothing_cached(now)
            return
        if self._adopt(token, now):
            self._succeeded()
            log.info("session_token_adopted", session=self.name, expires_at=token.expires_at)

    @abc.abstractmethod
    def _nothing_cached(self, now: datetime) -> None:
        """The cache has no entry for the session (never logged in, or logged out)."""

    def _adopt(self, on_disk: TokenT, now: datetime) -> bool:
        """Hold ``on_disk`` unless it is what is held already; whether it was new."""
        if self._token is not None and self._same(on_disk, self._token):
            return False
        self._set_token(on_disk, now)
        return True

    def _set_token(self, token: TokenT | None, now: datetime, *, renewed: bool = False) -> None:
        """Hold ``token``: adopted from the cache, or ``renewed`` by this session just now."""
        self._token = token
        self._jitter = self._draw()
        if renewed:
            self._rejected = None

    # ------------------------------------------------------------------ outcomes

    @abc.abstractmethod
    async def _renew(self) -> TokenT:
        """One renewal; raises a :class:`CreddError` saying why it failed."""

    async def _renew_tracked(self) -> TokenT:
        """The single-flight's work: one renewal, its outcome recorded.

        A failure's backoff counts from when the attempt began: a clock that
        jumped while the call was out (a suspend) must not push the retry later.
        """
        began = self._clock.now()
        try:
            token = await self._renew()
        except CreddError as exc:
            self._fail(exc, began)
            raise
        except Exception as exc:
            failure = InternalFailure(exc)
            # no traceback: an exception's message may quote a token
            log.error("renewal_bug", session=self.spec.name, error=failure.message)  # noqa: TRY400
            self._fail(failure, began)
            raise failure from exc
        self._succeeded()
        return token

    def _succeeded(self) -> None:
        self._problem = None
        self._failures = 0
        self._retry_at = None

    def _fail(self, error: CreddError, now: datetime) -> CreddError:
        """Record a failure: park the session if only a login helps, else back off."""
        first = type(self._problem) is not type(error)
        self._problem = error
        if self._parked:
            assert isinstance(error, LoginRequired)
            self._retry_at = None
            if first:
                log.warning("session_login_required", session=self.name, reason=error.reason)
                if self._on_login_required is not None:
                    self._on_login_required(self.login_name, error.reason)
            return error
        token = self._token
        self._retry_at = retry_time(
            now,
            self._failures,
            draw=self._draw(),
            not_after=token.expires_at if token else None,  # never past what is held
        )
        self._failures += 1
        log.warning(
            "session_renewal_failed",
            session=self.name,
            error=error.message,
            retry_at=self._retry_at,
        )
        return error

    def _retry_due(self, now: datetime) -> bool:
        """Whether to try again now rather than fail fast: the backoff is over."""
        return self._retry_at is None or now >= self._retry_at

    # ------------------------------------------------------------------ the background loop

    @abc.abstractmethod
    def _next_wake(self, now: datetime) -> datetime | None:
        """When the loop has work to do; ``None`` while only a login can help."""

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the session renewed ahead of expiry, for as long as the daemon runs.

        Renewal does not wait for a request. The loop sleeps at most
        :data:`CACHE_POLL_SECONDS` at a time, on the wall clock, so that what
        another process writes is picked up within seconds and a suspend never
        oversleeps; ``task_status`` is told once the cache has been read.
        """
        clock = self._clock
        self._adopt_if_changed(clock.now())
        task_status.started()
        while True:
            now = clock.now()
            wake = self._next_wake(now)
            poll_until = now + timedelta(seconds=CACHE_POLL_SECONDS)
            await clock.sleep_until(poll_until if wake is None else min(wake, poll_until))
            now = clock.now()
            self._adopt_if_changed(now)
            wake = self._next_wake(now)  # worked out again: what was adopted may have moved it
            if wake is not None and now >= wake:
                # A failure is recorded by _fail: the next wake retries, or waits for a login.
                with contextlib.suppress(CreddError):
                    await self._flight.run()


class CachedSpec(NamedSpec, Protocol):
    @property
    def cache_key(self) -> str: ...


class RefreshableToken(HeldToken, Protocol):
    @property
    def refresh_token(self) -> Secret | None: ...

    def to_json(self) -> dict[str, Any]: ...


CachedSpecT = TypeVar("CachedSpecT", bound=CachedSpec)
RefreshableT = TypeVar("RefreshableT", bound=RefreshableToken)


class SharedCacheSession(RenewingSession[CachedSpecT, RefreshableT]):
    """A session whose cache entry the AWS CLI shares: a login's refresh token, renewed in place.

    Every refresh re-reads the entry under the cross-process lock first, so a
    token the AWS CLI or ``credd login`` wrote meanwhile is adopted, not fought;
    the exchange and the write run shielded; the new token is on disk (fsync,
    rename) before anything uses it. Once the entry is gone, unreadable or
    refused, only a login brings the session back.
    """

    #: what the status says when the cache has no entry for the session
    nothing_cached = "no cached token"
    #: why a token that cannot be renewed and has run out needs a login
    expired = "the access token expired and cannot be renewed"

    def __init__(
        self,
        spec: CachedSpecT,
        *,
        cache: TokenCache[RefreshableT],
        clients: AwsClients,
        context: SessionContext,
    ) -> None:
        super().__init__(spec, context)
        self._cache = cache
        self._clients = clients
        #: the start of the held token's lifetime, as far as credd knows it
        self._lifetime_start: datetime | None = None

    # ------------------------------------------------------------------ the cache entry

    def _cache_mtime(self) -> float | None:
        return self._cache.token_mtime(self._spec.cache_key)

    def _read(self) -> RefreshableT | None:
        try:
            return self._cache.load_token(self._spec.cache_key)
        except CacheCorrupt as exc:
            raise self._login_required(exc.message) from exc

    # ------------------------------------------------------------------ what each kind says

    @abc.abstractmethod
    async def _exchange(self, current: RefreshableT, now: datetime) -> RefreshableT:
        """Renew ``current`` (which :meth:`_renewable` vouched for) upstream."""

    @abc.abstractmethod
    def _renewable(self, token: RefreshableT, now: datetime) -> bool:
        """Whether ``token`` has what its renewal needs."""

    @abc.abstractmethod
    def _servable(self, token: RefreshableT, now: datetime) -> bool:
        """Whether ``token``, just read under the lock, may be handed out as it is."""

    @abc.abstractmethod
    def _unrenewable(self, token: RefreshableT) -> str:
        """Why ``token``, run out and not renewable, needs a login."""

    def _adopted_since(self, token: RefreshableT, now: datetime) -> datetime:
        """When the lifetime of a token another process fetched began: now, unless known."""
        return now

    @property
    def _renewal_margin(self) -> float:
        return self.margin_seconds

    # ------------------------------------------------------------------ timing

    def _set_token(
        self, token: RefreshableT | None, now: datetime, *, renewed: bool = False
    ) -> None:
        super()._set_token(token, now, renewed=renewed)
        if token is None or renewed:
            self._lifetime_start = now
        else:
            self._lifetime_start = self._adopted_since(token, now)

    def _renewal_time(self, token: RefreshableT, draw: float) -> datetime:
        return renewal_time(
            lifetime_start=self._lifetime_start or self._clock.now(),
            expires_at=token.expires_at,
            margin_seconds=self._renewal_margin,
            draw=draw,
        )

    def _due(self, token: RefreshableT, now: datetime) -> bool:
        return now >= self._renewal_time(token, 0.0)

    # ------------------------------------------------------------------ queries

    def _nothing_cached(self, now: datetime) -> None:
        self._set_token(None, now)
        self._problem = self._login_required(
            f"{self.nothing_cached} (never logged in, or logged out)"
        )

    def _failure_state(self, problem: CreddError) -> SessionState:
        """The state of a session that holds a valid token but fails to renew it."""
        if isinstance(problem, UpstreamError) and not problem.transient:
            return SessionState.ERROR  # a permission, a refused request: retried all the same
        return SessionState.RETRYING

    def status(self) -> SessionStatus:
        now = self._clock.now()
        token = self._token
        problem = self._problem
        if self._parked or (token is None and problem is None):
            state = SessionState.LOGIN_REQUIRED
        elif self._usable(now) is None:
            state = SessionState.RETRYING if problem else SessionState.LOGIN_REQUIRED
        elif problem is not None:
            state = self._failure_state(problem)
        elif token is not None and not self._renewable(token, now):
            state = SessionState.EXPIRING
        else:
            state = SessionState.OK
        action = None
        if state in (SessionState.LOGIN_REQUIRED, SessionState.EXPIRING):
            action = self.login_command
        elif problem is not None:
            action = problem.hint
        last_error = problem.message if problem else None
        if token is None and problem is None:
            last_error = "not logged in"
        return SessionStatus(
            name=self.name,
            kind=self.kind,
            state=state,
            expires_at=token.expires_at if token else None,
            next_renewal=self._planned_wake(now)
            if state is not SessionState.LOGIN_REQUIRED
            else None,
            last_error=last_error,
            action=action,
        )

    # ------------------------------------------------------------------ refresh

    async def _renew(self) -> RefreshableT:
        with shielded(REFRESH_DEADLINE_SECONDS, "renewal"):
            return await self._refresh()

    async def _refresh(self) -> RefreshableT:
        async with self._cache.lock(self._spec.cache_key):
            now = self._clock.now()
            on_disk = self._read()
            self._mark_seen()
            if on_disk is None:
                self._set_token(None, now)
                raise self._login_required(f"{self.nothing_cached} (logged out)")
            if (
                self._adopt(on_disk, now)  # another process renewed it first: adopt, don't fight
                and self._servable(on_disk, now)
                and not self._due(on_disk, now)
            ):
                return on_disk
            if not self._renewable(on_disk, now):
                if self._servable(on_disk, now):
                    return on_disk  # usable until it expires; status says a login is coming
                raise self._login_required(self._unrenewable(on_disk))
            fresh = await self._exchange(on_disk, now)
            self._cache.save_token(self._spec.cache_key, fresh)  # on disk before anyone uses it
            self._mark_seen()
            self._set_token(fresh, now, renewed=True)
            log.info("session_token_renewed", session=self.name, expires_at=fresh.expires_at)
            return fresh

    # ------------------------------------------------------------------ wakes

    def _next_wake(self, now: datetime) -> datetime | None:
        token = self._token
        if (
            token is not None
            and self._problem is None
            and not self._renewable(token, now)
            and token.expires_at <= now
        ):
            self._fail(self._login_required(self.expired), now)
        return self._planned_wake(now)

    def _planned_wake(self, now: datetime) -> datetime | None:
        token = self._token
        if token is None or self._parked:
            return None
        if self._retry_at is not None:
            return self._retry_at
        if not self._renewable(token, now):
            return token.expires_at
        return self._renewal_time(token, self._jitter)
