"""The emulator's SSO portal API, driven by real aiobotocore clients."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from credd.clock import ManualClock
from credd.testing.emulator import Emulator, EmulatorConfig
from credd.testing.emulator.clients import (
    ClientRegistration,
    Tokens,
    aws_client,
    device_login,
    register,
)

ACCOUNT = "111111111111"


@dataclass
class Portal:
    emu: Emulator
    oidc: Any
    sso: Any
    registration: ClientRegistration
    tokens: Tokens

    @property
    def access_token(self) -> str:
        return self.tokens.access_token


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def portal(clock: ManualClock) -> AsyncIterator[Portal]:
    config = EmulatorConfig(poll_interval=0)
    async with (
        Emulator(clock, config=config).running() as emu,
        aws_client(emu.url, "sso-oidc") as oidc,
        aws_client(emu.url, "sso", parameter_validation=False) as sso,
    ):
        registration = await register(oidc)
        yield Portal(emu, oidc, sso, registration, await device_login(oidc, registration))


async def test_role_credentials_expire_in_epoch_milliseconds(
    portal: Portal, clock: ManualClock
) -> None:
    answer = await portal.sso.get_role_credentials(
        accessToken=portal.access_token, accountId=ACCOUNT, roleName="ReadOnly"
    )
    creds = answer["roleCredentials"]
    expected = clock.now().timestamp() + portal.emu.config.role_ttl
    assert creds["expiration"] == int(expected * 1000)
    assert creds["accessKeyId"].startswith("ASIA")
    assert creds["secretAccessKey"]
    assert creds["sessionToken"]
    assert portal.emu.calls["GetRoleCredentials"] == 1


async def test_unassigned_role_is_forbidden(portal: Portal) -> None:
    for account, role in [("222222222222", "ReadOnly"), ("333333333333", "Admin")]:
        with pytest.raises(portal.sso.exceptions.ClientError) as caught:
            await portal.sso.get_role_credentials(
                accessToken=portal.access_token, accountId=account, roleName=role
            )
        assert caught.value.response["Error"] == {
            "Code": "ForbiddenException",
            "Message": "No access",
        }
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


@pytest.mark.parametrize("token", ["", "not-a-token"])
async def test_unknown_bearer_token_is_unauthorized(portal: Portal, token: str) -> None:
    with pytest.raises(portal.sso.exceptions.UnauthorizedException) as caught:
        await portal.sso.list_accounts(accessToken=token)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert caught.value.response["message"] == "Session token not found or invalid"


async def test_expired_access_token_is_unauthorized(portal: Portal, clock: ManualClock) -> None:
    clock.advance(portal.tokens.expires_in - 1)
    await portal.sso.list_accounts(accessToken=portal.access_token)
    clock.advance(1)
    with pytest.raises(portal.sso.exceptions.UnauthorizedException):
        await portal.sso.get_role_credentials(
            accessToken=portal.access_token, accountId=ACCOUNT, roleName="Admin"
        )


async def test_required_parameters_are_checked(portal: Portal) -> None:
    with pytest.raises(portal.sso.exceptions.InvalidRequestException):
        await portal.sso.get_role_credentials(
            accessToken=portal.access_token, accountId=ACCOUNT, roleName=""
        )
    with pytest.raises(portal.sso.exceptions.InvalidRequestException):
        await portal.sso.list_accounts(accessToken=portal.access_token, maxResults=101)


async def test_list_accounts_pages_through_the_paginator(portal: Portal) -> None:
    paginator = portal.sso.get_paginator("list_accounts")
    pages = [
        page
        async for page in paginator.paginate(
            accessToken=portal.access_token, PaginationConfig={"PageSize": 1}
        )
    ]
    assert [len(page["accountList"]) for page in pages] == [1, 1]
    assert "nextToken" in pages[0]
    assert "nextToken" not in pages[1]
    assert [page["accountList"][0]["accountId"] for page in pages] == [ACCOUNT, "222222222222"]
    assert pages[0]["accountList"][0] == {
        "accountId": ACCOUNT,
        "accountName": "Development",
        "emailAddress": "dev@example.com",
    }


async def test_list_account_roles_pages_and_checks_tokens(portal: Portal) -> None:
    paginator = portal.sso.get_paginator("list_account_roles")
    roles = [
        role
        async for page in paginator.paginate(
            accessToken=portal.access_token, accountId=ACCOUNT, PaginationConfig={"PageSize": 1}
        )
        for role in page["roleList"]
    ]
    assert roles == [
        {"roleName": "ReadOnly", "accountId": ACCOUNT},
        {"roleName": "Admin", "accountId": ACCOUNT},
    ]
    first = await portal.sso.list_account_roles(
        accessToken=portal.access_token, accountId=ACCOUNT, maxResults=1
    )
    with pytest.raises(portal.sso.exceptions.InvalidRequestException):
        # a token of one listing is no good for another
        await portal.sso.list_account_roles(
            accessToken=portal.access_token,
            accountId="222222222222",
            nextToken=first["nextToken"],
        )
    with pytest.raises(portal.sso.exceptions.InvalidRequestException):
        await portal.sso.list_accounts(accessToken=portal.access_token, nextToken="garbage")


async def test_logout_invalidates_access_and_refresh_tokens(portal: Portal) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{portal.emu.url}/logout",
            headers={"x-amz-sso_bearer_token": portal.access_token},
        ) as response,
    ):
        assert response.status == 200
        assert await response.read() == b""
    with pytest.raises(portal.sso.exceptions.UnauthorizedException):
        await portal.sso.list_accounts(accessToken=portal.access_token)
    with pytest.raises(portal.sso.exceptions.UnauthorizedException):
        await portal.sso.logout(accessToken=portal.access_token)
    with pytest.raises(portal.oidc.exceptions.InvalidGrantException):
        await portal.oidc.create_token(
            clientId=portal.registration.client_id,
            clientSecret=portal.registration.client_secret,
            grantType="refresh_token",
            refreshToken=portal.tokens.refresh_token,
        )
    assert portal.emu.calls["Logout"] == 2


async def test_admin_revocation_kills_access_tokens(portal: Portal) -> None:
    portal.emu.revoke_sessions()
    with pytest.raises(portal.sso.exceptions.UnauthorizedException):
        await portal.sso.list_accounts(accessToken=portal.access_token)


async def test_expired_refresh_tokens_leave_access_tokens_working(portal: Portal) -> None:
    portal.emu.expire_refresh_tokens()
    await portal.sso.list_accounts(accessToken=portal.access_token)
    with pytest.raises(portal.oidc.exceptions.InvalidGrantException):
        await portal.oidc.create_token(
            clientId=portal.registration.client_id,
            clientSecret=portal.registration.client_secret,
            grantType="refresh_token",
            refreshToken=portal.tokens.refresh_token,
        )


async def test_refreshed_access_token_works_and_the_old_one_still_does(portal: Portal) -> None:
    answer = await portal.oidc.create_token(
        clientId=portal.registration.client_id,
        clientSecret=portal.registration.client_secret,
        grantType="refresh_token",
        refreshToken=portal.tokens.refresh_token,
    )
    for token in (answer["accessToken"], portal.access_token):
        await portal.sso.list_accounts(accessToken=token)
