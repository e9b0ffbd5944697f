"""The HTTP surface on the loopback address: routes, the token check, the Host check.

Every answer comes from memory; only a profile with nothing valid held makes
a request wait, and then for at most the broker's request deadline. Errors
carry ``code``/``message`` and ``Code``/``Message`` (Java reads the first
pair, JS the second: protocols.md 8.2, 8.3), malformed HTTP included.

Two kinds of token (interface.md, "Tokens"): the admin token unlocks every
route; a scoped token (:mod:`credd.endpoint.grants`) unlocks ``GET
/v1/credentials/PROFILE`` for its one profile, and anything else it asks for
is 403. The admin token is compared first, so the ``credd`` command's own
requests cost what they did; a scoped token then costs one SHA-256 and one
dictionary lookup.

The same handler serves the container listener (:mod:`credd.endpoint.containers`),
built with ``container_hosts``: there the ``Host`` must name the listener's own
address, the admin token is refused (403: a container must never hold it), a
scoped token fetches its profile as here, and ``GET /v2/credentials/<id>`` serves
the grant whose token is ``<id>`` without any header, for SDKs that know only
``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`` (ECS's unguessable path, issue 12).

A connection is closed after a 401, a 403 or a ``/healthz`` answer (issue 11):
those are what a client without a usable token gets, and kept alive they would
hold slots of ``max_connections`` that an SDK with a token then cannot have.

The endpoint sits on aiohttp's low-level server rather than on a
``web.Application``: six fixed routes need no router or middleware chain, and
the credentials route is then the fewest steps aiohttp allows between the
parsed request and the prebuilt answer (bench/endpoint.py measures it).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import http
import ipaddress
import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import unquote

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from credd.config.settings import DEFAULT_IDLE_CONNECTION, DEFAULT_MAX_WAITING_REQUESTS
from credd.endpoint.container_env import CAPABILITY_PATH
from credd.endpoint.grants import Grants
from credd.endpoint.limits import RETRY_AFTER_SECONDS, WaitLimit
from credd.engine.broker import Broker
from credd.errors import (
    CreddError,
    InternalFailure,
    LoginRequired,
    NotServed,
    TooManyRequests,
    UpstreamError,
)
from credd.files.store import format_timestamp

log = structlog.get_logger(__name__)

_HEALTHY = json.dumps({"status": "ok"}).encode()
_MAX_ECHO = 80
_CREDENTIALS = "/v1/credentials/"
_TOKENS = "/v1/tokens/"
_SESSIONS = "/v1/sessions/"
_JSON = "application/json"
#: aiohttp's bounds on a request's head, stated here because the endpoint relies on them
MAX_LINE_BYTES = 8190
MAX_FIELD_BYTES = 8190
MAX_HEADERS = 128

Route = Callable[[web.BaseRequest, str], Awaitable[web.StreamResponse]]
R = TypeVar("R", bound=web.StreamResponse)


def error_response(status: int, code: str, message: str) -> web.Response:
    body = {"code": code, "message": message, "Code": code, "Message": message}
    return web.Response(status=status, body=json.dumps(body), content_type=_JSON)


def _closing(response: R) -> R:
    """``response``, sent with ``Connection: close`` and the connection closed after it."""
    response.force_close()
    return response


def _unauthorized() -> web.Response:
    return _closing(error_response(401, "Unauthorized", "missing or wrong Authorization token"))


def _json(document: Mapping[str, Any]) -> web.Response:
    return web.Response(body=json.dumps(document), content_type=_JSON)


@functools.lru_cache(maxsize=256)
def _loopback_host(host: str) -> bool:
    """Is the ``Host`` header a loopback name or address (with any port)?

    Cached: every SDK sends the same few Host values, and parsing an address
    is a good share of a request's cost (bench/endpoint.py --profile).
    """
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _echo(name: str) -> str:
    return name if len(name) <= _MAX_ECHO else name[:_MAX_ECHO] + "..."


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _name(raw: str) -> str | None:
    """One path segment, percent-decoded; ``None`` unless it is exactly one non-empty segment."""
    if not raw or "/" in raw:
        return None
    return unquote(raw, errors="surrogateescape")


class Endpoint:
    """The request handler: Host, origin and token checks, routing, error bodies."""

    def __init__(
        self,
        broker: Broker,
        endpoint_token: str,
        status_document: Callable[[], dict[str, Any]],
        *,
        reload: Callable[[], bool] | None = None,
        waiting: WaitLimit | None = None,
        grants: Grants | None = None,
        sync_grants: Callable[[], Awaitable[int]] | None = None,
        now: Callable[[], datetime] = _utc_now,
        container_hosts: frozenset[str] | None = None,
    ) -> None:
        self._broker = broker
        self._token = endpoint_token.encode()
        self._status_document = status_document
        #: re-reads the configuration; ``True`` once the new one is in service
        self._reload = reload
        self.waiting = waiting or WaitLimit(DEFAULT_MAX_WAITING_REQUESTS)
        #: the scoped tokens in force, and what re-reads them from their file
        self._grants = grants if grants is not None else Grants()
        self._sync_grants = sync_grants
        self._now = now
        #: the container listener's: the ``Host`` values it accepts (lower case); ``None``:
        #: the loopback endpoint, which accepts any loopback name or address
        self._container_hosts = container_hosts
        self._host_allowed: Callable[[str], bool] = (
            _loopback_host if container_hosts is None else container_hosts.__contains__
        )
        self._host_rule = (
            "the Host header must name a loopback address"
            if container_hosts is None
            else "the Host header must name the container listener's address"
        )
        #: (method, path) of the routes without a name in them
        self._fixed: dict[str, tuple[str, Route]] = {
            "/healthz": ("GET", self._healthz),
            "/v1/status": ("GET", self._status),
            "/v1/reload": ("POST", self._reload_config),
            "/v1/grants/sync": ("POST", self._reload_grants),
        }

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        headers = request.headers
        host = headers.get("Host")
        if host is None:
            return _closing(error_response(400, "BadRequest", "a Host header is required"))
        if not self._host_allowed(host if self._container_hosts is None else host.lower()):
            return _closing(error_response(403, "Forbidden", self._host_rule))
        if "Origin" in headers:
            return _closing(error_response(403, "Forbidden", "requests from web pages are refused"))
        path = request.rel_url.raw_path
        try:
            if path == "/healthz":
                return _closing(await self._route(request, path))
            if self._container_hosts is not None:
                return await self._container(request, path)
            supplied = headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(supplied, self._token):
                return await self._scoped(request, path, supplied)
            if path.startswith(_CREDENTIALS):  # the hot path: no lookup before it
                name = _name(path[len(_CREDENTIALS) :])
                if name is not None:
                    if request.method != "GET":
                        return _not_allowed("GET")
                    return await self._credentials(name)
            return await self._route(request, path)
        except NotServed as exc:
            return error_response(404, "NotFound", str(exc))
        except LoginRequired as exc:
            return error_response(503, "LoginRequired", str(exc))
        except UpstreamError as exc:
            return error_response(503, "UpstreamUnavailable", str(exc))
        except TooManyRequests as exc:
            refused = error_response(429, exc.code, str(exc))
            refused.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return refused
        except CreddError as exc:
            return error_response(503, exc.code, str(exc))
        except Exception as exc:
            failure = InternalFailure(exc)
            # no traceback: an exception's message may quote a token
            log.error("request_failed", path=_echo(request.path), error=failure.message)  # noqa: TRY400
            return error_response(500, failure.code, "credd failed to answer; see its log")

    async def _scoped(
        self, request: web.BaseRequest, path: str, supplied: bytes
    ) -> web.StreamResponse:
        """Not the admin token: a scoped token's one route, else 403; no live grant: 401."""
        now = self._now()
        grant = self._grants.check(supplied, now)
        if grant is None:
            return _unauthorized()
        if (
            request.method != "GET"
            or not path.startswith(_CREDENTIALS)
            or _name(path[len(_CREDENTIALS) :]) != grant.profile
        ):
            # names no profile: the holder learns nothing of what else is served
            return _closing(
                error_response(
                    403, "Forbidden", "a scoped token fetches only its own profile's credentials"
                )
            )
        self._grants.used(grant, now)
        return await self._credentials(grant.profile)

    async def _container(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        """The container listener: a capability path, or a scoped token's one route."""
        if path.startswith(CAPABILITY_PATH):
            return await self._capability(request, path[len(CAPABILITY_PATH) :])
        supplied = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if hmac.compare_digest(supplied, self._token):
            return _closing(
                error_response(
                    403,
                    "Forbidden",
                    "the admin token is refused on the container listener; "
                    "give a container a scoped token: credd container env PROFILE",
                )
            )
        return await self._scoped(request, path, supplied)

    async def _capability(self, request: web.BaseRequest, given: str) -> web.StreamResponse:
        """``/v2/credentials/<id>``: the path is the secret, as ECS's is; only a container
        grant's token opens it, and it is never echoed."""
        now = self._now()
        grant = None
        if given and "/" not in given:
            grant = self._grants.check(given.encode("utf-8", "surrogateescape"), now)
        if grant is None or grant.purpose != "container":
            return _closing(
                error_response(
                    404,
                    "NotFound",
                    "no credentials at this path: revoked, expired, or never issued "
                    "(credd container env PROFILE --relative issues one)",
                )
            )
        if request.method != "GET":
            return _not_allowed("GET")
        self._grants.used(grant, now)
        return await self._credentials(grant.profile)

    async def _credentials(self, name: str) -> web.Response:
        creds = self._broker.usable(name)
        if creds is None:
            return await self._fetch(name)
        return web.Response(body=creds.body, content_type=_JSON)

    async def _route(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        method, route, name = self._resolve(path)
        if route is None:
            return error_response(404, "NotFound", f"no route {_echo(unquote(path))}")
        if request.method != method:
            return _not_allowed(method)
        return await route(request, name)

    def _resolve(self, path: str) -> tuple[str, Route | None, str]:
        fixed = self._fixed.get(path)
        if fixed is not None:
            return fixed[0], fixed[1], ""
        if path.startswith(_TOKENS):
            name = _name(path[len(_TOKENS) :])
            if name is not None:
                return "GET", self._bearer_token, name
        elif path.startswith(_SESSIONS) and path.endswith("/sync"):
            name = _name(path[len(_SESSIONS) : -len("/sync")])
            if name is not None:
                return "POST", self._sync_session, name
        return "", None, ""

    async def _fetch(self, name: str) -> web.Response:
        """Nothing valid held for ``name``: wait (bounded) for a fetch, or say why not."""
        broker = self._broker
        if not broker.knows(name):
            if broker.bearer_session(name) is not None:
                raise NotServed(
                    f"{_echo(name)!r} serves only a bearer token (its [profiles.{_echo(name)}] "
                    f"has no role_arn): GET /v1/tokens/{_echo(name)} or credd token {_echo(name)}"
                )
            raise NotServed(f"no profile named {_echo(name)!r} is served; see credd status")
        with self.waiting.slot():
            creds = await broker.credentials(name)
        return web.Response(body=creds.body, content_type=_JSON)

    async def _healthz(self, _request: web.BaseRequest, _name: str) -> web.Response:
        return web.Response(body=_HEALTHY, content_type=_JSON)

    async def _status(self, _request: web.BaseRequest, _name: str) -> web.Response:
        return _json(self._status_document())

    async def _bearer_token(self, _request: web.BaseRequest, name: str) -> web.Response:
        """A trusted-identity session's access token, for applications that call APIs with it."""
        session = self._broker.bearer_session(name)
        if session is None:
            raise NotServed(f"no trusted-identity session named {_echo(name)!r}; see credd status")
        with self.waiting.slot():
            bearer = await self._broker.bearer_token(session)
        return _json(
            {
                "accessToken": bearer.access_token.reveal(),
                "tokenType": bearer.token_type,
                "expiresAt": format_timestamp(bearer.expires_at),
                "scopes": list(bearer.scopes),
            }
        )

    async def _sync_session(self, _request: web.BaseRequest, name: str) -> web.Response:
        """After ``credd login``/``logout`` in another process: re-read that session's cache."""
        state = self._broker.sync_session(name)
        return _json({"name": state.name, "state": state.state})

    async def _reload_grants(self, _request: web.BaseRequest, _name: str) -> web.Response:
        """After ``credd grant``/``revoke``/``env``/``exec`` wrote the grants file: re-read it,
        so that the change is in force when the command returns."""
        if self._sync_grants is None:
            raise CreddError("this endpoint keeps no scoped tokens")
        return _json({"grants": await self._sync_grants()})

    async def _reload_config(self, _request: web.BaseRequest, _name: str) -> web.Response:
        """After ``credd login --signin`` wrote a profile: re-read both configurations."""
        if self._reload is None or not self._reload():
            raise CreddError(
                "the configuration could not be reloaded; the running one is kept",
                hint="see the daemon's log",
            )
        return _json({"reloaded": True})


def _not_allowed(method: str) -> web.Response:
    refused = error_response(405, "MethodNotAllowed", f"only {method} is allowed here")
    refused.headers["Allow"] = method
    return refused


class _Connection(RequestHandler):
    """aiohttp's protocol for one connection; a malformed request gets a JSON error too.

    aiohttp's own answer and log line quote the offending bytes, which may hold the
    endpoint token: neither does here.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        log.debug("bad_request", status=status, error=type(exc).__name__ if exc else None)
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "error"
        code = "InternalError" if status >= 500 else "BadRequest"
        refused = error_response(status, code, f"malformed HTTP request: {reason}")
        refused.force_close()
        return refused


def make_server(
    endpoint: Endpoint, *, idle_seconds: float = DEFAULT_IDLE_CONNECTION
) -> tuple[web.Server, Callable[[], asyncio.Protocol]]:
    """aiohttp's server for ``endpoint``, and the protocol factory for its listeners."""
    options: dict[str, Any] = {
        "keepalive_timeout": idle_seconds,
        "access_log": None,
        "max_line_size": MAX_LINE_BYTES,
        "max_field_size": MAX_FIELD_BYTES,
        "max_headers": MAX_HEADERS,
    }
    loop = asyncio.get_running_loop()
    server = web.Server(endpoint.handle, loop=loop, **options)

    def connection() -> asyncio.Protocol:
        return _Connection(server, loop=loop, **options)

    return server, connection
