"""The systemd service protocol: sd_notify, the watchdog, socket activation.

A small module rather than a dependency: the protocol is one datagram per
message to ``$NOTIFY_SOCKET`` (sd_notify(3)) and two environment variables
for passed sockets (sd_listen_fds(3)). The Python bindings (``systemd-python``)
need libsystemd headers to build, and ``sdnotify`` on PyPI has not been
released since 2017 and does not handle the watchdog or abstract sockets the
way sd_notify(3) describes.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping

#: the first passed descriptor (SD_LISTEN_FDS_START)
LISTEN_FDS_START = 3


class Notifier:
    """Sends sd_notify messages; does nothing when not started by systemd."""

    def __init__(self, env: Mapping[str, str]) -> None:
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):  # abstract namespace
            self._address = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> None:
        """Send ``KEY=VALUE`` lines as one datagram; errors are not the daemon's problem."""
        if self._address is None:
            return
        if self._socket is None:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        with contextlib.suppress(OSError):
            self._socket.sendto("\n".join(fields).encode(), self._address)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def reloading(self, monotonic_usec: int) -> None:
        self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}", "STATUS=reloading")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """How often to send WATCHDOG=1: half of ``$WATCHDOG_USEC`` (sd_watchdog_enabled(3))."""
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID")
    if not usec.isascii() or not usec.isdigit() or int(usec) == 0:
        return None
    if owner and owner != str(pid):
        return None
    return int(usec) / 1e6 / 2


def listen_sockets(env: Mapping[str, str], pid: int) -> list[socket.socket]:
    """Sockets passed by socket activation (sd_listen_fds(3)); empty when none were."""
    count, owner = env.get("LISTEN_FDS", ""), env.get("LISTEN_PID", "")
    if not count.isascii() or not count.isdigit() or owner != str(pid):
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets


def clear_activation_environment() -> None:
    """Children (``credd exec`` targets, credential processes) must not see our sockets."""
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
        os.environ.pop(name, None)
