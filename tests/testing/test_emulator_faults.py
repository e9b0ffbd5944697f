"""Fault injection: errors indistinguishable from the real ones, latency, drops, garbage."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from botocore.exceptions import ConnectionClosedError, ReadTimeoutError

from credd.clock import ManualClock
from credd.testing.emulator import Emulator, EmulatorConfig
from credd.testing.emulator.clients import Keys, aws_client, device_login, register, visit


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    config = EmulatorConfig(poll_interval=0)
    async with Emulator(ManualClock(), config=config).running() as emulator:
        yield emulator


@pytest.fixture
async def oidc(emu: Emulator) -> AsyncIterator[Any]:
    async with aws_client(emu.url, "sso-oidc") as client:
        yield client


async def test_default_fault_is_the_services_internal_error(emu: Emulator, oidc: Any) -> None:
    emu.faults.add("RegisterClient")
    with pytest.raises(oidc.exceptions.InternalServerException) as caught:
        await register(oidc)
    assert caught.value.response["error"] == "server_error"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert caught.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    await register(oidc)  # count=1: the next request is served
    assert emu.calls["RegisterClient"] == 2


async def test_each_retry_meets_the_next_fault(emu: Emulator) -> None:
    # botocore's standard retry mode treats the injected 500 as transient (§1).
    emu.faults.add("RegisterClient", count=1)
    async with aws_client(emu.url, "sso-oidc", attempts=2) as oidc:
        answer = await oidc.register_client(clientName="c", clientType="public")
    assert answer["ResponseMetadata"]["RetryAttempts"] == 1
    assert emu.calls["RegisterClient"] == 2


async def test_error_codes_get_their_modeled_status(emu: Emulator, oidc: Any) -> None:
    tokens = await device_login(oidc, await register(oidc))
    emu.faults.add("ListAccounts", error_code="TooManyRequestsException", message="Slow down")
    emu.faults.add("CreateToken", error_code="AccessDeniedException")
    async with aws_client(emu.url, "sso") as sso:
        with pytest.raises(sso.exceptions.TooManyRequestsException) as throttled:
            await sso.list_accounts(accessToken=tokens.access_token)
    assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert throttled.value.response["message"] == "Slow down"
    with pytest.raises(oidc.exceptions.AccessDeniedException) as denied:
        await oidc.create_token(clientId="c", clientSecret="s", grantType="refresh_token")
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


async def test_sts_faults_are_xml(emu: Emulator) -> None:
    key = emu.create_access_key()
    emu.faults.add("GetCallerIdentity")
    emu.faults.add("GetCallerIdentity", error_code="Throttling", message="Rate exceeded")
    emu.faults.add("GetCallerIdentity", error_code="ServiceUnavailable", status=503)
    async with aws_client(
        emu.url, "sts", Keys(key.access_key_id, key.secret_access_key.reveal())
    ) as sts:
        for code, status, kind in [
            ("InternalFailure", 500, "Receiver"),
            ("Throttling", 400, "Sender"),
            ("ServiceUnavailable", 503, "Receiver"),
        ]:
            with pytest.raises(sts.exceptions.ClientError) as caught:
                await sts.get_caller_identity()
            assert caught.value.response["Error"]["Code"] == code
            assert caught.value.response["Error"]["Type"] == kind
            assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
        await sts.get_caller_identity()


async def test_latency_delays_and_then_serves(emu: Emulator, oidc: Any) -> None:
    emu.faults.add("RegisterClient", latency=0.2)
    started = time.monotonic()
    await register(oidc)
    assert time.monotonic() - started >= 0.2


async def test_latency_beyond_the_client_timeout(emu: Emulator) -> None:
    emu.faults.add("RegisterClient", latency=0.3)
    async with aws_client(emu.url, "sso-oidc", read_timeout=0.05) as oidc:
        with pytest.raises(ReadTimeoutError):
            await register(oidc)


async def test_dropped_connection(emu: Emulator, oidc: Any) -> None:
    emu.faults.add("RegisterClient", drop_connection=True)
    with pytest.raises(ConnectionClosedError):
        await register(oidc)
    await register(oidc)


async def test_garbage_bodies(emu: Emulator, oidc: Any) -> None:
    emu.faults.add("RegisterClient", body=b'{"clientId": "trunc')  # 200, truncated JSON
    answer = await oidc.register_client(clientName="c", clientType="public")
    assert "clientId" not in answer  # botocore does not notice: the caller must
    emu.faults.add("RegisterClient", body=b"<html>Bad Gateway</html>", status=502)
    with pytest.raises(oidc.exceptions.ClientError) as caught:
        await register(oidc)
    assert caught.value.response["Error"]["Code"] == "502"


async def test_forever_until_cleared(emu: Emulator, oidc: Any) -> None:
    emu.faults.add("RegisterClient", count=None, error_code="SlowDownException")
    for _ in range(3):
        with pytest.raises(oidc.exceptions.SlowDownException):
            await register(oidc)
    assert len(emu.faults.pending()) == 1
    emu.faults.clear()
    await register(oidc)


async def test_browser_pages_fail_as_pages(emu: Emulator) -> None:
    emu.faults.add("VerifyDevice")
    emu.faults.add("Authorize", status=503)
    assert (await visit(f"{emu.url}/device?user_code=ABCD-EFGH"))[0] == 500
    assert (await visit(f"{emu.url}/authorize"))[0] == 503
    assert emu.calls["VerifyDevice"] == emu.calls["Authorize"] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"operation": "CreateTokn"},
        {"operation": "CreateToken", "count": 0},
        {"operation": "CreateToken", "latency": -1},
        {"operation": "CreateToken", "status": 99},
        {"operation": "CreateToken", "drop_connection": "yes"},
    ],
)
def test_bad_faults_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        Emulator().faults.add(**kwargs)
