"""The ``/_emulator`` HTTP controls and ``python -m credd.testing.emulator``."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest

from credd.clock import ManualClock
from credd.testing.emulator import Emulator
from credd.testing.emulator.__main__ import build
from credd.testing.emulator.clients import Keys, aws_client, device_login, register


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(ManualClock()).running() as emulator:
        yield emulator


async def control(emu_url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, f"{emu_url}/_emulator/{path}", json=body) as response,
    ):
        return response.status, await response.json()


async def test_config_is_read_and_changed(emu: Emulator) -> None:
    status, config = await control(
        emu.url, "POST", "config", {"poll_interval": 0, "auto_approve": False}
    )
    assert status == 200
    assert config["poll_interval"] == 0
    assert config["auto_approve"] is False
    assert emu.auto_approve is False
    assert (await control(emu.url, "GET", "config"))[1] == config
    for bad in ({"nope": 1}, {"access_token_ttl": "60"}, {"access_token_ttl": 0}, [1]):
        status, answer = await control(emu.url, "POST", "config", bad)
        assert status == 400
        assert answer["message"]
    assert (await control(emu.url, "POST", "config", {"assume_role_cap": None}))[0] == 200


async def test_faults_and_calls(emu: Emulator) -> None:
    fault = {"operation": "RegisterClient", "error_code": "InvalidRequestException"}
    status, added = await control(emu.url, "POST", "faults", [fault, {**fault, "body": "{"}])
    assert status == 200
    assert [f["error_code"] for f in added] == ["InvalidRequestException"] * 2
    assert len((await control(emu.url, "GET", "faults"))[1]) == 2
    async with aws_client(emu.url, "sso-oidc") as oidc:
        with pytest.raises(oidc.exceptions.InvalidRequestException):
            await register(oidc)
        assert (await control(emu.url, "DELETE", "faults"))[0] == 200
        await register(oidc)
    assert (await control(emu.url, "GET", "calls"))[1] == {"RegisterClient": 2}
    await control(emu.url, "DELETE", "calls")
    assert (await control(emu.url, "GET", "calls"))[1] == {}
    status, _ = await control(emu.url, "POST", "faults", {"operation": "Nope"})
    assert status == 400


async def test_devices_revocation_and_access_keys(emu: Emulator) -> None:
    emu.config.poll_interval = 0
    async with aws_client(emu.url, "sso-oidc") as oidc, aws_client(emu.url, "sso") as sso:
        reg = await register(oidc)
        started = await oidc.start_device_authorization(
            clientId=reg.client_id,
            clientSecret=reg.client_secret,
            startUrl="https://d-1234567890.awsapps.com/start",
        )
        path = f"devices/{started['userCode']}/approve"
        assert (await control(emu.url, "POST", path))[0] == 200
        assert (await control(emu.url, "POST", path))[0] == 400  # already decided
        await oidc.create_token(
            clientId=reg.client_id,
            clientSecret=reg.client_secret,
            grantType="urn:ietf:params:oauth:grant-type:device_code",
            deviceCode=started["deviceCode"],
        )
        tokens = await device_login(oidc, reg)
        assert (await control(emu.url, "POST", "revoke"))[1] == {"revoked": 2}
        with pytest.raises(sso.exceptions.UnauthorizedException):
            await sso.list_accounts(accessToken=tokens.access_token)
    assert (await control(emu.url, "POST", "expire-refresh-tokens"))[0] == 200
    status, key = await control(emu.url, "POST", "access-keys", {"user_name": "bot"})
    assert status == 200
    async with aws_client(emu.url, "sts", Keys(key["AccessKeyId"], key["SecretAccessKey"])) as sts:
        identity = await sts.get_caller_identity()
    assert identity["Arn"] == key["Arn"] == "arn:aws:iam::111111111111:user/bot"
    assert (await control(emu.url, "POST", "access-keys", {"who": "x"}))[0] == 400


def test_command_line_flags_map_onto_the_config() -> None:
    emulator, host, port = build(
        ["--port", "0", "--role-ttl", "900", "--assume-role-cap", "none", "--no-auto-approve"]
    )
    assert (host, port) == ("127.0.0.1", 0)
    assert emulator.config.role_ttl == 900
    assert emulator.config.assume_role_cap is None
    assert emulator.auto_approve is False
    with pytest.raises(SystemExit):
        build(["--access-token-ttl", "0"])


async def test_standalone_process_prints_its_url_and_serves() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "credd.testing.emulator",
        "--port",
        "0",
        "--access-token-ttl",
        "60",
        "--start-url",
        "https://d-0000000000.awsapps.com/start",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        with anyio.fail_after(15):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("EMULATOR_URL=http://127.0.0.1:")
        url = line.strip().removeprefix("EMULATOR_URL=")
        assert (await control(url, "GET", "config"))[1]["access_token_ttl"] == 60
        async with aws_client(url, "sso-oidc") as oidc:
            reg = await register(oidc)
            with pytest.raises(oidc.exceptions.InvalidRequestException):
                await oidc.start_device_authorization(
                    clientId=reg.client_id,
                    clientSecret=reg.client_secret,
                    startUrl="https://d-1234567890.awsapps.com/start",
                )
        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(10):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
