"""systemd's side of the tests: its tools where installed, and reading unit files."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


def directives(text: str, key: str) -> list[str]:
    """The values of every ``KEY=`` line of a unit file, in order."""
    return [line.partition("=")[2] for line in text.splitlines() if line.startswith(f"{key}=")]


def installed_credd() -> list[str]:
    """What ExecStart must start, worked out independently of service.credd_command."""
    script = Path(sys.executable).parent / "credd"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "credd.cli"]


def systemd_tool(name: str) -> str:
    """The path of a systemd tool; skipped where it is missing, but never in CI.

    Debian and Ubuntu ship systemd-analyze and systemd-socket-activate in the
    ``systemd`` package, which CI must install (.ci/run); with ``$CI`` set, a
    missing tool fails here rather than going green without having checked anything.
    """
    path = shutil.which(name)
    if path is None:
        missing = f"{name} is not installed (Debian/Ubuntu: apt-get install -y systemd)"
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    return path
