"""Other programs write the cache credd reads; credd adopts what they write and never fights it.

Issue 10, item 2: compare and swap (a login in botocore's style landing while
credd's refresh is in flight is kept, and renewed next), a read that fails
never drops a held token (a file torn by an in-place writer, its old mtime put
back), and a cache file deleted by ``aws sso logout`` stops its profiles within
a minute. Each runs a real ``credd serve``; those that move time run it on the
test's clock (:mod:`tests.support.faketime`).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from credd.files.store import parse_timestamp
from credd.testing.emulator import Emulator
from credd.testing.emulator.state import SsoSession
from tests.support.faketime import PLANNER_LAG, FrozenWorld
from tests.support.observe import (
    ask,
    events,
    refused_create_tokens,
    served,
    session_in,
    session_status,
    session_when,
)
from tests.support.other_writers import login_elsewhere, write_in_place, write_like_botocore
from tests.support.process import status_json
from tests.support.waiting import eventually
from tests.support.world import World

pytestmark = pytest.mark.slow

ACCESS_TOKEN_TTL = 3600
#: short role credentials: after any step of the clock, ``dev`` is fetched again with the
#: session's access token, so what is served shows what the session holds
ROLE_TTL = 32
PAST_EXPIRY = timedelta(seconds=ACCESS_TOKEN_TTL + 60)
#: past the renewal point of a token issued at the start (20 min ahead, jitter at most
#: 2 min more), and 10 min before its expiry
RENEWAL_DUE = timedelta(seconds=3000)
#: past the first retry after a failure (1 s at most), still well before the expiry
RETRY_SECONDS = 60
DEV = "/v1/credentials/dev"
#: how long the emulator holds the CreateToken of the renewal a login lands during
SLOW_CREATE_TOKEN = 2.0


def session_of(emu: Emulator, refresh_token: str) -> SsoSession:
    """The session ``refresh_token`` is the current refresh token of (the emulator forgets
    spent ones: it accepts only those)."""
    session = emu.state.session_of_refresh_token(refresh_token)
    assert session is not None, "not a refresh token the emulator accepts"
    return session


def refreshed_with(session: SsoSession) -> str:
    assert session.refresh_token is not None
    return session.refresh_token.reveal()


def cached(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_bytes())
    return data


@pytest.fixture
def frozen(frozen_world: FrozenWorld) -> FrozenWorld:
    frozen_world.emu.config.update({"access_token_ttl": ACCESS_TOKEN_TTL, "role_ttl": ROLE_TTL})
    return frozen_world


# ------------------------------------------------------------------------ compare and swap


async def test_a_login_landing_during_a_renewal_is_kept_and_renewed_next(
    frozen: FrozenWorld, tmp_path: Path
) -> None:
    world, emu = frozen, frozen.emu
    await world.login()
    began = world.frozen.now()
    ours = session_of(emu, world.sso_refresh_token())
    async with world.serving() as daemon:
        await served(daemon, DEV)
        # Half an hour in, before our renewal is due, they log in: theirs outlives ours.
        world.frozen.set(began + timedelta(seconds=ACCESS_TOKEN_TTL // 2))
        their_login = await login_elsewhere(world, tmp_path)
        their_refresh_token = json.loads(their_login)["refreshToken"]
        theirs = session_of(emu, their_refresh_token)
        assert theirs is not ours

        # Our token expires; the next renewal (a request's, or the planner's, whichever
        # comes first) is held in the emulator, and their login lands meanwhile.
        tokens, calls = len(emu.state.access_tokens), emu.calls["CreateToken"]
        emu.faults.add("CreateToken", latency=SLOW_CREATE_TOKEN)
        world.frozen.set(began + PAST_EXPIRY)
        async with anyio.create_task_group() as tg:
            tg.start_soon(served, daemon, DEV)  # the renewal: held in the emulator
            await eventually(lambda: emu.calls["CreateToken"] > calls, what="the renewal")
            # Deterministic, not lucky: the emulator holds the call on a timer of this
            # event loop, due SLOW_CREATE_TOKEN after the call came; the poll above is due
            # 10 ms after it came, so it runs first, and the login lands right here.
            write_like_botocore(world.cache_file, their_login)
            assert len(emu.state.access_tokens) == tokens, "the renewal was not in flight"
        # The renewal came back (the request above was served): the login is still there.
        assert len(emu.state.access_tokens) == tokens + 1
        assert world.cache_file.read_bytes() == their_login
        assert events(daemon, "session_cache_changed_during_renewal")
        session = await session_status(daemon)
        assert session["state"] == "ok", session
        assert session["expires_at"] == cached(world.cache_file)["expiresAt"]

        # Renewed next: with their refresh token, on their session; ours is left alone.
        ours_left = refreshed_with(ours)
        world.frozen.set(parse_timestamp(session["expires_at"]) + timedelta(seconds=60))
        await served(daemon, DEV)
        assert refreshed_with(theirs) != their_refresh_token
        assert cached(world.cache_file)["refreshToken"] == refreshed_with(theirs)
        assert refreshed_with(ours) == ours_left
        assert refused_create_tokens(emu) == 0


# ------------------------------------------------------------------------ a torn file


async def test_a_torn_file_restored_with_its_old_mtime_never_costs_the_session(
    frozen: FrozenWorld,
) -> None:
    """Torn while the renewal comes due: served from the token held, never login-required;
    whole again under the same mtime: read, and renewed from. (credd used to re-read the
    file before renewing, park the session on what it found, and look again only when the
    mtime changed.)"""
    world, emu = frozen, frozen.emu
    await world.login()
    began = world.frozen.now()
    path = world.cache_file
    whole, times = path.read_bytes(), path.stat()
    async with world.serving() as daemon:
        await served(daemon, DEV)

        # Half of it, as an in-place writer leaves it for a moment; the old mtime put back.
        write_in_place(path, whole[: len(whole) // 2], mtime_ns=times.st_mtime_ns)
        # The renewal comes due (the token held is good for ten more minutes); dev's 32 s
        # credentials lapse with the jump, so whatever is served after it was fetched after it.
        fetched = emu.calls["GetRoleCredentials"]
        world.frozen.set(began + RENEWAL_DUE)
        session = await session_when(
            daemon, lambda s: s["state"] != "ok", within=PLANNER_LAG, what="a renewal"
        )
        assert session["state"] == "retrying", session  # never login-required
        assert "cannot be read" in session["last_error"], session
        assert events(daemon, "session_cache_unreadable")
        await served(daemon, DEV)  # fetched anew, with the token held
        assert emu.calls["GetRoleCredentials"] > fetched
        assert session_in(await status_json(world.env))["state"] != "login-required"

        # Whole again, with the old mtime once more: read, and renewed from at the next try.
        write_in_place(path, whole, mtime_ns=times.st_mtime_ns)
        refreshed = emu.calls["CreateToken"]
        world.frozen.advance(RETRY_SECONDS)
        await session_when(
            daemon,
            lambda s: (s["state"], s["last_error"]) == ("ok", None),
            within=PLANNER_LAG,
            what="the session renewed from the restored file",
        )
        assert emu.calls["CreateToken"] > refreshed
        assert refused_create_tokens(emu) == 0
        session_of(emu, cached(path)["refreshToken"])  # the renewed refresh token, on disk
        await served(daemon, DEV)


# ------------------------------------------------------------------------ logged out elsewhere


async def test_a_cache_file_deleted_by_aws_sso_logout_stops_its_profiles_within_a_minute(
    world: World,
) -> None:
    await world.login()
    async with world.serving() as daemon:
        for profile in ("dev", "admin"):  # admin: a role chained on dev
            await served(daemon, f"/v1/credentials/{profile}")
        # ``aws sso logout`` (SSOTokenSweeper) removes every file with an accessToken in it
        world.cache_file.unlink()
        await eventually(
            lambda: bool(events(daemon, "session_logged_out")),
            within=60,
            what="the daemon seeing the logout",
        )
        for profile in ("dev", "admin"):
            answer = await ask(daemon, f"/v1/credentials/{profile}")
            assert answer.status == 503, answer
            assert "credd login my-sso" in answer.json()["message"], answer
        assert (await session_status(daemon))["state"] == "login-required"
