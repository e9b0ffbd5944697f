"""``credd service install|uninstall|status``: the systemd user units.

The units ship inside the package (``credd/platform/units``; ``systemd/`` in the
repository links to them). Installing writes them to the user's systemd
directory with ``ExecStart`` pointing at this very installation of credd
(a virtualenv, pipx or the system) and ``ListenStream`` at ``[server]
listen``, then asks the user manager to load and start them, or says which
``systemctl --user`` commands to run where there is no user manager.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from credd.config.settings import Settings
from credd.errors import CreddError

UNITS = ("credd.service", "credd.socket")
SYSTEMCTL_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class ServiceReport:
    """What a service command did, and what is left for the user to run."""

    lines: tuple[str, ...]


def unit_directory(env: Mapping[str, str], home: Path) -> Path:
    config_home = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(config_home) / "systemd" / "user"


def credd_command() -> list[str]:
    """How to start this installation of credd, as absolute paths."""
    script = Path(sys.executable).parent / "credd"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("credd")
    if found:
        return [str(Path(found).resolve())]
    return [sys.executable, "-m", "credd.cli"]


def render(unit: str, settings: Settings, command: list[str]) -> str:
    text = resources.files("credd.platform").joinpath("units", unit).read_text(encoding="utf-8")
    if unit == "credd.service":
        # quoted for systemd's command line: shell-style quotes, and "%" is a specifier
        parts = [shlex.quote(part).replace("%", "%%") for part in [*command, "serve"]]
        exec_start = " ".join(parts)
        text = text.replace("ExecStart=%h/.local/bin/credd serve", f"ExecStart={exec_start}")
    if unit == "credd.socket":
        text = text.replace("ListenStream=127.0.0.1:9911", f"ListenStream={settings.server.listen}")
    return text


def _run_systemctl(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    systemctl = shutil.which("systemctl", path=env.get("PATH"))
    if systemctl is None:
        raise CreddError("systemctl is not installed")
    return subprocess.run(
        [systemctl, "--user", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=SYSTEMCTL_TIMEOUT_SECONDS,
        check=False,
    )


def _user_manager(env: Mapping[str, str]) -> bool:
    try:
        return _run_systemctl(env, "show-environment").returncode == 0
    except (CreddError, OSError, subprocess.TimeoutExpired):
        return False


def _systemctl(env: Mapping[str, str], *args: str) -> str:
    done = _run_systemctl(env, *args)
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        raise CreddError(f"systemctl --user {' '.join(args)} failed: {detail}")
    return done.stdout.strip()


def install(settings: Settings, env: Mapping[str, str]) -> ServiceReport:
    if settings.server.port == 0:
        raise CreddError(
            "socket activation needs a fixed port",
            hint='set [server] listen = "127.0.0.1:9911" (or another port) in the credd config',
        )
    directory = unit_directory(env, settings.paths.home)
    directory.mkdir(parents=True, exist_ok=True)
    # ProtectSystem=strict makes only existing ReadWritePaths writable: make the caches now.
    for cache in (settings.paths.sso_cache_dir, settings.paths.login_cache_dir):
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    command = credd_command()
    for unit in UNITS:
        (directory / unit).write_text(render(unit, settings, command), encoding="utf-8")
    lines = [f"wrote {directory / unit}" for unit in UNITS]
    steps = [("daemon-reload",), ("enable", "--now", "credd.socket", "credd.service")]
    if _user_manager(env):
        for step in steps:
            _systemctl(env, *step)
        lines.append("enabled and started credd.socket and credd.service")
        lines.append("check it with: systemctl --user status credd")
    else:
        lines.append("no systemd user manager answers here; to start credd, run:")
        lines += [f"  systemctl --user {' '.join(step)}" for step in steps]
    return ServiceReport(tuple(lines))


def uninstall(settings: Settings, env: Mapping[str, str]) -> ServiceReport:
    directory = unit_directory(env, settings.paths.home)
    lines: list[str] = []
    managed = _user_manager(env)
    installed = [unit for unit in UNITS if (directory / unit).exists()]
    if managed and installed:
        _systemctl(env, "disable", "--now", *installed)
        lines.append(f"stopped and disabled {' and '.join(installed)}")
    for unit in UNITS:
        path = directory / unit
        if path.exists():
            path.unlink()
            lines.append(f"removed {path}")
    if managed and installed:
        _systemctl(env, "daemon-reload")
    elif lines:
        lines.append("run: systemctl --user daemon-reload")
    return ServiceReport(tuple(lines or ["credd's units were not installed"]))


def status(settings: Settings, env: Mapping[str, str]) -> ServiceReport:
    directory = unit_directory(env, settings.paths.home)
    lines = []
    for unit in UNITS:
        path = directory / unit
        lines.append(f"{unit}: " + (f"installed at {path}" if path.exists() else "not installed"))
    if _user_manager(env):
        for unit in UNITS:
            state = _run_systemctl(env, "is-active", unit).stdout.strip()
            lines.append(f"{unit}: {state or 'unknown'}")
    else:
        lines.append("no systemd user manager answers here")
    return ServiceReport(tuple(lines))
