"""credd.service's sandbox as credd and its children meet it: JIT helpers and the override.

systemd enforces the unit's seccomp options (SystemCallFilter=,
MemoryDenyWriteExecute=, RestrictAddressFamilies=, NoNewPrivileges=) in every
user manager, and a seccomp filter is inherited by every child: a
``credential_process`` or ``assertion_command`` helper runs under them too.
There is no user manager here (``systemd-run --user`` cannot be used), so
:class:`Sandbox` rebuilds those filters from the rendered unit with libseccomp,
the library systemd builds them with, the way systemd 252 does
(src/shared/seccomp-util.c): the system-call groups come from ``systemd-analyze
syscall-filter``, so they are the installed systemd's own. A small launcher
loads them, then ``exec``s the helper, or ``credd serve`` itself. What
``credd service status`` advises about such helpers is in tests/test_systemd_units.py.

The namespace options (ProtectSystem=, ProtectProc=...) and LockPersonality=,
RestrictNamespaces=, RestrictRealtime=, RestrictSUIDSGID= are not rebuilt: no
helper credd runs is expected to mount, unshare, change personality, ask for
real-time scheduling or make set-uid files, and none of them is what stops a JIT.

libseccomp's Python binding is Debian's ``python3-seccomp`` (.ci/run installs
it), for Debian's own ``/usr/bin/python3``: the launcher runs under that
interpreter, which is why it is a script of its own and not code of this module.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from credd.platform import service
from tests.support.configs import AWS_CONFIG
from tests.support.home import Home
from tests.support.process import (
    CREDD,
    READY_DEADLINE,
    Answer,
    address_file,
    http_get,
    log_paths,
    stop_process,
    token_file,
)
from tests.support.systemd import directives, systemd_tool
from tests.support.waiting import eventually
from tests.support.world import World

#: a child that runs longer than this has hung (never reached when all is well)
CHILD_DEADLINE = 60.0
#: the interpreter python3-seccomp installs its module for
SYSTEM_PYTHON = "/usr/bin/python3"
#: what `systemctl --user edit credd` saves for a helper that JITs
OVERRIDE = "[Service]\nMemoryDenyWriteExecute=no\n"
#: shm(2)'s SHM_EXEC, which Python's modules do not name
SHM_EXEC = 0o100000

#: Loads the filters described by argv[1] (JSON), then execs argv[2:].
LAUNCHER = textwrap.dedent(
    """\
    import errno, json, mmap, os, sys
    import seccomp

    spec = json.loads(sys.argv[1])
    argv = sys.argv[2:]
    # What systemd's default-allow filters refuse with an error number
    refusals = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    if spec["memory_deny_write_execute"]:
        eperm = seccomp.ERRNO(errno.EPERM)
        wx = mmap.PROT_WRITE | mmap.PROT_EXEC
        x = mmap.PROT_EXEC
        refusals.add_rule(eperm, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
        refusals.add_rule(eperm, "mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, x, x))
        refusals.add_rule(eperm, "pkey_mprotect", seccomp.Arg(2, seccomp.MASKED_EQ, x, x))
        shm_exec = spec["shm_exec"]
        refusals.add_rule(eperm, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, shm_exec, shm_exec))
    families = spec["address_families"]
    if families is not None:
        unsupported = seccomp.ERRNO(errno.EAFNOSUPPORT)
        for family in range(max(families)):
            if family not in families:
                refusals.add_rule(unsupported, "socket", seccomp.Arg(0, seccomp.EQ, family))
        refusals.add_rule(unsupported, "socket", seccomp.Arg(0, seccomp.GT, max(families)))
    refusals.load()  # NoNewPrivileges=yes comes with it (libseccomp sets no_new_privs)
    # SystemCallFilter= as an allow-list: anything else fails with SystemCallErrorNumber=,
    # or kills the process (SIGSYS) without one
    error_number = spec["error_number"]
    otherwise = seccomp.ERRNO(error_number) if error_number else seccomp.KILL_PROCESS
    allowed = seccomp.SyscallFilter(defaction=otherwise)
    known = 0
    for name in spec["system_calls"]:
        try:
            allowed.add_rule(seccomp.ALLOW, name)
            known += 1
        except (RuntimeError, ValueError, OSError):
            pass  # not a system call of this architecture (mmap2 on x86-64), as systemd skips it
    assert known > 200, known  # the groups were read, not lost
    allowed.load()
    os.execvp(argv[0], argv)
    """
)


def _seccomp_python() -> str:
    """Debian's python3 with the ``seccomp`` module; skipped where missing, never in CI."""
    probe = [SYSTEM_PYTHON, "-c", "import seccomp"]
    found = Path(SYSTEM_PYTHON).exists() and subprocess.run(probe, check=False).returncode == 0
    if not found:
        missing = (
            "python3-seccomp is not installed (Debian/Ubuntu: apt-get install python3-seccomp)"
        )
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    return SYSTEM_PYTHON


def _program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing = f"{name} is not installed"
        if os.environ.get("CI") and name == "node":  # the Node SDK tests need it anyway
            pytest.fail(missing)
        pytest.skip(missing)
    return path


def syscall_group(name: str) -> set[str]:
    """Every system call of the group ``@name``, nested groups expanded, as systemd knows them."""
    listed = subprocess.run(
        [systemd_tool("systemd-analyze"), "syscall-filter", "--no-pager", name],
        capture_output=True,
        text=True,
        timeout=CHILD_DEADLINE,
        check=True,
    ).stdout.splitlines()
    found: set[str] = set()
    for line in listed[1:]:  # the first line is the group's own name
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        found |= syscall_group(entry) if entry.startswith("@") else {entry}
    return found


def _words(value: str) -> set[str]:
    found: set[str] = set()
    for word in value.split():
        found |= syscall_group(word) if word.startswith("@") else {word}
    return found


@dataclass(frozen=True)
class Sandbox:
    """The seccomp side of a unit, as systemd 252 would load it for the service and its children."""

    system_calls: frozenset[str]
    #: what a system call outside them fails with; ``None``: SIGSYS kills the process
    error_number: int | None
    memory_deny_write_execute: bool
    address_families: tuple[int, ...] | None

    @classmethod
    def of_unit(cls, text: str) -> Sandbox:
        """Read the options from a unit's text (its drop-ins appended: the last value wins)."""
        filters = [value for value in directives(text, "SystemCallFilter") if value]
        assert filters, "the unit has no SystemCallFilter="
        assert not filters[0].startswith("~"), "only an allow-list is rebuilt here"
        allowed = syscall_group("@default")  # systemd adds it to every allow-list
        for value in filters:
            if value.startswith("~"):
                allowed -= _words(value[1:])
            else:
                allowed |= _words(value)
        error = directives(text, "SystemCallErrorNumber")
        memory = directives(text, "MemoryDenyWriteExecute")
        families = " ".join(directives(text, "RestrictAddressFamilies")).split()
        assert not any(name.startswith("~") for name in families), "only an allow-list"
        return cls(
            system_calls=frozenset(allowed),
            error_number=getattr(errno, error[-1]) if error and error[-1] != "kill" else None,
            memory_deny_write_execute=bool(memory) and memory[-1] in {"yes", "true", "on", "1"},
            address_families=tuple(sorted(getattr(socket, name) for name in families)) or None,
        )

    def command(self, launcher: Path, argv: list[str]) -> list[str]:
        spec = {
            "system_calls": sorted(self.system_calls),
            "error_number": self.error_number,
            "memory_deny_write_execute": self.memory_deny_write_execute,
            "shm_exec": SHM_EXEC,
            "address_families": self.address_families,
        }
        return [_seccomp_python(), str(launcher), json.dumps(spec), *argv]


@pytest.fixture
def launcher(tmp_path: Path) -> Path:
    path = tmp_path / "sandbox-launcher.py"
    path.write_text(LAUNCHER)
    return path


def unit_text(home: Home, *, override: str = "") -> str:
    """credd.service as ``credd service install`` writes it, plus a drop-in's lines."""
    home.write_aws_config()
    settings = home.settings()
    return service.render("credd.service", settings, [*CREDD]) + "\n" + override


@pytest.fixture
def sandbox(home: Home) -> Sandbox:
    return Sandbox.of_unit(unit_text(home))


@pytest.fixture
def overridden(home: Home) -> Sandbox:
    return Sandbox.of_unit(unit_text(home, override=OVERRIDE))


def run_in(sandbox: Sandbox, launcher: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sandbox.command(launcher, argv),
        capture_output=True,
        text=True,
        timeout=CHILD_DEADLINE,
        check=False,
    )


# ------------------------------------------------------------------------- helpers in the sandbox


#: a helper's work as a JIT runtime does it: enough JavaScript that V8 compiles code
NODE_HELPER = "let s = 0; for (let i = 0; i < 1e6; i++) s += i; console.log(JSON.stringify({s}))"


def test_the_sandbox_is_what_the_unit_says(sandbox: Sandbox, overridden: Sandbox) -> None:
    assert sandbox.memory_deny_write_execute
    assert not overridden.memory_deny_write_execute
    # netlink: the container listener hears of new addresses from the kernel
    assert sandbox.address_families == tuple(
        sorted([socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK])
    )
    # ~@privileged @resources took these out of @system-service
    assert {"read", "execve", "mmap", "prlimit64"} <= sandbox.system_calls
    assert not {"setuid", "setrlimit", "set_mempolicy", "pkey_alloc"} & sandbox.system_calls
    assert sandbox.error_number == errno.EPERM


def test_the_launcher_enforces_what_it_rebuilds(sandbox: Sandbox, launcher: Path) -> None:
    """Proof that the launcher is not a no-op: each rebuilt option refuses what it should."""
    probe = textwrap.dedent(
        """\
        import ctypes, errno, mmap, os, socket
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        wx = mmap.PROT_WRITE | mmap.PROT_EXEC
        page = libc.mmap(None, 4096, wx, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        print("mmap W|X:", errno.errorcode.get(ctypes.get_errno()) if page in (None, 2**64 - 1)
              else "mapped")
        try:
            socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            print("packet: opened")
        except OSError as exc:
            print("packet:", errno.errorcode[exc.errno])
        print("no_new_privs:", open("/proc/self/status").read().split("NoNewPrivs:")[1].split()[0])
        try:
            os.setuid(os.getuid())  # allowed to anyone, but @privileged is out of the allow-list
            print("setuid: allowed")
        except OSError as exc:
            print("setuid:", errno.errorcode[exc.errno])
        """
    )
    done = run_in(sandbox, launcher, [SYSTEM_PYTHON, "-c", probe])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "mmap W|X: EPERM",
        "packet: EAFNOSUPPORT",
        "no_new_privs: 1",
        "setuid: EPERM",
    ]


def test_a_jit_runtime_dies_under_the_units_sandbox(sandbox: Sandbox, launcher: Path) -> None:
    node = _program("node")
    outside = subprocess.run(
        [node, "-e", NODE_HELPER], capture_output=True, text=True, timeout=CHILD_DEADLINE
    )
    assert outside.returncode == 0, outside.stderr  # the helper itself is fine

    done = run_in(sandbox, launcher, [node, "-e", NODE_HELPER])
    # V8 cannot make its code pages executable and aborts (SIGTRAP)
    assert done.returncode != 0
    assert done.stdout == ""
    assert "Check failed" in done.stderr or "SetPermissions" in done.stderr, done.stderr


def test_a_jvm_dies_under_the_units_sandbox(sandbox: Sandbox, launcher: Path) -> None:
    done = run_in(sandbox, launcher, [_program("java"), "-version"])
    assert done.returncode != 0
    said = done.stdout + done.stderr
    assert "Failed to mark memory page as executable" in said, said


def test_the_override_alone_lets_jit_runtimes_run(overridden: Sandbox, launcher: Path) -> None:
    """MemoryDenyWriteExecute=no is enough: the rest of the sandbox does not stop them."""
    node = run_in(overridden, launcher, [_program("node"), "-e", NODE_HELPER])
    assert node.returncode == 0, node.stderr
    assert json.loads(node.stdout) == {"s": 499999500000}
    if shutil.which("java"):
        java = run_in(overridden, launcher, ["java", "-version"])
        assert java.returncode == 0, java.stderr


@pytest.mark.parametrize(
    "argv",
    [
        [SYSTEM_PYTHON, "-c", "import json, ssl; print(json.dumps({'ok': 1}))"],
        [sys.executable, "-c", "import json, ctypes; print(json.dumps({'ok': 1}))"],
        ["/bin/sh", "-c", "echo '{\"ok\": 1}'"],
        ["node", "--jitless", "-e", "console.log(JSON.stringify({ok: 1}))"],
    ],
    ids=["python3", "credd's python", "sh", "node --jitless"],
)
def test_helpers_without_a_jit_run_under_the_units_sandbox(
    sandbox: Sandbox, launcher: Path, argv: list[str]
) -> None:
    if argv[0] == "node":
        argv = [_program("node"), *argv[1:]]
    done = run_in(sandbox, launcher, argv)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ok": 1}


# --------------------------------------------------------------------- credd serve in the sandbox


@dataclass(frozen=True)
class Sandboxed:
    """``credd serve`` running under a :class:`Sandbox`, reached as the CLI reaches it."""

    url: str
    token: str
    output: Path

    async def get(self, path: str) -> Answer:
        return await http_get(self.url + path, headers={"Authorization": self.token})


@asynccontextmanager
async def serving_in(
    sandbox: Sandbox, launcher: Path, world: World, name: str
) -> AsyncIterator[Sandboxed]:
    """``credd serve`` under ``sandbox`` until the block ends (SIGTERM, then SIGKILL)."""
    stdout_path, stderr_path = log_paths(world.logs, name)
    for stale in (address_file(world.env), token_file(world.env)):
        stale.unlink(missing_ok=True)  # the daemon before this one left them
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = await anyio.open_process(
            sandbox.command(launcher, [*CREDD, "serve"]), env=world.env, stdout=out, stderr=err
        )
    try:

        def bound_or_dead() -> bool:
            return process.returncode is not None or address_file(world.env).exists()

        await eventually(bound_or_dead, within=READY_DEADLINE, what=f"credd serve ({name}) bound")
        if process.returncode is not None:  # -31: SIGSYS, a system call the filter kills for
            raise AssertionError(
                f"credd serve died in the sandbox (status {process.returncode}):\n"
                + stderr_path.read_text(errors="replace")
            )
        address = address_file(world.env).read_text(encoding="ascii").strip()
        daemon = Sandboxed(
            f"http://{address}", token_file(world.env).read_text(encoding="ascii"), stderr_path
        )
        yield daemon
    finally:
        await stop_process(process)


def node_credential_process(world: World) -> str:
    """An AWS config whose role ``on-proc`` is signed by a ``credential_process`` in Node."""
    keys = world.emu.create_access_key("ci", "333333333333")
    script = world.home.root / "bin" / "node-creds"
    script.parent.mkdir()
    answer = {
        "Version": 1,
        "AccessKeyId": keys.access_key_id,
        "SecretAccessKey": keys.secret_access_key.reveal(),
    }
    # enough work that V8 compiles code, as any real helper's would
    script.write_text(
        f"#!{_program('node')}\n"
        "let n = 0; for (let i = 0; i < 1e6; i++) n += i;\n"
        f"console.log(JSON.stringify({json.dumps(answer)}));\n"
    )
    script.chmod(0o700)
    return (
        AWS_CONFIG
        + f"\n[profile proc]\ncredential_process = {script}\n"
        + "\n[profile on-proc]\nrole_arn = arn:aws:iam::333333333333:role/Deploy\n"
        + "source_profile = proc\nrole_session_name = deployer\n"
    )


async def test_credd_serve_runs_a_node_helper_only_with_the_override(
    world: World, launcher: Path, sandbox: Sandbox, overridden: Sandbox
) -> None:
    world.home.write_aws_config(node_credential_process(world))

    # The unit as installed: credd itself runs, its Node helper dies.
    async with serving_in(sandbox, launcher, world, "sandboxed") as daemon:
        assert (await daemon.get("/healthz")).status == 200
        answer = await daemon.get("/v1/credentials/on-proc")
        assert answer.status == 503, answer.text
        assert "credential_process of profile proc" in answer.json()["message"]
        assert (await daemon.get("/healthz")).status == 200  # the daemon lives on
    assert world.emu.calls["AssumeRole"] == 0

    # With the drop-in `credd service status` prints: served.
    async with serving_in(overridden, launcher, world, "overridden") as daemon:
        answer = await daemon.get("/v1/credentials/on-proc")
        assert answer.status == 200, answer.text
        assert answer.json()["AccountId"] == "333333333333"
    assert world.emu.calls["AssumeRole"] == 1
