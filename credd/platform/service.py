"""``credd service install|uninstall|status``: the systemd user units.

The units ship inside the package (``credd/platform/units``; ``systemd/`` in the
repository links to them). Installing writes them to the user's systemd
directory with ``ExecStart`` pointing at this very installation of credd
(a virtualenv, pipx or the system), ``ListenStream`` at ``[server] listen``,
and ``ReadWritePaths`` at the directories credd writes as these settings place
them, then asks the user manager to load and start them, or says which
``systemctl --user`` commands to run where there is no user manager.

It also owns the advice about the unit's sandbox: ``MemoryDenyWriteExecute=yes``
applies to every child credd starts, and kills JIT runtimes (Node, Java, .NET),
so ``install`` and ``status`` name a configured helper that runs one, with the
drop-in that allows it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from credd.config.settings import (
    AssumeRoleProfile,
    IdentityEnhancedProfile,
    ProcessProfile,
    Settings,
    TrustedIdentitySpec,
)
from credd.errors import CreddError
from credd.files.paths import resolve_paths

UNITS = ("credd.service", "credd.socket")
SYSTEMCTL_TIMEOUT_SECONDS = 30
#: the template's line, replaced by the directories of the settings being installed
TEMPLATE_READ_WRITE_PATHS = (
    "ReadWritePaths=-%h/.aws/sso/cache -%h/.aws/login/cache -%t/credd -%S/credd"
)
#: made by systemd itself (RuntimeDirectory=, StateDirectory=): always writable
SYSTEMD_DIRECTORIES = ("%t/credd", "%S/credd")
#: the option that stops a helper which JIT-compiles, and the drop-in that lifts it
MEMORY_OPTION = "MemoryDenyWriteExecute"
OVERRIDE = f"systemctl --user edit credd, then add: [Service] {MEMORY_OPTION}=no"
#: runtimes that need writable and executable memory at once (a JIT compiler on by
#: default); CPython, Ruby, PHP and shells run under the option, and so do Go, Rust
#: and C binaries
JIT_RUNTIMES = frozenset(
    {"node", "nodejs", "deno", "bun", "java", "dotnet", "mono", "pwsh", "luajit", "pypy", "julia"}
)
#: "node18", "pypy3.10", "java-17": the name without its version
_VERSION_SUFFIX = re.compile(r"[-.\d]+$")
#: how much of a script is read to find its ``#!`` line
SHEBANG_BYTES = 256


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


def _unit_word(text: str) -> str:
    """``text`` as one word of a unit file's list or command line.

    Shell-style quotes, which systemd understands, and "%" doubled (a specifier
    otherwise). systemd reads a backslash as an escape even inside quotes, and a
    control character would end the line, so those are refused, not mangled.
    """
    if "\\" in text or any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise CreddError(
            f"systemd cannot be given {text!r}: it holds a backslash or a control character"
        )
    return shlex.quote(text).replace("%", "%%")


def writable_paths(settings: Settings) -> tuple[Path, ...]:
    """The directories credd writes beyond the two systemd makes for it, in order, once each.

    The shared AWS caches wherever ``AWS_LOGIN_CACHE_DIRECTORY`` puts the
    Sign-In one, and the directory of ``[server] token_file`` (the token is
    replaced there, and the bound address written beside it).
    """
    paths = settings.paths
    made_by_systemd = (paths.runtime_dir, paths.state_dir)  # %t/credd and %S/credd
    found: list[Path] = []
    for path in (paths.sso_cache_dir, paths.login_cache_dir, settings.server.token_file.parent):
        if not path.is_absolute():
            raise CreddError(
                f"the service needs an absolute path, not {str(path)!r}",
                hint="give [server] token_file and AWS_LOGIN_CACHE_DIRECTORY as absolute paths",
            )
        if path not in found and path not in made_by_systemd:
            found.append(path)
    return tuple(found)


def _moved_login_cache(settings: Settings) -> bool:
    """Whether ``AWS_LOGIN_CACHE_DIRECTORY`` moved the Sign-In cache from where it is by default."""
    default = resolve_paths({"HOME": str(settings.paths.home)}).login_cache_dir
    return settings.paths.login_cache_dir != default


def render(unit: str, settings: Settings, command: list[str]) -> str:
    text = resources.files("credd.platform").joinpath("units", unit).read_text(encoding="utf-8")
    if unit == "credd.service":
        exec_start = " ".join(_unit_word(part) for part in [*command, "serve"])
        text = text.replace("ExecStart=%h/.local/bin/credd serve", f"ExecStart={exec_start}")
        words = [_unit_word(f"-{path}") for path in writable_paths(settings)]
        words += [f"-{directory}" for directory in SYSTEMD_DIRECTORIES]
        text = text.replace(TEMPLATE_READ_WRITE_PATHS, "ReadWritePaths=" + " ".join(words))
        if _moved_login_cache(settings):
            # The daemon must use the cache the sandbox lets it write, whatever the user
            # manager's environment says; ~/.config/credd/env still wins (systemd reads it last).
            moved = _unit_word(f"AWS_LOGIN_CACHE_DIRECTORY={settings.paths.login_cache_dir}")
            text = text.replace("\nEnvironmentFile=", f"\nEnvironment={moved}\nEnvironmentFile=", 1)
    if unit == "credd.socket":
        text = text.replace("ListenStream=127.0.0.1:9911", f"ListenStream={settings.server.listen}")
    return text


def service_command(settings: Settings, env: Mapping[str, str]) -> list[str]:
    """:func:`credd_command`, with ``--config`` when this shell reads a config of its own.

    ``credd --config PATH`` or ``$CREDD_CONFIG`` chose another file here; the
    service must read that one, or it would write a token file (and need write
    access) where this shell does not look.
    """
    unpinned = {name: value for name, value in env.items() if name != "CREDD_CONFIG"}
    default = resolve_paths(unpinned).credd_config_file
    config = settings.paths.credd_config_file
    pinned = [] if config == default else ["--config", str(config.absolute())]
    return [*credd_command(), *pinned]


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
    command = service_command(settings, env)
    texts = {unit: render(unit, settings, command) for unit in UNITS}  # refuses before any write
    directory = unit_directory(env, settings.paths.home)
    directory.mkdir(parents=True, exist_ok=True)
    # ProtectSystem=strict makes only existing ReadWritePaths writable: make them now.
    for path in writable_paths(settings):
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    for unit, text in texts.items():
        (directory / unit).write_text(text, encoding="utf-8")
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
    lines += sandbox_advice(settings, env, directory)
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
    lines += sandbox_advice(settings, env, directory)
    return ServiceReport(tuple(lines))


# ----------------------------------------------------------------------------- the helpers' advice


@dataclass(frozen=True)
class Helper:
    """A program the daemon runs as a child, and where it is configured."""

    what: str
    argv: tuple[str, ...]


def daemon_helpers(settings: Settings) -> list[Helper]:
    """Every ``credential_process`` a served profile is signed by, and every ``assertion_command``.

    A ``credential_process`` profile nothing served is sourced from is run by
    the AWS tools, never by the daemon, so it is left out.
    """
    signers: set[str] = set()
    for profile in settings.profiles.values():
        if (
            isinstance(profile, AssumeRoleProfile | IdentityEnhancedProfile)
            and profile.source_profile
        ):
            signers.add(profile.source_profile)
    helpers: list[Helper] = []
    for session in settings.sessions.values():
        if isinstance(session, TrustedIdentitySpec):
            if session.source_profile:
                signers.add(session.source_profile)
            if session.assertion_command:
                helpers.append(
                    Helper(
                        f"assertion_command of [profiles.{session.name}]", session.assertion_command
                    )
                )
    for name in sorted(signers):
        source = settings.sources.get(name)
        if isinstance(source, ProcessProfile):
            try:
                argv = tuple(shlex.split(source.command))
            except ValueError:
                continue  # the daemon cannot run it either, and says so when it tries
            helpers.append(Helper(f"credential_process of profile {name}", argv))
    return helpers


def _runtime_name(path: str) -> str:
    return _VERSION_SUFFIX.sub("", Path(path).name)


def _interpreter(executable: str) -> str | None:
    """The program a ``#!`` script runs under (``/usr/bin/env node`` names ``node``)."""
    try:
        with open(executable, "rb") as script:
            head = script.read(SHEBANG_BYTES)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split()
    if words and Path(words[0]).name == "env":
        # env's own options (-S, -i) and VAR=value assignments come before the program
        words = [word for word in words[1:] if not word.startswith("-") and "=" not in word]
    return words[0] if words else None


def jit_runtime(argv: tuple[str, ...], env: Mapping[str, str]) -> str | None:
    """The JIT runtime ``argv`` starts, known by its name or by its script's ``#!`` line.

    A guess that errs on the quiet side: an ELF binary with V8 or a JVM inside, or a
    shell script that execs java, is not recognised (README, "The sandbox", says what
    such a helper shows and what to do). ``argv[0]`` is looked up on this shell's PATH,
    which is the service's in all but odd setups.
    """
    if not argv:
        return None
    if _runtime_name(argv[0]) in JIT_RUNTIMES:
        return _runtime_name(argv[0])
    executable = shutil.which(argv[0], path=env.get("PATH"))
    interpreter = _interpreter(executable) if executable else None
    if interpreter is not None and _runtime_name(interpreter) in JIT_RUNTIMES:
        return _runtime_name(interpreter)
    return None


def _unit_setting(directory: Path, key: str) -> str | None:
    """What the installed credd.service and its drop-ins last set ``key`` to (systemd's order)."""
    service = directory / "credd.service"
    drop_ins = directory / "credd.service.d"
    files = [service] + (sorted(drop_ins.glob("*.conf")) if drop_ins.is_dir() else [])
    value = None
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            name, sep, given = line.strip().partition("=")
            if sep and name.strip() == key:
                value = given.strip()
    return value


def sandbox_advice(settings: Settings, env: Mapping[str, str], directory: Path) -> list[str]:
    """A line for each configured helper that runs a JIT runtime, and how to let it run."""
    advice = []
    needing = [
        (helper, runtime)
        for helper in daemon_helpers(settings)
        if (runtime := jit_runtime(helper.argv, env)) is not None
    ]
    if not needing:
        return []
    allowed = _unit_setting(directory, MEMORY_OPTION) in {"no", "false", "off", "0", ""}
    for helper, runtime in needing:
        if allowed:
            advice.append(f"{helper.what} runs {runtime}: {MEMORY_OPTION}=no is set, it may JIT")
        else:
            advice.append(
                f"{helper.what} runs {runtime}, a JIT runtime that {MEMORY_OPTION}=yes "
                "in credd.service stops"
            )
    if not allowed:
        advice.append(f"  to let it run: {OVERRIDE}; then systemctl --user restart credd")
    return advice
