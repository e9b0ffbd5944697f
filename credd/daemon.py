"""The composition root: settings in, a running daemon out.

Builds the caches, the AWS clients, one session per sign-in, the broker, the
scoped tokens (kept in step with their file), the HTTP endpoint and the
container listener (``[containers] listen``), all inside one task group.
Readiness is explicit: :func:`run_daemon` reports its :class:`DaemonHandle` through ``task_status``,
and tells systemd ``READY=1``, once the caches are read and the endpoint is
bound. A reload (SIGHUP) swaps the configuration without dropping what stays;
a stop first drains in-flight requests, then cancels the rest, its cleanup
shielded under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from aiohttp import web
from anyio.abc import TaskGroup

from credd import __version__
from credd.aws import AwsClients
from credd.clock import Clock, SystemClock
from credd.config.load import load_settings
from credd.config.settings import (
    AssumeRoleProfile,
    IdentityEnhancedProfile,
    ServedProfile,
    ServerSettings,
    SessionSpec,
    Settings,
    SigninSessionSpec,
    TrustedIdentitySpec,
)
from credd.endpoint.containers import ContainerListener
from credd.endpoint.grants import Grants, GrantsKeeper
from credd.endpoint.limits import EndpointLoad
from credd.endpoint.server import Endpoint, make_server
from credd.endpoint.status import status_document
from credd.engine.broker import DEFAULT_REQUEST_DEADLINE, Broker, Session
from credd.engine.session import SessionContext
from credd.engine.watch import CacheWatcher
from credd.errors import CreddError
from credd.files.store import LoginCache, SsoCache, atomic_write, format_timestamp
from credd.platform.desktop import notify_login_required
from credd.platform.systemd import Notifier, listen_sockets, watchdog_interval
from credd.profiles import RoleCredentials
from credd.sessions import SessionState
from credd.sessions.iam_tokens import IamTokenCache
from credd.sessions.identity_center import IdentityCenterSession
from credd.sessions.trusted_identity import SubjectSession, TrustedIdentitySession
from credd.wiring import (
    aws_clients,
    ensure_endpoint_token,
    grant_store,
    login_cache,
    sso_cache,
    trusted_identity_cache,
)

log = structlog.get_logger(__name__)

#: how long a stop waits for in-flight requests (they take at most the request deadline)
DRAIN_SECONDS = 5.0
#: pending connections the kernel queues before credd accepts them
BACKLOG = 1024


@dataclass(frozen=True)
class DaemonHandle:
    host: str
    port: int
    token: str
    broker: Broker
    control: DaemonControl

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def reload(self, load: Callable[[], Settings]) -> bool:
        return self.control.reload(load)

    def stop(self) -> None:
        self.control.stop()


class DaemonControl:
    """What a running daemon can be told: reload the configuration, stop."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker,
        notifier: Notifier,
        clock: Clock,
        grants: GrantsKeeper | None = None,
    ):
        self.settings = settings
        self._broker = broker
        #: the scoped tokens in force (``credd status`` lists them)
        self.grants = grants
        self._notifier = notifier
        self._clock = clock
        self.started_at = clock.now()
        self.listen: str | None = None
        #: the container listener, when ``[containers] listen`` names one
        self.containers: ContainerListener | None = None
        self.load = EndpointLoad(settings.server)
        self.stopping = anyio.Event()
        self._status_published = ""

    def apply(self, settings: Settings) -> None:
        self._broker.apply(
            sessions=settings.sessions,
            profiles=settings.profiles,
            sources=settings.sources,
            refresh=settings.refresh,
        )
        self.settings = settings

    def reload(self, load: Callable[[], Settings]) -> bool:
        """Re-read the configuration; a broken one keeps the running one (SIGHUP)."""
        self._notifier.reloading(time.monotonic_ns() // 1000)
        try:
            settings = load()
            if settings.server != self.settings.server:
                log.warning("reload_server_unchanged", reason="[server] changes need a restart")
                settings = dataclasses.replace(settings, server=self.settings.server)
            if settings.containers != self.settings.containers:
                log.warning(
                    "reload_containers_unchanged", reason="[containers] changes need a restart"
                )
                settings = dataclasses.replace(settings, containers=self.settings.containers)
            self.apply(settings)
        except CreddError as exc:
            # one clear line, no traceback: the error names the file, line and key
            log.error("reload_failed", error=str(exc), kept="the running configuration")  # noqa: TRY400
            return False
        finally:
            self._notifier.ready(self.status_line())
        log.info("reloaded", profiles=len(settings.profiles), sessions=len(settings.sessions))
        return True

    def stop(self) -> None:
        self.stopping.set()

    def document(self) -> dict[str, Any]:
        now = self._clock.now()
        grants = self.grants
        return status_document(
            daemon={
                "running": True,
                "version": __version__,
                "pid": os.getpid(),
                "listen": self.listen,
                "started_at": format_timestamp(self.started_at),
                "now": format_timestamp(now),
                "endpoint": self.load.describe(),
            },
            sessions=self._broker.session_statuses(),
            profiles=self._broker.profile_statuses(),
            unserved=self.settings.unserved,
            grants=grants.grants.describe(now) if grants else [],
            grants_problem=grants.problem if grants else None,
            containers=self.containers.describe() if self.containers else None,
        )

    def status_line(self) -> str:
        """One line for systemd's STATUS=: what credd is doing."""
        sessions = self._broker.session_statuses()
        live = [s for s in sessions if s.state in (SessionState.OK, SessionState.EXPIRING)]
        parts = [f"{len(live)}/{len(sessions)} sessions live"]
        renewals = [s.next_renewal for s in sessions if s.next_renewal]
        if renewals:
            parts.append(f"next renewal {format_timestamp(min(renewals))}")
        needing = [s.name for s in sessions if s.state is SessionState.LOGIN_REQUIRED]
        if needing:
            parts.append("login needed: " + ", ".join(sorted(needing)))
        return "; ".join(parts)

    def publish_status(self) -> None:
        """Keep systemd's STATUS= line current: told after every turn, never polled, so
        that an idle daemon sleeps."""
        if not self._notifier.enabled:
            return
        line = self.status_line()
        if line != self._status_published:
            self._notifier.status(line)
            self._status_published = line


async def run_watchdog(notifier: Notifier, interval: float) -> None:
    """WATCHDOG=1 from the event loop itself: a stuck loop stops it, and systemd restarts us."""
    while True:
        notifier.watchdog()
        await anyio.sleep(interval)


def make_broker(
    settings: Settings,
    *,
    clients: AwsClients,
    clock: Clock,
    task_group: TaskGroup,
    watcher: CacheWatcher,
    caches: tuple[SsoCache, LoginCache, IamTokenCache] | None = None,
    request_deadline: float = DEFAULT_REQUEST_DEADLINE,
    on_login_required: Callable[[str, str], None] = lambda _session, _reason: None,
) -> Broker:
    """The broker, and how it makes one session per sign-in: the daemon's, and a one-shot's.

    ``caches`` (Identity Center, Sign-In, trusted identity) default to the
    settings' own; ``on_login_required(session, reason)`` hears of a session
    that needs a new login.
    """
    sso, logins, iam_tokens = caches or (
        sso_cache(settings),
        login_cache(settings),
        trusted_identity_cache(settings),
    )

    def subject(name: str) -> SubjectSession | None:
        found = broker.session(name)
        if isinstance(found, IdentityCenterSession | TrustedIdentitySession):
            return found
        return None

    def make_session(spec: SessionSpec) -> Session:
        refresh = settings.refresh
        signin = isinstance(spec, SigninSessionSpec)
        # Sign-In's credentials are the served ones (interface.md): theirs is that margin
        margin = refresh.credentials_margin_seconds if signin else refresh.token_margin_seconds
        context = SessionContext(
            clock, task_group, margin, on_login_required=on_login_required, records=broker.record
        )
        if isinstance(spec, SigninSessionSpec):
            # imported only when used: with it comes cryptography, some 7 MB
            from credd.sessions.signin import SigninSession

            return SigninSession(spec, cache=logins, clients=clients, context=context)
        if isinstance(spec, TrustedIdentitySpec):
            return TrustedIdentitySession(
                spec,
                cache=iam_tokens,
                clients=clients,
                signer=broker.signer(spec.source_profile),
                sessions=subject,
                context=context,
            )
        return IdentityCenterSession(spec, cache=sso, clients=clients, context=context)

    broker = Broker(
        make_session=make_session,
        clients=clients,
        clock=clock,
        task_group=task_group,
        watcher=watcher,
        request_deadline=request_deadline,
    )
    return broker


async def run_daemon(
    settings: Settings,
    *,
    clock: Clock | None = None,
    request_deadline: float = DEFAULT_REQUEST_DEADLINE,
    env: Mapping[str, str] | None = None,
    task_status: anyio.abc.TaskStatus[DaemonHandle] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until told to stop (:meth:`DaemonHandle.stop`) or cancelled."""
    env = os.environ if env is None else env
    clock = clock or SystemClock()
    notifier = Notifier(env)
    watchdog = watchdog_interval(env, os.getpid())
    passed = listen_sockets(env, os.getpid())
    token = ensure_endpoint_token(settings.server.token_file)
    cache = sso_cache(settings)
    logins = login_cache(settings)
    iam_tokens = trusted_identity_cache(settings)
    grants = grant_store(settings)
    for files in (cache.files, logins.files, iam_tokens.files, grants.files):
        files.sweep_temporary()  # what a writer killed half-way left (kill -9, power loss)
    # one client per service for every profile's calls, closed when the daemon stops
    async with aws_clients(settings, keep_open=True) as clients, anyio.create_task_group() as tg:

        def login_required(session: str, reason: str) -> None:
            tg.start_soon(notify_login_required, session, reason, env)

        watcher = CacheWatcher()
        await tg.start(watcher.run)
        # the scoped tokens: read before the endpoint answers, re-read when the file changes
        keeper = GrantsKeeper(grants, Grants())
        watcher.watch(keeper.store.path.parent, keeper.on_change)
        await tg.start(keeper.run)
        broker = make_broker(
            settings,
            clients=clients,
            clock=clock,
            task_group=tg,
            watcher=watcher,
            caches=(cache, logins, iam_tokens),
            request_deadline=request_deadline,
            on_login_required=login_required,
        )
        control = DaemonControl(settings, broker, notifier, clock, keeper)
        control.apply(settings)
        await tg.start(broker.run)
        try:
            endpoint = Endpoint(
                broker,
                token,
                control.document,
                reload=lambda: control.reload(lambda: load_settings(control.settings.paths)),
                waiting=control.load.waiting,
                grants=keeper.grants,
                sync_grants=keeper.reload,
                now=clock.now,
            )
            async with _serving(settings.server, endpoint, passed, control.load) as (host, port):
                control.listen = f"{host}:{port}"
                if settings.containers.host is not None:
                    # bound now if its address exists, else as soon as it appears
                    control.containers = ContainerListener(
                        settings.containers,
                        broker=broker,
                        admin_token=token,
                        grants=keeper.grants,
                        waiting=control.load.waiting,
                        server=settings.server,
                        now=clock.now,
                    )
                    await tg.start(control.containers.run)
                handle = DaemonHandle(host, port, token, broker, control)
                if watchdog is not None:
                    tg.start_soon(run_watchdog, notifier, watchdog)
                broker.on_activity = control.publish_status
                notifier.ready(control.status_line())
                log.info(
                    "credd_ready",
                    listen=handle.url,
                    token_file=str(settings.server.token_file),
                    profiles=len(settings.profiles),
                    sessions=len(settings.sessions),
                    scoped_tokens=len(keeper.grants),
                    socket_activated=bool(passed),
                    event_loop=type(asyncio.get_running_loop()).__module__,
                )
                task_status.started(handle)
                await control.stopping.wait()
                notifier.stopping()
                log.info("credd_stopping")
            # leaving _serving stopped listening and let in-flight requests finish
        finally:
            if not control.stopping.is_set():  # cancelled rather than told to stop
                notifier.stopping()
            tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def _serving(
    server: ServerSettings, endpoint: Endpoint, passed: list[socket.socket], load: EndpointLoad
) -> AsyncIterator[tuple[str, int]]:
    """Listen (on a socket systemd passed, else by binding) until the block ends, then drain.

    The listeners are asyncio's own, each with aiohttp's protocol behind the
    connection limit (credd/limits.py); the runner drains and closes connections.
    """
    web_server, connection = make_server(endpoint, idle_seconds=server.idle_connection_seconds)
    runner = web.ServerRunner(web_server, handle_signals=False, shutdown_timeout=DRAIN_SECONDS)
    await runner.setup()
    protocol = load.protocol(connection)
    loop = asyncio.get_running_loop()
    listeners: list[asyncio.Server] = []
    try:
        try:
            if passed:
                for sock in passed:
                    listeners.append(await loop.create_server(protocol, sock=sock, backlog=BACKLOG))
            else:
                listeners.append(
                    await loop.create_server(protocol, server.host, server.port, backlog=BACKLOG)
                )
        except OSError as exc:
            raise CreddError(
                f"cannot listen on {server.listen}: {exc.strerror or exc}",
                hint="is another credd running? change [server] listen in the credd config",
            ) from exc
        host, port = listeners[0].sockets[0].getsockname()[:2]
        if server.port == 0 and not passed:
            atomic_write(server.address_file, f"{host}:{port}".encode("ascii"))
        yield str(host), int(port)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(DRAIN_SECONDS + 1):
            for listener in listeners:
                listener.close()
            if server.port == 0 and not passed:
                with contextlib.suppress(OSError):
                    server.address_file.unlink()
            await runner.cleanup()


@contextlib.asynccontextmanager
async def running_daemon(
    settings: Settings,
    *,
    clock: Clock | None = None,
    request_deadline: float = DEFAULT_REQUEST_DEADLINE,
) -> AsyncIterator[DaemonHandle]:
    """The daemon in this process, for as long as the ``async with`` lasts (tests, demo)."""
    async with anyio.create_task_group() as tg:
        handle: DaemonHandle = await tg.start(
            functools.partial(run_daemon, settings, clock=clock, request_deadline=request_deadline)
        )
        try:
            yield handle
        finally:
            handle.stop()


async def fetch_once(
    settings: Settings, profile: str, *, clock: Clock | None = None
) -> RoleCredentials:
    """``profile``'s credentials, fetched in this process as the daemon fetches them.

    For a command that finds no daemon running: the same broker and sessions,
    but only those ``profile`` needs (:func:`needed_by`), read the shared caches
    (and renew a token that is due, as the daemon would, writing it back);
    nothing listens, nothing is prefetched, no desktop notification is sent,
    and everything stops once the answer is in. Raises what
    :meth:`Broker.credentials` raises.
    """
    clock = clock or SystemClock()
    sessions, profiles = needed_by(settings, profile)
    try:
        async with aws_clients(settings) as clients, anyio.create_task_group() as tg:
            # Nothing here outlives the answer: its watcher needs no running.
            broker = make_broker(
                settings, clients=clients, clock=clock, task_group=tg, watcher=CacheWatcher()
            )
            broker.apply(
                sessions=sessions,
                profiles=profiles,
                sources=settings.sources,
                refresh=dataclasses.replace(settings.refresh, prefetch=frozenset()),
            )
            await tg.start(broker.run)
            creds = await broker.credentials(profile, wait=None)
            tg.cancel_scope.cancel()  # a renewal under way is shielded: it ends first
    except* CreddError as failed:  # one error, as the endpoint would have answered it
        raise failed.exceptions[0] from None
    return creds


def needed_by(
    settings: Settings, profile: str
) -> tuple[dict[str, SessionSpec], dict[str, ServedProfile]]:
    """The sessions and served profiles ``profile``'s credentials come from, itself included.

    Its source profiles (a role chain, the signer of an identity-enhanced role or
    of a CreateTokenWithIAM call) and sessions (its own, a token exchange's
    subject), followed to the end.
    """
    sessions: dict[str, SessionSpec] = {}
    profiles: dict[str, ServedProfile] = {}
    wanted: list[tuple[str, str | None]] = [("profile", profile)]
    while wanted:
        kind, name = wanted.pop()
        if name is None:
            continue
        if kind == "profile" and name in settings.profiles and name not in profiles:
            spec = profiles[name] = settings.profiles[name]
            if isinstance(spec, AssumeRoleProfile | IdentityEnhancedProfile):
                wanted.append(("profile", spec.source_profile))
            if not isinstance(spec, AssumeRoleProfile):
                wanted.append(("session", spec.session))
        elif kind == "session" and name in settings.sessions and name not in sessions:
            session = sessions[name] = settings.sessions[name]
            if isinstance(session, TrustedIdentitySpec):
                wanted += [
                    ("profile", session.source_profile),
                    ("session", session.subject_session),
                ]
    return sessions, profiles
