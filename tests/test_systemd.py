"""``credd serve`` as systemd runs it: sd_notify, the watchdog, SIGHUP, SIGTERM,
socket activation, the desktop and the journal, each checked from outside.

credd runs as a subprocess against the emulator (tests/support/process.py).
``$NOTIFY_SOCKET`` is a real AF_UNIX datagram socket bound by the test and read
by a thread of its own: the kernel queues only ``net.unix.max_dgram_qlen``
(often 10) datagrams, and credd's blocking ``sendto`` would stall its event
loop if nobody read them. Every wait is for a state, under a bounded deadline;
nothing sleeps through a lifetime. There is no user manager here, so
``systemctl --user`` itself is never run against one; the units themselves are
checked by ``systemd-analyze verify`` in tests/test_systemd_units.py.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Collection, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process, SocketAttribute

from tests.support.configs import ACCOUNT, AWS_CONFIG, LISTEN_ANY_PORT
from tests.support.home import Home
from tests.support.process import (
    CREDD,
    READY_DEADLINE,
    STOP_DEADLINE,
    Answer,
    Daemon,
    address_file,
    credd,
    http_get,
    log_paths,
    serving,
    stop_process,
    token_file,
)
from tests.support.systemd import directives, installed_credd, systemd_tool
from tests.support.waiting import eventually
from tests.support.world import World

#: what systemd would pass for WatchdogSec=0.2: credd pings every 0.1 s
WATCHDOG_USEC = "200000"
#: how long the emulator holds a call that requests wait on: long enough to see them in
#: flight (that takes ~0.03 s on a loaded 2-core machine), short enough that the waiting
#: requests stay under credd's 0.9 s request deadline (client set-up takes up to ~0.25 s)
UPSTREAM_LATENCY = 0.4

#: a profile of the same session, not in the standard config: added by a reload
OPS_PROFILE = f"""
[profile ops]
sso_session = my-sso
sso_account_id = {ACCOUNT}
sso_role_name = Admin
"""
#: a second sign-in and a profile served through it (never logged in)
CORP_SESSION = f"""
[sso-session corp]
sso_start_url = https://d-2222222222.awsapps.com/start
sso_region = us-east-1

[profile corp-dev]
sso_session = corp
sso_account_id = {ACCOUNT}
sso_role_name = ReadOnly
"""
ADMIN_PROFILE = AWS_CONFIG[AWS_CONFIG.index("[profile admin]") :]
WITHOUT_ADMIN = AWS_CONFIG.replace(ADMIN_PROFILE, "")


# ------------------------------------------------------------------------------ $NOTIFY_SOCKET


class Notifications:
    """Every datagram sent to a real ``$NOTIFY_SOCKET``, in order, as ``{KEY: VALUE}``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[dict[str, str]] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.05)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="notify-socket", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stopped.is_set():
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            message = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            self.messages.append(message)  # list.append is atomic under the GIL

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self._socket.close()

    def find(self, key: str, *, start: int = 0) -> int | None:
        """The index of the first message from ``start`` on with ``KEY=1``."""
        messages = list(self.messages)
        return next((i for i in range(start, len(messages)) if messages[i].get(key) == "1"), None)

    def count(self, key: str, *, start: int = 0) -> int:
        return sum(1 for message in list(self.messages)[start:] if message.get(key) == "1")

    async def wait_for(self, key: str, *, start: int = 0, count: int = 1) -> int:
        """Wait for ``count`` messages with ``KEY=1`` from ``start`` on; the last one's index."""
        await eventually(
            lambda: self.count(key, start=start) >= count,
            within=READY_DEADLINE,
            what=f"{count} x {key}=1 on $NOTIFY_SOCKET after message {start} (got {self.kinds()})",
        )
        index = start - 1
        for _ in range(count):
            found = self.find(key, start=index + 1)
            assert found is not None
            index = found
        return index

    def kinds(self) -> list[str]:
        """A compact view for failure messages: the first KEY of each message."""
        return [next(iter(message), "?") for message in list(self.messages)]


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    # pytest's tmp_path is too long for an AF_UNIX path (108 bytes) with long test names
    with tempfile.TemporaryDirectory(prefix="credd-") as directory:
        notes = Notifications(Path(directory) / "notify")
        try:
            yield notes
        finally:
            notes.close()


# ------------------------------------------------------------------ systemd's environment


def notified_env(world: World, notes: Notifications) -> dict[str, str]:
    """What systemd gives a notify service with WatchdogSec= (no WATCHDOG_PID: a direct child)."""
    env = {**world.env, "NOTIFY_SOCKET": str(notes.path), "WATCHDOG_USEC": WATCHDOG_USEC}
    env.pop("WATCHDOG_PID", None)
    return env


@asynccontextmanager
async def notified_serving(
    world: World, notes: Notifications, *args: str, name: str = "serve"
) -> AsyncIterator[Daemon]:
    """``credd serve`` under ``$NOTIFY_SOCKET``, ready when it says ``READY=1`` (not before).

    Unlike :func:`tests.support.process.serving`, which polls the endpoint, this
    waits for the notification alone and then checks, at once, that the
    endpoint answers: READY=1 must never come before the endpoint is up.
    """
    env = notified_env(world, notes)
    stdout_path, stderr_path = log_paths(world.logs, name)
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = await anyio.open_process(
            [*CREDD, *args, "serve"], env=env, stdout=out, stderr=err
        )
    try:
        await eventually(
            lambda: notes.find("READY") is not None or process.returncode is not None,
            within=READY_DEADLINE,
            what="READY=1",
        )
        assert notes.find("READY") is not None, (
            f"credd serve exited with {process.returncode} before READY=1:\n"
            f"{stderr_path.read_text()}"
        )
        # READY=1 is there: the endpoint must answer now, without any retry
        host, _, port = address_file(env).read_text().rpartition(":")
        healthz = await http_get(f"http://{host}:{port}/healthz")
        assert healthz.status == 200, healthz.text
        token = token_file(env).read_text()
        status = await http_get(f"http://{host}:{port}/v1/status", headers={"Authorization": token})
        assert status.json()["daemon"]["pid"] == process.pid
        yield Daemon(process, host, int(port), token, stdout_path, stderr_path)
    finally:
        await _ended(process)


async def _ended(process: Process) -> None:
    await stop_process(process)


async def keys(daemon: Daemon, profile: str) -> dict[str, Any]:
    answer = await daemon.get(f"/v1/credentials/{profile}")
    assert answer.status == 200, answer.text
    return answer.json()


async def status_of(daemon: Daemon) -> dict[str, Any]:
    answer = await daemon.get("/v1/status")
    assert answer.status == 200, answer.text
    return answer.json()


def by_name(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {record["name"]: record for record in records}


def events(daemon: Daemon) -> list[dict[str, Any]]:
    """The daemon's JSON log lines so far (stderr is a file: JSON, not the console renderer)."""
    lines = daemon.stderr_path.read_text().splitlines()
    return [json.loads(line[line.index("{") :]) for line in lines if "{" in line]


async def reload(daemon: Daemon, notes: Notifications) -> tuple[int, int]:
    """SIGHUP, then wait for RELOADING=1 and the READY=1 after it; their indexes."""
    start = len(notes.messages)
    before = time.monotonic_ns() // 1000
    daemon.process.send_signal(signal.SIGHUP)
    reloading = await notes.wait_for("RELOADING", start=start)
    ready = await notes.wait_for("READY", start=reloading + 1)
    after = time.monotonic_ns() // 1000
    # sd_notify(3): RELOADING=1 carries CLOCK_MONOTONIC in µs, the clock systemd compares with
    assert before <= int(notes.messages[reloading]["MONOTONIC_USEC"]) <= after
    return reloading, ready


# ------------------------------------------------------------------------------ the protocol


async def test_ready_watchdog_reload_and_stopping_on_the_notify_socket(
    world: World, notifications: Notifications
) -> None:
    notes = notifications
    async with notified_serving(world, notes) as daemon:
        ready = notes.find("READY")
        assert ready is not None
        first = notes.messages[ready]
        assert first["STATUS"] == "0/1 sessions live; login needed: my-sso", first
        before_ready = notes.messages[:ready]
        assert not any("RELOADING" in m or "STOPPING" in m for m in before_ready), notes.kinds()

        # WATCHDOG_USEC=200000: a ping every 0.1 s from the event loop; count them, not time them
        await notes.wait_for("WATCHDOG", start=ready, count=3)

        reloading, ready_again = await reload(daemon, notes)
        assert reloading > ready
        assert notes.messages[reloading]["STATUS"] == "reloading"
        assert notes.messages[ready_again]["STATUS"] == first["STATUS"]
        watchdogs = notes.count("WATCHDOG")
        await notes.wait_for("WATCHDOG", start=ready_again, count=2)  # still pinging
        assert notes.count("WATCHDOG") >= watchdogs + 2

        stop_from = len(notes.messages)
        assert await daemon.stop(signal.SIGTERM) == 0
    stopping = await notes.wait_for("STOPPING", start=stop_from)  # sent before the exit
    assert notes.messages[stopping]["STATUS"] == "stopping"
    assert notes.find("READY", start=stopping) is None, notes.kinds()
    logged = [e["event"] for e in events(daemon)]
    assert logged[0] == "credd_ready"
    assert "reloaded" in logged
    assert logged[-1] == "credd_stopping"
    assert "Traceback" not in daemon.output()


# ------------------------------------------------------------------------------ SIGHUP


async def test_sighup_adds_a_profile_and_a_session_keeping_what_stays(
    world: World, notifications: Notifications
) -> None:
    emu, notes = world.emu, notifications
    await world.login()
    async with notified_serving(world, notes) as daemon:
        dev = await keys(daemon, "dev")
        before = dict(emu.calls)

        # a request in flight through the reload: admin's AssumeRole is held at the emulator
        emu.faults.add("AssumeRole", latency=UPSTREAM_LATENCY)
        answers: dict[str, Answer] = {}
        async with anyio.create_task_group() as tg:

            async def admin() -> None:
                answers["admin"] = await daemon.get("/v1/credentials/admin")

            tg.start_soon(admin)
            await eventually(lambda: emu.calls["AssumeRole"] == 1, what="admin's AssumeRole")
            world.write_aws_config(AWS_CONFIG + OPS_PROFILE + CORP_SESSION)
            await reload(daemon, notes)
        assert answers["admin"].status == 200, answers["admin"].text

        # the added profile is served at once, by the same process on the same socket
        ops = await keys(daemon, "ops")
        assert ops["AccessKeyId"] != dev["AccessKeyId"]
        assert ops["AccountId"] == ACCOUNT
        # what stayed kept its state: the same credentials, no new fetch, no new token
        assert (await keys(daemon, "dev"))["AccessKeyId"] == dev["AccessKeyId"]
        assert emu.calls["GetRoleCredentials"] == before["GetRoleCredentials"] + 1  # ops only
        assert emu.calls["CreateToken"] == before["CreateToken"]
        assert emu.calls["RegisterClient"] == before["RegisterClient"]

        # the added session runs too, waiting for its login
        doc = await status_of(daemon)
        assert doc["daemon"]["pid"] == daemon.pid
        sessions = by_name(doc["sessions"])
        assert sessions["my-sso"]["state"] == "ok"
        assert sessions["corp"]["state"] == "login-required"
        assert set(by_name(doc["profiles"])) == {"dev", "admin", "ops", "corp-dev"}
        corp = await daemon.get("/v1/credentials/corp-dev")
        assert corp.status == 503, corp.text
        assert "credd login corp" in corp.json()["message"]
        reloaded = [e for e in events(daemon) if e["event"] == "reloaded"]
        assert [(e["profiles"], e["sessions"]) for e in reloaded] == [(4, 2)]
        assert await daemon.stop() == 0


async def test_sighup_removes_a_profile_and_a_session(
    world: World, notifications: Notifications
) -> None:
    emu, notes = world.emu, notifications
    world.write_aws_config(AWS_CONFIG + CORP_SESSION)
    await world.login()
    async with notified_serving(world, notes) as daemon:
        dev = await keys(daemon, "dev")
        await keys(daemon, "admin")
        assert set(by_name((await status_of(daemon))["sessions"])) == {"my-sso", "corp"}
        before = dict(emu.calls)

        world.write_aws_config(WITHOUT_ADMIN)
        await reload(daemon, notes)

        for gone in ("admin", "corp-dev"):
            answer = await daemon.get(f"/v1/credentials/{gone}")
            assert answer.status == 404, answer.text
            assert answer.json()["code"] == "NotFound"
        assert (await keys(daemon, "dev"))["AccessKeyId"] == dev["AccessKeyId"]
        doc = await status_of(daemon)
        assert [(s["name"], s["state"]) for s in doc["sessions"]] == [("my-sso", "ok")]
        assert [p["name"] for p in doc["profiles"]] == ["dev"]
        assert dict(emu.calls) == before  # nothing fetched, renewed or registered again
        assert await daemon.stop() == 0


@dataclass(frozen=True)
class Breakage:
    #: "aws" or "toml": which file gets broken
    file: str
    text: str
    line: int
    says: str


BREAKAGES = {
    "aws config": Breakage(
        "aws",
        AWS_CONFIG.replace("region = eu-west-1\n", "region = eu-west-1\nthis line is broken\n"),
        11,
        "[profile dev]",
    ),
    "credd toml": Breakage("toml", LISTEN_ANY_PORT + 'lisen = "127.0.0.1:0"\n', 3, "server.lisen"),
}


@pytest.mark.parametrize("broken", BREAKAGES.values(), ids=BREAKAGES.keys())
async def test_sighup_with_a_broken_config_keeps_the_running_one(
    world: World, notifications: Notifications, broken: Breakage
) -> None:
    emu, notes = world.emu, notifications
    await world.login()
    async with notified_serving(world, notes) as daemon:
        dev = await keys(daemon, "dev")
        admin = await keys(daemon, "admin")
        before = dict(emu.calls)
        path = world.home.aws_config if broken.file == "aws" else world.home.credd_config
        if broken.file == "aws":
            world.write_aws_config(broken.text)
        else:
            world.home.write_credd_config(broken.text)

        _, ready = await reload(daemon, notes)  # READY=1 follows all the same
        assert notes.messages[ready]["STATUS"].startswith("1/1 sessions live")

        assert (await keys(daemon, "dev"))["AccessKeyId"] == dev["AccessKeyId"]
        assert (await keys(daemon, "admin"))["AccessKeyId"] == admin["AccessKeyId"]
        assert dict(emu.calls) == before
        assert daemon.process.returncode is None

        # one clear line: error level, naming the file and the line, no traceback
        log = daemon.stderr_path.read_text()
        naming = [line for line in log.splitlines() if str(path) in line]
        assert len(naming) == 1, log
        [failed] = [e for e in events(daemon) if e["level"] == "error"]
        assert failed["event"] == "reload_failed"
        assert f"{path}:{broken.line}:" in failed["error"]
        assert broken.says in failed["error"]
        assert "Traceback" not in log
        assert "reloaded" not in [e["event"] for e in events(daemon)]

        # fixed, the next SIGHUP takes the new configuration
        world.home.write_credd_config(LISTEN_ANY_PORT)
        world.write_aws_config(AWS_CONFIG + OPS_PROFILE)
        await reload(daemon, notes)
        await keys(daemon, "ops")
        assert await daemon.stop() == 0


#: a source profile with static keys and a role chained on it
STATIC_SOURCE = """\
[profile base]
aws_access_key_id = {key}
aws_secret_access_key = {secret}

[profile deploy]
role_arn = arn:aws:iam::111111111111:role/Deploy
source_profile = base
"""


async def test_sighup_picks_up_new_static_keys_of_a_source_profile(world: World) -> None:
    """A role chained on static keys that stayed the same signs with the keys of the new config.

    The chained profile itself is unchanged, so the reload keeps its keeper (and its
    backoff); the keys must still be looked up in the configuration in force.
    """
    issued = world.emu.create_access_key()
    key, secret = issued.access_key_id, issued.secret_access_key.reveal()
    world.write_aws_config(STATIC_SOURCE.format(key=key, secret="a-typo-in-the-secret"))
    async with serving(world.env, world.logs) as daemon:
        refused = await daemon.get("/v1/credentials/deploy")
        assert refused.status == 503, refused.text  # SignatureDoesNotMatch, not retried at once

        world.write_aws_config(STATIC_SOURCE.format(key=key, secret=secret))
        daemon.process.send_signal(signal.SIGHUP)
        await eventually(
            lambda: any(e["event"] == "reloaded" for e in events(daemon)), what="the reload"
        )
        # the first retry after a failure comes within 1 s (schedule.backoff_seconds)
        answers: list[Answer] = []

        async def served() -> bool:
            answers.append(await daemon.get("/v1/credentials/deploy"))
            return answers[-1].status == 200

        with anyio.move_on_after(5):
            while not await served():  # noqa: ASYNC110  # polling another process is the point
                await anyio.sleep(0.1)
        assert answers[-1].status == 200, answers[-1].text
        assert await daemon.stop() == 0


# ------------------------------------------------------------------------------ SIGTERM


def unread_requests(port: int, clients: Collection[int]) -> set[int]:
    """Client ports whose request credd has not accepted and read yet (/proc/net/tcp).

    A server-side connection with an empty receive queue, once its client sent
    the whole request, is one whose request credd has read: it is being handled.
    """
    pending = set(clients)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        _, local, remote, state, queues, *_ = line.split()
        ours = state == "01" and int(local.rpartition(":")[2], 16) == port  # 01: ESTABLISHED
        if ours and int(queues.partition(":")[2], 16) == 0:
            pending.discard(int(remote.rpartition(":")[2], 16))
    return pending


async def raw_get(
    port: int, path: str, token: str, sent: list[int], *, task_status: anyio.abc.TaskStatus[None]
) -> Answer:
    """One request on a connection of its own, recording its client port once it is sent."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: {token}\r\nConnection: close\r\n\r\n"
        )
        await stream.send(request.encode())
        sent.append(stream.extra(SocketAttribute.local_port))  # noqa: S610  # anyio, not Django
        task_status.started()
        received = b""
        try:
            async for chunk in stream:
                received += chunk
        except anyio.BrokenResourceError:
            pass  # reset: the answer so far (none) tells
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return Answer(status, body.decode("utf-8", "replace"))


async def test_sigterm_with_requests_in_flight_loses_none(world: World) -> None:
    emu = world.emu
    world.write_aws_config(AWS_CONFIG + OPS_PROFILE)
    await world.login()
    async with serving(world.env, world.logs) as daemon:
        # ops is cold: every request waits for its one GetRoleCredentials, held at the emulator
        emu.faults.add("GetRoleCredentials", latency=UPSTREAM_LATENCY)
        sent: list[int] = []
        answers: list[Answer] = []

        async def one(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            answer = await raw_get(
                daemon.port, "/v1/credentials/ops", daemon.token, sent, task_status=task_status
            )
            answers.append(answer)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    await tg.start(one)
                await eventually(
                    lambda: (
                        emu.calls["GetRoleCredentials"] == 1
                        and not unread_requests(daemon.port, sent)
                    ),
                    what="20 requests read by credd and its GetRoleCredentials at the emulator",
                )
                assert answers == []  # all 20 in flight
                daemon.process.send_signal(signal.SIGTERM)
            with anyio.fail_after(STOP_DEADLINE):
                code = await daemon.process.wait()

    assert [a.status for a in answers] == [200] * 20, [a.text for a in answers if a.status != 200]
    assert len({json.loads(a.text)["AccessKeyId"] for a in answers}) == 1
    assert emu.calls["GetRoleCredentials"] == 1
    assert code == 0
    assert "Traceback" not in daemon.output()


# ------------------------------------------------------------------------------ socket activation


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_socket_activation_serves_on_the_passed_socket(world: World) -> None:
    socket_activate = systemd_tool("systemd-socket-activate")
    port = free_port()
    world.home.write_credd_config(f'[server]\nlisten = "127.0.0.1:{port}"\n')
    passed = ("HOME", "XDG_RUNTIME_DIR", "PATH", "AWS_ENDPOINT_URL", "AWS_EC2_METADATA_DISABLED")
    argv = [socket_activate, "-l", f"127.0.0.1:{port}"]
    for name in passed:
        argv += ["-E", f"{name}={world.env[name]}"]
    argv += [*CREDD, "serve"]
    stdout_path, stderr_path = log_paths(world.logs, "activated")
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = await anyio.open_process(argv, env=world.env, stdout=out, stderr=err)
    try:
        await eventually(
            lambda: "Listening on" in stderr_path.read_text() or process.returncode is not None,
            what="systemd-socket-activate listening",
        )
        assert not token_file(world.env).exists()  # credd has not started: nobody asked yet

        # the first connection starts credd, which answers on the socket it was passed
        with anyio.fail_after(READY_DEADLINE):
            healthz = await http_get(f"http://127.0.0.1:{port}/healthz")
        assert healthz.status == 200, stderr_path.read_text()
        token = token_file(world.env).read_text()
        status = await http_get(
            f"http://127.0.0.1:{port}/v1/status", headers={"Authorization": token}
        )
        daemon = status.json()["daemon"]
        assert daemon["pid"] == process.pid  # systemd-socket-activate execs credd in its place
        assert daemon["listen"] == f"127.0.0.1:{port}"
        assert not address_file(world.env).exists()  # a fixed port: no address file

        process.send_signal(signal.SIGTERM)
        with anyio.fail_after(STOP_DEADLINE):
            assert await process.wait() == 0
    finally:
        await _ended(process)
    log = stderr_path.read_text()
    [ready] = [json.loads(line) for line in log.splitlines() if '"credd_ready"' in line]
    assert ready["socket_activated"] is True
    assert ready["listen"] == f"http://127.0.0.1:{port}"
    # credd never bound the port itself (that would have failed: the socket is taken)
    assert "cannot listen" not in log


# ------------------------------------------------------------------------------ the desktop


NOTIFY_SEND = """\
#!/bin/sh
# notify-send as a desktop has it: records its environment, then (last) its argv, NUL-separated
env > {env}.tmp && mv {env}.tmp {env}
printf '%s\\0' "$@" > {argv}.tmp && mv {argv}.tmp {argv}
"""
RECORDING_BROWSER = """\
#!/bin/sh
printf '%s\\n' "$*" >> {opened}
"""


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


async def test_login_needed_sends_a_desktop_notification_never_a_browser(
    world: World, tmp_path: Path
) -> None:
    argv, env_seen, opened = tmp_path / "notify-argv", tmp_path / "notify-env", tmp_path / "opened"
    bin_dir = tmp_path / "desktop-bin"
    quoted = {"argv": shlex.quote(str(argv)), "env": shlex.quote(str(env_seen))}
    executable(bin_dir / "notify-send", NOTIFY_SEND.format(**quoted))
    browser = executable(
        tmp_path / "recording-browser", RECORDING_BROWSER.format(opened=shlex.quote(str(opened)))
    )
    env = {
        **world.env,
        "PATH": f"{bin_dir}{os.pathsep}{world.env['PATH']}",
        "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent",
        "BROWSER": str(browser),
        "NOTIFY_SOCKET": str(tmp_path / "no-systemd-here"),  # must not reach notify-send
    }
    await world.login()
    async with serving(env, world.logs) as daemon:
        world.emu.revoke_sessions()  # an administrator ends the sign-in
        answer = await daemon.get("/v1/credentials/dev")
        assert answer.status == 503, answer.text
        assert answer.json()["code"] == "LoginRequired"

        await eventually(argv.exists, what="notify-send")
        summary, body = argv.read_text().split("\0")[-3:-1]
        assert summary == "credd: my-sso needs a login"
        assert body.endswith("\nRun: credd login my-sso")
        assert argv.read_text().split("\0")[:2] == ["--app-name=credd", "--icon=dialog-password"]
        child_env = dict(line.split("=", 1) for line in env_seen.read_text().splitlines())
        assert child_env["DBUS_SESSION_BUS_ADDRESS"] == "unix:path=/nonexistent"
        assert "NOTIFY_SOCKET" not in child_env

        status = by_name((await status_of(daemon))["sessions"])["my-sso"]
        assert status["state"] == "login-required"
        assert (await daemon.get("/v1/credentials/dev")).status == 503
        assert await daemon.stop() == 0
    assert not opened.exists(), f"a browser was started: {opened.read_text()}"
    assert "Traceback" not in daemon.output()


# ------------------------------------------------------------------------------ the journal


PRIORITIES = {"debug": "<7>", "info": "<6>", "warning": "<4>", "error": "<3>"}


async def test_journal_stream_lines_carry_syslog_priorities(world: World) -> None:
    _, stderr_path = log_paths(world.logs, "journal")
    stderr_path.touch()
    info = stderr_path.stat()
    # systemd sets $JOURNAL_STREAM to the device:inode of the stream it connects to stderr
    env = {**world.env, "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
    async with serving(env, world.logs, name="journal") as daemon:
        assert daemon.stderr_path.stat().st_ino == info.st_ino

        def logged(event: str) -> bool:
            return f'"{event}"' in daemon.stderr_path.read_text()

        # a warning: [server] changes wait for a restart
        world.home.write_credd_config('[server]\nlisten = "127.0.0.1:1"\n')
        daemon.process.send_signal(signal.SIGHUP)
        await eventually(lambda: logged("reloaded"), what="the reload")
        # an error: a broken configuration
        world.write_aws_config("[profile dev\n")
        daemon.process.send_signal(signal.SIGHUP)
        await eventually(lambda: logged("reload_failed"), what="the failed reload")
        assert await daemon.stop() == 0

    lines = [line for line in stderr_path.read_text().splitlines() if line]
    seen: dict[str, str] = {}
    for line in lines:
        prefix, record = line[:3], json.loads(line[3:])
        assert prefix == PRIORITIES[record["level"]], line
        seen[record["event"]] = prefix
    assert seen["credd_ready"] == "<6>"
    assert seen["reload_server_unchanged"] == "<4>"
    assert seen["reload_failed"] == "<3>"
    assert seen["credd_stopping"] == "<6>"


# ------------------------------------------------------------------------------ credd service


async def test_service_commands_without_a_user_manager(home: Home, tmp_path: Path) -> None:
    """``credd service`` with the real systemctl (if any) and no user manager to answer it.

    ``systemctl --user`` finds a manager through ``$XDG_RUNTIME_DIR`` (private to
    the test) or ``$DBUS_SESSION_BUS_ADDRESS`` (removed), so even on a desktop
    this never reaches the developer's own user manager.
    """
    units = tmp_path / "xdg-config" / "systemd" / "user"
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg-config")}
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)

    config = tmp_path / "xdg-config" / "credd" / "config.toml"  # where credd looks now
    config.parent.mkdir(parents=True)
    config.write_text(LISTEN_ANY_PORT)
    refused = await credd(env, "service", "install")
    assert refused.returncode == 1, str(refused)
    assert refused.stdout == ""
    assert refused.stderr.splitlines() == [
        "credd: socket activation needs a fixed port (set [server] listen = "
        '"127.0.0.1:9911" (or another port) in the credd config)'
    ]
    assert not units.exists()

    config.write_text('[server]\nlisten = "127.0.0.1:9911"\n')
    installed = await credd(env, "service", "install")
    assert installed.returncode == 0, str(installed)
    assert installed.stdout.splitlines() == [
        f"wrote {units / 'credd.service'}",
        f"wrote {units / 'credd.socket'}",
        "no systemd user manager answers here; to start credd, run:",
        "  systemctl --user daemon-reload",
        "  systemctl --user enable --now credd.socket credd.service",
    ]
    [exec_start] = directives((units / "credd.service").read_text(), "ExecStart")
    command = shlex.split(exec_start)
    assert command == [*installed_credd(), "serve"]
    version = await credd(env, "--version")
    started = await anyio.run_process([*command[:-1], "--version"], check=False)
    assert started.stdout.decode() == version.stdout  # ExecStart starts this very credd
    socket_unit = (units / "credd.socket").read_text()
    assert directives(socket_unit, "ListenStream") == ["127.0.0.1:9911"]

    status = await credd(env, "service", "status")
    assert status.returncode == 0, str(status)
    assert status.stdout.splitlines() == [
        f"credd.service: installed at {units / 'credd.service'}",
        f"credd.socket: installed at {units / 'credd.socket'}",
        "no systemd user manager answers here",
    ]
    removed = await credd(env, "service", "uninstall")
    assert removed.returncode == 0, str(removed)
    assert removed.stdout.splitlines()[-1] == "run: systemctl --user daemon-reload"
    assert list(units.iterdir()) == []
