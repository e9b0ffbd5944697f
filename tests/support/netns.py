"""A container without a container engine: a bridge, a veth pair and a network namespace.

For the container tests (tests/test_containers.py): a bridge holding
169.254.170.2/24, as ``credd container setup`` makes ``credd0``, and a network
namespace joined to it by a veth pair, holding 169.254.170.10/24. A process run
in the namespace (``ip netns exec``) sees what a container on that network sees:
its own loopback, and the host only at 169.254.170.2. :func:`run_in` starts it
the way ``docker run --env-file`` does: a fresh environment, the file's
``KEY=VALUE`` lines taken literally.

Only one bridge on the machine can hold 169.254.170.2, so every test that gives
it to one holds :func:`address_lock` (a ``flock`` other test modules take too),
and skips if something else holds the address already. Every bridge, veth and
namespace made here is named ``cdt`` and a random tag, and removed in a
``finally``; :func:`leftovers` says which of them are still there.

Root only (``CAP_NET_ADMIN``), with iproute2's ``ip``; :func:`require_root_networking`
skips elsewhere, and fails under ``$CI``, which runs as root (.ci/run).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import pytest

from tests.support.process import Result, run

#: the ECS agent's address: credd's container listener, the bridge's address
AGENT_ADDRESS = "169.254.170.2"
#: the namespace's ("container's") address on the bridge
CONTAINER_ADDRESS = "169.254.170.10"
PREFIX_LENGTH = 24
#: every interface and namespace the tests make starts with this
NAME_PREFIX = "cdt"
#: held while a test gives 169.254.170.2 to a bridge: the same path in every test module
LOCK_FILE = Path(tempfile.gettempdir()) / "credd-tests-169.254.170.2.lock"
#: how long a test waits for another to let go of the address (never reached when all is well)
LOCK_DEADLINE = 600.0
COMMAND_DEADLINE = 30.0
#: the "container runtime": ``--env-file`` semantics, then exec the command
RUN_WITH_ENV_FILE = """\
import os, sys
split = sys.argv.index("--")
env = dict(arg.split("=", 1) for arg in sys.argv[2:split])
with open(sys.argv[1], encoding="utf-8") as lines:
    for line in lines.read().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")  # as docker run --env-file: no quoting at all
            env[key] = value
argv = sys.argv[split + 1:]
os.execve(argv[0], argv, env)
"""

#: what every name this process made was, for :func:`leftovers`
_made: set[str] = set()


def _ip_path() -> str | None:
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip") if os.access(p, os.X_OK)), None
    )


def require_root_networking() -> str:
    """The path of ``ip``; skipped without root or iproute2, but failed under ``$CI``."""
    ip = _ip_path()
    reason = None
    if os.geteuid() != 0:
        reason = "needs root: it creates a bridge, a veth pair and a network namespace"
    elif ip is None:
        reason = "iproute2's ip is not installed (apt-get install -y iproute2)"
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI runs as root with iproute2: see .ci/run)")
        pytest.skip(reason)
    assert ip is not None
    return ip


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``ip ARGS...`` (blocking: it takes milliseconds); a failure raises with its stderr."""
    path = _ip_path()
    assert path is not None
    done = subprocess.run(
        [path, *args], capture_output=True, text=True, check=False, timeout=COMMAND_DEADLINE
    )
    if check and done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr}")
    return done


def new_name(kind: str = "") -> str:
    """``cdt`` + 6 random hex digits (+ ``kind``): an interface name (15 bytes at most)."""
    name = f"{NAME_PREFIX}{secrets.token_hex(3)}{kind}"
    _made.add(name)
    return name


def holder_of(address: str) -> str | None:
    """The interface holding ``address`` in this namespace, if one does."""
    out = ip("-o", "addr", "show", "to", f"{address}/32").stdout
    return out.split()[1] if out.strip() else None


def leftovers() -> list[str]:
    """The interfaces and namespaces this process made that are still there."""
    links = {line.split(":")[1].strip().split("@")[0] for line in _lines("-o", "link", "show")}
    namespaces = {line.split()[0] for line in _lines("netns", "list")}
    return sorted(_made & (links | namespaces))


def _lines(*args: str) -> list[str]:
    return [line for line in ip(*args).stdout.splitlines() if line.strip()]


@contextlib.contextmanager
def address_lock() -> Iterator[None]:
    """Hold the machine-wide right to give 169.254.170.2 to a bridge."""
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + LOCK_DEADLINE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"{LOCK_FILE} stayed locked for {LOCK_DEADLINE} s"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def skip_if_taken(address: str = AGENT_ADDRESS) -> None:
    """Skip when something other than these tests already holds ``address``."""
    holder = holder_of(address)
    if holder is not None:
        pytest.skip(
            f"{address} is already on interface {holder} of this machine (credd container "
            "setup, or a Docker network?): the tests need to own it"
        )


@dataclass
class Bridge:
    """A bridge holding ``address``/24, up; :meth:`delete` removes it and its address."""

    name: str = field(default_factory=new_name)
    address: str = AGENT_ADDRESS

    def create(self) -> Bridge:
        try:
            ip("link", "add", self.name, "type", "bridge")
            ip("addr", "add", f"{self.address}/{PREFIX_LENGTH}", "dev", self.name)
            ip("link", "set", self.name, "up")
        except BaseException:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        ip("link", "del", self.name, check=False)


@dataclass
class Namespace:
    """A network namespace on ``bridge`` through a veth pair, holding ``address``/24."""

    bridge: Bridge
    address: str = CONTAINER_ADDRESS
    name: str = field(default_factory=new_name)

    @property
    def host_end(self) -> str:
        return f"{self.name}h"

    def create(self) -> Namespace:
        _made.add(self.host_end)
        try:
            ip("netns", "add", self.name)
            # the peer is made inside the namespace: the host has an eth0 of its own
            ip(
                "link",
                "add",
                self.host_end,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                self.name,
            )
            ip("link", "set", self.host_end, "master", self.bridge.name, "up")
            inside = ("-n", self.name)
            ip(*inside, "addr", "add", f"{self.address}/{PREFIX_LENGTH}", "dev", "eth0")
            ip(*inside, "link", "set", "eth0", "up")
            ip(*inside, "link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        # the namespace's end goes with the namespace, and its peer with it
        ip("netns", "del", self.name, check=False)
        ip("link", "del", self.host_end, check=False)

    def command(self, env_file: Path, argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
        """``argv`` in the namespace, in ``env`` plus ``env_file``'s lines, and nothing else."""
        ip_path = _ip_path()
        assert ip_path is not None
        pairs = [f"{key}={value}" for key, value in env.items()]
        return [
            ip_path,
            "netns",
            "exec",
            self.name,
            sys.executable,
            "-I",
            "-c",
            RUN_WITH_ENV_FILE,
            str(env_file),
            *pairs,
            "--",
            *argv,
        ]

    async def run(self, env_file: Path, argv: Sequence[str], env: Mapping[str, str]) -> Result:
        """Run ``argv`` in the namespace to completion (see :meth:`command`)."""
        return await run(self.command(env_file, argv, env), {"PATH": "/usr/sbin:/usr/bin:/bin"})


@contextlib.contextmanager
def agent_network(*, bridge_first: bool = True) -> Iterator[tuple[Bridge, Namespace]]:
    """The address lock, then a bridge with 169.254.170.2/24 and a namespace on it.

    With ``bridge_first=False`` the bridge is not created (the test creates it:
    ``bridge.create()``), nor the namespace (``namespace.create()`` after it).
    Everything made is removed when the block ends, however it ends.
    """
    require_root_networking()
    with address_lock():
        skip_if_taken()
        bridge = Bridge()
        namespace = Namespace(bridge)
        try:
            if bridge_first:
                bridge.create()
                namespace.create()
            yield bridge, namespace
        finally:
            namespace.delete()
            bridge.delete()


def write_env_file(directory: Path, lines: str, name: str = "container.env") -> Path:
    """What ``credd container env`` printed, as a 0600 file for :meth:`Namespace.run`."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(lines)
    return path


# --------------------------------------------------------------------------- relay


@contextlib.asynccontextmanager
async def relay(host: str, target_port: int) -> AsyncIterator[int]:
    """A TCP relay on ``host`` (any port, returned) to ``127.0.0.1:target_port``.

    The emulator listens on loopback only; a namespace reaches the host only at the
    bridge's address, so its SDKs talk to the emulator through this. Bytes pass
    unchanged (SigV4 signs the ``Host`` the client sent, and the emulator checks it).
    """
    listener = await anyio.create_tcp_listener(local_host=host, local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)  # noqa: S610  # anyio, not Django

    async def forward(client: anyio.abc.SocketStream) -> None:
        async with client, await anyio.connect_tcp("127.0.0.1", target_port) as upstream:

            async def pump(source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream) -> None:
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    async for chunk in source:
                        await sink.send(chunk)
                with contextlib.suppress(anyio.BrokenResourceError, OSError):
                    await sink.send_eof()

            async with anyio.create_task_group() as pumps:
                pumps.start_soon(pump, client, upstream)
                pumps.start_soon(pump, upstream, client)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, forward)
        try:
            yield port
        finally:
            tg.cancel_scope.cancel()
