"""The emulator's own HTTP controls under ``/_emulator/``, for tests that run it as a process.

They mirror the Python API of :class:`~.app.Emulator` one to one and need no
authentication: the emulator only ever listens on a loopback address.

* ``GET /_emulator/calls`` / ``DELETE /_emulator/calls``: the per-operation counters
* ``GET|POST|DELETE /_emulator/faults``: list, queue (one object or a list of
  objects with the keyword arguments of ``FaultPlan.add``; ``body`` as text), clear
* ``GET|POST /_emulator/config``: read, or change some settings (JSON object)
* ``POST /_emulator/revoke``: revoke every session
* ``POST /_emulator/expire-refresh-tokens``
* ``POST /_emulator/devices/{user_code}/approve`` and ``…/deny``
* ``POST /_emulator/access-keys`` ``{"user_name", "account_id"}``: static IAM keys
* ``POST /_emulator/issuer/mint`` ``{"sub", "aud", "lifetime"}`` (all optional):
  ``{"assertion"}``, a JWT of the hosted trusted token issuer; ``GET
  /_emulator/issuer`` its ``iss``, default ``aud`` and JWK Set
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from .issuer import DEFAULT_SUBJECT

if TYPE_CHECKING:
    from .app import Emulator

ControlHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ControlError(ValueError):
    """A control request that cannot be done; answered 400 with ``{"message"}``."""


def control_routes(emulator: Emulator) -> list[web.RouteDef]:
    def guarded(handler: Callable[[web.Request], Awaitable[object]]) -> ControlHandler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return web.json_response(await handler(request))
            except (ValueError, LookupError) as exc:  # ControlError is a ValueError
                return web.json_response({"message": str(exc)}, status=400)

        return handle

    async def calls(_: web.Request) -> object:
        return dict(emulator.calls)

    async def clear_calls(_: web.Request) -> object:
        emulator.calls.clear()
        return {}

    async def faults(_: web.Request) -> object:
        return [fault.describe() for fault in emulator.faults.pending()]

    async def add_faults(request: web.Request) -> object:
        specs = await _json(request)
        specs = specs if isinstance(specs, list) else [specs]
        checked = [spec for spec in specs if isinstance(spec, dict)]
        if len(checked) != len(specs):
            raise ControlError("a fault is a JSON object")
        return [emulator.faults.add_from_json(spec).describe() for spec in checked]

    async def clear_faults(_: web.Request) -> object:
        emulator.faults.clear()
        return {}

    async def config(_: web.Request) -> object:
        return emulator.config.as_dict()

    async def update_config(request: web.Request) -> object:
        changes = await _json(request)
        if not isinstance(changes, dict):
            raise ControlError("settings are a JSON object")
        emulator.config.update(changes)
        return emulator.config.as_dict()

    async def revoke(_: web.Request) -> object:
        return {"revoked": emulator.revoke_sessions()}

    async def expire_refresh_tokens(_: web.Request) -> object:
        emulator.expire_refresh_tokens()
        return {}

    async def decide(request: web.Request) -> object:
        user_code, decision = request.match_info["user_code"], request.match_info["decision"]
        if decision == "approve":
            emulator.approve_device(user_code)
        else:
            emulator.deny_device(user_code)
        return {"userCode": user_code, "decision": decision}

    async def access_key(request: web.Request) -> object:
        spec = await _json(request) if request.can_read_body else {}
        fields = {"user_name", "account_id"}
        if (
            not isinstance(spec, dict)
            or not set(spec) <= fields
            or not all(isinstance(v, str) for v in spec.values())
        ):
            raise ControlError("expected an object with string user_name and/or account_id")
        key = emulator.create_access_key(**spec)
        return {
            "AccessKeyId": key.access_key_id,
            "SecretAccessKey": key.secret_access_key.reveal(),
            "Arn": key.arn,
        }

    async def mint(request: web.Request) -> object:
        spec = await _json(request) if request.can_read_body else {}
        if not isinstance(spec, dict) or not set(spec) <= {"sub", "aud", "lifetime"}:
            raise ControlError("expected an object with sub, aud and/or lifetime")
        sub, aud, lifetime = spec.get("sub"), spec.get("aud"), spec.get("lifetime", 300)
        if (
            not isinstance(sub, str | None)
            or not isinstance(aud, str | None)
            or isinstance(lifetime, bool)
            or not isinstance(lifetime, int)
        ):
            raise ControlError("sub and aud are strings, lifetime an integer number of seconds")
        minted = emulator.issuer.mint(sub or DEFAULT_SUBJECT, aud=aud, lifetime=lifetime)
        return {"assertion": minted}

    async def issuer(_: web.Request) -> object:
        token_issuer = emulator.issuer
        return {
            "issuer": token_issuer.url,
            "audience": token_issuer.audience,
            "jwks": token_issuer.jwks(),
        }

    return [
        web.get("/_emulator/calls", guarded(calls)),
        web.delete("/_emulator/calls", guarded(clear_calls)),
        web.get("/_emulator/faults", guarded(faults)),
        web.post("/_emulator/faults", guarded(add_faults)),
        web.delete("/_emulator/faults", guarded(clear_faults)),
        web.get("/_emulator/config", guarded(config)),
        web.post("/_emulator/config", guarded(update_config)),
        web.post("/_emulator/revoke", guarded(revoke)),
        web.post("/_emulator/expire-refresh-tokens", guarded(expire_refresh_tokens)),
        web.post(r"/_emulator/devices/{user_code}/{decision:approve|deny}", guarded(decide)),
        web.post("/_emulator/access-keys", guarded(access_key)),
        web.post("/_emulator/issuer/mint", guarded(mint)),
        web.get("/_emulator/issuer", guarded(issuer)),
    ]


async def _json(request: web.Request) -> object:
    try:
        return json.loads(await request.read())
    except ValueError:
        raise ControlError("the body must be JSON") from None
