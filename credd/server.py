"""The HTTP surface on the loopback address: routes, the token check, the Host check.

Every answer comes from memory; only a profile with nothing valid held makes
a request wait, and then for at most the broker's request deadline. Errors
carry ``code``/``message`` and ``Code``/``Message`` (Java reads the first
pair, JS the second: protocols.md 8.2, 8.3).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web

from credd.broker import Broker
from credd.errors import CreddError, LoginRequired, NotServed, UpstreamError
from credd.store import format_timestamp

log = structlog.get_logger(__name__)

BROKER = web.AppKey("broker", Broker)
TOKEN = web.AppKey("token", bytes)
STATUS: web.AppKey[Callable[[], dict[str, Any]]] = web.AppKey("status")
#: re-reads the configuration; ``True`` once the new one is in service
RELOAD: web.AppKey[Callable[[], bool] | None] = web.AppKey("reload")
UNAUTHENTICATED = frozenset({"/healthz"})
_HEALTHY = json.dumps({"status": "ok"}).encode()
_MAX_ECHO = 80

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str) -> web.Response:
    body = {"code": code, "message": message, "Code": code, "Message": message}
    return web.Response(status=status, body=json.dumps(body), content_type="application/json")


def _json(document: Mapping[str, Any]) -> web.Response:
    return web.Response(body=json.dumps(document), content_type="application/json")


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


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host check (DNS rebinding), browser-origin check, token check, error bodies."""
    host = request.headers.get("Host")
    if host is None:
        return error_response(400, "BadRequest", "a Host header is required")
    if not _loopback_host(host):
        return error_response(403, "Forbidden", "the Host header must name a loopback address")
    if "Origin" in request.headers:
        return error_response(403, "Forbidden", "requests from web pages are refused")
    if request.path not in UNAUTHENTICATED:
        supplied = request.headers.get("Authorization", "")
        expected = request.app[TOKEN]
        if not hmac.compare_digest(supplied.encode("utf-8", "surrogateescape"), expected):
            return error_response(401, "Unauthorized", "missing or wrong Authorization token")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        reason = exc.reason or "error"
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status, "BadRequest")
        if exc.status == 404:
            reason = f"no route {_echo(request.path)}"
        return error_response(exc.status, code, reason)
    except NotServed as exc:
        return error_response(404, "NotFound", str(exc))
    except LoginRequired as exc:
        return error_response(503, "LoginRequired", str(exc))
    except UpstreamError as exc:
        return error_response(503, "UpstreamUnavailable", str(exc))
    except CreddError as exc:
        return error_response(503, exc.code, str(exc))
    except Exception:
        log.exception("request_failed", path=_echo(request.path))
        return error_response(500, "InternalError", "credd failed to answer; see its log")


async def credentials(request: web.Request) -> web.Response:
    name = request.match_info["profile"]
    broker = request.app[BROKER]
    creds = broker.usable(name)
    if creds is None:
        if not broker.knows(name):
            if broker.bearer_session(name) is not None:
                raise NotServed(
                    f"{_echo(name)!r} serves only a bearer token (its [profiles.{_echo(name)}] "
                    f"has no role_arn): GET /v1/tokens/{_echo(name)} or credd token {_echo(name)}"
                )
            raise NotServed(f"no profile named {_echo(name)!r} is served; see credd status")
        creds = await broker.credentials(name)
    return web.Response(body=creds.body, content_type="application/json")


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(body=_HEALTHY, content_type="application/json")


async def status(request: web.Request) -> web.Response:
    return _json(request.app[STATUS]())


async def token(request: web.Request) -> web.Response:
    """A trusted-identity session's access token, for applications that call APIs with it."""
    name = request.match_info["name"]
    broker = request.app[BROKER]
    session = broker.bearer_session(name)
    if session is None:
        raise NotServed(f"no trusted-identity session named {_echo(name)!r}; see credd status")
    bearer = await broker.bearer_token(session)
    document = {
        "accessToken": bearer.access_token.reveal(),
        "tokenType": bearer.token_type,
        "expiresAt": format_timestamp(bearer.expires_at),
        "scopes": list(bearer.scopes),
    }
    return _json(document)


async def sync_session(request: web.Request) -> web.Response:
    """After ``credd login``/``logout`` in another process: re-read that session's cache."""
    state = request.app[BROKER].sync_session(request.match_info["name"])
    return _json({"name": state.name, "state": state.state})


async def reload_config(request: web.Request) -> web.Response:
    """After ``credd login --signin`` wrote a profile: re-read both configurations (as SIGHUP)."""
    reload = request.app[RELOAD]
    if reload is None or not reload():
        raise CreddError(
            "the configuration could not be reloaded; the running one is kept",
            hint="see the daemon's log",
        )
    return _json({"reloaded": True})


def make_app(
    broker: Broker,
    endpoint_token: str,
    status_document: Callable[[], dict[str, Any]],
    *,
    reload: Callable[[], bool] | None = None,
) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    app[BROKER] = broker
    app[TOKEN] = endpoint_token.encode()
    app[STATUS] = status_document
    app[RELOAD] = reload
    app.router.add_get("/v1/credentials/{profile}", credentials, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/v1/status", status, allow_head=False)
    app.router.add_get("/v1/tokens/{name}", token, allow_head=False)
    app.router.add_post("/v1/sessions/{name}/sync", sync_session)
    app.router.add_post("/v1/reload", reload_config)
    return app
