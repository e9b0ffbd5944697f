"""What credd's benchmarks share: a throwaway HOME with the emulator and a logged-in daemon.

Every benchmark runs the real thing in subprocesses, in a temporary ``HOME``
(the real ``~/.aws`` is never read or written)::

    with harness.workspace(keep=args.keep) as ws:
        home = harness.Home(ws, aws_config=..., credd_config=...)
        home.prepare()                       # writes the files, starts the emulator
        credd = home.start_credd()           # ``credd serve``, ready when it answers
        home.login()                         # ``credd login my-sso``, headless browser
        body = home.get_credentials(credd)   # one GET /v1/credentials/dev

:func:`workspace` owns the temporary directory and every child process: each
child leads a session of its own (a Ctrl-C reaches only the benchmark, which
then stops them), SIGTERM unwinds like Ctrl-C, and when the block ends,
whatever the reason, every child gets SIGTERM, then SIGKILL past a deadline,
and the directory is removed unless ``keep`` is set.

:func:`child_env` builds a child's environment: this process's, minus anything
that could point it at real AWS state or real credentials (``AWS_*``,
``CREDD_*``, ``XDG_*``), with ``HOME`` and the XDG directories in the
throwaway HOME. Run a benchmark's main through :func:`guarded` to turn a
:class:`BenchError` into a message and exit status 1 and Ctrl-C into 130.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

PROFILE = "dev"
SESSION = "my-sso"
START_URL = "https://d-1234567890.awsapps.com/start"
#: the account and roles the emulator's default directory gives alice (the test user)
ACCOUNT = "111111111111"
ROLE = "ReadOnly"
REGION = "eu-west-1"
#: how long a child may take to print its ready line or answer
STARTUP_SECONDS = 30.0
#: how long ``credd login`` may take
LOGIN_SECONDS = 60.0
#: how long a child may take to exit after SIGTERM (then SIGKILL)
STOP_SECONDS = 5.0
POLL_SECONDS = 0.01

#: ``credd ...`` as a command line (the interpreter running the benchmark, not PATH's)
CREDD = (sys.executable, "-c", "from credd.cli import main; main()")

#: as ``aws configure sso`` writes it (tests/support/configs.py AWS_CONFIG, without the chain)
AWS_CONFIG = f"""\
[sso-session {SESSION}]
sso_start_url = {START_URL}
sso_region = us-east-1
sso_registration_scopes = sso:account:access

[profile {PROFILE}]
sso_session = {SESSION}
sso_account_id = {ACCOUNT}
sso_role_name = {ROLE}
region = {REGION}
"""

CREDD_CONFIG = """\
[server]
listen = "127.0.0.1:0"
"""

#: variables that could point a child at real AWS state or real credentials
_CLEARED_PREFIXES = ("AWS_", "CREDD_", "XDG_")


class BenchError(Exception):
    """The benchmark could not be set up or run; the message says what failed."""


def progress(message: str) -> None:
    """A progress line on stderr (the report itself goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


def sso_session_section(name: str) -> str:
    """An ``[sso-session]`` as ``aws configure sso`` writes it, on the emulator's start URL."""
    return (
        f"[sso-session {name}]\nsso_start_url = {START_URL}\nsso_region = us-east-1\n"
        "sso_registration_scopes = sso:account:access\n\n"
    )


def role_profile_section(
    name: str, session: str, *, account: str = ACCOUNT, role: str = ROLE
) -> str:
    """An Identity Center role profile of ``session``."""
    return (
        f"[profile {name}]\nsso_session = {session}\nsso_account_id = {account}\n"
        f"sso_role_name = {role}\nregion = {REGION}\n\n"
    )


# --------------------------------------------------------------------------- processes


class Processes:
    """Every child a run started, stopped in reverse order whatever happens.

    Children get a session of their own, so a Ctrl-C reaches only this process,
    which then stops them (SIGTERM, then SIGKILL after a deadline) itself.
    ``server_cpus``, if given, is the CPU set :meth:`start_server` pins to.
    """

    def __init__(self, logs: Path, server_cpus: set[int] | None = None) -> None:
        self.logs = logs
        self._server_cpus = server_cpus
        self._running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        cpus: set[int] | None = None,
        capture: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv``; its stdout goes to ``logs/NAME.out`` (or a pipe), stderr to .err."""
        out: IO[bytes] | int = (
            subprocess.PIPE if capture else (self.logs / f"{name}.out").open("wb")
        )
        err = (self.logs / f"{name}.err").open("wb")
        pinned = cpus

        def pin() -> None:  # runs in the child between fork and exec
            if pinned:
                os.sched_setaffinity(0, pinned)

        try:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                # preexec_fn is unsafe only with threads; the benchmarks start none
                preexec_fn=pin if pinned else None,
            )
        finally:
            if not isinstance(out, int):
                out.close()
            err.close()
        self._running.append((name, proc))
        return proc

    def start_server(
        self, name: str, argv: Sequence[str], env: Mapping[str, str]
    ) -> subprocess.Popen[bytes]:
        """:meth:`start`, pinned to the server CPUs if there are any."""
        return self.start(name, argv, env, cpus=self._server_cpus)

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last lines of ``name``'s stdout and stderr, for an error message."""
        texts = []
        for suffix in ("out", "err"):
            path = self.logs / f"{name}.{suffix}"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                if tail:
                    texts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(texts) or "(no output)"

    def wait_for_line(self, name: str, proc: subprocess.Popen[bytes], prefix: str) -> str:
        """The rest of the first stdout line of ``name`` starting with ``prefix``."""
        path = self.logs / f"{name}.out"
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if path.exists():
                for line in path.read_text(errors="replace").splitlines():
                    if line.startswith(prefix):
                        return line[len(prefix) :].strip()
            if proc.poll() is not None:
                raise BenchError(
                    f"{name} exited with status {proc.returncode} before printing {prefix}\n"
                    + self.log_tail(name)
                )
            time.sleep(POLL_SECONDS)
        raise BenchError(f"{name} printed no {prefix} in {STARTUP_SECONDS:.0f} s")

    def run(self, name: str, argv: Sequence[str], env: Mapping[str, str], *, timeout: float) -> str:
        """Run ``argv`` to completion; its stdout (an error if it fails or outlives timeout)."""
        proc = self.start(name, argv, env)
        try:
            status = proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"{name} did not finish in {timeout:g} s") from exc
        finally:
            self.stop(proc)
        if status != 0:
            raise BenchError(f"{name} failed ({status})\n{self.log_tail(name)}")
        return (self.logs / f"{name}.out").read_text(errors="replace")

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """Forget ``proc`` and stop it (a no-op if it has exited)."""
        for entry in list(self._running):
            if entry[1] is proc:
                self._running.remove(entry)
        terminate(proc)

    def stop_all(self) -> None:
        while self._running:
            _name, proc = self._running.pop()
            terminate(proc)


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group (it leads its own session), then SIGKILL."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            continue
        return


def child_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child living in ``home``, plus ``extra``.

    Nothing that could point the child at real AWS state or real credentials
    survives; botocore is kept off the instance metadata service.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED_PREFIXES)}
    env.update(
        HOME=str(home),
        XDG_RUNTIME_DIR=str(home / "run"),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        # botocore must never find real credentials or a real region on this machine
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C does, so cleanup runs for both."""

    def interrupt(_sig: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous: Callable[[int, FrameType | None], Any] | int | None = signal.signal(
        signal.SIGTERM, interrupt
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclasses.dataclass
class Workspace:
    """A temporary directory (``root``, with ``logs/``) and the children started in it."""

    root: Path
    procs: Processes
    #: keep the directory when the block ends (may be set inside the block)
    keep: bool = False


@contextlib.contextmanager
def workspace(
    *, keep: bool = False, server_cpus: set[int] | None = None, prefix: str = "credd-bench-"
) -> Iterator[Workspace]:
    """A :class:`Workspace`; every child is stopped, and the directory removed, at the end."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    logs = root / "logs"
    logs.mkdir()
    ws = Workspace(root, Processes(logs, server_cpus), keep)
    try:
        with sigterm_as_interrupt():
            yield ws
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip this
        try:
            ws.procs.stop_all()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if not ws.keep:
                shutil.rmtree(root, ignore_errors=True)


def guarded(body: Callable[[], int]) -> int:
    """``body()``; a :class:`BenchError` is printed (status 1), Ctrl-C or SIGTERM give 130."""
    try:
        return body()
    except KeyboardInterrupt:
        progress("interrupted; every child process was stopped")
        return 130
    except BenchError as exc:
        progress(f"benchmark failed: {exc}")
        return 1


def http_get(url: str, token: str, *, timeout: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of a GET with ``Authorization: token`` (no proxy, loopback only)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Authorization": token})  # noqa: S310  # http://127.0.0.1 only
    try:
        with opener.open(request, timeout=timeout) as answer:
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --------------------------------------------------------------------------- CPU use


@dataclasses.dataclass(frozen=True)
class CpuUse:
    """What the machine did between two :class:`CpuSnapshot` readings."""

    seconds: float
    #: CPU seconds of the watched processes (all their threads)
    watched: float
    #: CPUs kept busy on average by processes outside this benchmark
    other_cpus: float
    #: CPUs taken on average by the hypervisor (steal time)
    steal_cpus: float


@dataclasses.dataclass(frozen=True)
class CpuSnapshot:
    """CPU time so far: the machine's, watched processes', ours and our reaped children's.

    What the machine spent beyond the watched processes (the servers), this
    process and its children reaped by the second snapshot (the load, the
    clients) was spent by someone else: a run with much of that is a noisy
    run. Interrupt time is left out on both sides (loopback traffic is partly
    accounted there).
    """

    wall: float
    busy: float
    steal: float
    watched: float
    ours: float

    @staticmethod
    def take(pids: Sequence[int] = ()) -> CpuSnapshot:
        tick = os.sysconf("SC_CLK_TCK")
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system = (int(v) for v in fields[:3])
        steal = int(fields[7]) if len(fields) > 7 else 0
        watched = 0
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat").read_text()
            utime, stime = (int(v) for v in stat.rpartition(")")[2].split()[11:13])
            watched += utime + stime
        me = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return CpuSnapshot(
            wall=time.monotonic(),
            busy=(user + nice + system) / tick,
            steal=steal / tick,
            watched=watched / tick,
            ours=me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime,
        )

    def since(self, before: CpuSnapshot) -> CpuUse:
        wall = self.wall - before.wall
        watched = self.watched - before.watched
        others = (self.busy - before.busy) - watched - (self.ours - before.ours)
        return CpuUse(
            seconds=wall,
            watched=watched,
            other_cpus=max(0.0, others / wall) if wall > 0 else 0.0,
            steal_cpus=(self.steal - before.steal) / wall if wall > 0 else 0.0,
        )


# --------------------------------------------------------------------------- the HOME


@dataclasses.dataclass(frozen=True)
class Credd:
    """A ``credd serve`` that answers: its base URL, its token, its process."""

    name: str
    url: str
    token: str
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def credentials_url(self, profile: str = PROFILE) -> str:
        return f"{self.url}/v1/credentials/{profile}"


class Home:
    """The throwaway HOME inside a :class:`Workspace`, and the emulator and daemons in it.

    ``aws_config`` becomes ``~/.aws/config`` and ``credd_config`` credd's TOML
    (``$XDG_CONFIG_HOME/credd/config.toml``); ``emulator_args`` go to
    ``python -m credd.testing.emulator``. After :meth:`prepare`, :attr:`env`
    is the environment for any child: the HOME, ``AWS_ENDPOINT_URL`` at the
    emulator and ``BROWSER`` at the headless test browser.
    """

    def __init__(
        self,
        ws: Workspace,
        *,
        aws_config: str = AWS_CONFIG,
        credd_config: str = CREDD_CONFIG,
        emulator_args: Sequence[str] = (),
    ) -> None:
        self.ws = ws
        self.procs = ws.procs
        self.path = ws.root / "home"
        self.runtime = self.path / "run"
        self.aws_config_file = self.path / ".aws" / "config"
        self.credd_config_file = self.path / ".config" / "credd" / "config.toml"
        self.address_file = self.runtime / "credd" / "address"
        self.token_file = self.runtime / "credd" / "token"
        self._aws_config = aws_config
        self._credd_config = credd_config
        self._emulator_args = tuple(emulator_args)
        self.emulator_url = ""
        self.emulator: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}
        self._starts = 0

    def prepare(self) -> None:
        """Write the HOME's files, install the test browser, start the emulator."""
        from credd.testing.browser import install_shim  # credd must be importable here

        self.path.mkdir()
        self.runtime.mkdir(mode=0o700)
        self.aws_config_file.parent.mkdir()
        self.aws_config_file.write_text(self._aws_config)
        self.credd_config_file.parent.mkdir(parents=True)
        self.credd_config_file.write_text(self._credd_config)
        browser = install_shim(self.ws.root / "browser")
        self.emulator = self.procs.start_server(
            "emulator",
            [sys.executable, "-m", "credd.testing.emulator", "--port", "0", *self._emulator_args],
            child_env(self.path),
        )
        self.emulator_url = self.procs.wait_for_line("emulator", self.emulator, "EMULATOR_URL=")
        self.env = child_env(
            self.path, {"AWS_ENDPOINT_URL": self.emulator_url, "BROWSER": str(browser)}
        )

    def start_credd(self, argv: Sequence[str] | None = None, *, name: str | None = None) -> Credd:
        """Start ``credd serve`` (or ``argv``) and wait until *it* answers ``/v1/status``.

        ``argv`` replaces the default ``credd serve`` command line (e.g. a
        launcher that sets the event loop first). A stale address file is
        removed first; readiness is this process's pid in ``/v1/status``.
        """
        self._starts += 1
        name = name or f"credd-{self._starts}"
        with contextlib.suppress(FileNotFoundError):
            self.address_file.unlink()  # a stale one would point at a dead port
        proc = self.procs.start_server(name, argv or [*CREDD, "serve"], self.env)
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            ready = self._answering(proc)
            if ready is not None:
                url, token = ready
                return Credd(name, url, token, proc)
            if proc.poll() is not None or time.monotonic() > deadline:
                self.procs.stop(proc)
                raise BenchError(f"credd serve did not start\n{self.procs.log_tail(name)}")
            time.sleep(POLL_SECONDS)

    def _answering(self, proc: subprocess.Popen[bytes]) -> tuple[str, str] | None:
        try:
            url = "http://" + self.address_file.read_text(encoding="ascii").strip()
            token = self.token_file.read_text(encoding="ascii")
            status, body = http_get(f"{url}/v1/status", token, timeout=2.0)
        except (OSError, ValueError):
            return None
        if status != 200:
            return None
        try:
            pid = json.loads(body)["daemon"]["pid"]
        except (ValueError, KeyError, TypeError):
            return None
        return (url, token) if pid == proc.pid else None

    def credd_command(self, *args: str, name: str | None = None, timeout: float = 30.0) -> str:
        """``credd ARGS...`` in this HOME, to completion; its stdout."""
        return self.procs.run(name or args[0], [*CREDD, *args], self.env, timeout=timeout)

    def login(self, session: str = SESSION) -> None:
        """``credd login SESSION``; the headless test browser approves."""
        self.credd_command("login", session, name=f"login-{session}", timeout=LOGIN_SECONDS)

    def get_credentials(self, credd: Credd, profile: str = PROFILE) -> bytes:
        """One GET of ``profile``'s credentials (an error unless it answers them)."""
        status, body = http_get(credd.credentials_url(profile), credd.token)
        if status != 200 or b"AccessKeyId" not in body:
            raise BenchError(f"GET {profile} answered {status}\n{self.procs.log_tail(credd.name)}")
        return body
