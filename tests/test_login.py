"""Interactive login against the emulator: both flows, and every way they can end badly."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import anyio
import pytest

from credd.clock import ManualClock
from credd.config.settings import SsoSessionSpec
from credd.errors import LoginError
from credd.files.store import registration_cache_name
from credd.sessions.sso_login import LoginOptions, SsoLogin
from credd.testing.emulator import Emulator
from credd.testing.emulator.config import EmulatorConfig
from credd.wiring import aws_clients, sso_cache
from tests.support.configs import START_URL
from tests.support.home import Home
from tests.support.inprocess import RecordingUI, login
from tests.support.waiting import eventually


@pytest.fixture
async def emu(home: Home, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Emulator]:
    config = EmulatorConfig(poll_interval=0, max_clock_skew=None)
    async with Emulator(ManualClock(datetime.now(UTC)), config=config).running() as emulator:
        monkeypatch.setenv("AWS_ENDPOINT_URL", emulator.url)
        home.write_aws_config()
        yield emulator


def clock_of(emu: Emulator) -> ManualClock:
    clock = emu.clock
    assert isinstance(clock, ManualClock)
    return clock


async def test_registration_is_reused_until_it_nears_expiry(home: Home, emu: Emulator) -> None:
    settings = home.settings()
    clock = clock_of(emu)
    await login(settings, clock)
    await login(settings, clock)
    assert emu.calls["RegisterClient"] == 1
    name = registration_cache_name(START_URL, "us-east-1", ("sso:account:access",), "my-sso")
    registration = sso_cache(settings).load_registration(name)
    assert registration is not None
    assert registration.for_auth_code

    clock.advance(85 * 24 * 3600)  # five days before the 90-day registration lapses
    await login(settings, clock)
    assert emu.calls["RegisterClient"] == 2


async def test_device_flow_denied_in_the_browser(home: Home, emu: Emulator) -> None:
    emu.auto_approve = False
    with pytest.raises(LoginError, match="denied"):
        await login(home.settings(), clock_of(emu), device=True)


async def test_auth_code_refused_in_the_browser(home: Home, emu: Emulator) -> None:
    emu.auto_approve = False
    with pytest.raises(LoginError, match="sign-in was refused: The user denied"):
        await login(home.settings(), clock_of(emu))


async def test_device_code_expires_unapproved(home: Home, emu: Emulator) -> None:
    settings = home.settings()
    clock = clock_of(emu)
    spec = settings.session_for("my-sso")
    assert isinstance(spec, SsoSessionSpec)
    ui = RecordingUI()
    attempt = SsoLogin(
        spec,
        cache=sso_cache(settings),
        clients=aws_clients(settings),
        clock=clock,
        ui=ui,
        options=LoginOptions(device=True, open_browser=False),
    )
    failures: list[LoginError] = []

    async def expire_once_shown() -> None:
        await eventually(lambda: bool(ui.prompts))
        clock.advance(601)

    async def run_login() -> None:
        try:
            await attempt.run()
        except LoginError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(expire_once_shown)
        tg.start_soon(run_login)
    [failure] = failures
    assert "expired before it was approved" in str(failure)
    assert ui.opened == [False]
    assert sso_cache(settings).load_token("my-sso") is None


async def test_legacy_profiles_use_the_device_flow(home: Home, emu: Emulator) -> None:
    home.write_aws_config(
        f"""\
        [profile old]
        sso_start_url = {START_URL}
        sso_region = us-east-1
        sso_account_id = 111111111111
        sso_role_name = ReadOnly
        """
    )
    settings = home.settings()
    token = await login(settings, clock_of(emu), "old")
    assert emu.calls["StartDeviceAuthorization"] == 1
    assert emu.calls["Authorize"] == 0
    assert token.refresh_token is None  # as with the AWS CLI, legacy logins get none
    assert sso_cache(settings).load_token(START_URL) is not None
