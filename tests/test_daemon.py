"""The daemon in process, against the emulator, checked by botocore's own container provider."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import anyio
import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config

from credd.clock import ManualClock
from credd.daemon import DaemonHandle, running_daemon
from credd.files.store import sha1_name
from credd.testing.emulator import Emulator
from tests.support.configs import ACCOUNT, START_URL
from tests.support.home import Home
from tests.support.inprocess import RecordingUI, get, login, sdk_identity
from tests.support.waiting import eventually


def served_key(daemon: DaemonHandle, name: str) -> str | None:
    creds = daemon.broker.usable(name)
    return creds.access_key_id if creds else None


def profile_state(daemon: DaemonHandle, name: str) -> str:
    return next(p.state for p in daemon.broker.profile_statuses() if p.name == name)


def cache_file(home: Home, key: str = "my-sso") -> dict[str, Any]:
    path = home.root / ".aws" / "sso" / "cache" / f"{sha1_name(key)}.json"
    assert path.stat().st_mode & 0o777 == 0o600
    data: dict[str, Any] = json.loads(path.read_text())
    return data


async def test_nothing_served_before_login_then_login_serves_at_once(
    home: Home, clocked: tuple[Emulator, ManualClock]
) -> None:
    emu, clock = clocked
    settings = home.settings()
    async with running_daemon(settings, clock=clock) as daemon:
        status, body = await get(daemon, "/v1/credentials/dev")
        assert status == 503
        assert body["code"] == body["Code"] == "LoginRequired"
        assert "credd login my-sso" in body["message"]

        ui = RecordingUI()
        await login(settings, clock, ui=ui)
        url, code = ui.prompts[0]
        assert url.startswith(f"{emu.url}/authorize?")
        assert "code_challenge_method=S256" in url
        assert code is None

        status, body = await get(daemon, "/v1/credentials/dev")
        assert status == 200, body
        assert set(body) == {"AccessKeyId", "SecretAccessKey", "Token", "Expiration", "AccountId"}
        assert body["AccountId"] == ACCOUNT
        assert body["Expiration"].endswith("Z")
        assert len(body["Expiration"]) == 20

        identity = await sdk_identity(daemon, settings, "dev", emu.url)
        assert identity["Account"] == ACCOUNT
        assert ":assumed-role/AWSReservedSSO_ReadOnly_" in identity["Arn"]

        chained = await sdk_identity(daemon, settings, "admin", emu.url)
        assert chained["Arn"] == "arn:aws:sts::222222222222:assumed-role/Admin/credd-test"

    stored = cache_file(home)
    assert stored["startUrl"] == START_URL
    assert stored["region"] == "us-east-1"
    assert stored["refreshToken"]
    assert stored["clientSecret"]
    assert stored["expiresAt"].endswith("Z")


async def test_device_code_login(home: Home, clocked: tuple[Emulator, ManualClock]) -> None:
    emu, clock = clocked
    settings = home.settings()
    ui = RecordingUI()
    await login(settings, clock, device=True, ui=ui)
    url, code = ui.prompts[0]
    assert code is not None
    assert code.replace("-", "") in url.replace("-", "")
    assert emu.calls["StartDeviceAuthorization"] == 1
    assert cache_file(home)["accessToken"]


async def test_single_flight_for_a_cold_profile(
    home: Home, clocked: tuple[Emulator, ManualClock]
) -> None:
    emu, clock = clocked
    settings = home.settings()
    await login(settings, clock)
    emu.faults.add("GetRoleCredentials", latency=0.2)  # keep the fetch in flight
    async with running_daemon(settings, clock=clock) as daemon:
        headers = {"Authorization": daemon.token}
        connector = aiohttp.TCPConnector(limit=200)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def one(results: list[int]) -> None:
                async with http.get(f"{daemon.url}/v1/credentials/dev", headers=headers) as r:
                    results.append(r.status)

            results: list[int] = []
            async with anyio.create_task_group() as tg:
                for _ in range(1000):
                    tg.start_soon(one, results)
        assert emu.calls["GetRoleCredentials"] == 1
        assert len(results) == 1000
        assert set(results) <= {200, 503}
        assert results.count(200) >= 1


async def test_renewal_rotates_refresh_token_and_keeps_serving(
    home: Home, clocked: tuple[Emulator, ManualClock]
) -> None:
    emu, clock = clocked
    emu.config.update({"access_token_ttl": 3600, "role_ttl": 3600})
    settings = home.settings()
    await login(settings, clock)
    first_refresh = cache_file(home)["refreshToken"]
    async with running_daemon(settings, clock=clock) as daemon:
        _, first = await get(daemon, "/v1/credentials/dev")
        # Past the renewal point of both the access token and the role credentials
        clock.advance(45 * 60)
        await eventually(lambda: cache_file(home)["refreshToken"] != first_refresh)
        await eventually(lambda: served_key(daemon, "dev") != first["AccessKeyId"])
        stored = cache_file(home)
        _, second = await get(daemon, "/v1/credentials/dev")
        assert second["AccessKeyId"] != first["AccessKeyId"]
        assert datetime.fromisoformat(second["Expiration"]) > clock.now() + timedelta(minutes=50)

    # the rotated-out refresh token is dead upstream: credd never needs it again
    oidc = boto3.client(
        "sso-oidc",
        region_name="us-east-1",
        endpoint_url=emu.url,
        config=Config(signature_version=UNSIGNED),
    )

    def reuse_old() -> None:
        oidc.create_token(
            clientId=stored["clientId"],
            clientSecret=stored["clientSecret"],
            grantType="refresh_token",
            refreshToken=first_refresh,
        )

    with pytest.raises(oidc.exceptions.InvalidGrantException):
        await anyio.to_thread.run_sync(reuse_old)


async def test_outage_serves_last_good_then_recovers(
    home: Home, clocked: tuple[Emulator, ManualClock]
) -> None:
    emu, clock = clocked
    settings = home.settings()
    await login(settings, clock)
    async with running_daemon(settings, clock=clock) as daemon:
        _, good = await get(daemon, "/v1/credentials/dev")
        emu.faults.add(
            "GetRoleCredentials", status=500, error_code="InternalServerException", count=None
        )
        clock.advance(45 * 60)  # renewal due; upstream failing
        await eventually(lambda: profile_state(daemon, "dev") == "retrying")
        status, still = await get(daemon, "/v1/credentials/dev")
        assert status == 200
        assert still["AccessKeyId"] == good["AccessKeyId"]
        _, doc = await get(daemon, "/v1/status")
        dev = next(p for p in doc["profiles"] if p["name"] == "dev")
        assert dev["state"] == "retrying"
        assert "InternalServerException" in dev["last_error"]

        emu.faults.clear()
        clock.advance(5 * 60)
        await eventually(lambda: profile_state(daemon, "dev") == "fresh")
        _, fresh = await get(daemon, "/v1/credentials/dev")
        assert fresh["AccessKeyId"] != good["AccessKeyId"]


async def test_refused_refresh_means_login_required(
    home: Home, clocked: tuple[Emulator, ManualClock]
) -> None:
    emu, clock = clocked
    settings = home.settings()
    await login(settings, clock)
    async with running_daemon(settings, clock=clock) as daemon:
        await get(daemon, "/v1/credentials/dev")
        emu.revoke_sessions()
        clock.advance(61 * 60)  # access token and role credentials both expired
        await eventually(lambda: daemon.broker.session_statuses()[0].state == "login-required")
        status, body = await get(daemon, "/v1/credentials/dev")
        assert status == 503
        assert body["code"] == "LoginRequired"
        assert "credd login my-sso" in body["message"]

        # a new login brings it back without a restart
        await login(settings, clock)
        status, body = await get(daemon, "/v1/credentials/dev")
        assert status == 200, body


async def test_adopts_a_token_the_aws_cli_wrote(
    home: Home, clocked: tuple[Emulator, ManualClock]
) -> None:
    emu, clock = clocked
    settings = home.settings()
    await login(settings, clock)
    async with running_daemon(settings, clock=clock) as daemon:
        await get(daemon, "/v1/credentials/dev")
        before = emu.calls["CreateToken"]
        # `aws sso login` logs in anew and writes the file in its own (JS-like) format
        await login(settings, clock)
        written = cache_file(home)
        written["expiresAt"] = written["expiresAt"].replace("Z", ".000Z")
        written["someOtherTool"] = {"kept": True}
        path = home.root / ".aws" / "sso" / "cache" / f"{sha1_name('my-sso')}.json"
        path.write_text(json.dumps(written, indent=2))
        os.utime(path)
        await eventually(lambda: daemon.broker.sync_session("my-sso").expires_at is not None)
        clock.advance(45 * 60)
        await eventually(lambda: emu.calls["CreateToken"] >= before + 2)
        assert cache_file(home)["someOtherTool"] == {"kept": True}


async def test_hostile_requests_get_documented_errors(
    home: Home, clocked: tuple[Emulator, ManualClock]
) -> None:
    _, clock = clocked
    settings = home.settings()
    async with running_daemon(settings, clock=clock) as daemon:
        assert (await get(daemon, "/v1/credentials/dev", token=""))[0] == 401
        assert (await get(daemon, "/v1/credentials/dev", token="x" * 43))[0] == 401
        status, body = await get(daemon, "/v1/credentials/dev", headers={"Host": "evil.example"})
        assert status == 403
        assert body["Code"] == "Forbidden"
        status, _ = await get(daemon, "/v1/credentials/dev", headers={"Origin": "http://x"})
        assert status == 403
        status, body = await get(daemon, "/v1/credentials/nope")
        assert status == 404
        assert body["code"] == "NotFound"
        status, body = await get(daemon, "/v1/credentials/dev", method="POST")
        assert status == 405
        assert set(body) == {"code", "message", "Code", "Message"}
        status, _ = await get(daemon, "/../../etc/passwd")
        assert status == 404
        status, body = await get(daemon, "/healthz", token="")
        assert status == 200
        assert body == {"status": "ok"}
        status, doc = await get(daemon, "/v1/status")
        assert status == 200
        assert {p["name"] for p in doc["profiles"]} == {"dev", "admin"}
        # the daemon is still up and answering
        assert (await get(daemon, "/healthz"))[0] == 200


async def test_role_chained_on_a_credential_process_source(
    home: Home, clocked: tuple[Emulator, ManualClock]
) -> None:
    emu, clock = clocked
    keys = emu.create_access_key("ci", "333333333333")
    script = home.root / "get-creds"
    script.write_text(
        "#!/bin/sh\n"
        f'echo \'{{"Version": 1, "AccessKeyId": "{keys.access_key_id}", '
        f'"SecretAccessKey": "{keys.secret_access_key.reveal()}"}}\'\n'
    )
    script.chmod(0o700)
    home.write_aws_config(
        f"""\
        [profile proc]
        credential_process = {script}

        [profile on-proc]
        role_arn = arn:aws:iam::333333333333:role/Deploy
        source_profile = proc
        role_session_name = deployer
        """
    )
    settings = home.settings()
    async with running_daemon(settings, clock=clock) as daemon:
        identity = await sdk_identity(daemon, settings, "on-proc", emu.url)
    assert identity["Arn"] == "arn:aws:sts::333333333333:assumed-role/Deploy/deployer"
    assert emu.calls["AssumeRole"] == 1


async def test_prefetch_at_start_and_idle_profiles_stop_renewing(
    home: Home, clocked: tuple[Emulator, ManualClock]
) -> None:
    emu, clock = clocked
    home.write_credd_config(
        """\
        [server]
        listen = "127.0.0.1:0"

        [refresh]
        prefetch = ["dev"]
        idle_timeout_seconds = 3600
        """
    )
    settings = home.settings()
    await login(settings, clock)
    async with running_daemon(settings, clock=clock) as daemon:
        # prefetched without any request
        await eventually(lambda: profile_state(daemon, "dev") == "fresh")
        assert emu.calls["GetRoleCredentials"] == 1
        assert profile_state(daemon, "admin") == "cold"

        status, _ = await get(daemon, "/v1/credentials/admin")
        assert status == 200
        assert profile_state(daemon, "admin") == "fresh"

        # nobody asks for admin for longer than the idle timeout: it is no longer
        # renewed, while the prefetched dev is
        clock.advance(3700)
        await eventually(lambda: emu.calls["GetRoleCredentials"] >= 2)  # dev renewed
        await eventually(lambda: profile_state(daemon, "admin") in {"idle", "cold"})
        assume_roles = emu.calls["AssumeRole"]  # renewed while in use, then no more
        clock.advance(3700)
        await eventually(lambda: emu.calls["GetRoleCredentials"] >= 3)
        await eventually(lambda: profile_state(daemon, "dev") == "fresh")
        assert emu.calls["AssumeRole"] == assume_roles
