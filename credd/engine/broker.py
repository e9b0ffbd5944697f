"""The live state: every session and every profile's credentials, kept warm, served from memory.

The request path (:meth:`Broker.usable`) is a dictionary lookup and one
comparison with the clock. Only when nothing valid is held does a request
wait, and then it joins the one in-flight fetch for that profile
(single-flight) for at most ``request_deadline`` seconds; while the last
fetch failed, requests fail fast until its backoff is over (every fault, on
every path, backs off). A profile, once asked for, is renewed ahead of expiry
until nobody has asked for it in ``idle_timeout_seconds``. A failed renewal
keeps the last good credentials in service until they expire (design.md rules
6 and 7).

Sessions and profiles are both :class:`~credd.engine.record.Record` books
driven by the one :class:`~credd.engine.planner.Planner`; the shared
:class:`~credd.engine.watch.CacheWatcher` tells a session when its cache file
changed. A profile's failure waits on its session: as soon as the session
holds a new token (a login landed), the profile is due again.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

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
from credd.engine.planner import Planner
from credd.engine.record import Fault, Record, classify
from credd.engine.schedule import renewal_time
from credd.engine.session import KeptSession
from credd.engine.watch import CacheWatcher
from credd.errors import (
    AssertionRequired,
    CreddError,
    InternalFailure,
    LoginRequired,
    NotServed,
    UpstreamError,
)
from credd.profiles import Fetcher, RoleCredentials, make_fetcher, source_keys
from credd.sessions import SessionStatus
from credd.sessions.iam_tokens import IamToken
from credd.sessions.trusted_identity import TrustedIdentitySession

log = structlog.get_logger(__name__)

#: how long a request waits for a fetch: under the SDKs' 1-2 s timeouts (protocols.md 8.2)
DEFAULT_REQUEST_DEADLINE = 0.9

Session = KeptSession[Any]


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


class _Profile:
    """One served profile: its record, its fetcher, and the planner's questions about it."""

    __slots__ = (
        "_broker",
        "fetcher",
        "flight",
        "last_used",
        "prefetch",
        "record",
        "renewing",
        "retired",
        "session",
        "spec",
    )

    def __init__(
        self, broker: Broker, spec: ServedProfile, session: str | None, prefetch: bool
    ) -> None:
        self._broker = broker
        self.spec = spec
        #: the session at the root of the profile's source chain
        self.session = session
        self.prefetch = prefetch
        self.record: Record[RoleCredentials] = Record(f"profile {spec.name}", broker.draw)
        self.fetcher: Fetcher | None = None
        self.flight: SingleFlight[RoleCredentials] | None = None
        self.last_used: datetime | None = None
        #: renewed ahead of expiry until it goes idle
        self.renewing = False
        #: a reload removed or replaced the profile: nothing more is planned for it
        self.retired = False

    @property
    def name(self) -> str:
        return self.spec.name

    def wake(self, now: datetime) -> datetime | None:
        return self._broker.profile_wake(self, now)

    async def turn(self) -> None:
        await self._broker.profile_turn(self)


class Broker:
    """Owns the sessions and the profiles; :meth:`apply` swaps configurations live."""

    def __init__(
        self,
        *,
        make_session: Callable[[SessionSpec], Session],
        clients: AwsClients,
        clock: Clock,
        task_group: TaskGroup,
        watcher: CacheWatcher,
        request_deadline: float = DEFAULT_REQUEST_DEADLINE,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self._make_session = make_session
        self._clients = clients
        self._clock = clock
        self._task_group = task_group
        self._watcher = watcher
        self._deadline = request_deadline
        self.draw = draw
        self._refresh = RefreshSettings()
        self._sessions: dict[str, Session] = {}
        self._unwatch: dict[str, Callable[[], None]] = {}
        self._sources: Mapping[str, SigningSource] = {}
        self._profiles: dict[str, _Profile] = {}
        #: told whenever a turn ran or a session changed: the daemon's status line
        self.on_activity: Callable[[], None] = lambda: None
        self._planner = Planner(clock, task_group, after_turn=lambda: self.on_activity())
        self._running = False

    # ------------------------------------------------------------------ configuration

    def apply(
        self,
        *,
        sessions: Mapping[str, SessionSpec],
        profiles: Mapping[str, ServedProfile],
        sources: Mapping[str, SigningSource],
        refresh: RefreshSettings,
    ) -> None:
        """Take a (new) configuration: what stayed the same keeps its state and its plans."""
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
                self._start_session(session)
            # A Sign-In session's token is the served credentials themselves (interface.md).
            session.margin_seconds = (
                refresh.credentials_margin_seconds
                if session.kind == "signin"
                else refresh.token_margin_seconds
            )
        for name in list(self._profiles):
            profile = self._profiles[name]
            if profiles.get(name) != profile.spec or profile.session in replaced:
                profile.retired = True
                self._planner.drop(profile)
                del self._profiles[name]
        for name, profile_spec in profiles.items():
            existing = self._profiles.get(name)
            if existing is None:
                profile = self._profiles[name] = _Profile(
                    self, profile_spec, self._root_session(profile_spec, profiles), prefetch=False
                )
                profile.fetcher = self._fetcher(profile_spec)
                profile.flight = SingleFlight(
                    self._task_group, functools.partial(self._fetch, profile)
                )
            else:
                profile = existing
            profile.prefetch = name in refresh.prefetch
            if self._running and profile.prefetch and not profile.renewing:
                self._start_renewing(profile)

    def _start_session(self, session: Session) -> None:
        session.replan = functools.partial(self._planner.plan, session)
        session.on_change = self._session_changed
        path = session.cache_path

        def changed(name: str | None) -> None:
            if name is None or name == path.name:
                session.cache_changed()

        self._unwatch[session.name] = self._watcher.watch(path.parent, changed)
        if self._running:
            session.start()
            self._planner.plan(session)

    def _stop_session(self, name: str) -> None:
        session = self._sessions.pop(name)
        session.replan = lambda: None
        session.on_change = lambda _session: None
        self._planner.drop(session)
        unwatch = self._unwatch.pop(name, None)
        if unwatch is not None:
            unwatch()

    def _session_changed(self, session: Session) -> None:
        """A session holds something else: its profiles are looked at again.

        A logout (its file deleted) takes their credentials along (interface.md:
        not served after a logout); a new token makes those that failed on it due.
        """
        self.on_activity()
        logged_out = session.record.value is None and not session.begins_alone
        for profile in self._profiles.values():
            if profile.session != session.name:
                continue
            if logged_out and profile.record.value is not None:
                profile.record.hold(None, None)
            if self._running:
                self._planner.plan(profile)

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

    def record(self, name: str) -> Record[Any] | None:
        """A session's record, by name: what a failure blamed on that session waits on."""
        session = self._sessions.get(name)
        return session.record if session is not None else None

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
        return name in self._profiles

    def usable(self, name: str) -> RoleCredentials | None:
        """Valid credentials held in memory, or ``None``; marks the profile as in use."""
        profile = self._profiles.get(name)
        if profile is None:
            return None
        now = self._clock.now()
        profile.last_used = now
        creds = profile.record.usable(now)
        if creds is not None and not profile.renewing:
            self._start_renewing(profile)
        return creds

    async def credentials(self, name: str, *, wait: float | None = -1.0) -> RoleCredentials:
        """Credentials for ``name``, fetching them if none are held.

        ``wait`` bounds the wait for a fetch in seconds (default: the request
        deadline; ``None``: no bound). While the last fetch failed, this fails
        fast until its backoff is over or its session changed. Raises
        :class:`NotServed`, :class:`LoginRequired` or :class:`UpstreamError`.
        """
        profile = self._profiles.get(name)
        if profile is None:
            raise NotServed(f"no profile named {name!r} is served", hint="run: credd status")
        creds = self.usable(name)
        if creds is not None:
            return creds
        record = profile.record
        if record.problem is not None and not record.retry_due(self._clock.now()):
            blamed = self._blamed(profile)
            if blamed is not None:
                await blamed.recheck()  # a login may have landed before the watcher said so
            if not record.retry_due(self._clock.now()):
                raise record.problem  # failing fast until the backoff says try again
        assert profile.flight is not None
        limit = self._deadline if wait == -1.0 else wait
        try:
            with anyio.fail_after(limit):
                return await profile.flight.run()
        except TimeoutError as exc:
            raise UpstreamError(
                f"credentials for {name} are still being fetched from AWS",
                hint="try again in a moment",
            ) from exc

    async def _fetch(self, profile: _Profile) -> RoleCredentials:
        assert profile.fetcher is not None
        began = self._clock.now()
        try:
            creds = await profile.fetcher.fetch()
        except CreddError as exc:
            self._failed(profile, exc, began)
            raise
        except Exception as exc:
            failure = InternalFailure(exc)
            # no traceback: an exception's message may quote a token
            log.error("fetch_bug", profile=profile.name, error=failure.message)  # noqa: TRY400
            self._failed(profile, failure, began)
            raise failure from exc
        record = profile.record
        record.hold(creds, creds.expiration)
        record.succeeded()
        log.info("credentials_fetched", profile=profile.name, expiration=creds.expiration)
        if not profile.renewing and (profile.prefetch or profile.last_used is not None):
            self._start_renewing(profile)
        return creds

    def _blamed(self, profile: _Profile) -> Session | None:
        """The session a profile's failure is blamed on, if it only waits for a login."""
        problem = profile.record.problem
        name = problem.session if isinstance(problem, LoginRequired) else None
        session = self._sessions.get(name) if name else None
        return session if session is not None and session.record.parked else None

    def _failed(self, profile: _Profile, error: CreddError, now: datetime) -> None:
        # A profile's failure is never its own dead session: a login required is its
        # session's, and the profile waits on that session to change.
        blamed = error.session if isinstance(error, LoginRequired) else profile.session
        fault = Fault.ELSEWHERE if isinstance(error, LoginRequired) else classify(error, "")
        record = profile.record
        record.failed(error, now, fault=fault, waits_on=self.record(blamed) if blamed else None)
        log.warning(
            "credentials_fetch_failed",
            profile=profile.name,
            error=error.message,
            serving_last_good=record.usable(now) is not None,
            retry_at=record.retry_at,
        )

    # ------------------------------------------------------------------ renewal

    def _start_renewing(self, profile: _Profile) -> None:
        profile.renewing = True
        if self._running:
            self._planner.plan(profile)

    def _idle_at(self, profile: _Profile, now: datetime) -> datetime:
        return (profile.last_used or now) + timedelta(seconds=self._refresh.idle_timeout_seconds)

    def profile_wake(self, profile: _Profile, now: datetime) -> datetime | None:
        """A profile's next turn: its next fetch, or the moment it goes idle."""
        if profile.retired or not profile.renewing:
            return None
        fetch = self._next_fetch(profile, now)
        if profile.prefetch:
            return fetch
        idle_at = self._idle_at(profile, now)
        return idle_at if fetch is None else min(fetch, idle_at)

    async def profile_turn(self, profile: _Profile) -> None:
        """Fetch if due; or, nobody having asked in ``idle_timeout_seconds``, stop renewing."""
        now = self._clock.now()
        if not profile.prefetch and now >= self._idle_at(profile, now):
            # nobody asked for it (time may have jumped past both): no fetch for nobody
            log.info("profile_idle", profile=profile.name)
            profile.renewing = False
            return
        due = self._next_fetch(profile, now)
        if due is not None and now >= due:
            assert profile.flight is not None
            with contextlib.suppress(CreddError):  # recorded by _failed, with its retry time
                await profile.flight.run()

    def _next_fetch(self, profile: _Profile, now: datetime) -> datetime | None:
        record = profile.record
        if record.problem is not None:
            return now if record.other_changed() else record.retry_at
        creds = record.value
        if creds is None:
            return now
        if creds.renew_by is not None:
            # The source says when it replaces them (a Sign-In session, ahead of the SDKs'
            # window, with a margin never smaller than this one): its time, jitter drawn once.
            return creds.renew_by
        return renewal_time(
            lifetime_start=creds.received_at,
            expires_at=creds.expiration,
            margin_seconds=self._refresh.credentials_margin_seconds,
            draw=record.jitter,
        )

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Read every session's cache, start the planner, and start the prefetches."""
        await self._task_group.start(self._planner.run)
        self._running = True
        for session in list(self._sessions.values()):
            session.start()
            self._planner.plan(session)
        for profile in self._profiles.values():
            if profile.prefetch and not profile.renewing:
                self._start_renewing(profile)
        task_status.started()

    # ------------------------------------------------------------------ sessions

    def sync_session(self, name: str) -> SessionStatus:
        """Re-read a session's cache now; a logged-out session takes its credentials along."""
        session = self._sessions.get(name)
        if session is None:
            raise NotServed(f"no session named {name!r}", hint="run: credd status")
        session.sync()
        return session.status()

    # ------------------------------------------------------------------ status

    def profile_statuses(self) -> list[ProfileStatus]:
        now = self._clock.now()
        return [self._profile_status(p, now) for p in self._profiles.values()]

    def session_statuses(self) -> list[SessionStatus]:
        return [s.status() for s in self._sessions.values()]

    def _profile_status(self, profile: _Profile, now: datetime) -> ProfileStatus:
        spec = profile.spec
        record = profile.record
        problem = record.problem
        creds = record.usable(now)
        session = self._sessions.get(profile.session) if profile.session else None
        action: str | None = None
        if isinstance(problem, LoginRequired):
            state, action = ProfileState.LOGIN_REQUIRED, problem.action
        elif isinstance(problem, AssertionRequired):
            state, action = ProfileState.ASSERTION_REQUIRED, problem.hint
        elif record.fault is Fault.REFUSED:
            state, action = ProfileState.ERROR, problem.hint if problem else None
        elif problem is not None:
            state = ProfileState.RETRYING
        elif creds is None and session is not None and session.record.parked:
            state = ProfileState.LOGIN_REQUIRED
            action = session.login_command
        elif creds is None:
            state = ProfileState.COLD
        else:
            state = ProfileState.FRESH if profile.renewing else ProfileState.IDLE
        return ProfileStatus(
            name=spec.name,
            kind=spec.kind,
            source=spec.source,
            state=state,
            expiration=creds.expiration if creds else None,
            next_renewal=self._next_fetch(profile, now) if profile.renewing else None,
            last_used=profile.last_used,
            last_error=problem.message if problem else None,
            action=action,
        )
