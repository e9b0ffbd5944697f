"""The emulator's ListAccounts and ListAccountRoles, driven by real aiobotocore clients.

What ``credd populate`` relies on: every page of an organization's accounts and
roles (short pages included), account names with spaces and punctuation as
they are, a ``nextToken`` bound to its listing and its access token, and
throttling through the fault controls, exactly as botocore's model says
(``TooManyRequestsException``, HTTP 429).
"""

from __future__ import annotations

import base64
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import pytest

from credd.clock import ManualClock
from credd.testing.emulator import Emulator, EmulatorConfig, organization_directory
from credd.testing.emulator.clients import (
    ClientRegistration,
    Tokens,
    aws_client,
    device_login,
    register,
)
from tests.support.waiting import eventually

ACCOUNTS = [
    ("111111111111", "Development"),
    ("222222222222", "Production"),
    ("333333333333", "Data & Analytics (EU)"),
    ("444444444444", "Shared Services"),
    ("555555555555", "Sandbox: Ana's team"),
]


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

    async def refreshed_token(self) -> str:
        answer = await self.oidc.create_token(
            clientId=self.registration.client_id,
            clientSecret=self.registration.client_secret,
            grantType="refresh_token",
            refreshToken=self.tokens.refresh_token,
        )
        token: str = answer["accessToken"]
        return token


@pytest.fixture
async def portal() -> AsyncIterator[Portal]:
    config = EmulatorConfig(poll_interval=0, portal_page_size=2)
    emulator = Emulator(ManualClock(), config=config, directory=organization_directory())
    async with (
        emulator.running() as emu,
        aws_client(emu.url, "sso-oidc") as oidc,
        aws_client(emu.url, "sso") as sso,
    ):
        registration = await register(oidc)
        yield Portal(emu, oidc, sso, registration, await device_login(oidc, registration))


async def test_every_page_of_accounts_names_with_punctuation_as_they_are(portal: Portal) -> None:
    paginator = portal.sso.get_paginator("list_accounts")
    pages = [
        page
        async for page in paginator.paginate(
            accessToken=portal.access_token, PaginationConfig={"PageSize": 100}
        )
    ]
    # 100 asked, 2 a page given (portal_page_size): the paginator follows nextToken
    assert [len(page["accountList"]) for page in pages] == [2, 2, 1]
    listed = [(a["accountId"], a["accountName"]) for page in pages for a in page["accountList"]]
    assert listed == ACCOUNTS
    assert portal.emu.calls["ListAccounts"] == 3


async def test_every_page_of_roles(portal: Portal) -> None:
    paginator = portal.sso.get_paginator("list_account_roles")
    roles = [
        role["roleName"]
        async for page in paginator.paginate(
            accessToken=portal.access_token, accountId="333333333333"
        )
        for role in page["roleList"]
    ]
    assert roles == ["ReadOnly", "DataScientist"]
    single = await portal.sso.list_account_roles(
        accessToken=portal.access_token, accountId="555555555555", maxResults=1
    )
    assert single["roleList"] == [{"roleName": "Admin", "accountId": "555555555555"}]
    assert "nextToken" not in single
    unassigned = await portal.sso.list_account_roles(
        accessToken=portal.access_token, accountId="999999999999"
    )
    assert unassigned["roleList"] == []


async def test_a_next_token_is_bound_to_the_access_token_that_got_it(portal: Portal) -> None:
    first = await portal.sso.list_accounts(accessToken=portal.access_token)
    next_token = first["nextToken"]
    renewed = await portal.refreshed_token()  # the same session, another access token
    with pytest.raises(portal.sso.exceptions.InvalidRequestException) as caught:
        await portal.sso.list_accounts(accessToken=renewed, nextToken=next_token)
    assert caught.value.response["Error"]["Message"] == "Invalid nextToken"
    # the token that got it still goes on, as often as asked (a retry resends it)
    for _ in range(2):
        second = await portal.sso.list_accounts(
            accessToken=portal.access_token, nextToken=next_token
        )
        assert [a["accountId"] for a in second["accountList"]] == ["333333333333", "444444444444"]


async def test_a_next_token_is_opaque_and_tamper_proof(portal: Portal) -> None:
    first = await portal.sso.list_account_roles(
        accessToken=portal.access_token, accountId="111111111111", maxResults=1
    )
    next_token = first["nextToken"]
    assert "roles" not in next_token  # nothing a client could read and rely on
    raw = bytearray(base64.urlsafe_b64decode(next_token))
    raw[-2] ^= 1  # the offset changed by one bit
    for forged in (base64.urlsafe_b64encode(bytes(raw)).decode(), next_token[:-4], "x"):
        with pytest.raises(portal.sso.exceptions.InvalidRequestException):
            await portal.sso.list_account_roles(
                accessToken=portal.access_token, accountId="111111111111", nextToken=forged
            )


async def test_throttling_through_the_fault_controls(portal: Portal) -> None:
    emu = portal.emu
    emu.faults.add("ListAccountRoles", error_code="TooManyRequestsException", count=2)
    for _ in range(2):
        with pytest.raises(portal.sso.exceptions.TooManyRequestsException) as caught:
            await portal.sso.list_account_roles(
                accessToken=portal.access_token, accountId="111111111111"
            )
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    answer = await portal.sso.list_account_roles(
        accessToken=portal.access_token, accountId="111111111111"
    )
    assert [r["roleName"] for r in answer["roleList"]] == ["ReadOnly", "Admin"]
    # the same over HTTP, as a test running the emulator as a process queues it
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{emu.url}/_emulator/faults",
            json={"operation": "ListAccounts", "error_code": "TooManyRequestsException"},
        ) as queued,
    ):
        assert queued.status == 200
    with pytest.raises(portal.sso.exceptions.TooManyRequestsException):
        await portal.sso.list_accounts(accessToken=portal.access_token)
    await portal.sso.list_accounts(accessToken=portal.access_token)


async def test_calls_in_flight_are_counted(portal: Portal) -> None:
    emu = portal.emu
    emu.faults.add("ListAccountRoles", hang=True, count=3)
    async with anyio.create_task_group() as tg:
        for account in ("111111111111", "222222222222", "333333333333"):
            tg.start_soon(
                functools.partial(
                    portal.sso.list_account_roles,
                    accessToken=portal.access_token,
                    accountId=account,
                )
            )
        await eventually(lambda: emu.in_flight["ListAccountRoles"] == 3, what="3 calls in flight")
        tg.cancel_scope.cancel()  # the clients give up: the hangs end
    await eventually(lambda: emu.in_flight["ListAccountRoles"] == 0, what="no call in flight")
    assert emu.peak_in_flight["ListAccountRoles"] == 3
