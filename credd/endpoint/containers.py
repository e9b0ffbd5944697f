"""The container listener: ``[containers] listen``, bound while its address exists.

Containers cannot reach the host's loopback, and SDKs take plain HTTP only from
loopback and the link-local agent addresses (protocols.md 8.2), so credd also
serves on one such address, 169.254.170.2 on a bridge that containers join
(interface.md, "Containers"; issue 12). Behind it is the same request handler
as the loopback endpoint (:class:`credd.endpoint.server.Endpoint`, built with
``container_hosts``): only a scoped token's ``GET /v1/credentials/PROFILE``, the
capability paths ``/v2/credentials/<id>`` and ``/healthz``; the admin token is
refused there.

The address usually belongs to a bridge that comes and goes (``credd container
setup`` made it, or Docker's network does, and Docker may start after credd), so
the listener is a small state machine rather than a bind at start:

* **waiting**: no interface holds the address (or a bind failed, with the error);
* **bound**: listening on it.

It looks (tries to bind, or checks that the bound address still exists) at start
and whenever :class:`credd.platform.addresses.AddressWatch` says addresses
changed: no polling while netlink works. A bind that failed for another reason
(the port taken) is tried again every :data:`RETRY_SECONDS`, as is everything when
netlink is unavailable. A vanished address is released at once, so the same
address coming back (a bridge made again) is bound afresh.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from datetime import datetime
from typing import Any

import anyio
import anyio.abc
import structlog
from aiohttp import web

from credd.config.settings import ContainersSettings, ServerSettings
from credd.endpoint.grants import Grants
from credd.endpoint.limits import ConnectionLimit, WaitLimit
from credd.endpoint.server import Endpoint, make_server
from credd.engine.broker import Broker
from credd.files.store import format_timestamp
from credd.platform.addresses import Address, AddressWatch, absent
from credd.platform.containers import RELATIVE_URI_PORT

log = structlog.get_logger(__name__)

#: how often a failed bind is tried again, and everything is looked at without netlink
RETRY_SECONDS = 60.0
#: how long a stop waits for the container listener's in-flight requests
DRAIN_SECONDS = 5.0
#: pending connections the kernel queues: a laptop's containers, not a test runner's storm
BACKLOG = 128


def accepted_hosts(host: str, port: int) -> frozenset[str]:
    """The ``Host`` header values of requests meant for a listener on ``host:port``.

    The address with the listener's port, with port 80 (a client of
    ``RELATIVE_URI`` reaches the listener through the setup's redirect, and says
    port 80 or none) and with none. Lower case: the handler lowers what it gets.
    For a zoned IPv6 address, the zone both as written and percent-encoded
    (RFC 6874); names are never accepted (no DNS rebinding).
    """
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv6Address):
        bare = str(address).split("%", 1)[0]
        zone = address.scope_id
        names = [f"[{bare}]"]
        if zone:
            names += [f"[{bare}%{zone}]", f"[{bare}%25{zone}]"]
    else:
        names = [str(address)]
    ports = ("", f":{port}", f":{RELATIVE_URI_PORT}")
    return frozenset(f"{name}{suffix}".lower() for name in names for suffix in ports)


class ContainerListener:
    """``[containers] listen``: the state machine above, and its status for ``credd status``."""

    def __init__(
        self,
        settings: ContainersSettings,
        *,
        broker: Broker,
        admin_token: str,
        grants: Grants,
        waiting: WaitLimit,
        server: ServerSettings,
        now: Callable[[], datetime],
        watch: Callable[[], AddressWatch] = AddressWatch,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        if settings.host is None or settings.listen is None:
            raise ValueError("no [containers] listen address")
        self.host, self.port, self.listen = settings.host, settings.port, settings.listen
        self.endpoint = Endpoint(
            broker,
            admin_token,
            lambda: {},  # never asked: /v1/status is refused on this listener
            waiting=waiting,
            grants=grants,
            now=now,
            container_hosts=accepted_hosts(self.host, self.port),
        )
        self._server_settings = server
        self._now = now
        self._watch = watch
        self._retry_seconds = retry_seconds
        self._listener: asyncio.Server | None = None
        self._bound: Address | None = None
        self._connections: ConnectionLimit | None = None
        #: "waiting" or "bound", since when, and why the last bind failed (``None``: it
        #: did not, or the address simply is not there)
        self.state = "waiting"
        self.since = now()
        self.last_error: str | None = None
        #: why addresses are looked at on a timer rather than watched, if they are
        self.watch_problem: str | None = None

    @property
    def bound(self) -> bool:
        return self._listener is not None

    def describe(self) -> dict[str, Any]:
        """What ``credd status`` shows of the listener."""
        document: dict[str, Any] = {
            "listen": self.listen,
            "state": self.state,
            "since": format_timestamp(self.since),
            "last_error": self.last_error,
            "watch": "netlink" if self.watch_problem is None else self.watch_problem,
            "connections": self._connections.open if self._connections else 0,
        }
        if self.state == "waiting" and self.last_error is None:
            document["action"] = (
                f"no interface holds {self.host} yet; run: credd container setup "
                "(or start the Docker network that holds it)"
            )
        return document

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Bind now if the address exists, then follow it until cancelled."""
        server = self._server_settings
        web_server, connection = make_server(
            self.endpoint, idle_seconds=server.idle_connection_seconds
        )
        runner = web.ServerRunner(web_server, handle_signals=False, shutdown_timeout=DRAIN_SECONDS)
        await runner.setup()
        # a limit of its own: containers cannot take the slots the host's SDKs need
        self._connections = ConnectionLimit(connection, server.max_connections)
        try:
            with self._watch() as watch:
                self.watch_problem = None if watch.watching else watch.problem
                if watch.problem is not None:
                    log.warning(
                        "container_listener_polls",
                        reason=watch.problem,
                        every_seconds=self._retry_seconds,
                    )
                await self.look()
                if not self.bound:
                    log.info(
                        "container_listener_waiting", listen=self.listen, error=self.last_error
                    )
                task_status.started()
                while True:
                    steady = watch.watching and self.last_error is None
                    await watch.changed(None if steady else self._retry_seconds)
                    self.watch_problem = None if watch.watching else watch.problem
                    await self.look()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(DRAIN_SECONDS + 1):
                self._release()
                await runner.cleanup()

    async def look(self) -> None:
        """Bind if the address is there and not bound; release it if it went."""
        address = Address.resolve(self.host, self.port)
        if self._listener is not None:
            if address == self._bound and address is not None and _still_there(address):
                return
            self._release()
            self._enter("waiting", None)
            log.info("container_listener_released", listen=self.listen, reason="address gone")
        if address is None:  # a zone naming no interface (yet)
            self._enter("waiting", None)
            return
        try:
            sock = address.socket()
        except OSError as exc:
            error = None if absent(exc) else f"cannot listen on {self.listen}: {exc.strerror}"
            if error is not None and error != self.last_error:
                # one line, no traceback: the error says it all
                log.error("container_listener_failed", error=error)  # noqa: TRY400
            self._enter("waiting", error)
            return
        assert self._connections is not None
        try:
            self._listener = await asyncio.get_running_loop().create_server(
                self._connections, sock=sock, backlog=BACKLOG
            )
        except OSError as exc:
            sock.close()
            self._enter("waiting", f"cannot listen on {self.listen}: {exc.strerror or exc}")
            return
        self._bound = address
        self._enter("bound", None)
        log.info("container_listener_bound", listen=self.listen)

    def _enter(self, state: str, error: str | None) -> None:
        if state != self.state:
            self.state, self.since = state, self._now()
        self.last_error = error

    def _release(self) -> None:
        """Stop listening. Connections already open end on their own: on a vanished
        address nothing more can reach them, and the idle timeout closes them."""
        listener, self._listener, self._bound = self._listener, None, None
        if listener is not None:
            listener.close()


def _still_there(address: Address) -> bool:
    try:
        return address.exists()
    except OSError:
        return True  # cannot tell (not "absent"): keep serving rather than flap
