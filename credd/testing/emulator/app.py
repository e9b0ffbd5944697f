"""The :class:`Emulator`: one aiohttp application, one loopback port, three services.

sso-oidc, the SSO portal, STS and Sign-In (with the console's federation
endpoint, :mod:`.federation`) share a single base URL, so one address serves
``AWS_ENDPOINT_URL_SSO_OIDC``, ``AWS_ENDPOINT_URL_SSO``, ``AWS_ENDPOINT_URL_STS``,
``AWS_ENDPOINT_URL_SIGNIN`` (and plain ``AWS_ENDPOINT_URL``); their paths do not
collide (protocols.md §10).
This module wires the services, owns the server's lifecycle and offers the
Python controls tests use; :mod:`.control` offers the same over HTTP.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from credd.clock import Clock, SystemClock
from credd.secret import Secret

from . import identities
from .config import Directory, EmulatorConfig, default_directory
from .consent import ConsentPages, decide_device
from .control import control_routes
from .errors import ERROR_TYPE_HEADER
from .faults import FaultPlan
from .federation import FederationService
from .issuer import TokenIssuer
from .oidc import OidcService
from .operations import Operation, Service, request_ids
from .portal import PortalService
from .runtime import Runtime
from .signin import SigninService
from .state import State
from .sts import StsService

#: in-flight requests (a fault's latency, say) get this long at shutdown
SHUTDOWN_TIMEOUT: Final = 1.0


@dataclass(frozen=True)
class AccessKey:
    """Long-term IAM user keys registered with :meth:`Emulator.create_access_key`."""

    access_key_id: str
    secret_access_key: Secret
    arn: str


class Emulator:
    """A strict local stand-in for IAM Identity Center (OIDC + portal) and STS.

    Every expiry reads ``clock.now()``: with a :class:`~credd.clock.ManualClock`
    a test expires tokens, codes and credentials by advancing it.
    """

    def __init__(
        self,
        clock: Clock | None = None,
        *,
        config: EmulatorConfig | None = None,
        directory: Directory | None = None,
    ) -> None:
        self._rt = Runtime(
            clock=clock or SystemClock(),
            config=config or EmulatorConfig(),
            directory=directory or default_directory(),
        )
        self._issuer = TokenIssuer(self._rt.clock)
        self._services: tuple[Service, ...] = (
            OidcService(self._rt, self._issuer),
            ConsentPages(self._rt),
            PortalService(self._rt),
            StsService(self._rt),
            SigninService(self._rt),
            FederationService(self._rt),
        )
        self._rt.faults.allow(op.name for op in self.operations)
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # what tests look at and turn ------------------------------------------------

    @property
    def operations(self) -> tuple[Operation, ...]:
        return tuple(op for service in self._services for op in service.operations)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` once started."""
        if self._url is None:
            raise RuntimeError("the emulator is not running")
        return self._url

    @property
    def clock(self) -> Clock:
        return self._rt.clock

    @property
    def config(self) -> EmulatorConfig:
        """Live settings: change lifetimes or ``auto_approve`` at any time."""
        return self._rt.config

    @property
    def directory(self) -> Directory:
        return self._rt.directory

    @directory.setter
    def directory(self, directory: Directory) -> None:
        """An administrator changes who may use what: the next request sees the new directory."""
        self._rt.directory = directory

    @property
    def calls(self) -> Counter[str]:
        """Requests per operation name that reached the operation, faulted ones included."""
        return self._rt.calls

    @property
    def in_flight(self) -> Counter[str]:
        """Requests of each operation being answered now (a fault's latency included)."""
        return self._rt.in_flight

    @property
    def peak_in_flight(self) -> Counter[str]:
        """The most requests of each operation answered at once (a fault's latency included)."""
        return self._rt.peak_in_flight

    @property
    def faults(self) -> FaultPlan:
        return self._rt.faults

    @property
    def issuer(self) -> TokenIssuer:
        """The trusted token issuer it hosts: ``mint(sub=...)`` makes jwt-bearer assertions."""
        return self._issuer

    @property
    def state(self) -> State:
        """Everything issued so far; for assertions, not for changing."""
        return self._rt.state

    @property
    def auto_approve(self) -> bool:
        return self._rt.config.auto_approve

    @auto_approve.setter
    def auto_approve(self, value: bool) -> None:
        self._rt.config.update({"auto_approve": value})

    def approve_device(self, user_code: str, user: str | None = None) -> None:
        """The user's "Allow" on the device page (default user unless named).

        Raises ``LookupError`` for an unknown, expired or already decided code.
        """
        decide_device(self._rt, user_code, approve=True, user=user)

    def deny_device(self, user_code: str) -> None:
        """The user's "Deny": the client's next poll gets ``AccessDeniedException``."""
        decide_device(self._rt, user_code, approve=False)

    def revoke_sessions(self) -> int:
        """An administrator revokes every session: refresh and access tokens stop working."""
        return self._rt.state.revoke_sessions()

    def expire_refresh_tokens(self) -> None:
        """Every session ends now for refreshing; issued access tokens run their course."""
        self._rt.state.expire_refresh_tokens(self._rt.now())

    def signin_change_user_credentials(self) -> int:
        """The Sign-In user changes their password: live ``aws login`` sessions stop refreshing.

        Their next refresh gets 403 ``USER_CREDENTIALS_CHANGED``; returns how many sessions.
        """
        return self._rt.state.signin.change_user_credentials()

    def signin_deny_permission(self, denied: bool = True) -> None:
        """Take away (or give back) the Sign-In user's ``aws login`` permission.

        While denied, both grants of CreateOAuth2Token get 403 ``INSUFFICIENT_PERMISSIONS``;
        the same as setting ``config.signin_permission``.
        """
        self._rt.config.update({"signin_permission": not denied})

    def create_access_key(
        self, user_name: str = "ci", account_id: str = "111111111111"
    ) -> AccessKey:
        """Static IAM user keys, accepted by STS: ``arn:aws:iam::ACCT:user/NAME``."""
        principal = identities.iam_user(account_id, user_name)
        issued = self._rt.state.add_access_key(principal)
        return AccessKey(issued.access_key_id, issued.secret_access_key, principal.arn)

    # the server -----------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[request_ids])
        for service in self._services:
            app.add_routes(service.routes())
        app.add_routes(control_routes(self))
        app.router.add_route("*", "/{tail:.*}", _unknown_operation)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (loopback only; port 0 picks a free one); return the URL."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        address = ipaddress.ip_address(host)
        if not address.is_loopback:
            raise ValueError(f"the emulator listens on loopback addresses only, not {host}")
        sock = socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = sock.getsockname()[1]
        netloc = f"[{host}]" if address.version == 6 else host
        self._url = f"http://{netloc}:{bound_port}"
        return self._url

    async def close(self) -> None:
        runner, self._runner, self._url = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    @asynccontextmanager
    async def running(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Emulator]:
        await self.start(host, port)
        try:
            yield self
        finally:
            await self.close()


async def _unknown_operation(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        {"message": f"No operation at {request.method} {request.path}"},
        status=404,
        headers={ERROR_TYPE_HEADER: "UnknownOperationException"},
    )
