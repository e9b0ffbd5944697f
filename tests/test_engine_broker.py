"""The broker on the engine, in the daemon in process: profiles back off, logins end the wait.

The whole daemon (``running_daemon``) against the emulator on one ManualClock:
requests over HTTP, upstream calls counted by the emulator, cache files changed
the way other programs change them. The daemon's draw is its own, so every
assertion here holds whatever it draws: a first backoff lasts at most a
second, a second one at most two.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from credd.clock import ManualClock
from credd.daemon import DaemonHandle, running_daemon
from credd.engine.broker import ProfileState
from credd.testing.emulator import Emulator
from tests.support.home import Home
from tests.support.inprocess import get
from tests.support.other_writers import login_elsewhere, write_like_botocore
from tests.support.waiting import eventually
from tests.support.world import World

#: a GetRoleCredentials answer botocore parses and credd refuses: a transient fault that
#: botocore does not retry by itself, so that each fetch is exactly one call
GARBAGE = b'{"roleCredentials": "not an object"}'


@pytest.fixture
def world(home: Home, clocked: tuple[Emulator, ManualClock]) -> World:
    """The standard AWS config; the emulator and the daemon share one ManualClock."""
    return World(home, clocked[0])


def upstream_calls(world: World) -> int:
    return sum(world.emu.calls.values())


def profile_state(daemon: DaemonHandle, name: str) -> ProfileState:
    return next(p.state for p in daemon.broker.profile_statuses() if p.name == name)


def failed_on_its_session(daemon: DaemonHandle, name: str) -> bool:
    """The profile's own fetch failed for want of a login (not merely: nothing held yet)."""
    status = next(p for p in daemon.broker.profile_statuses() if p.name == name)
    return status.state is ProfileState.LOGIN_REQUIRED and status.last_error is not None


async def test_requests_during_a_profiles_backoff_fail_fast_without_upstream_calls(
    world: World,
) -> None:
    await world.login()
    world.emu.faults.add("GetRoleCredentials", body=GARBAGE, count=None)
    async with running_daemon(world.settings, clock=world.clock) as daemon:
        status, body = await get(daemon, "/v1/credentials/dev")
        assert status == 503, body
        assert body["code"] == "UpstreamUnavailable"
        assert world.emu.calls["GetRoleCredentials"] == 1
        calls = upstream_calls(world)

        # a client retrying as fast as it can, within the backoff: no call reaches AWS
        for _ in range(20):
            status, again = await get(daemon, "/v1/credentials/dev")
            assert status == 503
            assert again["code"] == "UpstreamUnavailable"
        assert upstream_calls(world) == calls
        assert profile_state(daemon, "dev") is ProfileState.RETRYING

        world.clock.advance(1.0)  # past the first backoff, whatever was drawn
        for _ in range(20):
            status, _ = await get(daemon, "/v1/credentials/dev")
            assert status == 503
        assert world.emu.calls["GetRoleCredentials"] == 2, "one try per backoff"
        assert upstream_calls(world) == calls + 1

        world.emu.faults.clear("GetRoleCredentials")
        world.clock.advance(2.0)  # past the second backoff
        status, body = await get(daemon, "/v1/credentials/dev")
        assert status == 200, body
        assert world.emu.calls["GetRoleCredentials"] == 3


async def test_a_portal_401_storm_renews_the_access_token_once_per_backoff(world: World) -> None:
    await world.login()
    world.emu.faults.add(
        "GetRoleCredentials", error_code="UnauthorizedException", status=401, count=None
    )
    async with running_daemon(world.settings, clock=world.clock) as daemon:
        creates = world.emu.calls["CreateToken"]
        for _ in range(20):
            status, _ = await get(daemon, "/v1/credentials/dev")
            assert status == 503
        # the refused token renewed once, the role asked for with the new one, then backoff
        assert world.emu.calls["CreateToken"] == creates + 1
        assert world.emu.calls["GetRoleCredentials"] == 2

        world.clock.advance(1.0)
        for _ in range(20):
            status, _ = await get(daemon, "/v1/credentials/dev")
            assert status == 503
        assert world.emu.calls["CreateToken"] == creates + 2
        assert world.emu.calls["GetRoleCredentials"] == 4


async def test_a_deleted_session_file_stops_its_profiles_being_served(world: World) -> None:
    await world.login()
    async with running_daemon(world.settings, clock=world.clock) as daemon:
        status, body = await get(daemon, "/v1/credentials/dev")
        assert status == 200, body
        start = world.clock.now()

        world.cache_file.unlink()  # `aws sso logout`
        # held credentials, still valid, are not served after a logout
        await eventually(
            lambda: daemon.broker.usable("dev") is None, what="the profile's credentials dropped"
        )
        status, body = await get(daemon, "/v1/credentials/dev")
        assert status == 503
        assert body["code"] == "LoginRequired"
        assert "credd login my-sso" in body["message"]
        status, body = await get(daemon, "/v1/credentials/admin")  # chained on top of dev
        assert status == 503
        assert body["code"] == "LoginRequired"
        assert world.clock.now() == start, "no poll came due: the deletion alone did it"


async def test_a_login_makes_a_profile_waiting_on_its_session_due_at_once(
    world: World, tmp_path: Path
) -> None:
    await world.login()
    login = await login_elsewhere(world, tmp_path / "elsewhere")
    async with running_daemon(world.settings, clock=world.clock) as daemon:
        status, _ = await get(daemon, "/v1/credentials/dev")
        assert status == 200
        served = json.loads(world.cache_file.read_bytes())["accessToken"]
        assert served != json.loads(login)["accessToken"]

        world.cache_file.unlink()  # logged out elsewhere: the profile fails on its session
        await eventually(
            lambda: failed_on_its_session(daemon, "dev"), what="the profile waiting on its session"
        )
        fetches = world.emu.calls["GetRoleCredentials"]

        # The login lands (the file replaced, botocore's way). The clock does not move,
        # so the profile's backoff never ends and nobody asks for it: only the session's
        # new token can make it due.
        write_like_botocore(world.cache_file, login)
        await eventually(
            lambda: profile_state(daemon, "dev") is ProfileState.FRESH,
            what="the profile fetched again after the login",
        )
        assert world.emu.calls["GetRoleCredentials"] == fetches + 1
        status, body = await get(daemon, "/v1/credentials/dev")
        assert status == 200, body
        assert world.emu.calls["GetRoleCredentials"] == fetches + 1, "served from memory"


async def test_a_request_right_after_a_login_is_served_without_waiting_out_the_backoff(
    world: World, tmp_path: Path
) -> None:
    login = await login_elsewhere(world, tmp_path / "elsewhere")
    async with running_daemon(world.settings, clock=world.clock) as daemon:
        status, body = await get(daemon, "/v1/credentials/dev")
        assert status == 503
        assert body["code"] == "LoginRequired"
        for _ in range(5):  # within the backoff: failing fast
            status, _ = await get(daemon, "/v1/credentials/dev")
            assert status == 503
        assert world.emu.calls["GetRoleCredentials"] == 0

        write_like_botocore(world.cache_file, login)
        # at once: no clock movement, no waiting for the watcher
        status, body = await get(daemon, "/v1/credentials/dev")
        assert status == 200, body
        assert world.emu.calls["GetRoleCredentials"] == 1
