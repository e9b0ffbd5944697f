"""What an Identity Center session may use: every account and role, listed from the SSO portal.

The portal's ListAccounts, then ListAccountRoles for every account
(protocols.md 3), every page of each: ``nextToken`` is followed until there is
none, whatever ``maxResults`` asked, since a page may hold fewer items. At most
:attr:`FetchPolicy.concurrency` calls are in flight (an anyio
``CapacityLimiter``). A throttled call (``TooManyRequestsException``, 429) or
any other transient failure is tried again after a capped, jittered backoff
(:func:`~credd.engine.schedule.backoff_seconds`); botocore's own retries are
off for these calls, so that this backoff is the only one and its sleeps can
be counted.

A ``nextToken`` is bound to the access token that got it (the emulator binds
it so; AWS documents nothing either way, so credd assumes the strict case): a
listing whose token is refused (``UnauthorizedException``) is begun again,
once, from its first page with the renewed token. Everything the portal says
is checked before use (design.md, issue 6): an account id is 12 digits, a
role name a permission set's name, or the answer is unusable. A listing that
fails fails the whole run: nothing is decided from half a picture.
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import anyio

from credd.aws import Answer, AwsClients
from credd.config.formats import ACCOUNT_ID
from credd.config.settings import SsoSessionSpec
from credd.engine.schedule import backoff_seconds
from credd.errors import CreddError, LoginRequired, UpstreamError
from credd.secret import Secret

#: a permission set's name (what ListAccountRoles calls a role): ``[\w+=,.@-]``, up to 32
_ROLE_NAME = re.compile(r"^[A-Za-z0-9_+=,.@-]{1,64}\Z", re.ASCII)
#: a listing longer than this many pages is an upstream gone wrong (a nextToken loop)
MAX_PAGES: Final = 1000


@dataclass(frozen=True, order=True)
class Assignment:
    """One role the session may use in one account (ordered by account id, then role)."""

    account_id: str
    role_name: str
    account_name: str


@dataclass(frozen=True)
class FetchPolicy:
    """How hard the listing pushes the portal."""

    #: portal calls in flight at once
    concurrency: int = 4
    #: ``maxResults`` asked for (the model's most: MaxResultType is 1 to 100)
    page_size: int = 100
    #: tries of one call that fails for a transient reason (throttling above all)
    attempts: int = 8
    backoff_base_seconds: float = 0.25
    backoff_cap_seconds: float = 8.0


DEFAULT_POLICY: Final = FetchPolicy()


class AccessTokens(Protocol):
    """A session's access token (:class:`~credd.sessions.identity_center.IdentityCenterSession`)."""

    async def access_token(self) -> Secret: ...

    async def token_rejected(self, rejected: Secret) -> Secret: ...


class Progress(Protocol):
    """Told how the listing goes (the CLI draws it on a terminal)."""

    def accounts_listed(self, count: int) -> None: ...

    def roles_listed(self, done: int, total: int) -> None: ...


class _NoProgress:
    def accounts_listed(self, count: int) -> None:
        pass

    def roles_listed(self, done: int, total: int) -> None:
        pass


NO_PROGRESS: Final[Progress] = _NoProgress()

Sleep = Callable[[float], Awaitable[None]]


class _Lister:
    """Every page of one listing at a time, with retries and one token renewal."""

    def __init__(
        self,
        spec: SsoSessionSpec,
        tokens: AccessTokens,
        policy: FetchPolicy,
        sleep: Sleep,
        draw: Callable[[], float],
    ) -> None:
        self._spec = spec
        self._tokens = tokens
        self._policy = policy
        self._sleep = sleep
        self._draw = draw

    async def items(
        self, portal: Any, operation: str, member: str, params: Mapping[str, str]
    ) -> list[Mapping[str, Any]]:
        """Every item of every page; begun again once if the access token is refused."""
        token = await self._tokens.access_token()
        try:
            return await self._pages(portal, operation, member, params, token)
        except UpstreamError as exc:
            if exc.aws_code != "UnauthorizedException":
                raise
        # Revoked or expired since it was read: renewed, and the listing begun again
        # (a nextToken is bound to the token that got it).
        token = await self._tokens.token_rejected(token)
        try:
            return await self._pages(portal, operation, member, params, token)
        except UpstreamError as again:
            if again.aws_code == "UnauthorizedException":
                raise LoginRequired(
                    self._spec.name, "the SSO portal refused the access token"
                ) from again
            raise

    async def _pages(
        self,
        portal: Any,
        operation: str,
        member: str,
        params: Mapping[str, str],
        token: Secret,
    ) -> list[Mapping[str, Any]]:
        what = f"sso {operation}"
        items: list[Mapping[str, Any]] = []
        seen: set[str] = set()
        next_token: str | None = None
        for _page in range(MAX_PAGES):
            paging = {"nextToken": next_token} if next_token is not None else {}
            answer = await self._call(portal, operation, token=token, **params, **paging)
            read = Answer(answer, what)
            found = answer.get(member) or []
            if not isinstance(found, list) or not all(isinstance(i, Mapping) for i in found):
                raise read.unusable(f"{member} is not a list of objects")
            items += found
            next_token = read.optional_text("nextToken")
            if next_token is None:
                return items
            if next_token in seen:
                raise read.unusable("nextToken repeats an earlier page's")
            seen.add(next_token)
        raise UpstreamError(f"{what} gave more than {MAX_PAGES} pages")

    async def _call(self, portal: Any, operation: str, *, token: Secret, **params: str) -> Any:
        policy = self._policy
        method = getattr(portal, operation)
        for attempt in range(policy.attempts):
            try:
                return await method(
                    accessToken=token.reveal(), maxResults=policy.page_size, **params
                )
            except UpstreamError as exc:
                if not exc.transient or attempt + 1 >= policy.attempts:
                    raise
                await self._sleep(
                    backoff_seconds(
                        attempt,
                        draw=self._draw(),
                        base=policy.backoff_base_seconds,
                        cap=policy.backoff_cap_seconds,
                    )
                )
        raise AssertionError("unreachable: the last attempt returns or raises")


def _accounts(items: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Account id to name, checked; an account listed twice counts once."""
    accounts: dict[str, str] = {}
    for item in items:
        read = Answer(item, "sso ListAccounts (accountList)")
        account_id = read.text("accountId")
        if not ACCOUNT_ID.match(account_id):
            raise read.unusable("an accountId is not 12 digits")
        accounts[account_id] = read.optional_text("accountName") or account_id
    return accounts


def _roles(items: Sequence[Mapping[str, Any]], account_id: str) -> set[str]:
    roles: set[str] = set()
    for item in items:
        read = Answer(item, "sso ListAccountRoles (roleList)")
        role = read.text("roleName")
        if not _ROLE_NAME.match(role):
            raise read.unusable("a roleName is not a permission set name")
        if read.optional_text("accountId") not in (None, account_id):
            raise read.unusable("a role of another account")
        roles.add(role)
    return roles


async def list_assignments(
    spec: SsoSessionSpec,
    *,
    tokens: AccessTokens,
    clients: AwsClients,
    policy: FetchPolicy = DEFAULT_POLICY,
    progress: Progress = NO_PROGRESS,
    sleep: Sleep = anyio.sleep,
    draw: Callable[[], float] = random.random,
) -> list[Assignment]:
    """Every role of every account ``spec``'s session reaches, sorted; all or an error."""
    lister = _Lister(spec, tokens, policy, sleep, draw)
    # attempts=1: botocore's own retries off, the backoff above is the only one
    async with clients.client(
        "sso", region=spec.region, profile=spec.endpoint_profile, attempts=1
    ) as portal:
        accounts = _accounts(await lister.items(portal, "list_accounts", "accountList", {}))
        progress.accounts_listed(len(accounts))
        roles: dict[str, set[str]] = {}
        limiter = anyio.CapacityLimiter(policy.concurrency)

        async def list_roles(account_id: str) -> None:
            async with limiter:
                try:
                    items = await lister.items(
                        portal, "list_account_roles", "roleList", {"accountId": account_id}
                    )
                except UpstreamError as exc:
                    if exc.aws_code != "ResourceNotFoundException":
                        raise
                    items = []  # the account went away since ListAccounts: no roles
            roles[account_id] = _roles(items, account_id)
            progress.roles_listed(len(roles), len(accounts))

        try:
            async with anyio.create_task_group() as tg:
                for account_id in accounts:
                    tg.start_soon(list_roles, account_id)
        except* CreddError as failed:  # one error, the first, in one line
            raise failed.exceptions[0] from None
    return sorted(
        Assignment(account_id, role, accounts[account_id])
        for account_id, names in roles.items()
        for role in names
    )
