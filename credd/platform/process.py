"""This process and the ones it starts: no core dumps, and children that inherit no secret.

``credd serve`` and ``credd login`` hold refresh tokens, DPoP keys and the
endpoint tokens in memory. A core dump (a crash, or the watchdog's SIGABRT)
would write them all to disk, into ``systemd-coredump``'s store or the working
directory, where they outlive the session; and while a process is dumpable,
any other process of the same user may read its memory and environment
(``/proc/PID/mem``, ``/proc/PID/environ``, ptrace). :func:`disable_core_dumps`
turns both off first thing (issue 11, item 3): ``RLIMIT_CORE`` 0, which the
children inherit, and ``PR_SET_DUMPABLE`` 0 (prctl(2), Linux only), which an
``execve`` resets, so a child is its own program again.

:func:`child_environment` is what a ``credential_process`` source, an
``assertion_command`` or ``notify-send`` is started with.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from collections.abc import Mapping
from typing import Final

#: prctl(2) options (<linux/prctl.h>)
PR_GET_DUMPABLE: Final = 3
PR_SET_DUMPABLE: Final = 4

# A deny-list, not an allow-list. The helpers are arbitrary programs written for
# the AWS CLI, which runs them with the user's whole environment, and they read
# their own settings from variables no list here could foresee: a vault's
# address and token, a password manager's session, proxies and CA bundles, the
# session bus or the display for a keyring or a touch prompt, the AWS_* settings
# of an SDK they call. An allow-list would break them in ways nobody could
# diagnose. What can be named is what a helper never needs and must not have:
# credd's own tokens and the endpoint's address (whoever has them fetches every
# profile; an SDK in the helper would also call back into credd), static keys
# from the daemon's environment, systemd's channels to the service (a child
# that writes to NOTIFY_SOCKET speaks for credd; passed sockets, LoadCredential=
# secrets), and credd's own settings.
#: variables no child of credd inherits
SCRUBBED: Final = frozenset(
    {
        # credd's endpoint and its tokens (`credd exec`, a daemon started from its shell)
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        # static keys: the daemon's own signing identity, not the helper's
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_CREDENTIAL_EXPIRATION",
        # systemd's (sd_notify(3), sd_listen_fds(3), sd_watchdog_enabled(3), systemd.exec(5))
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "CREDENTIALS_DIRECTORY",
    }
)
#: credd's own variables (CREDD_CONFIG, CREDD_EVENT_LOOP, ...): none is a child's business
SCRUBBED_PREFIX: Final = "CREDD_"


def child_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (``os.environ``) without :data:`SCRUBBED` and credd's own variables."""
    source = os.environ if env is None else env
    return {
        name: value
        for name, value in source.items()
        if name not in SCRUBBED and not name.startswith(SCRUBBED_PREFIX)
    }


def disable_core_dumps() -> list[str]:
    """No core file, and no reading of this process's memory by others; what failed, if any.

    Neither call can fail for a process lowering its own limits on Linux; where
    one does (another platform, a libc without ``prctl``), the command goes on
    and the caller says what stays on.
    """
    problems: list[str] = []
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except (ValueError, OSError) as exc:
        problems.append(f"RLIMIT_CORE stays {resource.getrlimit(resource.RLIMIT_CORE)}: {exc}")
    if sys.platform.startswith("linux"):
        problem = _set_dumpable(0)
        if problem:
            problems.append(problem)
    return problems


def is_dumpable() -> bool | None:
    """This process's PR_GET_DUMPABLE; ``None`` where there is no prctl."""
    prctl = _prctl()
    if prctl is None:
        return None
    return bool(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def _set_dumpable(value: int) -> str | None:
    prctl = _prctl()
    if prctl is None:
        return "PR_SET_DUMPABLE: no prctl in this libc"
    if prctl(PR_SET_DUMPABLE, value, 0, 0, 0) != 0:
        return f"PR_SET_DUMPABLE: {os.strerror(ctypes.get_errno())}"
    return None


def _prctl() -> ctypes._NamedFuncPointer | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl
