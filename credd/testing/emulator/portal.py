"""The SSO portal API (``sso``), protocols.md §3.

``GET /federation/credentials`` (GetRoleCredentials), ``GET /assignment/accounts``
(ListAccounts), ``GET /assignment/roles`` (ListAccountRoles) and ``POST /logout``.
The bearer token travels in ``x-amz-sso_bearer_token`` and must be a live access
token of a live session; role credentials expire in epoch **milliseconds**.
A role the user is not assigned gets the unmodeled ``ForbiddenException``
("No access") that the real portal sends (§3).

ListAccounts and ListAccountRoles page as botocore's model says (``max_result``
1 to 100 in, ``nextToken`` out; paginators-1.json). A page may hold fewer items
than asked for, as AWS's may (``portal_page_size`` caps it), so a client must
follow ``nextToken`` whatever it asked. A ``nextToken`` is opaque and bound to
the listing and to the access token that got it: presented with another token
(a renewed one, another user's) or for another listing it is an
``InvalidRequestException``, so a client that renews its token mid-listing
must begin that listing again. Throttling (``TooManyRequestsException``, 429)
comes from the fault controls (:mod:`.faults`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from typing import Final, TypeVar

from aiohttp import web

from . import identities
from .errors import PortalError
from .inputs import required_query
from .operations import Operation, endpoint, json_ok
from .runtime import Runtime
from .state import LiveToken

BEARER_HEADER: Final = "x-amz-sso_bearer_token"
DEFAULT_PAGE_SIZE: Final = 20
MAX_PAGE_SIZE: Final = 100
#: the bytes of a nextToken's MAC: what binds it to its listing and its access token
_MAC_BYTES: Final = 16

T = TypeVar("T")


def _invalid_request(message: str) -> PortalError:
    return PortalError("InvalidRequestException", message)


class PortalService:
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._pages = _Pages(secrets.token_bytes(32))
        self.get_role_credentials = Operation(
            "GetRoleCredentials", PortalError, self._get_role_credentials
        )
        self.list_accounts = Operation("ListAccounts", PortalError, self._list_accounts)
        self.list_account_roles = Operation(
            "ListAccountRoles", PortalError, self._list_account_roles
        )
        self.logout = Operation("Logout", PortalError, self._logout)

    @property
    def operations(self) -> tuple[Operation, ...]:
        return (
            self.get_role_credentials,
            self.list_accounts,
            self.list_account_roles,
            self.logout,
        )

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/federation/credentials", endpoint(self.get_role_credentials, self._rt)),
            web.get("/assignment/accounts", endpoint(self.list_accounts, self._rt)),
            web.get("/assignment/roles", endpoint(self.list_account_roles, self._rt)),
            web.post("/logout", endpoint(self.logout, self._rt)),
        ]

    async def _get_role_credentials(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        role_name = required_query(request, "role_name", _invalid_request)
        account_id = required_query(request, "account_id", _invalid_request)
        user = self._rt.directory.user(caller.session.user)
        if role_name not in user.roles_in(account_id):
            raise PortalError("ForbiddenException", "No access")
        principal = identities.sso_role_session(account_id, role_name, user.name)
        issued = self._rt.state.issue_credentials(
            principal, self._rt.in_seconds(self._rt.config.role_ttl)
        )
        return json_ok(
            {
                "roleCredentials": {
                    "accessKeyId": issued.access_key_id,
                    "secretAccessKey": issued.secret_access_key.reveal(),
                    "sessionToken": issued.session_token.reveal(),
                    # epoch MILLISECONDS (protocols.md §3, §11.4)
                    "expiration": int(issued.expires_at.timestamp() * 1000),
                }
            }
        )

    async def _list_accounts(self, request: web.Request) -> web.StreamResponse:
        user = self._rt.directory.user(self._caller(request).session.user)
        accounts = [
            account for account in self._rt.directory.accounts if user.roles_in(account.account_id)
        ]
        page, next_token = self._page(request, accounts, "accounts")
        members: dict[str, object] = {
            "accountList": [
                {"accountId": a.account_id, "accountName": a.name, "emailAddress": a.email}
                for a in page
            ]
        }
        return json_ok(_with_next_token(members, next_token))

    async def _list_account_roles(self, request: web.Request) -> web.StreamResponse:
        user = self._rt.directory.user(self._caller(request).session.user)
        account_id = required_query(request, "account_id", _invalid_request)
        page, next_token = self._page(request, user.roles_in(account_id), f"roles:{account_id}")
        members: dict[str, object] = {
            "roleList": [{"roleName": role, "accountId": account_id} for role in page]
        }
        return json_ok(_with_next_token(members, next_token))

    async def _logout(self, request: web.Request) -> web.StreamResponse:
        caller = self._caller(request)
        caller.token.revoked = True
        self._rt.state.revoke_session(caller.session)
        return web.Response(status=200)

    def _caller(self, request: web.Request) -> LiveToken:
        token = request.headers.get(BEARER_HEADER)
        live = self._rt.state.live_access_token(token, self._rt.now()) if token else None
        if live is None:
            raise PortalError("UnauthorizedException", "Session token not found or invalid")
        return live

    def _page(
        self, request: web.Request, items: Sequence[T], listing: str
    ) -> tuple[Sequence[T], str | None]:
        """One page of ``items``; a caller checked by :meth:`_caller` sent the bearer token."""
        bearer = request.headers[BEARER_HEADER]
        size = _page_size(request.query.get("max_result"))
        cap = self._rt.config.portal_page_size
        size = size if cap is None else min(size, cap)
        start = self._pages.offset(request.query.get("next_token"), listing, bearer)
        end = start + size
        next_token = self._pages.token(listing, end, bearer) if end < len(items) else None
        return items[start:end], next_token


# -- paging (next_token / max_result, protocols.md §3) --------------------------


def _page_size(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise _invalid_request("max_result must be an integer") from None
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise _invalid_request(f"max_result must be between 1 and {MAX_PAGE_SIZE}")
    return size


class _Pages:
    """nextTokens: opaque to clients, bound by a MAC to a listing and an access token."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, payload: bytes, access_token: str) -> bytes:
        message = access_token.encode() + b"\0" + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC_BYTES]

    def token(self, listing: str, offset: int, access_token: str) -> str:
        payload = json.dumps([listing, offset]).encode()
        sealed = self._mac(payload, access_token) + payload
        return base64.urlsafe_b64encode(sealed).decode()

    def offset(self, token: str | None, listing: str, access_token: str) -> int:
        """The offset ``token`` points at; one of another listing or token is invalid."""
        if token is None:
            return 0
        try:
            sealed = base64.urlsafe_b64decode(token.encode())
        except (binascii.Error, ValueError):
            sealed = b""
        mac, payload = sealed[:_MAC_BYTES], sealed[_MAC_BYTES:]
        decoded = None
        if len(mac) == _MAC_BYTES and hmac.compare_digest(mac, self._mac(payload, access_token)):
            try:
                decoded = json.loads(payload)
            except ValueError:
                decoded = None
        if (
            not isinstance(decoded, list)
            or len(decoded) != 2
            or decoded[0] != listing
            or not isinstance(decoded[1], int)
            or decoded[1] < 0
        ):
            raise _invalid_request("Invalid nextToken")
        return decoded[1]


def _with_next_token(members: dict[str, object], next_token: str | None) -> dict[str, object]:
    return {"nextToken": next_token, **members} if next_token is not None else members
