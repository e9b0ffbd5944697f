"""Shared fixtures: a private HOME, the emulator, a headless browser, the standard world.

Fixtures only; what they build and what tests share is in :mod:`tests.support`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from credd.clock import ManualClock
from credd.testing.browser import install_shim
from credd.testing.emulator import Emulator
from credd.testing.emulator.config import EmulatorConfig
from tests.support.configs import LISTEN_ANY_PORT
from tests.support.home import CLEARED, Home
from tests.support.world import World


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: Path) -> Home:
    root = tmp_path / "home"
    runtime = tmp_path / "run"
    root.mkdir()
    runtime.mkdir(mode=0o700)
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(root))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("BROWSER", str(browser))
    # botocore must never find real credentials or a real region on this machine
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return Home(root=root, runtime=runtime)


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An executable for ``$BROWSER`` that plays the user approving in a browser.

    One path for the whole run: Python's ``webbrowser`` reads ``$BROWSER`` once.
    """
    return install_shim(tmp_path_factory.mktemp("browser") / "browser")


@pytest.fixture
async def emulator(home: Home, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[object]:
    """The strict local AWS emulator on a loopback port, with every AWS endpoint pointed at it."""
    async with Emulator().running() as emu:
        monkeypatch.setenv("AWS_ENDPOINT_URL", emu.url)
        yield emu


@pytest.fixture
async def clocked(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Emulator, ManualClock]]:
    """The emulator and the daemon share one ManualClock: time moves only when a test says so."""
    clock = ManualClock(datetime.now(UTC))
    config = EmulatorConfig(poll_interval=0, max_clock_skew=None)
    async with Emulator(clock, config=config).running() as emu:
        monkeypatch.setenv("AWS_ENDPOINT_URL", emu.url)
        home.write_aws_config()
        home.write_credd_config(LISTEN_ANY_PORT)
        yield emu, clock


@pytest.fixture
def world(home: Home, emulator: object) -> World:
    """The standard AWS config and credd on any loopback port, on the real clock.

    Modules whose tests need another world (a ManualClock, other configs) define
    their own ``world`` fixture, which builds the same :class:`World`.
    """
    assert isinstance(emulator, Emulator)
    home.write_aws_config()
    home.write_credd_config(LISTEN_ANY_PORT)
    return World(home, emulator)
