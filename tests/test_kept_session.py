"""A kept Identity Center session against the emulator: adopt, survive torn files, lose nothing.

Each test drives a real :class:`~credd.sessions.identity_center.IdentityCenterSession`
(the Identity Center strategy on :class:`~credd.engine.session.KeptSession`)
over the real cache in the test's HOME, wired the way the broker wires it: the
one planner on the emulator's ManualClock, the shared inotify watcher telling
the session when its file changed. Faults come from outside: another program's
write (botocore's temporary file and rename, the JS SDK's write in place), a
deletion, the emulator's fault controls. The draw is fixed; time moves only
when a test moves it.
"""

from __future__ import annotations

import hashlib
import io
import json
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from credd.clock import ManualClock
from credd.config.settings import Settings, SsoSessionSpec
from credd.engine.planner import Planner
from credd.engine.session import SessionContext
from credd.engine.watch import CacheWatcher
from credd.errors import CreddError, LoginRequired
from credd.files.store import SsoCache, SsoToken
from credd.secret import Secret
from credd.sessions import SessionState
from credd.sessions.identity_center import IdentityCenterSession, IdentityCenterStrategy
from credd.testing.emulator import Emulator
from credd.wiring import aws_clients, login_cache, sso_cache, trusted_identity_cache
from tests.support.home import Home
from tests.support.logs import captured_log
from tests.support.other_writers import login_elsewhere, write_in_place, write_like_botocore
from tests.support.waiting import eventually
from tests.support.world import World

#: the session's jitter and backoff draw: fixed, so that no outcome is left to luck
DRAW = 0.5


@pytest.fixture
def world(home: Home, clocked: tuple[Emulator, ManualClock]) -> World:
    """The standard AWS config; the emulator and the session share one ManualClock."""
    return World(home, clocked[0])


def spec_of(settings: Settings) -> SsoSessionSpec:
    spec = settings.session_for("my-sso")
    assert isinstance(spec, SsoSessionSpec)
    return spec


@dataclass
class Kept:
    session: IdentityCenterSession
    cache: SsoCache
    planner: Planner

    @property
    def held(self) -> str | None:
        """The access token the session would serve now, if any."""
        token = self.session.usable()
        return token.access_token.reveal() if token is not None else None

    @property
    def state(self) -> SessionState:
        return self.session.status().state


@asynccontextmanager
async def kept(world: World, *, watch: bool = True) -> AsyncIterator[Kept]:
    """The session ``my-sso``, started and planned, its file watched unless ``watch`` is off."""
    settings = world.settings
    spec = spec_of(settings)
    cache = sso_cache(settings)
    async with anyio.create_task_group() as tg:
        context = SessionContext(
            world.clock, tg, settings.refresh.token_margin_seconds, draw=lambda: DRAW
        )
        session = IdentityCenterSession(
            spec, cache=cache, clients=aws_clients(settings), context=context
        )
        planner = Planner(world.clock, tg)
        session.replan = lambda: planner.plan(session)
        if watch:
            watcher = CacheWatcher()
            await tg.start(watcher.run)
            path = session.cache_path

            def changed(name: str | None) -> None:
                if name is None or name == path.name:
                    session.cache_changed()

            watcher.watch(path.parent, changed)
        await tg.start(planner.run)
        session.start()
        planner.plan(session)
        yield Kept(session, cache, planner)
        tg.cancel_scope.cancel()


def member(data: bytes, name: str) -> str:
    value: Any = json.loads(data)[name]
    assert isinstance(value, str)
    return value


def upstream_calls(world: World) -> int:
    return sum(world.emu.calls.values())


def logged(log: io.StringIO, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


# --------------------------------------------------------------------------- adoption


@pytest.mark.parametrize("told_by", ["watcher", "cache_changed"])
async def test_a_token_another_writer_put_in_place_is_adopted_without_a_poll(
    world: World, tmp_path: Path, told_by: str
) -> None:
    await world.login()
    theirs = await login_elsewhere(world, tmp_path / "elsewhere")
    start = world.clock.now()
    async with kept(world, watch=told_by == "watcher") as k:
        ours = k.held
        assert ours is not None
        assert ours != member(theirs, "accessToken")
        calls = upstream_calls(world)

        write_like_botocore(world.cache_file, theirs)
        if told_by == "cache_changed":
            k.session.cache_changed()  # what the broker does when the watcher says so
        await eventually(
            lambda: k.held == member(theirs, "accessToken"), what="the other writer's token adopted"
        )
        assert k.state is SessionState.OK
        assert world.cache_file.read_bytes() == theirs, "adopted, not rewritten"
    # no time passed (no poll came due) and no request asked: the change alone did it
    assert world.clock.now() == start
    assert upstream_calls(world) == calls


async def test_a_torn_file_keeps_the_held_token_and_its_repair_is_read_despite_the_old_mtime(
    world: World, tmp_path: Path
) -> None:
    await world.login()
    theirs = await login_elsewhere(world, tmp_path / "elsewhere")
    with captured_log() as log:
        async with kept(world) as k:
            ours = k.held
            assert ours is not None
            old_mtime = world.cache_file.stat().st_mtime_ns
            calls = upstream_calls(world)

            # A writer halfway through, in place, with the mtime the file had before: an
            # mtime-based reader would not even see that anything changed.
            write_in_place(world.cache_file, theirs[: len(theirs) // 2], mtime_ns=old_mtime)
            await eventually(
                lambda: bool(logged(log, "session_cache_unreadable")), what="the torn read"
            )
            assert k.held == ours, "a torn file never drops the token held"
            assert k.state is SessionState.OK
            assert (await k.session.token()).access_token.reveal() == ours
            assert k.session.status().action is None

            # The whole file, restored with its old mtime: read again all the same.
            write_in_place(world.cache_file, theirs, mtime_ns=old_mtime)
            await eventually(
                lambda: k.held == member(theirs, "accessToken"), what="the repaired file adopted"
            )
            assert k.state is SessionState.OK
            assert world.cache_file.stat().st_mtime_ns == old_mtime
            assert upstream_calls(world) == calls, "nothing was renewed over a torn file"
    assert "session_login_required" not in log.getvalue()


# --------------------------------------------------------------------------- compare and swap


async def test_a_login_landing_during_a_slowed_refresh_is_kept_on_disk_and_adopted(
    world: World, tmp_path: Path
) -> None:
    await world.login()
    theirs = await login_elsewhere(world, tmp_path / "elsewhere")
    async with kept(world) as k:
        assert k.held is not None
        creates = world.emu.calls["CreateToken"]
        # Slowed in the emulator: the CreateToken is answered, and its refresh token
        # rotated, only after the login below has landed.
        world.emu.faults.add("CreateToken", latency=0.5)
        renewed: list[SsoToken] = []

        async def renew() -> None:
            renewed.append(await k.session.renew_now())

        async with anyio.create_task_group() as tg:
            tg.start_soon(renew)
            await eventually(
                lambda: world.emu.calls["CreateToken"] == creates + 1,
                what="credd's CreateToken reaching the emulator",
            )
            write_like_botocore(world.cache_file, theirs)  # `aws sso login`, meanwhile

        assert world.cache_file.read_bytes() == theirs, "the login was overwritten"
        assert [t.access_token.reveal() for t in renewed] == [member(theirs, "accessToken")]
        assert k.held == member(theirs, "accessToken")
        assert k.state is SessionState.OK
        assert world.emu.calls["CreateToken"] == creates + 1, "no renewal fought the login"


async def test_a_logout_landing_during_a_slowed_refresh_is_not_undone(world: World) -> None:
    await world.login()
    async with kept(world) as k:
        assert k.held is not None
        creates = world.emu.calls["CreateToken"]
        world.emu.faults.add("CreateToken", latency=0.5)
        outcome: list[BaseException | SsoToken] = []

        async def renew() -> None:
            try:
                outcome.append(await k.session.renew_now())
            except Exception as exc:  # what the caller gets is the point
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(renew)
            await eventually(
                lambda: world.emu.calls["CreateToken"] == creates + 1,
                what="credd's CreateToken reaching the emulator",
            )
            world.cache_file.unlink()  # `aws sso logout`, meanwhile

        assert not world.cache_file.exists(), "the renewal wrote the logged-out session back"
        assert k.held is None
        # the logout is what the session reports, and what its callers are told
        assert k.state is SessionState.LOGIN_REQUIRED, k.session.status()
        assert isinstance(outcome[0], LoginRequired), outcome
        with pytest.raises(LoginRequired):
            await k.session.token()


# --------------------------------------------------------------------------- rejected tokens


async def test_a_rejected_access_token_is_renewed_at_most_once(world: World) -> None:
    await world.login()
    async with kept(world) as k:
        first = k.held
        assert first is not None
        creates = world.emu.calls["CreateToken"]

        answers: list[str] = []

        async def reject(token: str) -> None:
            answers.append((await k.session.token_rejected(Secret(token))).reveal())

        # a 401 storm: many consumers see the same token refused at once, then again
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(reject, first)
        for _ in range(10):
            await reject(first)
        assert world.emu.calls["CreateToken"] == creates + 1
        second = k.held
        assert second is not None
        assert second != first
        assert answers == [second] * 20

        # the replacement, refused in turn, is renewed once as well
        for _ in range(5):
            await reject(second)
        assert world.emu.calls["CreateToken"] == creates + 2
        assert k.held not in (first, second)
        assert k.state is SessionState.OK


async def test_a_rejected_token_whose_renewal_fails_backs_off(world: World) -> None:
    await world.login()
    async with kept(world) as k:
        first = k.held
        assert first is not None
        creates = world.emu.calls["CreateToken"]
        # garbage from CreateToken: a transient fault that botocore does not retry itself
        world.emu.faults.add("CreateToken", body=b'{"accessToken": 5}', count=None)

        async def reject() -> None:
            with pytest.raises(CreddError) as raised:
                await k.session.token_rejected(Secret(first))
            assert "CreateToken" in str(raised.value)

        for _ in range(20):
            await reject()
        assert world.emu.calls["CreateToken"] == creates + 1, "one call, then the backoff"
        assert k.session.status().state is SessionState.RETRYING

        # the first backoff is at most a second (whatever the draw): then one more try
        world.clock.advance(1.0)
        for _ in range(20):
            await reject()
        assert world.emu.calls["CreateToken"] == creates + 2

        world.emu.faults.clear("CreateToken")
        world.clock.advance(2.0)  # the second backoff is at most two seconds
        renewed = (await k.session.token_rejected(Secret(first))).reveal()
        assert renewed != first
        assert world.emu.calls["CreateToken"] == creates + 3
        assert k.state is SessionState.OK


# --------------------------------------------------------------------------- logout


async def test_a_deleted_cache_file_is_a_logout(world: World) -> None:
    await world.login()
    async with kept(world) as k:
        assert k.held is not None
        calls = upstream_calls(world)
        world.cache_file.unlink()  # `aws sso logout`
        await eventually(
            lambda: k.state is SessionState.LOGIN_REQUIRED, what="the session logged out"
        )
        assert k.held is None
        assert k.session.status().action == "credd login my-sso"
        with pytest.raises(LoginRequired) as raised:
            await k.session.token()
        assert raised.value.action == "credd login my-sso"
        assert upstream_calls(world) == calls
        # no retry is planned: only a login brings it back
        assert k.session.wake(world.clock.now()) is None


# --------------------------------------------------------------------------- rescue copies


async def rotate_upstream(world: World, cache: SsoCache) -> SsoToken:
    """The refresh credd did before its write failed: the file's token exchanged upstream,
    its refresh token now spent."""
    settings = world.settings
    spec = spec_of(settings)
    held = cache.load_token(spec.cache_key)
    assert held is not None
    strategy = IdentityCenterStrategy(spec, cache=cache, clients=aws_clients(settings))
    return await strategy.exchange(held, world.clock.now())


def rescue(cache: SsoCache, *, supersedes: str | None, token: SsoToken) -> str:
    """A rescue copy as a daemon whose write failed left it; returns the entry's name."""
    name = cache.token_name("my-sso")
    assert cache.files.rescue(name, {"supersedes": supersedes, "token": token.to_json()})
    assert cache.files.rescued(name) is not None
    return name


async def test_start_takes_back_a_rescue_copy_of_the_file_it_supersedes(world: World) -> None:
    await world.login()
    cache = sso_cache(world.settings)
    spent = world.cache_file.read_bytes()
    rotated = await rotate_upstream(world, cache)
    assert rotated.refresh_token is not None
    name = rescue(cache, supersedes=hashlib.sha256(spent).hexdigest(), token=rotated)
    creates = world.emu.calls["CreateToken"]

    async with kept(world) as k:
        assert k.held == rotated.access_token.reveal(), "the rescued token, not the spent one"
        # written back to the cache at once, and the rescue copy then removed
        await eventually(lambda: cache.files.rescued(name) is None, what="the rescue written")
        assert member(world.cache_file.read_bytes(), "refreshToken") == (
            rotated.refresh_token.reveal()
        )
        assert k.state is SessionState.OK
        assert world.emu.calls["CreateToken"] == creates, "the spent token was never presented"

        # the next renewal presents the rescued refresh token, which upstream still honours
        token = k.session.usable()
        assert token is not None
        world.clock.set(k.session.renew_by(token))
        await eventually(
            lambda: (
                world.emu.calls["CreateToken"] == creates + 1
                and k.held not in (None, token.access_token.reveal())
            ),
            what="the renewal after the rescue",
        )
        assert k.state is SessionState.OK
        assert member(world.cache_file.read_bytes(), "refreshToken") != (
            rotated.refresh_token.reveal()
        )


@pytest.mark.parametrize("supersedes", ["moved-past", "unnamed"])
async def test_start_drops_a_rescue_copy_the_file_has_moved_past(
    world: World, supersedes: str
) -> None:
    await world.login()
    cache = sso_cache(world.settings)
    spent = world.cache_file.read_bytes()
    rotated = await rotate_upstream(world, cache)
    await world.login()  # a new login has replaced the file since
    current = world.cache_file.read_bytes()
    assert current != spent
    name = rescue(
        cache,
        supersedes=hashlib.sha256(spent).hexdigest() if supersedes == "moved-past" else None,
        token=rotated,
    )

    async with kept(world) as k:
        assert cache.files.rescued(name) is None, "the stale rescue copy is dropped"
        assert k.held == member(current, "accessToken"), "the newer login is what is held"
        assert k.state is SessionState.OK
        assert world.cache_file.read_bytes() == current, "the login is not overwritten"


def test_the_daemons_caches_keep_rescue_copies_in_credds_state_directory(world: World) -> None:
    """What the daemon builds its sessions on (credd.wiring) can keep a rescue copy at all."""
    settings = world.settings
    for cache in (sso_cache(settings), login_cache(settings), trusted_identity_cache(settings)):
        path = cache.files.rescue("entry", {"supersedes": None, "token": {}})
        assert path is not None, f"the cache {cache.files.directory} has nowhere to rescue to"
        assert path.is_relative_to(settings.paths.state_dir)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
