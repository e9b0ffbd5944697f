"""The composition root: settings in, a running daemon out.

Builds the caches, the AWS clients, one session per sign-in, the broker and
the HTTP endpoint, all inside one task group; readiness is explicit
(:func:`run_daemon` reports its :class:`DaemonHandle` through ``task_status``
once the endpoint is bound), and shutdown is cancellation, with the endpoint's
cleanup shielded under a deadline.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import structlog
from aiohttp import web

from credd import __version__
from credd.aws import AwsClients
from credd.broker import DEFAULT_REQUEST_DEADLINE, Broker
from credd.clock import Clock, SystemClock
from credd.config import Settings
from credd.errors import CreddError
from credd.server import make_app
from credd.sessions.identity_center import IdentityCenterSession
from credd.status import status_document
from credd.store import JsonCacheDir, SsoCache, format_timestamp

log = structlog.get_logger(__name__)

TOKEN_BYTES = 32
SHUTDOWN_DEADLINE_SECONDS = 5.0


@dataclass(frozen=True)
class DaemonHandle:
    host: str
    port: int
    token: str
    broker: Broker

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def _atomic_write(path: Path, data: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def ensure_endpoint_token(path: Path) -> str:
    """The endpoint token: kept if present and sound, else made and written (0600, no newline)."""
    try:
        existing = path.read_text(encoding="ascii")
        if len(existing) >= 43 and existing.isprintable() and existing.strip() == existing:
            return existing
    except (OSError, UnicodeDecodeError):
        pass
    token = secrets.token_urlsafe(TOKEN_BYTES)  # 43 characters, 256 bits
    _atomic_write(path, token)  # mkstemp makes it 0600
    return token


def sso_cache(settings: Settings) -> SsoCache:
    paths = settings.paths
    return SsoCache(
        JsonCacheDir(paths.sso_cache_dir, paths.lock_dir, paths.state_dir / "unreadable")
    )


def aws_clients(settings: Settings) -> AwsClients:
    return AwsClients(settings.paths.aws_config_file, settings.paths.aws_credentials_file)


async def run_daemon(
    settings: Settings,
    *,
    clock: Clock | None = None,
    request_deadline: float = DEFAULT_REQUEST_DEADLINE,
    task_status: anyio.abc.TaskStatus[DaemonHandle] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled."""
    clock = clock or SystemClock()
    token = ensure_endpoint_token(settings.server.token_file)
    cache = sso_cache(settings)
    clients = aws_clients(settings)
    started = clock.now()
    async with anyio.create_task_group() as tg:
        sessions = {
            name: IdentityCenterSession(
                spec,
                cache=cache,
                clients=clients,
                clock=clock,
                task_group=tg,
                margin_seconds=settings.refresh.token_margin_seconds,
            )
            for name, spec in settings.sessions.items()
        }
        broker = Broker(
            sessions=sessions,
            profiles=settings.profiles,
            sources=settings.sources,
            clients=clients,
            clock=clock,
            task_group=tg,
            refresh=settings.refresh,
            request_deadline=request_deadline,
        )
        await tg.start(broker.run)
        listen: dict[str, Any] = {}

        def document() -> dict[str, Any]:
            return status_document(
                daemon={
                    "running": True,
                    "version": __version__,
                    "pid": os.getpid(),
                    "listen": listen.get("address"),
                    "started_at": format_timestamp(started),
                    "now": format_timestamp(clock.now()),
                },
                sessions=broker.session_statuses(),
                profiles=broker.profile_statuses(),
                unserved=settings.unserved,
            )

        async with _serving(settings, make_app(broker, token, document)) as (host, port):
            listen["address"] = f"{host}:{port}"
            handle = DaemonHandle(host=host, port=port, token=token, broker=broker)
            log.info(
                "credd_ready",
                listen=handle.url,
                token_file=str(settings.server.token_file),
                profiles=len(settings.profiles),
                sessions=len(sessions),
            )
            task_status.started(handle)
            await anyio.sleep_forever()


@contextlib.asynccontextmanager
async def _serving(settings: Settings, app: web.Application) -> AsyncIterator[tuple[str, int]]:
    server = settings.server
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, server.host, server.port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise CreddError(
                f"cannot listen on {server.listen}: {exc.strerror or exc}",
                hint="is another credd running? change [server] listen in the credd config",
            ) from exc
        host, port = runner.addresses[0][:2]
        if server.port == 0:
            _atomic_write(server.address_file, f"{host}:{port}")
        yield str(host), int(port)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_DEADLINE_SECONDS):
            if server.port == 0:
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
            tg.cancel_scope.cancel()
