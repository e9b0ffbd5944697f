"""A rotated refresh token that cannot be written is never lost (issue 10, item 2, first invariant).

``~/.aws/sso/cache`` is a real tmpfs (:mod:`tests.support.mounts`), remounted
read-only (EROFS) or filled up (ENOSPC) under a logged-in ``credd serve``
whose clock the test moves (:mod:`tests.support.faketime`). The emulator
rotates refresh tokens strictly: the one presented dies at once, and
presenting it again is refused with InvalidGrantException. So "no token was
lost" is counted there: every CreateToken call credd made was answered with a
new token (:func:`refused_create_tokens` is 0), and the session is never
revoked nor login-required.

The story of one session: its renewal comes due while the disk refuses writes
(credd fails before spending anything, and says why: errno and path); the
access token expires (credd spends the refresh token, keeps the new one in
memory and serves from it); the disk comes back (the write lands, and the file
holds the refresh token the emulator accepts).
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from credd.engine.schedule import BACKOFF_CAP_SECONDS
from credd.files.store import parse_timestamp, sha1_name
from credd.testing.emulator import Emulator
from credd.testing.emulator.state import SsoSession
from tests.support.faketime import PLANNER_LAG, FrozenWorld
from tests.support.mounts import Tmpfs
from tests.support.observe import (
    events,
    refused_create_tokens,
    served,
    session_in,
    session_status,
    session_when,
)
from tests.support.process import Daemon, status_json
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

#: the emulator's access token lifetime; renewed 20 min (plus jitter, at most 2 min) ahead
ACCESS_TOKEN_TTL = 3600
#: role credentials this short are fetched again, with the session's access token, after
#: any step of the clock the tests take; and they keep the daemon's planner looking at
#: its clock at least every 16 s (:data:`tests.support.faketime.PLANNER_LAG`)
ROLE_TTL = 32
#: past the renewal point of a token issued at the start, still 10 min before its expiry
RENEWAL_DUE = timedelta(seconds=3000)
#: a minute past the expiry of a token issued at the start
PAST_EXPIRY = timedelta(seconds=ACCESS_TOKEN_TTL + 60)
DEV = "/v1/credentials/dev"


@dataclass(frozen=True)
class DiskFault:
    errno_name: str
    #: what breaks the filesystem, and what repairs it
    cause: Callable[[Tmpfs], None]
    repair: Callable[[Tmpfs], None]


DISK_FAULTS = {
    "read-only": DiskFault("EROFS", Tmpfs.read_only, Tmpfs.read_write),
    "full": DiskFault("ENOSPC", Tmpfs.fill, Tmpfs.free),
}


# ------------------------------------------------------------------------------- looking


def the_session(emu: Emulator) -> SsoSession:
    """The emulator's one Identity Center session (one login)."""
    (session,) = emu.state.sessions.values()
    return session


def live_refresh_token(emu: Emulator) -> str:
    token = the_session(emu).refresh_token
    assert token is not None
    return token.reveal()


def on_disk(world: FrozenWorld) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(world.cache_file.read_bytes())
    return data


def rescued(path: Path) -> tuple[int, dict[str, Any]]:
    """A rescue copy's permission bits and what it holds."""
    data: dict[str, Any] = json.loads(path.read_bytes())
    return stat.S_IMODE(path.stat().st_mode), data


def names_the_failure(record: dict[str, Any], fault: DiskFault, world: FrozenWorld) -> bool:
    """Whether a status record or a log event names the errno and the cache file's path."""
    text = json.dumps(record)
    return fault.errno_name in text and str(world.cache_file) in text


async def reported(daemon: Daemon, fault: DiskFault, world: FrozenWorld) -> dict[str, Any]:
    """The session's status once it is retrying and says why (the planner's turn may come
    a moment after the request that made the daemon try)."""
    return await session_when(
        daemon,
        lambda s: s["state"] == "retrying" and names_the_failure(s, fault, world),
        within=PLANNER_LAG,
        what=f"the status naming {fault.errno_name} and the path",
    )


async def logged_in_and_serving(world: FrozenWorld, daemon: Daemon) -> datetime:
    """``dev`` served once (its profile is now kept warm); the instant the session began."""
    await served(daemon, DEV)
    return world.frozen.now()  # the clock has not moved since the login


async def rotated_in_memory(world: FrozenWorld, daemon: Daemon, began: datetime) -> str:
    """Past the old token's expiry: served all the same; the refresh token credd now holds."""
    spent = on_disk(world)["refreshToken"]
    world.frozen.set(began + PAST_EXPIRY)
    body = await served(daemon, DEV)
    now = world.frozen.now()
    assert parse_timestamp(body["Expiration"]) > now + timedelta(seconds=15), body
    held = live_refresh_token(world.emu)
    assert held != spent  # the rotation happened upstream ...
    assert on_disk(world)["refreshToken"] == spent  # ... and could not be written
    assert refused_create_tokens(world.emu) == 0
    assert not the_session(world.emu).revoked
    return held


@pytest.fixture
def world(frozen_world: FrozenWorld, sso_tmpfs: Tmpfs) -> FrozenWorld:
    """The frozen world, its SSO cache on a tmpfs (mounted before anything is written there)."""
    frozen_world.emu.config.update({"access_token_ttl": ACCESS_TOKEN_TTL, "role_ttl": ROLE_TTL})
    return frozen_world


# ------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("fault", list(DISK_FAULTS))
async def test_a_rotated_token_that_cannot_be_written_is_served_and_written_later(
    world: FrozenWorld, sso_tmpfs: Tmpfs, fault: str
) -> None:
    disk = DISK_FAULTS[fault]
    emu = world.emu
    await world.login()
    logins = emu.calls["CreateToken"]
    async with world.serving() as daemon:
        began = await logged_in_and_serving(world, daemon)
        disk.cause(sso_tmpfs)

        # The renewal comes due while the token is valid: nothing is spent, the reason is told.
        world.frozen.set(began + RENEWAL_DUE)
        await reported(daemon, disk, world)
        assert emu.calls["CreateToken"] == logins, "a refresh token was spent on a failing disk"
        (unwritable, *_) = events(daemon, "session_cache_unwritable")
        assert names_the_failure(unwritable, disk, world), unwritable
        await served(daemon, DEV)  # with the access token still held

        # The access token expires: the refresh token is spent, the new one kept in memory.
        held = await rotated_in_memory(world, daemon, began)
        (unsaved,) = events(daemon, "session_token_unsaved")
        assert names_the_failure(unsaved, disk, world), unsaved
        await reported(daemon, disk, world)
        session = session_in(await status_json(world.env))  # what ``credd status`` shows
        assert session["state"] == "retrying", session
        assert names_the_failure(session, disk, world), session
        # the token held is the rotated one: it expires an hour after the rotation
        assert parse_timestamp(session["expires_at"]) > world.frozen.now(), session

        # The disk comes back: the write lands at the next retry, whatever its backoff was.
        disk.repair(sso_tmpfs)
        world.frozen.advance(int(BACKOFF_CAP_SECONDS) + 1)
        await eventually(
            lambda: on_disk(world)["refreshToken"] == held,
            within=PLANNER_LAG,
            what="the rotated refresh token reaching the disk",
        )
        assert emu.state.session_of_refresh_token(held) is the_session(emu)  # accepted upstream
        assert refused_create_tokens(emu) == 0
        assert not the_session(emu).revoked
        await session_when(
            daemon, lambda s: (s["state"], s["last_error"]) == ("ok", None), what="all well"
        )
        await served(daemon, DEV)
    assert "InvalidGrant" not in daemon.output()


async def test_a_token_that_cannot_be_written_gets_a_rescue_copy(
    world: FrozenWorld, sso_tmpfs: Tmpfs
) -> None:
    """The 0600 copy in credd's state directory that a restarted daemon takes back."""
    await world.login()
    async with world.serving() as daemon:
        began = await logged_in_and_serving(world, daemon)
        sso_tmpfs.read_only()
        held = await rotated_in_memory(world, daemon, began)
        (unsaved,) = events(daemon, "session_token_unsaved")
        assert unsaved.get("rescue_copy"), unsaved
        rescue = Path(unsaved["rescue_copy"])
        # under $XDG_STATE_HOME/credd/rescue (never an AWS directory: aws sso logout sweeps them)
        assert rescue.is_relative_to(world.home.paths().state_dir / "rescue"), rescue
        assert rescue.name == f"{sha1_name('my-sso')}.json"
        mode, copy = rescued(rescue)
        assert mode == 0o600
        assert copy["token"]["refreshToken"] == held


async def test_a_disk_that_stays_read_only_past_a_second_expiry_costs_no_session(
    world: FrozenWorld, sso_tmpfs: Tmpfs
) -> None:
    """The rotated refresh token, held in memory, renews again; the spent one on disk never."""
    emu = world.emu
    await world.login()
    async with world.serving() as daemon:
        began = await logged_in_and_serving(world, daemon)
        sso_tmpfs.read_only()
        await rotated_in_memory(world, daemon, began)
        session = await session_status(daemon)
        expired = parse_timestamp(session["expires_at"])

        world.frozen.set(expired + timedelta(seconds=60))  # the rotated token has expired too
        body = await served(daemon, DEV)
        assert parse_timestamp(body["Expiration"]) > world.frozen.now() + timedelta(seconds=15)
        assert refused_create_tokens(emu) == 0
        held = live_refresh_token(emu)

        sso_tmpfs.read_write()
        world.frozen.advance(int(BACKOFF_CAP_SECONDS) + 1)
        await eventually(
            lambda: on_disk(world)["refreshToken"] == held,
            within=PLANNER_LAG,
            what="the latest refresh token reaching the disk",
        )
        assert not the_session(emu).revoked
