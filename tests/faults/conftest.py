"""Fixtures of the fault suite: the world on a frozen shared clock, and a tmpfs cache directory.

Fixtures only; what they build is in :mod:`tests.support` (``faketime``, ``mounts``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from credd.clock import ManualClock
from credd.testing.emulator import Emulator
from tests.support.faketime import LIBFAKETIME, MISSING, FrozenClock, FrozenWorld
from tests.support.home import Home
from tests.support.mounts import Tmpfs, tmpfs


@pytest.fixture
def frozen_world(home: Home, clocked: tuple[Emulator, ManualClock], tmp_path: Path) -> FrozenWorld:
    """The standard configs; the emulator and ``credd serve`` on one clock the test moves."""
    if not LIBFAKETIME.exists():
        pytest.skip(MISSING)
    emu, clock = clocked
    return FrozenWorld(home, emu, frozen=FrozenClock(clock, tmp_path / "faketime"))


@pytest.fixture
def sso_tmpfs(home: Home) -> Iterator[Tmpfs]:
    """``~/.aws/sso/cache`` on a tmpfs of its own (root only), unmounted however the test ends."""
    with tmpfs(home.root / ".aws" / "sso" / "cache") as mounted:
        yield mounted
