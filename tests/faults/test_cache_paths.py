"""What is at a cache path need not be a file: a FIFO or a symlink there neither hangs credd nor
is written through (issue 10, item 2, third invariant; issue 11's bounded reads).

A FIFO opened for reading waits for a writer that never comes; a symlink leads
wherever whoever made it wanted. Either replaces the token file of a logged-in
session under a real ``credd serve``: the daemon keeps answering (the
endpoint, ``/healthz``, ``credd status``), through the held token's expiry,
and what the symlink points at is neither written nor spent.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from credd.testing.emulator import Emulator
from tests.support.faketime import FrozenWorld
from tests.support.observe import ask, events, served, session_in
from tests.support.process import status_json
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

ACCESS_TOKEN_TTL = 3600
ROLE_TTL = 32
PAST_EXPIRY = timedelta(seconds=ACCESS_TOKEN_TTL + 60)
DEV = "/v1/credentials/dev"


def put_fifo(path: Path) -> None:
    """A FIFO renamed over the file, as any program could."""
    fifo = path.with_name(".credd-test.fifo")
    os.mkfifo(fifo, 0o600)
    os.replace(fifo, path)


def put_symlink(path: Path, target: Path) -> None:
    """A symlink renamed over the file, leading to ``target``: a copy of the token, elsewhere."""
    target.parent.mkdir(mode=0o700)
    target.write_bytes(path.read_bytes())
    target.chmod(0o600)
    link = path.with_name(".credd-test.link")
    link.symlink_to(target)
    os.replace(link, path)


def is_live(emu: Emulator, refresh_token: str) -> bool:
    return emu.state.session_of_refresh_token(refresh_token) is not None


@pytest.mark.parametrize("thing", ["fifo", "symlink"])
async def test_a_fifo_or_a_symlink_at_the_cache_path_neither_hangs_nor_is_written_through(
    frozen_world: FrozenWorld, thing: str
) -> None:
    world, emu = frozen_world, frozen_world.emu
    emu.config.update({"access_token_ttl": ACCESS_TOKEN_TTL, "role_ttl": ROLE_TTL})
    await world.login()
    began = world.frozen.now()
    refreshes = emu.calls["CreateToken"]
    path = world.cache_file
    target = world.home.root / "elsewhere" / "token.json"
    async with world.serving() as daemon:
        await served(daemon, DEV)
        if thing == "fifo":
            put_fifo(path)
        else:
            put_symlink(path, target)
            before, copied = target.stat(), target.read_bytes()
        await eventually(
            lambda: bool(events(daemon, "session_cache_unreadable")),
            what=f"the daemon looking at the {thing}",
        )
        (seen,) = events(daemon, "session_cache_unreadable")
        assert ("FIFO" if thing == "fifo" else "symbolic link") in seen["error"], seen

        # The token held is served from, and everything keeps answering.
        assert (await ask(daemon, "/healthz")).status == 200
        await served(daemon, DEV)
        session = session_in(await status_json(world.env))
        assert session["state"] != "login-required", session

        # Past the held token's expiry the daemon must read the path again, to renew:
        # it answers (what it makes of the path is its business), and keeps answering.
        world.frozen.set(began + PAST_EXPIRY)
        answer = await ask(daemon, DEV)
        assert answer.status in (200, 503), answer
        assert (await ask(daemon, "/healthz")).status == 200
        assert (await ask(daemon, "/v1/status")).status == 200

    if thing == "symlink":
        after = target.stat()
        assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
            before.st_ino,
            before.st_mtime_ns,
            before.st_size,
        )
        assert stat.S_IMODE(after.st_mode) == 0o600
        assert target.read_bytes() == copied
        # what it points at was not acted on either: its refresh token was never spent
        assert emu.calls["CreateToken"] == refreshes
        assert is_live(emu, json.loads(target.read_bytes())["refreshToken"])
