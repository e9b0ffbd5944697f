"""Running the real ``credd`` as subprocesses: the CLI, the daemon, and what they leave behind.

Every wait here polls for a state under a bounded deadline
(:mod:`tests.support.waiting` for a test's own waits); nothing sleeps
through a lifetime. Subprocesses are anyio processes, so the in-process
emulator keeps answering while they run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import boto3
from anyio.abc import Process

from credd.testing.emulator import Emulator
from credd.testing.emulator.state import TemporaryCredentials

#: the real command line, as a user's shell would run it
CREDD = (sys.executable, "-m", "credd.cli")
#: how long one CLI command may take before the test fails (never reached when all is well)
COMMAND_DEADLINE = 30.0
#: how long ``credd serve`` may take to write its address file and answer
READY_DEADLINE = 20.0
#: how long a stopping daemon may take before it is killed (and the test fails)
STOP_DEADLINE = 10.0
POLL = 0.02
#: the Node.js SDK's half of the consumer tests (``cd tests/node && npm install``)
NODE_DIR = Path(__file__).resolve().parent.parent / "node"
#: boto3's default chain in a process of its own: who am I, with which credentials
WHOAMI = (
    "import json, boto3\n"
    "session = boto3.Session()\n"
    "creds = session.get_credentials()\n"
    "identity = session.client('sts').get_caller_identity()\n"
    "print(json.dumps({'method': creds.method, 'key': creds.access_key,\n"
    "                  'arn': identity['Arn'], 'account': identity['Account']}))\n"
)


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit {self.returncode}\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


async def run(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    deadline: float = COMMAND_DEADLINE,
    cwd: Path | None = None,
) -> Result:
    """Run ``argv`` to completion (killed if it outlives ``deadline``)."""
    with anyio.fail_after(deadline):
        done = await anyio.run_process(list(argv), env=dict(env), check=False, cwd=cwd)
    return Result(
        tuple(argv),
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


async def credd(env: Mapping[str, str], *args: str, deadline: float = COMMAND_DEADLINE) -> Result:
    """``credd ARGS...`` in a process of its own."""
    return await run([*CREDD, *args], env, deadline=deadline)


async def login(env: Mapping[str, str], name: str = "my-sso", *args: str) -> Result:
    """``credd login NAME``: ``$BROWSER`` (the headless browser shim) approves."""
    result = await credd(env, *args, "login", name)
    assert result.returncode == 0, str(result)
    return result


async def status_json(env: Mapping[str, str]) -> dict[str, Any]:
    """``credd status --json``, parsed."""
    result = await credd(env, "status", "--json")
    assert result.returncode == 0, str(result)
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def free_port() -> int:
    """A loopback port free now, for a config that names a fixed ``listen`` port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def runtime_dir(env: Mapping[str, str]) -> Path:
    return Path(env["XDG_RUNTIME_DIR"]) / "credd"


def token_file(env: Mapping[str, str]) -> Path:
    return runtime_dir(env) / "token"


def address_file(env: Mapping[str, str]) -> Path:
    return runtime_dir(env) / "address"


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Answer:
    status: int
    text: str

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.text)
        return body


async def http_get(url: str, *, headers: Mapping[str, str] | None = None) -> Answer:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers=dict(headers or {}), allow_redirects=False) as answer,
    ):
        return Answer(answer.status, await answer.text())


# --------------------------------------------------------------------------- the daemon


@dataclass
class Daemon:
    """A running ``credd serve`` process and where its output goes."""

    process: Process
    host: str
    port: int
    token: str
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def output(self) -> str:
        """Everything the daemon wrote so far, stdout then stderr."""
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    async def get(
        self, path: str, *, token: str | None = None, headers: Mapping[str, str] | None = None
    ) -> Answer:
        sent = {"Authorization": self.token if token is None else token, **(headers or {})}
        return await http_get(self.url + path, headers=sent)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit status (killed, and failing, if it hangs)."""
        if self.process.returncode is None:
            self.process.send_signal(sig)
        with anyio.move_on_after(STOP_DEADLINE):
            return await self.process.wait()
        self.process.kill()
        await self.process.wait()
        raise AssertionError(f"credd serve ignored {sig.name} for {STOP_DEADLINE} s")


async def _ready(
    process: Process, env: Mapping[str, str], listen: str | None = None
) -> tuple[str, int, str] | None:
    """(host, port, token) once *this* process answers on the address in the file
    (or on ``listen``, a fixed port's, for which no file is written).

    The pid check matters after a ``kill -9``: the old daemon's address file is
    still there, naming a port nobody listens on (or somebody else does).
    """
    try:
        address = listen or address_file(env).read_text(encoding="ascii").strip()
        host, _, port = address.rpartition(":")
        token = token_file(env).read_text(encoding="ascii")
    except OSError:
        return None
    try:
        answer = await http_get(f"http://{host}:{port}/v1/status", headers={"Authorization": token})
    except aiohttp.ClientError:
        return None
    if answer.status != 200 or answer.json()["daemon"].get("pid") != process.pid:
        return None
    return host, int(port), token


def log_paths(logs: Path, name: str) -> tuple[Path, Path]:
    """Where a process's stdout and stderr go (files: no pipe can fill up and stall it)."""
    logs.mkdir(parents=True, exist_ok=True)
    return logs / f"{name}.stdout", logs / f"{name}.stderr"


@asynccontextmanager
async def serving(
    env: Mapping[str, str], logs: Path, *args: str, name: str = "serve", listen: str | None = None
) -> AsyncIterator[Daemon]:
    """``credd ARGS... serve`` until the block ends; SIGTERM (then SIGKILL) in any case.

    ``listen``: the fixed ``HOST:PORT`` the config names (the default is port 0).
    """
    stdout_path, stderr_path = log_paths(logs, name)
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = await anyio.open_process(
            [*CREDD, *args, "serve"], env=dict(env), stdout=out, stderr=err
        )
    try:
        ready = None
        with anyio.move_on_after(READY_DEADLINE):
            while ready is None and process.returncode is None:
                ready = await _ready(process, env, listen)
                if ready is None:
                    await anyio.sleep(POLL)
        if ready is None:
            raise AssertionError(
                f"credd serve was not ready within {READY_DEADLINE} s "
                f"(exit status {process.returncode}):\n{stderr_path.read_text()}"
            )
        host, port, token = ready
        yield Daemon(process, host, port, token, stdout_path, stderr_path)
    finally:
        await stop_process(process)


async def stop_process(process: Process) -> None:
    """SIGTERM, then SIGKILL past the deadline; shielded, so a failing test still cleans up."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.terminate()
            with anyio.move_on_after(STOP_DEADLINE):
                await process.wait()
        if process.returncode is None:
            process.kill()
        await process.aclose()


# --------------------------------------------------------------------------- proofs


def issued_secrets(emu: Emulator) -> dict[str, list[str]]:
    """Every secret the emulator has handed out, by kind."""
    state = emu.state
    creds = [c for c in state.credentials.values() if isinstance(c, TemporaryCredentials)]
    return {
        "access token": list(state.access_tokens),
        "refresh token": [
            *state.refresh_tokens,
            *(s.refresh_token.reveal() for s in state.sessions.values() if s.refresh_token),
        ],
        "client secret": [r.client_secret.reveal() for r in state.registrations.values()],
        "authorization code": list(state.auth_codes),
        "secret access key": [c.secret_access_key.reveal() for c in creds],
        "session token": [c.session_token.reveal() for c in creds],
    }


def caller_identity(sts_url: str, keys: Mapping[str, str]) -> dict[str, Any]:
    """STS GetCallerIdentity signed with explicit keys (blocking: run it in a thread)."""
    sts = boto3.client(
        "sts",
        region_name="us-east-1",
        endpoint_url=sts_url,
        aws_access_key_id=keys["AccessKeyId"],
        aws_secret_access_key=keys["SecretAccessKey"],
        aws_session_token=keys.get("SessionToken") or keys["Token"],
    )
    identity: dict[str, Any] = sts.get_caller_identity()
    return identity


def command_line(pid: int) -> bytes:
    """What ``ps`` shows of a process: its argv, NUL-separated."""
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def is_owner_only(path: Path) -> bool:
    return path.stat().st_mode & 0o077 == 0 and path.stat().st_uid == os.getuid()
