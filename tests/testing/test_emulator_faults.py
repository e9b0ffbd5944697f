"""Fault injection: errors indistinguishable from the real ones, latency, drops, garbage."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
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


async def test_a_truncated_body_announces_more_than_it_sends(emu: Emulator) -> None:
    body = b'{"clientId": "abc", "clientSecret": "def"}'
    emu.faults.add("RegisterClient", body=body, truncate_at=12)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{emu.url}/client/register", json={}) as answer,
    ):
        assert answer.status == 200
        assert answer.content_length == len(body)
        assert answer.headers["x-amzn-RequestId"]
        with pytest.raises(aiohttp.ClientPayloadError):
            await answer.read()


async def test_truncating_the_real_answer_after_it_happened(emu: Emulator, oidc: Any) -> None:
    # The operation runs (a registration is made upstream) and its answer is lost.
    emu.faults.add("RegisterClient", truncate_at=10)
    with pytest.raises(ConnectionClosedError):
        await register(oidc)
    assert len(emu.state.registrations) == 1
    emu.faults.add("CreateToken", error_code="SlowDownException", truncate_at=5)
    with pytest.raises(ConnectionClosedError):
        await oidc.create_token(clientId="c", clientSecret="s", grantType="refresh_token")
    await register(oidc)
    assert len(emu.state.registrations) == 2


@pytest.mark.parametrize(("operation", "opening"), [("RegisterClient", b'{"padding": "xx')])
async def test_a_huge_body_is_streamed_and_parses_when_read_whole(
    emu: Emulator, operation: str, opening: bytes
) -> None:
    size = 3 * 1024 * 1024 + 7
    emu.faults.add(operation, huge_body=size)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{emu.url}/client/register", json={}) as answer,
    ):
        assert answer.status == 200
        assert answer.content_length is None  # chunked: the client cannot know in advance
        body = await answer.read()
    assert len(body) == size
    assert body.startswith(opening)
    assert set(json.loads(body)) == {"padding"}


STS_FORM = {"Action": "GetCallerIdentity", "Version": "2011-06-15"}


async def test_a_huge_sts_body_is_xml_and_a_client_may_stop_reading(emu: Emulator) -> None:
    emu.faults.add("GetCallerIdentity", huge_body=64 * 1024 * 1024, status=500)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{emu.url}/", data=STS_FORM) as answer:
            assert answer.status == 500
            assert answer.content_type == "text/xml"
            assert (await answer.content.read(9)) == b"<Padding>"
        # Hung up after 9 bytes of 64 MiB: the emulator stops and answers the next one.
        emu.faults.add("GetCallerIdentity", huge_body=100)
        async with http.post(f"{emu.url}/", data=STS_FORM) as answer:
            assert (await answer.read()) == b"<Padding>" + b"x" * 81 + b"</Padding>"
    assert emu.calls["GetCallerIdentity"] == 2


async def test_a_hang_lasts_until_the_client_gives_up(emu: Emulator) -> None:
    emu.faults.add("RegisterClient", hang=True)
    async with aws_client(emu.url, "sso-oidc", read_timeout=0.1) as oidc:
        with pytest.raises(ReadTimeoutError):
            await register(oidc)
        await register(oidc)  # the hang was for one request
    assert emu.calls["RegisterClient"] == 2
    assert emu.faults.pending() == []


async def test_a_throttling_storm_is_k_refusals_in_a_row(emu: Emulator, oidc: Any) -> None:
    emu.faults.add("RegisterClient", error_code="SlowDownException", count=5)
    for _ in range(5):
        with pytest.raises(oidc.exceptions.SlowDownException):
            await register(oidc)
    await register(oidc)
    assert emu.calls["RegisterClient"] == 6


def test_new_fault_fields_travel_as_json() -> None:
    plan = Emulator().faults
    fault = plan.add_from_json({"operation": "CreateToken", "huge_body": 10, "count": None})
    assert fault.describe()["huge_body"] == 10
    fault = plan.add_from_json({"operation": "CreateToken", "body": "{}", "truncate_at": 1})
    assert (fault.describe()["body"], fault.describe()["truncate_at"]) == ("{}", 1)
    assert plan.add_from_json({"operation": "CreateToken", "hang": True}).hang


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
        {"operation": "CreateToken", "truncate_at": -1},
        {"operation": "CreateToken", "huge_body": 0},
        {"operation": "CreateToken", "hang": 1},
        {"operation": "CreateToken", "hang": True, "drop_connection": True},
        {"operation": "CreateToken", "huge_body": 10, "body": b"{}"},
        {"operation": "CreateToken", "huge_body": 10, "truncate_at": 1},
        {"operation": "CreateToken", "hang": True, "truncate_at": 1},
    ],
)
def test_bad_faults_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        Emulator().faults.add(**kwargs)
