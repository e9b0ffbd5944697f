"""Core dumps off in the processes that hold tokens: the real ``credd serve`` and ``credd login``.

What a non-dumpable process looks like from outside (issue 11, item 3): its
``/proc/PID/limits`` says ``Max core file size 0 0``; its ``/proc/PID/*``
files belong to root; and another process of the *same* user may no longer
read its environment. Root reads everything anyway, so when the tests run as
root, credd and the process that tries to read it both run as ``nobody``,
where ``nobody`` can run this interpreter at all (a Python under root's 0700
home cannot); otherwise both run as the test's own user. A plain Python
process started the same way is the control: dumpable, readable, its own files.

Where neither is possible (root, and an interpreter only root can run), what
remains visible from outside is the hard core limit of 0, set by the same call
as ``PR_SET_DUMPABLE``, which says in one line on stderr if it failed; and
:func:`test_disable_core_dumps_in_a_process_of_its_own` reads PR_GET_DUMPABLE.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from credd.platform.process import is_dumpable
from credd.testing.emulator import Emulator
from tests.support.configs import AWS_CONFIG, LISTEN_ANY_PORT
from tests.support.process import CREDD, stop_process
from tests.support.waiting import eventually

NOBODY = 65534


@dataclass
class Account:
    """Whom the processes under test run as, and the home they run in."""

    uid: int
    root: Path
    #: what anyio.open_process needs to start a process as this account
    run_as: dict[str, Any] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    def env(self, emulator_url: str) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.root / "run"),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "AWS_ENDPOINT_URL": emulator_url,
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    @asynccontextmanager
    async def started(
        self, argv: list[str], env: dict[str, str], output: Path
    ) -> AsyncIterator[Process]:
        with output.open("wb") as out:
            process = await anyio.open_process(
                argv, env=env, stdout=out, stderr=out, cwd=Path.cwd(), **self.run_as
            )
        try:
            yield process
        finally:
            await stop_process(process)


def nobody_can_run_python() -> bool:
    try:
        done = subprocess.run(  # this interpreter, as nobody
            [sys.executable, "-c", "import asyncio, json"],
            check=False,
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
        )
    except OSError:
        return False
    return done.returncode == 0


@pytest.fixture
def account(tmp_path: Path) -> Iterator[Account]:
    if os.geteuid() != 0 or not nobody_can_run_python():
        root = tmp_path / "account"
        root.mkdir()
        yield Account(os.getuid(), root)
        return
    # pytest's own temporary directory is root's alone: nobody could not reach a home in it
    root = Path(tempfile.mkdtemp(prefix="credd-core-"))
    try:
        yield Account(NOBODY, root, {"user": NOBODY, "group": NOBODY, "extra_groups": []})
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def configured(account: Account) -> Account:
    """The standard AWS config and credd on any port, in a home that is the account's own."""
    (account.home / ".aws").mkdir(parents=True)
    (account.home / ".aws" / "config").write_text(AWS_CONFIG)
    (account.home / ".config" / "credd").mkdir(parents=True)
    (account.home / ".config" / "credd" / "config.toml").write_text(LISTEN_ANY_PORT)
    (account.root / "run").mkdir(mode=0o700)
    if account.run_as:
        for directory, _, files in os.walk(account.root):
            for name in [directory, *(os.path.join(directory, f) for f in files)]:
                os.chown(name, account.uid, account.uid)
    return account


def core_file_limit(pid: int) -> tuple[str, str]:
    """(soft, hard) of ``Max core file size`` in ``/proc/PID/limits``."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            soft, hard = line.split()[4:6]
            return soft, hard
    raise AssertionError(f"no core file size in /proc/{pid}/limits")


async def environment_readable_by_its_user(pid: int, account: Account) -> bool:
    """Whether another process of the same user may read ``/proc/PID/environ``."""
    path = f"/proc/{pid}/environ"
    if account.run_as:
        done = await anyio.run_process(["cat", path], check=False, **account.run_as)
        return done.returncode == 0
    return readable(path)


def readable(path: str) -> bool:
    try:
        Path(path).read_bytes()
    except PermissionError:
        return False
    return True


def environ_owner(pid: int) -> int:
    return Path(f"/proc/{pid}/environ").stat().st_uid


async def assert_hardened(pid: int, account: Account, output: str) -> None:
    assert core_file_limit(pid) == ("0", "0")
    assert "core dumps stay possible" not in output
    if account.uid != 0:
        # the kernel hands a non-dumpable process's /proc files to root
        assert environ_owner(pid) == 0
        assert not await environment_readable_by_its_user(pid, account)


async def assert_plain(pid: int, account: Account) -> None:
    """The control: a process started the same way, without credd, is dumpable."""
    if resource.getrlimit(resource.RLIMIT_CORE)[1] != 0:
        assert core_file_limit(pid) != ("0", "0")
    if account.uid != 0:
        assert environ_owner(pid) == account.uid
        assert await environment_readable_by_its_user(pid, account)


async def test_the_check_tells_a_plain_process_apart(configured: Account) -> None:
    env = configured.env("http://127.0.0.1:9")
    output = configured.root / "plain.out"
    argv = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    async with configured.started(argv, env, output) as plain:
        await eventually(lambda: output.read_text() == "up\n", what="the plain process start")
        await assert_plain(plain.pid, configured)


async def test_credd_serve_is_not_dumpable(configured: Account, emulator: Emulator) -> None:
    env = configured.env(emulator.url)
    address = configured.root / "run" / "credd" / "address"
    output = configured.root / "serve.out"
    async with configured.started([*CREDD, "serve"], env, output) as serve:
        # the address is written once the daemon listens: long after the first thing it did
        await eventually(
            lambda: address.exists() or serve.returncode is not None, what="credd serve ready"
        )
        assert serve.returncode is None, output.read_text()
        await assert_hardened(serve.pid, configured, output.read_text())


async def test_credd_login_is_not_dumpable(configured: Account, emulator: Emulator) -> None:
    env = configured.env(emulator.url)
    output = configured.root / "login.out"
    argv = [*CREDD, "login", "my-sso", "--no-browser"]
    async with configured.started(argv, env, output) as login:
        # it waits for the browser with a registration and a PKCE verifier in memory
        await eventually(
            lambda: "waiting for the browser" in output.read_text() or login.returncode is not None,
            what="credd login waiting",
        )
        assert login.returncode is None, output.read_text()
        await assert_hardened(login.pid, configured, output.read_text())


def test_disable_core_dumps_in_a_process_of_its_own() -> None:
    """The function itself, in a child: RLIMIT_CORE 0 and PR_GET_DUMPABLE 0, nothing failed."""
    script = (
        "import resource\n"
        "from credd.platform.process import disable_core_dumps, is_dumpable\n"
        "assert is_dumpable() is True\n"
        "assert disable_core_dumps() == []\n"
        "assert resource.getrlimit(resource.RLIMIT_CORE) == (0, 0)\n"
        "assert is_dumpable() is False\n"
    )
    done = subprocess.run(  # our own interpreter and script
        [sys.executable, "-c", script], capture_output=True, check=False, cwd=Path.cwd()
    )
    assert done.returncode == 0, done.stderr.decode()
    # this test process is left as it was
    assert is_dumpable() is True
