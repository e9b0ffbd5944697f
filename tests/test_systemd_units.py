"""credd as a systemd user service, piece by piece: sd_notify, the watchdog, passed
sockets, the unit files, ``credd service`` and journal priorities.

Everything here runs in this process or in a short child of its own, with real
AF_UNIX datagram sockets and real files; no systemd user manager is needed
(the tests put a stand-in ``systemctl`` first on ``PATH`` where it matters, so
a developer's own user manager is never touched). ``credd serve`` under these
protocols, end to end, is in tests/test_systemd.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import secrets
import shlex
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import pytest
import structlog

from credd.config.load import load_settings
from credd.config.settings import Settings
from credd.errors import CreddError
from credd.files.paths import resolve_paths
from credd.log import JournalPriority, configure_logging, logging_to_journal
from credd.platform import service
from credd.platform.systemd import (
    Notifier,
    clear_activation_environment,
    listen_sockets,
    watchdog_interval,
)
from tests.support.configs import AWS_CONFIG, credd_profile
from tests.support.home import Home
from tests.support.systemd import directives, installed_credd, systemd_tool

REPO = Path(__file__).resolve().parent.parent
UNIT_TEMPLATES = REPO / "credd" / "platform" / "units"
#: a child that runs longer than this has hung (never reached when all is well)
CHILD_DEADLINE = 60.0


# ----------------------------------------------------------------------------- sd_notify


@pytest.fixture
def notify_dir() -> Iterator[Path]:
    """A directory short enough for an AF_UNIX path (108 bytes), unlike pytest's tmp_path."""
    with tempfile.TemporaryDirectory(prefix="credd-") as name:
        yield Path(name)


def datagram_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5.0)  # a bounded wait: a missing message fails, it never hangs
    return sock


def fields(datagram: bytes) -> list[str]:
    return datagram.decode().split("\n")


def test_notifier_sends_each_message_as_one_datagram(notify_dir: Path) -> None:
    path = notify_dir / "notify"
    with datagram_socket(str(path)) as receiver:
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        assert notifier.enabled
        notifier.ready("1/1 sessions live")
        notifier.status("login needed: my-sso")
        notifier.watchdog()
        notifier.reloading(123456789)
        notifier.stopping()
        notifier.close()
        notifier.watchdog()  # a closed notifier opens a new socket
        notifier.close()
        assert [fields(receiver.recv(4096)) for _ in range(6)] == [
            ["READY=1", "STATUS=1/1 sessions live"],
            ["STATUS=login needed: my-sso"],
            ["WATCHDOG=1"],
            ["RELOADING=1", "MONOTONIC_USEC=123456789", "STATUS=reloading"],
            ["STOPPING=1", "STATUS=stopping"],
            ["WATCHDOG=1"],
        ]


def test_notifier_reaches_an_abstract_socket() -> None:
    name = f"credd-test-{os.getpid()}-{secrets.token_hex(8)}"
    with datagram_socket("\0" + name) as receiver:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled
        notifier.ready("up")
        notifier.close()
        assert fields(receiver.recv(4096)) == ["READY=1", "STATUS=up"]


@pytest.mark.parametrize("value", [None, "", "relative/notify", "notify"])
def test_notifier_without_a_usable_socket_does_nothing(value: str | None) -> None:
    notifier = Notifier({} if value is None else {"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    notifier.ready("up")
    notifier.watchdog()
    notifier.close()


def test_a_vanished_notify_socket_is_not_the_daemons_problem(notify_dir: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(notify_dir / "gone")})
    assert notifier.enabled
    notifier.ready("up")  # ENOENT, suppressed
    notifier.stopping()
    notifier.close()


# ----------------------------------------------------------------------------- the watchdog


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "200000"}, 0.1),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": ""}, 0.1),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "4243"}, None),  # meant for another process
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "-200000"}, None),
        ({"WATCHDOG_USEC": "2e5"}, None),
        ({"WATCHDOG_USEC": "\N{DIGIT TWO}\N{ARABIC-INDIC DIGIT ZERO}"}, None),  # isdigit, not ASCII
        ({"WATCHDOG_PID": "4242"}, None),
    ],
    ids=[
        "usec only",
        "our pid",
        "empty pid",
        "another pid",
        "unset",
        "zero",
        "empty",
        "negative",
        "not a whole number",
        "non-ASCII digits",
        "pid only",
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_this_process(
    env: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(env, 4242) == expected


# ----------------------------------------------------------------------------- passed sockets


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"LISTEN_FDS": "1"},
        {"LISTEN_FDS": "1", "LISTEN_PID": "4243"},
        {"LISTEN_FDS": "one", "LISTEN_PID": "4242"},
        {"LISTEN_FDS": "", "LISTEN_PID": "4242"},
    ],
    ids=["unset", "no pid", "another pid", "not a number", "empty"],
)
def test_listen_sockets_takes_nothing_not_meant_for_this_process(env: dict[str, str]) -> None:
    # Returns before touching any descriptor: fd 3 of this process is left alone.
    assert listen_sockets(env, 4242) == []


#: a child with two listening sockets at fds 3 and 4, as systemd passes them
PASSED_SOCKETS_CHILD = textwrap.dedent(
    """\
    import fcntl, json, os, socket, sys
    from credd.platform.systemd import listen_sockets

    ports, high = [], []
    for _ in (3, 4):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        ports.append(sock.getsockname()[1])
        high.append(fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD, 10))  # out of the way of 3 and 4
        sock.close()
    for fd, moved in zip((3, 4), high):
        os.dup2(moved, fd)  # inheritable, as systemd leaves them
        os.close(moved)
    env = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "a:b"}
    if sys.argv[1] == "parent":
        env["LISTEN_PID"] = str(os.getppid())
    got = listen_sockets(env, os.getpid())
    print(json.dumps({
        "ports": ports,
        "got": [[s.fileno(), s.getsockname()[1], s.family.name, s.type.name] for s in got],
        "inheritable": [os.get_inheritable(fd) for fd in (3, 4)],
    }))
    """
)


@pytest.mark.parametrize("owner", ["self", "parent"])
def test_listen_sockets_adopts_fds_from_3_only_for_this_pid(owner: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PASSED_SOCKETS_CHILD, owner],
        capture_output=True,
        text=True,
        timeout=CHILD_DEADLINE,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    if owner == "parent":  # LISTEN_PID names another process: not ours to take
        assert seen["got"] == []
        assert seen["inheritable"] == [True, True]
        return
    first, second = seen["ports"]
    assert seen["got"] == [
        [3, first, "AF_INET", "SOCK_STREAM"],
        [4, second, "AF_INET", "SOCK_STREAM"],
    ]
    # children (credential processes, notify-send) must not inherit the listeners
    assert seen["inheritable"] == [False, False]


def test_clear_activation_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    clear_activation_environment()
    for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET"):
        assert name not in os.environ
    assert os.environ["WATCHDOG_USEC"] == "200000"


# ----------------------------------------------------------------------------- the unit files


def settings_listening_on(home: Home, listen: str) -> Settings:
    home.write_aws_config()
    home.write_credd_config(f'[server]\nlisten = "{listen}"\n')
    return home.settings()


@pytest.mark.parametrize(
    ("listen", "expected"),
    [("127.0.0.1:9911", "127.0.0.1:9911"), ("[::1]:9912", "[::1]:9912"), ("localhost:8000", None)],
)
def test_render_socket_listens_on_the_configured_address(
    home: Home, listen: str, expected: str | None
) -> None:
    settings = settings_listening_on(home, listen)
    text = service.render("credd.socket", settings, ["/usr/bin/credd"])
    assert directives(text, "ListenStream") == [expected or "127.0.0.1:8000"]
    template = (UNIT_TEMPLATES / "credd.socket").read_text()
    assert text == template.replace(
        "ListenStream=127.0.0.1:9911", f"ListenStream={settings.server.listen}"
    )


@pytest.mark.parametrize(
    ("command", "exec_start"),
    [
        (["/opt/credd/bin/credd"], "/opt/credd/bin/credd serve"),
        (["/usr/bin/python3", "-m", "credd.cli"], "/usr/bin/python3 -m credd.cli serve"),
        (["/home/a b/.venv/bin/credd"], "'/home/a b/.venv/bin/credd' serve"),
    ],
    ids=["script", "python -m", "a space"],
)
def test_render_service_starts_the_given_command(
    home: Home, command: list[str], exec_start: str
) -> None:
    text = service.render("credd.service", settings_listening_on(home, "127.0.0.1:9911"), command)
    assert directives(text, "ExecStart") == [exec_start]
    assert "%h/.local/bin/credd" not in text
    assert directives(text, "Type") == ["notify"]
    assert directives(text, "ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert directives(text, "WatchdogSec") == ["30"]


def test_render_service_escapes_percent_signs_in_the_install_path(home: Home) -> None:
    text = service.render(
        "credd.service",
        settings_listening_on(home, "127.0.0.1:9911"),
        ["/opt/100%h/bin/credd"],
    )
    assert directives(text, "ExecStart") == ["/opt/100%%h/bin/credd serve"]


def test_the_repositorys_systemd_directory_holds_the_installed_units() -> None:
    # systemd/ is what people read and copy by hand: it must be the units the package ships
    for unit in service.UNITS:
        assert (REPO / "systemd" / unit).read_text() == (UNIT_TEMPLATES / unit).read_text()


def read_write_paths(text: str) -> list[str]:
    """Every word of the unit's ReadWritePaths=, unquoted as systemd reads them."""
    return [word for line in directives(text, "ReadWritePaths") for word in shlex.split(line)]


def test_render_service_grants_write_access_to_the_default_paths(home: Home) -> None:
    settings = settings_listening_on(home, "127.0.0.1:9911")
    text = service.render("credd.service", settings, ["/usr/bin/credd"])
    aws = home.root / ".aws"
    # the token file is in %t/credd, which systemd makes writable itself
    assert read_write_paths(text) == [
        f"-{aws / 'sso' / 'cache'}",
        f"-{aws / 'login' / 'cache'}",
        "-%t/credd",
        "-%S/credd",
    ]
    assert directives(text, "Environment") == []  # nothing moved: nothing pinned
    assert directives(text, "LimitCORE") == ["0"]


#: where a user moves the Sign-In cache and the token file; "%" and a space must survive
MOVED_LOGIN_CACHE = "srv/aws login/100%/cache"
MOVED_TOKEN_DIR = "secrets/credd tokens"


def settings_with_moved_paths(home: Home, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("AWS_LOGIN_CACHE_DIRECTORY", str(home.root / MOVED_LOGIN_CACHE))
    home.write_aws_config()
    token = home.root / MOVED_TOKEN_DIR / "token"
    home.write_credd_config(f'[server]\nlisten = "127.0.0.1:9911"\ntoken_file = "{token}"\n')
    return home.settings()


def test_render_service_grants_write_access_where_the_settings_moved_the_paths(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_with_moved_paths(home, monkeypatch)
    text = service.render("credd.service", settings, ["/usr/bin/credd"])
    login_cache = home.root / MOVED_LOGIN_CACHE
    assert read_write_paths(text) == [
        f"-{home.root / '.aws' / 'sso' / 'cache'}",
        f"-{login_cache}".replace("%", "%%"),  # a specifier otherwise
        f"-{home.root / MOVED_TOKEN_DIR}",
        "-%t/credd",
        "-%S/credd",
    ]
    # the daemon uses the cache it may write, whatever the user manager's environment holds
    [pinned] = directives(text, "Environment")
    assert shlex.split(pinned) == [f"AWS_LOGIN_CACHE_DIRECTORY={login_cache}".replace("%", "%%")]


def test_install_makes_the_moved_directories_so_the_sandbox_can_open_them(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ProtectSystem=strict makes a ReadWritePaths entry writable only if it exists at start
    settings = settings_with_moved_paths(home, monkeypatch)
    env = service_env(home, Systemctl(tmp_path / "bin", NO_MANAGER))
    service.install(settings, env)
    for directory in (home.root / MOVED_LOGIN_CACHE, home.root / MOVED_TOKEN_DIR):
        assert directory.is_dir()
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_install_refuses_a_relative_token_file(home: Home, tmp_path: Path) -> None:
    home.write_aws_config()
    home.write_credd_config('[server]\nlisten = "127.0.0.1:9911"\ntoken_file = "run/token"\n')
    env = service_env(home, Systemctl(tmp_path / "bin", NO_MANAGER))
    with pytest.raises(CreddError, match="absolute path") as caught:
        service.install(home.settings(), env)
    assert caught.value.hint is not None
    assert not units_in(home).exists()


def test_install_refuses_a_path_systemd_would_read_otherwise(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # systemd reads a backslash as an escape even inside quotes
    monkeypatch.setenv("AWS_LOGIN_CACHE_DIRECTORY", str(home.root / "back\\slash"))
    settings = settings_listening_on(home, "127.0.0.1:9911")
    env = service_env(home, Systemctl(tmp_path / "bin", NO_MANAGER))
    with pytest.raises(CreddError, match="backslash"):
        service.install(settings, env)


@pytest.mark.parametrize("how", ["--config", "CREDD_CONFIG"])
def test_install_pins_a_config_file_of_the_shells_own(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # the service reads the config whose token_file the unit makes writable
    config = home.root / "elsewhere" / "credd.toml"
    config.parent.mkdir()
    config.write_text('[server]\nlisten = "127.0.0.1:9911"\n')
    home.write_aws_config()
    if how == "CREDD_CONFIG":
        monkeypatch.setenv("CREDD_CONFIG", str(config))
        paths = resolve_paths(os.environ)
    else:
        paths = resolve_paths(os.environ, config_file=str(config))
    env = service_env(home, Systemctl(tmp_path / "bin", NO_MANAGER))
    service.install(load_settings(paths), env)
    unit = (units_in(home) / "credd.service").read_text()
    [exec_start] = directives(unit, "ExecStart")
    assert shlex.split(exec_start) == [*installed_credd(), "--config", str(config), "serve"]


# ----------------------------------------------------------------------------- systemd-analyze


def verify_units(directory: Path) -> list[str]:
    """What ``systemd-analyze verify`` says of credd.service and credd.socket in ``directory``.

    Verified as *user* units (``--user``), which is what they are: ``%h``,
    ``%t``, ``%S`` and ``%E`` then resolve against HOME and the XDG variables,
    and no user manager is needed, only an ``XDG_RUNTIME_DIR`` (without one,
    systemd 252 fails with "Failed to lookup RuntimeDirectory path"). HOME and
    the XDG directories are private, so the developer's own units play no part.
    (Verifying them as system units also passes, but resolves the specifiers
    for root's manager, which is not where these units run.) What is verified is
    what ``credd service install`` writes: the template's own ExecStart,
    ``%h/.local/bin/credd``, need not exist, and verify checks that it does.

    Every line of output counts as a problem: systemd 252 reports most unit
    errors (an unknown key, an unparsable value, an unknown system call group)
    as "..., ignoring." and still exits 0. ``--man=no``: no man(1) look-ups for
    Documentation= (the units have none; man-db need not be installed).
    """
    systemd_analyze = systemd_tool("systemd-analyze")
    private = directory / "private"
    runtime = private / "run"
    runtime.mkdir(parents=True, mode=0o700)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(private),
        "XDG_RUNTIME_DIR": str(runtime),
        "XDG_CONFIG_HOME": str(private / "config"),
        "XDG_STATE_HOME": str(private / "state"),
        "SYSTEMD_LOG_COLOR": "0",
    }
    done = subprocess.run(
        [
            systemd_analyze,
            "verify",
            "--man=no",
            "--user",
            *(str(directory / unit) for unit in service.UNITS),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_DEADLINE,
        check=False,
    )
    problems = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if done.returncode != 0 and not problems:
        problems.append(f"systemd-analyze verify exited with {done.returncode}")
    return problems


def render_units(directory: Path, settings: Settings, command: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for unit in service.UNITS:
        (directory / unit).write_text(service.render(unit, settings, command))
    return directory


@pytest.mark.parametrize("how", ["installed script", "python -m"])
def test_systemd_analyze_verify_passes_on_both_units(home: Home, tmp_path: Path, how: str) -> None:
    command = (
        service.credd_command()
        if how == "installed script"
        else [sys.executable, "-m", "credd.cli"]
    )
    units = render_units(tmp_path / "units", settings_listening_on(home, "127.0.0.1:9911"), command)
    assert verify_units(units) == []


def test_systemd_analyze_verify_passes_with_moved_paths(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # spaces and "%" in the paths: one wrong quote and verify reads a relative path
    settings = settings_with_moved_paths(home, monkeypatch)
    units = render_units(tmp_path / "units", settings, installed_credd())
    assert verify_units(units) == []


#: (unit, what to replace, with what): mistakes verify must catch, proving the check is not vacuous
BROKEN_UNITS = {
    "unknown key": ("credd.service", "\nType=notify\n", "\nTyp=notify\n"),
    "bad value": ("credd.service", "WatchdogSec=30", "WatchdogSec=thirty"),
    "unknown syscall group": ("credd.service", "@system-service", "@sytem-service"),
    "missing executable": ("credd.service", "ExecStart=/", "ExecStart=/nonexistent/"),
    "socket without listen": ("credd.socket", "ListenStream=", "ListenStrem="),
    "unquoted space in a path": ("credd.service", "ReadWritePaths=-/", "ReadWritePaths=-/a b/"),
    "relative path": ("credd.service", "ReadWritePaths=-/", "ReadWritePaths=-"),
    "bad ProtectProc": ("credd.service", "ProtectProc=invisible", "ProtectProc=invisibl"),
    "bad ProcSubset": ("credd.service", "ProcSubset=pid", "ProcSubset=pids"),
    "bad KeyringMode": ("credd.service", "KeyringMode=private", "KeyringMode=privat"),
    "bad ProtectKernelLogs": ("credd.service", "ProtectKernelLogs=yes", "ProtectKernelLogs=y3s"),
    "bad LimitCORE": ("credd.service", "LimitCORE=0", "LimitCORE=zero"),
}


@pytest.mark.parametrize("mistake", BROKEN_UNITS.values(), ids=BROKEN_UNITS.keys())
def test_systemd_analyze_verify_catches_a_broken_unit(
    home: Home, tmp_path: Path, mistake: tuple[str, str, str]
) -> None:
    unit, old, new = mistake
    units = render_units(
        tmp_path / "units", settings_listening_on(home, "127.0.0.1:9911"), installed_credd()
    )
    text = (units / unit).read_text()
    assert old in text
    (units / unit).write_text(text.replace(old, new, 1))
    problems = verify_units(units)
    assert problems, f"systemd-analyze verify found nothing wrong after {old!r} -> {new!r}"


# ----------------------------------------------------------------------------- credd service


FAKE_SYSTEMCTL = """\
#!/bin/sh
# A stand-in for systemctl: records its arguments, then plays {role}.
printf '%s\\n' "$*" >> {log}
{body}
"""
NO_MANAGER = 'echo "Failed to connect to bus: No medium found" >&2\nexit 1'
MANAGER = '[ "$2" = is-active ] && echo active\nexit 0'
FAILING_ENABLE = (
    '[ "$2" = enable ] && { echo "Failed to enable unit: Unit file credd.socket does not exist."'
    " >&2; exit 1; }\nexit 0"
)


class Systemctl:
    """``systemctl`` first on PATH, and what it was asked."""

    def __init__(self, directory: Path, body: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / "systemctl.log"
        path = directory / "systemctl"
        path.write_text(
            FAKE_SYSTEMCTL.format(role="a user manager", log=shlex.quote(str(self.log)), body=body)
        )
        path.chmod(0o755)
        self.directory = directory

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def service_env(home: Home, systemctl: Systemctl) -> dict[str, str]:
    """The CLI's environment, with ``systemctl`` first on PATH and the HOME's XDG_CONFIG_HOME."""
    return {
        **os.environ,
        "PATH": f"{systemctl.directory}{os.pathsep}{os.environ.get('PATH', '')}",
        "XDG_CONFIG_HOME": str(home.root / ".config"),
    }


def units_in(home: Home) -> Path:
    return home.root / ".config" / "systemd" / "user"


def test_install_writes_both_units_and_says_what_to_run_without_a_user_manager(
    home: Home, tmp_path: Path
) -> None:
    settings = settings_listening_on(home, "127.0.0.1:9911")
    systemctl = Systemctl(tmp_path / "bin", NO_MANAGER)
    env = service_env(home, systemctl)
    units = units_in(home)

    report = service.install(settings, env)

    assert report.lines == (
        f"wrote {units / 'credd.service'}",
        f"wrote {units / 'credd.socket'}",
        "no systemd user manager answers here; to start credd, run:",
        "  systemctl --user daemon-reload",
        "  systemctl --user enable --now credd.socket credd.service",
    )
    assert systemctl.calls() == ["--user show-environment"]  # asked, nothing more
    unit = (units / "credd.service").read_text()
    [exec_start] = directives(unit, "ExecStart")
    assert shlex.split(exec_start) == [*installed_credd(), "serve"]
    assert directives((units / "credd.socket").read_text(), "ListenStream") == ["127.0.0.1:9911"]
    for name in service.UNITS:
        assert stat.S_ISREG((units / name).stat().st_mode)

    # installing again (after an upgrade, a new listen address) rewrites them
    settings = settings_listening_on(home, "127.0.0.1:9922")
    assert service.install(settings, env).lines[:2] == report.lines[:2]
    assert directives((units / "credd.socket").read_text(), "ListenStream") == ["127.0.0.1:9922"]


def test_install_falls_back_to_python_m_when_there_is_no_credd_script(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = tmp_path / "bare-python" / "bin"
    bare.mkdir(parents=True)
    (bare / "python3").symlink_to(sys.executable)
    monkeypatch.setattr(sys, "executable", str(bare / "python3"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert service.credd_command() == [str(bare / "python3"), "-m", "credd.cli"]

    (tmp_path / "empty").mkdir()
    script = tmp_path / "empty" / "credd"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert service.credd_command() == [str(script.resolve())]


def test_install_refuses_port_0(home: Home, tmp_path: Path) -> None:
    settings = settings_listening_on(home, "127.0.0.1:0")
    systemctl = Systemctl(tmp_path / "bin", MANAGER)
    with pytest.raises(CreddError, match="socket activation needs a fixed port") as caught:
        service.install(settings, service_env(home, systemctl))
    assert caught.value.hint is not None
    assert "listen" in caught.value.hint
    assert not units_in(home).exists()
    assert systemctl.calls() == []


def test_status_and_uninstall_without_a_user_manager(home: Home, tmp_path: Path) -> None:
    settings = settings_listening_on(home, "127.0.0.1:9911")
    env = service_env(home, Systemctl(tmp_path / "bin", NO_MANAGER))
    units = units_in(home)

    assert service.status(settings, env).lines == (
        "credd.service: not installed",
        "credd.socket: not installed",
        "no systemd user manager answers here",
    )
    assert service.uninstall(settings, env).lines == ("credd's units were not installed",)

    service.install(settings, env)
    assert service.status(settings, env).lines == (
        f"credd.service: installed at {units / 'credd.service'}",
        f"credd.socket: installed at {units / 'credd.socket'}",
        "no systemd user manager answers here",
    )
    assert service.uninstall(settings, env).lines == (
        f"removed {units / 'credd.service'}",
        f"removed {units / 'credd.socket'}",
        "run: systemctl --user daemon-reload",
    )
    assert list(units.iterdir()) == []


def test_install_status_uninstall_through_a_user_manager(home: Home, tmp_path: Path) -> None:
    settings = settings_listening_on(home, "127.0.0.1:9911")
    systemctl = Systemctl(tmp_path / "bin", MANAGER)
    env = service_env(home, systemctl)

    assert service.install(settings, env).lines[2:] == (
        "enabled and started credd.socket and credd.service",
        "check it with: systemctl --user status credd",
    )
    assert service.status(settings, env).lines[2:] == (
        "credd.service: active",
        "credd.socket: active",
    )
    assert service.uninstall(settings, env).lines[0] == (
        "stopped and disabled credd.service and credd.socket"
    )
    assert systemctl.calls() == [
        "--user show-environment",
        "--user daemon-reload",
        "--user enable --now credd.socket credd.service",
        "--user show-environment",
        "--user is-active credd.service",
        "--user is-active credd.socket",
        "--user show-environment",
        "--user disable --now credd.service credd.socket",
        "--user daemon-reload",
    ]


#: a user manager that knows only the unit files that are there, as systemctl's stop does
#: ("Failed to stop credd.service: Unit credd.service not loaded.", exit status 5)
MANAGER_WITHOUT_UNITS = (
    '[ "$2" = disable ] && [ ! -e "$XDG_CONFIG_HOME/systemd/user/credd.service" ] && '
    '{ echo "Failed to stop credd.service: Unit credd.service not loaded." >&2; exit 5; }\nexit 0'
)


def test_uninstall_with_a_user_manager_when_nothing_is_installed(
    home: Home, tmp_path: Path
) -> None:
    settings = settings_listening_on(home, "127.0.0.1:9911")
    env = service_env(home, Systemctl(tmp_path / "bin", MANAGER_WITHOUT_UNITS))
    assert service.uninstall(settings, env).lines == ("credd's units were not installed",)


def test_install_reports_a_failing_systemctl_in_one_line(home: Home, tmp_path: Path) -> None:
    settings = settings_listening_on(home, "127.0.0.1:9911")
    env = service_env(home, Systemctl(tmp_path / "bin", FAILING_ENABLE))
    with pytest.raises(CreddError) as caught:
        service.install(settings, env)
    assert str(caught.value) == (
        "systemctl --user enable --now credd.socket credd.service failed: "
        "Failed to enable unit: Unit file credd.socket does not exist."
    )


# ----------------------------------------------------------------------------- the sandbox's advice
# What MemoryDenyWriteExecute=yes does to a JIT runtime is shown in tests/test_systemd_sandbox.py.


def helper_script(home: Home, name: str, shebang: str) -> Path:
    path = home.root / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"{shebang}\nprint credentials\n")
    path.chmod(0o700)
    return path


def signed_by(command: str) -> str:
    """An AWS config whose served role ``on-proc`` is signed by ``credential_process = command``."""
    return (
        f"[profile proc]\ncredential_process = {command}\n\n"
        "[profile on-proc]\nrole_arn = arn:aws:iam::333333333333:role/Deploy\n"
        "source_profile = proc\n"
    )


ADVICE = "  to let it run: " + service.OVERRIDE + "; then systemctl --user restart credd"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@pytest.mark.parametrize(
    ("how", "runtime"),
    [
        ("#!/usr/bin/env node", "node"),
        ("#!/usr/bin/env -S node --no-warnings", "node"),
        ("#!/usr/local/bin/node18", "node"),
        ("node /opt/creds.js", "node"),
        ("/usr/lib/jvm/java-17/bin/java -jar creds.jar", "java"),
    ],
)
def test_status_names_a_credential_process_that_runs_a_jit_runtime(
    home: Home, tmp_path: Path, how: str, runtime: str
) -> None:
    command = str(helper_script(home, "creds", how)) if how.startswith("#!") else how
    home.write_aws_config(signed_by(command))
    home.write_credd_config('[server]\nlisten = "127.0.0.1:9911"\n')
    env = service_env(home, Systemctl(tmp_path / "bin", NO_MANAGER))
    assert service.status(home.settings(), env).lines[3:] == (
        f"credential_process of profile proc runs {runtime}, a JIT runtime that "
        "MemoryDenyWriteExecute=yes in credd.service stops",
        ADVICE,
    )


def test_status_names_an_assertion_command_that_runs_a_jit_runtime(
    home: Home, tmp_path: Path
) -> None:
    home.write_aws_config()
    trusted = credd_profile(
        JWT_BEARER, assertion_command='["dotnet", "idp.dll"]', source_profile=""
    )
    home.write_credd_config('[server]\nlisten = "127.0.0.1:9911"\n' + trusted)
    env = service_env(home, Systemctl(tmp_path / "bin", NO_MANAGER))
    assert service.status(home.settings(), env).lines[3:] == (
        "assertion_command of [profiles.analyst] runs dotnet, a JIT runtime that "
        "MemoryDenyWriteExecute=yes in credd.service stops",
        ADVICE,
    )


@pytest.mark.parametrize(
    "how",
    ["#!/bin/sh", "#!/usr/bin/env python3", "/usr/local/bin/aws-vault exec x --json", "unused"],
    ids=["sh", "python", "a Go binary", "a node helper nothing served uses"],
)
def test_status_gives_no_advice_for_helpers_that_run_in_the_sandbox(
    home: Home, tmp_path: Path, how: str
) -> None:
    if how == "unused":  # the AWS CLI runs it, never credd
        home.write_aws_config(AWS_CONFIG + "\n[profile proc]\ncredential_process = node x.js\n")
    else:
        command = str(helper_script(home, "creds", how)) if how.startswith("#!") else how
        home.write_aws_config(signed_by(command))
    home.write_credd_config('[server]\nlisten = "127.0.0.1:9911"\n')
    env = service_env(home, Systemctl(tmp_path / "bin", NO_MANAGER))
    assert len(service.status(home.settings(), env).lines) == 3


def test_install_gives_the_advice_and_status_sees_the_override(home: Home, tmp_path: Path) -> None:
    home.write_aws_config(signed_by("node /opt/creds.js"))
    home.write_credd_config('[server]\nlisten = "127.0.0.1:9911"\n')
    settings = home.settings()
    env = service_env(home, Systemctl(tmp_path / "bin", NO_MANAGER))
    assert service.install(settings, env).lines[-1] == ADVICE

    # what `systemctl --user edit credd` saves
    drop_in = units_in(home) / "credd.service.d" / "override.conf"
    drop_in.parent.mkdir()
    drop_in.write_text("### Editing ...\n[Service]\nMemoryDenyWriteExecute=no\n")
    assert service.status(settings, env).lines[3:] == (
        "credential_process of profile proc runs node: MemoryDenyWriteExecute=no is set, "
        "it may JIT",
    )
    # a later drop-in puts it back (systemd reads them in order; the last value wins)
    (drop_in.parent / "zz-strict.conf").write_text("[Service]\nMemoryDenyWriteExecute=yes\n")
    assert service.status(settings, env).lines[-1] == ADVICE


# ----------------------------------------------------------------------------- the journal


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back for the other tests."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


def plain(_logger: object, _method: str, event: MutableMapping[str, Any]) -> str:
    return str(event["event"])


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        ("debug", "<7>"),
        ("info", "<6>"),
        ("warning", "<4>"),
        ("error", "<3>"),
        ("critical", "<2>"),
        ("unheard-of", "<6>"),
    ],
)
def test_journal_priority_prefixes_the_syslog_level(level: str, prefix: str) -> None:
    render = JournalPriority(plain)
    assert render(None, level, {"event": "hello", "level": level}) == f"{prefix}hello"


def journal_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TextIO:
    """A file that is $JOURNAL_STREAM, as systemd makes stderr for a service."""
    stream = (tmp_path / "journal").open("w")
    info = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
    return stream


@pytest.mark.usefixtures("_restore_logging")
def test_logs_to_the_journal_stream_carry_priorities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with journal_file(tmp_path, monkeypatch) as stream:
        assert logging_to_journal(stream)
        configure_logging("debug", "auto", stream)
        log = structlog.get_logger("credd.test")
        log.debug("d")
        log.info("i", profile="dev")
        log.warning("w")
        log.error("e")
    lines = (tmp_path / "journal").read_text().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"]
    events = [json.loads(line[3:]) for line in lines]  # the rest is the usual JSON
    assert [e["event"] for e in events] == ["d", "i", "w", "e"]
    assert events[1]["profile"] == "dev"


@pytest.mark.usefixtures("_restore_logging")
@pytest.mark.parametrize("where", ["another file", "a pipe-like stream"])
def test_no_priorities_when_stderr_is_not_the_journal_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    journal_file(tmp_path, monkeypatch).close()  # $JOURNAL_STREAM names that file, not ours
    with contextlib.ExitStack() as stack:
        stream: TextIO = (
            stack.enter_context((tmp_path / "elsewhere").open("w+"))
            if where == "another file"
            else io.StringIO()
        )
        assert not logging_to_journal(stream)
        configure_logging("info", "json", stream)
        structlog.get_logger().warning("w")
        stream.seek(0)
        text = stream.read()
    assert text.startswith("{")
    assert json.loads(text)["event"] == "w"


@pytest.mark.usefixtures("_restore_logging")
def test_stdlib_warnings_reach_the_journal_with_their_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with journal_file(tmp_path, monkeypatch) as stream:
        configure_logging("info", "auto", stream)
        logging.getLogger("aiohttp.server").error("Error handling request")
        logging.getLogger("botocore.credentials").warning("Refreshing temporary credentials")
    lines = (tmp_path / "journal").read_text().splitlines()
    assert [line[:3] for line in lines] == ["<3>", "<4>"]
