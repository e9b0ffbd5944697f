"""Telling the person at the desktop that a session needs them.

A freedesktop notification through ``notify-send`` where a session bus is
there to show one; never a browser opened from the background (the login
itself is always started by the user: ``credd login NAME``).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping

import anyio
import structlog

from credd.platform.process import child_environment

log = structlog.get_logger(__name__)

NOTIFY_TIMEOUT_SECONDS = 5.0


def can_notify(env: Mapping[str, str]) -> bool:
    has_session_bus = bool(env.get("DBUS_SESSION_BUS_ADDRESS"))
    return has_session_bus and shutil.which("notify-send", path=env.get("PATH")) is not None


async def notify_login_required(session: str, reason: str, env: Mapping[str, str]) -> None:
    # looking notify-send up on PATH stats a directory per entry: off the event loop
    if not await anyio.to_thread.run_sync(can_notify, env):
        return
    command = [
        "notify-send",
        "--app-name=credd",
        "--icon=dialog-password",
        f"credd: {session} needs a login",
        f"{reason}\nRun: credd login {session}",
    ]
    with anyio.move_on_after(NOTIFY_TIMEOUT_SECONDS):
        try:
            await anyio.run_process(command, check=False, env=child_environment(env))
        except OSError as exc:
            log.warning("desktop_notification_failed", error=str(exc))
