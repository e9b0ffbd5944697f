"""The live state: every profile's credentials, kept warm, served from memory.

The request path (:meth:`Broker.usable`) is a dictionary lookup and one
comparison with the clock. Only when nothing valid is held does a request
wait, and then it joins the one in-flight fetch for that profile
(single-flight) for at most ``request_deadline`` seconds. A profile, once
asked for, is renewed ahead of expiry by a keeper task until nobody has asked
for it in ``idle_timeout_seconds``. A failed renewal keeps the last good
credentials in service until they expire, and retries with capped, jittered
backoff (design.md rules 6 and 7).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

import anyio
import structlog
from anyio.abc import TaskGroup

from credd.aws import AwsClients, SigningKeys
from credd.clock import Clock
from credd.config.settings import (
    AssumeRoleProfile,
    RefreshSettings,
    ServedProfile,
    SessionSpec,
    SigningSource,
)
from credd.engine.flight import SingleFlight
from credd.engine.schedule import renewal_time, retry_time
from credd.errors import (
    AssertionRequired,
    CreddError,
    InternalFailure,
    LoginRequired,
    NotServed,
    UpstreamError,
)
from credd.profiles import Fetcher, RoleCredentials, make_fetcher, source_keys
from credd.sessions import Session, SessionState, SessionStatus
from credd.sessions.iam_tokens import IamToken
from credd.sessions.trusted_identity import TrustedIdentitySession

log = structlog.get_logger(__name__)

#: credentials this close to expiry are not served: the caller could not use them
MIN_SERVE_SECONDS = 30.0
#: how long a request waits for a fetch: under the SDKs' 1-2 s timeouts (protocols.md 8.2)
DEFAULT_REQUEST_DEADLINE = 0.9


class ProfileState(StrEnum):
    #: nothing fetched yet; the first request fetches
    COLD = "cold"
    #: valid credentials held and renewed ahead of expiry
    FRESH = "fresh"
    #: valid credentials held, no longer renewed: nobody asked for a while
    IDLE = "idle"
    #: the last fetch failed for a reason that may pass; retrying with backoff
    RETRYING = "retrying"
    #: the session behind the profile needs a new login
    LOGIN_REQUIRED = "login-required"
    #: the trusted-identity session behind the profile needs an assertion from its IdP
    ASSERTION_REQUIRED = "assertion-required"
    #: AWS refused the role for a reason retrying will not fix
    ERROR = "error"


@dataclass(frozen=True)
class ProfileStatus:
    name: str
    kind: str
    source: str
    state: ProfileState
    expiration: datetime | None
    next_renewal: datetime | None
    last_used: datetime | None
    last_error: str | None
    action: str | None


class _Keeper:
    """Everything the broker knows about one served profile."""

    __slots__ = (
        "_creds",
        "_serve_until",
        "failures",
        "fetcher",
        "flight",
        "last_used",
        "next_renewal",
        "plan",
        "prefetch",
        "problem",
        "renewing",
        "retired",
        "retry_at",
        "session",
        "spec",
    )

    def __init__(self, spec: ServedProfile, session: str | None, prefetch: bool) -> None:
        self.spec = spec
        #: the Identity Center session at the root of the profile's source chain
        self.session = session
        self.prefetch = prefetch
        self.fetcher: Fetcher | None = None
        self.flight: SingleFlight[RoleCredentials] | None = None
        self._creds: RoleCredentials | None = None
        self._serve_until: datetime | None = None
        self.last_used: datetime | None = None
        self.problem: CreddError | None = None
        self.failures = 0
        self.retry_at: datetime | None = None
        self.next_renewal: datetime | None = None
        #: in the renewal plan: renewed ahead of expiry until it goes idle
        self.renewing = False
        #: the number of its entry in the broker's renewal plan; ``None``: none planned
        self.plan: int | None = None
        #: a reload removed or replaced the profile: nothing more is planned for it
        self.retired = False

    def retire(self) -> None:
        self.retired = True
        self.plan = None

    @property
    def creds(self) -> RoleCredentials | None:
        return self._creds

    @creds.setter
    def creds(self, creds: RoleCredentials | None) -> None:
        self._creds = creds
        # worked out once per set of credentials, not once per request
        self._serve_until = (
            creds.expiration - timedelta(seconds=MIN_SERVE_SECONDS) if creds else None
        )

    def usable(self, now: datetime) -> RoleCredentials | None:
        until = self._serve_until
        return self._creds if until is not None and now < until else None


class Broker:
    """Owns the sessions and the profiles; :meth:`apply` swaps configurations live."""

    def __init__(
        self,
        *,
        make_session: Callable[[SessionSpec], Session],
        clients: AwsClients,
        clock: Clock,
        task_group: TaskGroup,
        request_deadline: float = DEFAULT_REQUEST_DEADLINE,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._make_session = make_session
        self._clients = clients
        self._clock = clock
        self._task_group = task_group
        self._deadline = request_deadline
        self._draw = draw
        self._refresh = RefreshSettings()
        self._sessions: dict[str, Session] = {}
        self._session_scopes: dict[str, anyio.CancelScope] = {}
        self._sources: Mapping[str, SigningSource] = {}
        self._keepers: dict[str, _Keeper] = {}
        self._running = False
        #: the renewal plan, a heap of (when, number, keeper): one task renews every profile
        self._plan: list[tuple[datetime, int, _Keeper]] = []
        self._numbers = itertools.count()
        #: the renewal task's sleep, and until when: cancelled when something is due sooner
        self._sleep: anyio.CancelScope | None = None
        self._sleep_until: datetime | None = None

    def apply(
        self,
        *,
        sessions: Mapping[str, SessionSpec],
        profiles: Mapping[str, ServedProfile],
        sources: Mapping[str, SigningSource],
        refresh: RefreshSettings,
    ) -> None:
        """Take a (new) configuration: what stayed the same keeps its state and its loops."""
        self._refresh = refresh
        self._sources = sources
        replaced: set[str] = set()
        for name in list(self._sessions):
            if sessions.get(name) != self._sessions[name].spec:
                self._stop_session(name)
                replaced.add(name)
        for name, session_spec in sessions.items():
            session = self._sessions.get(name)
            if session is None:
                session = self._sessions[name] = self._make_session(session_spec)
                if self._running:
                    self._task_group.start_soon(self._run_session, session)
            # A Sign-In session's token is the served credentials themselves (interface.md).
            session.margin_seconds = (
                refresh.credentials_margin_seconds
                if session.kind == "signin"
                else refresh.token_margin_seconds
            )
        for name in list(self._keepers):
            keeper = self._keepers[name]
            if profiles.get(name) != keeper.spec or keeper.session in replaced:
                keeper.retire()
                del self._keepers[name]
        for name, profile_spec in profiles.items():
            existing = self._keepers.get(name)
            if existing is None:
                keeper = self._keepers[name] = _Keeper(
                    profile_spec, self._root_session(profile_spec, profiles), prefetch=False
                )
                keeper.fetcher = self._fetcher(profile_spec)
                keeper.flight = SingleFlight(
                    self._task_group, functools.partial(self._fetch, keeper)
                )
            else:
                keeper = existing
            keeper.prefetch = name in refresh.prefetch
            if self._running and keeper.prefetch and not keeper.renewing:
                self._start_keeper(keeper)

    def _stop_session(self, name: str) -> None:
        self._sessions.pop(name)
        scope = self._session_scopes.pop(name, None)
        if scope is not None:
            scope.cancel()

    async def _run_session(
        self,
        session: Session,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        with anyio.CancelScope() as scope:
            self._session_scopes[session.name] = scope
            await session.run(task_status=task_status)

    # ------------------------------------------------------------------ wiring

    @staticmethod
    def _root_session(spec: ServedProfile, profiles: Mapping[str, ServedProfile]) -> str | None:
        seen: set[str] = set()
        current: ServedProfile | None = spec
        while isinstance(current, AssumeRoleProfile) and current.name not in seen:
            seen.add(current.name)
            current = profiles.get(current.source_profile)
        session = getattr(current, "session", None)
        return session if isinstance(session, str) else None

    def _fetcher(self, spec: ServedProfile) -> Fetcher:
        return make_fetcher(
            spec,
            sessions=self._sessions,
            source_keys=self._source_keys,
            clients=self._clients,
            clock=self._clock,
        )

    async def _source_keys(self, source: str | None) -> SigningKeys:
        """The keys that sign a call for a profile sourced from ``source`` (``None``: default)."""
        return await source_keys(
            source, sources=self._sources, served=self._served_keys, clients=self._clients
        )

    async def _served_keys(self, name: str) -> SigningKeys:
        return (await self.credentials(name, wait=None)).signing_keys()

    def signer(self, source: str | None) -> Callable[[], Awaitable[SigningKeys]]:
        """What signs the calls of a session sourced from ``source`` (``None``: default chain)."""
        return functools.partial(self._source_keys, source)

    def session(self, name: str) -> Session | None:
        return self._sessions.get(name)

    # ------------------------------------------------------------------ the request path

    def bearer_session(self, name: str) -> TrustedIdentitySession | None:
        """The trusted-identity session ``name``, whose access token ``/v1/tokens`` serves."""
        session = self._sessions.get(name)
        return session if isinstance(session, TrustedIdentitySession) else None

    async def bearer_token(self, session: TrustedIdentitySession) -> IamToken:
        """Its access token from memory; else join its renewal, under the request deadline."""
        held = session.usable_token()
        if held is not None:
            return held
        try:
            with anyio.fail_after(self._deadline):
                return await session.token()
        except TimeoutError as exc:
            raise UpstreamError(
                f"the access token of {session.name} is still being fetched",
                hint="try again in a moment",
            ) from exc

    def knows(self, name: str) -> bool:
        return name in self._keepers

    def usable(self, name: str) -> RoleCredentials | None:
        """Valid credentials held in memory, or ``None``; marks the profile as in use."""
        keeper = self._keepers.get(name)
        if keeper is None:
            return None
        now = self._clock.now()
        keeper.last_used = now
        creds = keeper.usable(now)
        if creds is not None and not keeper.renewing:
            self._start_keeper(keeper)
        return creds

    async def credentials(self, name: str, *, wait: float | None = -1.0) -> RoleCredentials:
        """Credentials for ``name``, fetching them if none are held.

        ``wait`` bounds the wait for a fetch in seconds (default: the request
        deadline; ``None``: no bound). Raises :class:`NotServed`,
        :class:`LoginRequired` or :class:`UpstreamError`.
        """
        keeper = self._keepers.get(name)
        if keeper is None:
            raise NotServed(f"no profile named {name!r} is served", hint="run: credd status")
        creds = self.usable(name)
        if creds is not None:
            return creds
        now = self._clock.now()
        if (
            keeper.problem is not None
            and not isinstance(keeper.problem, LoginRequired)
            and keeper.retry_at is not None
            and now < keeper.retry_at
        ):
            raise keeper.problem  # failing fast until the backoff says try again
        assert keeper.flight is not None
        limit = self._deadline if wait == -1.0 else wait
        try:
            with anyio.fail_after(limit):
                return await keeper.flight.run()
        except TimeoutError as exc:
            raise UpstreamError(
                f"credentials for {name} are still being fetched from AWS",
                hint="try again in a moment",
            ) from exc

    async def _fetch(self, keeper: _Keeper) -> RoleCredentials:
        assert keeper.fetcher is not None
        name = keeper.spec.name
        now = self._clock.now()
        try:
            creds = await keeper.fetcher.fetch()
        except CreddError as exc:
            self._failed(keeper, exc, now)
            raise
        except Exception as exc:
            failure = InternalFailure(exc)
            # no traceback: an exception's message may quote a token
            log.error("fetch_bug", profile=name, error=failure.message)  # noqa: TRY400
            self._failed(keeper, failure, now)
            raise failure from exc
        keeper.creds = creds
        keeper.problem = None
        keeper.failures = 0
        keeper.retry_at = None
        log.info("credentials_fetched", profile=name, expiration=creds.expiration)
        if not keeper.renewing and (keeper.prefetch or keeper.last_used is not None):
            self._start_keeper(keeper)
        return creds

    def _failed(self, keeper: _Keeper, error: CreddError, now: datetime) -> None:
        held = keeper.usable(now)
        keeper.problem = error
        keeper.retry_at = retry_time(
            now,
            keeper.failures,
            draw=self._draw(),
            not_after=held.expiration - timedelta(seconds=MIN_SERVE_SECONDS) if held else None,
        )
        keeper.failures += 1
        log.warning(
            "credentials_fetch_failed",
            profile=keeper.spec.name,
            error=error.message,
            serving_last_good=held is not None,
            retry_at=keeper.retry_at,
        )

    # ------------------------------------------------------------------ renewal

    def _start_keeper(self, keeper: _Keeper) -> None:
        keeper.renewing = True
        self._schedule(keeper, self._clock.now())

    def _idle_at(self, keeper: _Keeper, now: datetime) -> datetime:
        return (keeper.last_used or now) + timedelta(seconds=self._refresh.idle_timeout_seconds)

    def _idle(self, keeper: _Keeper, now: datetime) -> bool:
        return not keeper.prefetch and now >= self._idle_at(keeper, now)

    def _schedule(self, keeper: _Keeper, now: datetime) -> None:
        """Plan the keeper's next turn: its next fetch, or the moment it goes idle."""
        idle_at = self._idle_at(keeper, now)
        if keeper.retired or self._idle(keeper, now):
            if not keeper.retired:
                log.info("profile_idle", profile=keeper.spec.name)
            keeper.renewing = False
            keeper.next_renewal = None
            keeper.plan = None
            return
        wake = self._next_fetch(keeper, now)
        keeper.next_renewal = wake
        at = wake if keeper.prefetch else min(wake, idle_at)
        keeper.plan = number = next(self._numbers)
        heapq.heappush(self._plan, (at, number, keeper))
        if self._sleep is not None and (self._sleep_until is None or at < self._sleep_until):
            self._sleep.cancel()  # the renewal task sleeps past it: wake it to plan again

    async def _renewals(self) -> None:
        """Renew every profile in use ahead of expiry: one task, whatever their number.

        A profile's turn comes at its next fetch, or when it would go idle
        (nobody asked for ``idle_timeout_seconds``), whichever is first; a turn
        that finds it still in use but not yet due plans the next one.
        """
        while True:
            now = self._clock.now()
            while self._plan and self._plan[0][0] <= now:
                _at, number, keeper = heapq.heappop(self._plan)
                if keeper.plan != number:
                    continue  # planned again since, or retired
                keeper.plan = None
                wake = keeper.next_renewal
                if (wake is not None and now < wake) or self._idle(keeper, now):
                    # Not due yet (woke to check idleness), or nobody asked for it in
                    # idle_timeout_seconds (time jumped past both): no fetch for nobody.
                    self._schedule(keeper, now)
                else:
                    self._task_group.start_soon(
                        self._renew, keeper, name=f"renew:{keeper.spec.name}"
                    )
            with anyio.CancelScope() as self._sleep:
                self._sleep_until = self._plan[0][0] if self._plan else None
                if self._sleep_until is None:
                    await anyio.sleep_forever()
                else:
                    await self._clock.sleep_until(self._sleep_until)
            self._sleep = None
            self._sleep_until = None

    async def _renew(self, keeper: _Keeper) -> None:
        assert keeper.flight is not None
        # A failure is recorded by _failed, with the retry time the next plan uses.
        with contextlib.suppress(CreddError):
            await keeper.flight.run()
        self._schedule(keeper, self._clock.now())

    def _next_fetch(self, keeper: _Keeper, now: datetime) -> datetime:
        if keeper.retry_at is not None:
            return keeper.retry_at
        creds = keeper.creds
        if creds is None:
            return now
        if creds.renew_by is not None:
            # The source says when it replaces them (a Sign-In session, ahead of the SDKs'
            # window, with a margin never smaller than this one): its time, jitter drawn once.
            # A second draw here would renew at the earlier of two: more calls for nothing.
            return creds.renew_by
        return renewal_time(
            lifetime_start=creds.received_at,
            expires_at=creds.expiration,
            margin_seconds=self._refresh.credentials_margin_seconds,
            draw=self._draw(),
        )

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every session's renewal loop (each reads its cache first) and the prefetches."""
        for session in list(self._sessions.values()):
            await self._task_group.start(self._run_session, session)
        self._task_group.start_soon(self._renewals, name="renewals")
        self._running = True
        for keeper in self._keepers.values():
            if keeper.prefetch and not keeper.renewing:
                self._start_keeper(keeper)
        task_status.started()

    # ------------------------------------------------------------------ sessions

    def sync_session(self, name: str) -> SessionStatus:
        """Re-read a session's cache now; a logged-out session takes its credentials along."""
        session = self._sessions.get(name)
        if session is None:
            raise NotServed(f"no session named {name!r}", hint="run: credd status")
        session.sync()
        status = session.status()
        if status.expires_at is None:
            for keeper in self._keepers.values():
                if keeper.session == name:
                    keeper.creds = None
        return status

    # ------------------------------------------------------------------ status

    def profile_statuses(self) -> list[ProfileStatus]:
        now = self._clock.now()
        return [self._profile_status(k, now) for k in self._keepers.values()]

    def session_statuses(self) -> list[SessionStatus]:
        return [s.status() for s in self._sessions.values()]

    def _session_action(self, keeper: _Keeper) -> str | None:
        """What the profile's session says to run."""
        session = self._sessions.get(keeper.session) if keeper.session else None
        return session.status().action if session is not None else None

    def _session_needs_login(self, keeper: _Keeper) -> bool:
        session = self._sessions.get(keeper.session) if keeper.session else None
        return session is not None and session.status().state is SessionState.LOGIN_REQUIRED

    def _profile_status(self, keeper: _Keeper, now: datetime) -> ProfileStatus:
        spec = keeper.spec
        problem = keeper.problem
        creds = keeper.usable(now)
        action: str | None = None
        if isinstance(problem, LoginRequired):
            state = ProfileState.LOGIN_REQUIRED
            action = problem.action
        elif isinstance(problem, AssertionRequired):
            state = ProfileState.ASSERTION_REQUIRED
            action = problem.hint
        elif isinstance(problem, UpstreamError) and not problem.transient:
            state = ProfileState.ERROR
            action = problem.hint
        elif problem is not None:
            state = ProfileState.RETRYING
        elif creds is None and self._session_needs_login(keeper):
            state = ProfileState.LOGIN_REQUIRED
            action = self._session_action(keeper) or f"credd login {keeper.session}"
        elif creds is None:
            state = ProfileState.COLD
        else:
            state = ProfileState.FRESH if keeper.renewing else ProfileState.IDLE
        return ProfileStatus(
            name=spec.name,
            kind=spec.kind,
            source=spec.source,
            state=state,
            expiration=creds.expiration if creds else None,
            next_renewal=keeper.next_renewal,
            last_used=keeper.last_used,
            last_error=problem.message if problem else None,
            action=action,
        )
