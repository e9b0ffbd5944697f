"""Suspend: the wall clock jumps forward past every expiry, as after a laptop sleeps.

Two worlds:

* **in process**, on a :class:`~credd.clock.ManualClock` the daemon and the
  emulator share: one ``advance`` jumps past the access token's and the role
  credentials' expiry at once;
* **a real ``credd serve`` process under libfaketime** (Debian ``faketime``):
  ``LD_PRELOAD`` + ``FAKETIME_TIMESTAMP_FILE``, re-read on every call
  (``FAKETIME_NO_CACHE=1``), so the test moves the process's wall clock
  forward by hours while it runs. ``DONT_FAKE_MONOTONIC=1``, on purpose: a
  real suspend on Linux does not advance ``CLOCK_MONOTONIC`` (asyncio's
  timers), only the wall clock, and that mismatch is exactly what credd's
  chunked wall-clock sleeps (:class:`~credd.clock.SystemClock`) and its
  per-request expiry check exist for. Faking monotonic too would fire every
  asyncio timer at once, which no suspend does. The emulator runs in this
  process on a clock with the same offset, so both sides agree on what has
  expired.

Either way the first request after the jump gets credentials valid at the new
now, or a clear 503 while the renewal runs; never expired ones; then valid ones.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from credd.clock import ManualClock, SystemClock
from credd.daemon import DaemonHandle, running_daemon
from credd.files.store import atomic_write, parse_timestamp, sha1_name
from credd.testing.emulator import Emulator
from credd.testing.emulator.config import EmulatorConfig
from tests.support.home import Home
from tests.support.inprocess import get, login
from tests.support.process import Daemon, serving
from tests.support.process import login as process_login

HOUR = 3600
#: the emulator's lifetimes: what a jump must get past
ACCESS_TOKEN_TTL = HOUR
ROLE_TTL = HOUR
PROFILES = ("dev", "admin")  # an Identity Center role, and a role chained on it
SEED = 20261121
#: how long valid credentials may take to come after a jump (a deadline, never reached)
RECOVERY_DEADLINE = 20.0

#: one request for a profile's credentials: (status, JSON body)
Ask = Callable[[str], Awaitable[tuple[int, dict[str, Any]]]]


def expiration(body: dict[str, Any]) -> datetime:
    return parse_timestamp(body["Expiration"])


def check_answer(status: int, body: dict[str, Any], now: datetime) -> bool:
    """An answer after a jump to ``now``: valid at ``now``, or a 503 saying a fetch runs.

    Returns whether it carried credentials.
    """
    if status == 200:
        assert expiration(body) > now, (body["Expiration"], now)
        return True
    assert status == 503, (status, body)
    assert body["code"] != "LoginRequired", body  # the session is alive: it is renewing
    assert "being fetched" in body["message"], body
    return False


async def after_the_jump(ask: Ask, now: Callable[[], datetime]) -> None:
    """The first answer for every profile, then valid credentials with a long life ahead."""
    jumped_to = now()
    for profile in PROFILES:
        check_answer(*await ask(profile), jumped_to)
    with anyio.fail_after(RECOVERY_DEADLINE):
        for profile in PROFILES:
            while not check_answer(*await ask(profile), jumped_to):  # noqa: ASYNC110  # polling the daemon is the point
                await anyio.sleep(0.02)
            status, body = await ask(profile)
            assert status == 200, body
            assert expiration(body) > now() + timedelta(minutes=30), body


async def served(ask: Ask) -> None:
    """Every profile served once before the jumps (a cold fetch may take a few 503s)."""
    with anyio.fail_after(RECOVERY_DEADLINE):
        for profile in PROFILES:
            while (await ask(profile))[0] != 200:  # noqa: ASYNC110  # polling the daemon is the point
                await anyio.sleep(0.02)


# ------------------------------------------------------------------------------- in process


@pytest.fixture
def short_lived(clocked: tuple[Emulator, ManualClock]) -> tuple[Emulator, ManualClock]:
    """The shared emulator and clock, with this file's token and credential lifetimes."""
    emu, _ = clocked
    emu.config.update({"access_token_ttl": ACCESS_TOKEN_TTL, "role_ttl": ROLE_TTL})
    return clocked


def cached_expiry(home: Home) -> datetime:
    path = home.paths().sso_cache_dir / f"{sha1_name('my-sso')}.json"
    return parse_timestamp(json.loads(path.read_text())["expiresAt"])


def held_is_valid(daemon: DaemonHandle, profile: str, now: datetime) -> None:
    """What the request path would hand out right now, before any task has run."""
    held = daemon.broker.usable(profile)
    assert held is None or held.expiration > now, (profile, held and held.expiration, now)


async def test_first_request_after_a_jump_past_every_expiry_is_valid(
    home: Home, short_lived: tuple[Emulator, ManualClock]
) -> None:
    emu, clock = short_lived
    settings = home.settings()
    await login(settings, clock)
    rng = random.Random(SEED)
    async with running_daemon(settings, clock=clock) as daemon:

        async def ask(profile: str) -> tuple[int, dict[str, Any]]:
            return await get(daemon, f"/v1/credentials/{profile}")

        await served(ask)
        jumps = 6
        for _ in range(jumps):
            # past the access token and the role credentials in one step: 1 to 30 hours
            clock.advance(rng.uniform(ACCESS_TOKEN_TTL + 1, 30 * HOUR))
            for profile in PROFILES:
                held_is_valid(daemon, profile, clock.now())  # nothing has run since the jump
            await after_the_jump(ask, clock.now)
            assert cached_expiry(home) > clock.now()  # the session renewed, on disk
            status, doc = await get(daemon, "/v1/status")
            assert status == 200
            assert [s["state"] for s in doc["sessions"]] == ["ok"], doc["sessions"]
    # never a new login: every jump was renewed with the refresh token
    assert emu.calls["Authorize"] == 1
    assert emu.calls["CreateToken"] >= 1 + jumps


# ------------------------------------------------------------------ a real process, libfaketime

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


class OffsetClock:
    """The real wall clock plus an offset the test moves: the emulator's side of a jump."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    async def sleep_until(self, deadline: datetime) -> None:
        await SystemClock().sleep_until(deadline - self.offset)


@dataclass
class FakedWorld:
    env: dict[str, str]
    #: ``env`` with libfaketime preloaded, reading its offset from ``timestamp_file``
    faked_env: dict[str, str]
    timestamp_file: Path
    clock: OffsetClock
    logs: Path

    def jump(self, hours: int) -> None:
        """Move the emulator's and the daemon's wall clocks ``hours`` forward."""
        self.clock.offset += timedelta(hours=hours)
        seconds = int(self.clock.offset.total_seconds())
        # libfaketime reads the file on every call: written atomically, never half an offset
        atomic_write(self.timestamp_file, f"+{seconds}\n".encode("ascii"), mode=0o644)


@pytest.fixture
async def faked(
    home: Home, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[FakedWorld]:
    clock = OffsetClock()
    config = EmulatorConfig(access_token_ttl=ACCESS_TOKEN_TTL, role_ttl=ROLE_TTL)
    async with Emulator(clock, config=config).running() as emu:
        monkeypatch.setenv("AWS_ENDPOINT_URL", emu.url)
        home.write_aws_config()
        home.write_credd_config('[server]\nlisten = "127.0.0.1:0"\n')
        timestamp_file = tmp_path / "faketime"
        timestamp_file.write_text("+0\n")
        env = dict(os.environ)
        faked_env = {
            **env,
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(timestamp_file),
            "FAKETIME_NO_CACHE": "1",
            "DONT_FAKE_MONOTONIC": "1",
        }
        yield FakedWorld(env, faked_env, timestamp_file, clock, tmp_path / "logs")


@pytest.mark.slow
@pytest.mark.skipif(
    not LIBFAKETIME.exists(),
    reason=f"libfaketime is not installed ({LIBFAKETIME}): apt-get install faketime (.ci/run does)",
)
async def test_libfaketime_jump_on_a_real_credd_serve(faked: FakedWorld) -> None:
    await process_login(faked.env)
    async with serving(faked.faked_env, faked.logs) as daemon:

        async def ask(profile: str) -> tuple[int, dict[str, Any]]:
            answer = await daemon.get(f"/v1/credentials/{profile}")
            return answer.status, answer.json()

        await served(ask)
        for hours in (5, 30):  # past the access token and the role credentials, twice
            faked.jump(hours)
            assert await daemon_now(daemon) >= faked.clock.now() - timedelta(minutes=1)
            await after_the_jump(ask, faked.clock.now)
        assert daemon.process.returncode is None


async def daemon_now(daemon: Daemon) -> datetime:
    """The daemon's own idea of now (its status document says it): the jump reached it."""
    answer = await daemon.get("/v1/status")
    assert answer.status == 200, answer.text
    return parse_timestamp(answer.json()["daemon"]["now"])
