"""Abuse of the endpoint: floods, slow clients, oversized heads, rebinding, web pages.

The daemon runs in process with small bounds from its own config file
(``[server] max_connections``, ``idle_connection_seconds``), and the abusers speak
raw HTTP over loopback sockets. Each test ends by proving an honest client is
still served credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
from collections.abc import AsyncIterator

import anyio
import pytest

from credd.clock import ManualClock
from credd.daemon import DaemonHandle, running_daemon
from credd.testing.emulator import Emulator
from tests.support.home import Home
from tests.support.inprocess import get, login
from tests.support.raw_http import Reply, exchange
from tests.support.waiting import eventually
from tests.support.world import World

#: slow clients are cut off after this long without a whole request (real seconds)
IDLE = 0.5
MAX_CONNECTIONS = 6


@pytest.fixture
async def world(home: Home, clocked: tuple[Emulator, ManualClock]) -> World:
    """A logged-in session and a config with small bounds."""
    emu, clock = clocked
    home.write_credd_config(
        f"""\
        [server]
        listen = "127.0.0.1:0"
        max_connections = {MAX_CONNECTIONS}
        idle_connection_seconds = {IDLE}
        """
    )
    world = World(home, emu)
    await login(world.settings, clock)
    return world


@contextlib.asynccontextmanager
async def serving(world: World) -> AsyncIterator[DaemonHandle]:
    """The daemon, with ``dev`` fetched once so that it answers from memory."""
    async with running_daemon(world.settings, clock=world.clock) as daemon:
        await daemon.broker.credentials("dev", wait=None)  # however slow this machine is
        yield daemon


def open_connections(daemon: DaemonHandle) -> int:
    connections = daemon.control.load.connections
    assert connections is not None
    return connections.open


async def served(daemon: DaemonHandle) -> bool:
    status, body = await get(daemon, "/v1/credentials/dev")
    return status == 200 and body["AccessKeyId"].startswith("ASIA")


def request(daemon: DaemonHandle, path: str = "/v1/credentials/dev", **headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{daemon.port}"]
    lines += [f"Authorization: {daemon.token}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def send(daemon: DaemonHandle, raw: bytes) -> Reply | None:
    """One raw exchange, in a thread: the daemon shares this test's event loop."""
    return await anyio.to_thread.run_sync(lambda: exchange(daemon.port, raw))


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    with anyio.fail_after(30):  # a bound for a broken daemon only; it closes after IDLE
        return await reader.read()


async def test_connections_beyond_the_limit_get_503_and_the_slot_comes_back(
    world: World,
) -> None:
    async with serving(world) as daemon:
        held = [
            await asyncio.open_connection("127.0.0.1", daemon.port) for _ in range(MAX_CONNECTIONS)
        ]
        await eventually(lambda: open_connections(daemon) == MAX_CONNECTIONS)

        reply = await send(daemon, request(daemon))
        assert reply is not None
        assert reply.status == 503
        assert reply.header("connection") == "close"
        assert reply.header("retry-after") == "1"
        body = json.loads(reply.body)
        assert body["Code"] == body["code"] == "TooManyConnections"
        assert daemon.control.document()["daemon"]["endpoint"]["refused_connections"] == 1

        _, writer = held.pop()
        writer.close()
        await eventually(lambda: open_connections(daemon) < MAX_CONNECTIONS)
        assert await served(daemon)
        for _, writer in held:
            writer.close()
        await eventually(lambda: open_connections(daemon) == 0)


async def test_slow_clients_are_cut_off_while_others_are_served(world: World) -> None:
    """Slowloris: heads trickled a byte at a time never pin a connection for long."""
    async with serving(world) as daemon:
        head = request(daemon)
        streams = [
            await asyncio.open_connection("127.0.0.1", daemon.port)
            for _ in range(MAX_CONNECTIONS - 1)
        ]

        async def trickle(writer: asyncio.StreamWriter) -> None:
            # far longer than IDLE in all: the head would take ~50 s to complete
            for byte in head[:-2]:
                writer.write(bytes([byte]))
                try:
                    await writer.drain()
                except ConnectionError:
                    return
                await asyncio.sleep(IDLE / 10)

        async with anyio.create_task_group() as tg:
            for _, writer in streams:
                tg.start_soon(trickle, writer)
            answered = [await served(daemon) for _ in range(3)]
            tails = [await closed_by_server(reader) for reader, _ in streams]
            tg.cancel_scope.cancel()
        assert answered == [True, True, True]
        # closed without an answer: nothing of a response was ever sent to them
        assert tails == [b""] * len(streams)
        await eventually(lambda: open_connections(daemon) == 0)
        assert await served(daemon)


async def test_a_silent_connection_and_an_idle_keep_alive_are_closed(
    world: World,
) -> None:
    async with serving(world) as daemon:
        silent_reader, _ = await asyncio.open_connection("127.0.0.1", daemon.port)
        assert await closed_by_server(silent_reader) == b""

        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(request(daemon))
        answer = await closed_by_server(reader)  # answered, then idle past IDLE: closed
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b'"AccessKeyId"' in answer
        await eventually(lambda: open_connections(daemon) == 0)


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"X_Long": "a" * 9000}, "a header line longer than 8190 bytes"),
        ({f"X_{n}": "1" for n in range(200)}, "more than 128 headers"),
    ],
)
async def test_oversized_heads_are_refused(world: World, extra: dict[str, str], why: str) -> None:
    async with serving(world) as daemon:
        reply = await send(daemon, request(daemon, **extra))
        assert reply is not None, why
        assert reply.status in {400, 431}, why
        assert await served(daemon)


async def test_a_malformed_request_gets_a_json_error_that_quotes_nothing(world: World) -> None:
    """aiohttp's own answer would quote the bad line, and with it the token it carries."""
    async with serving(world) as daemon:
        raw = f"GET /v1/credentials/dev HTTP/1.1\r\nAuthorization: {daemon.token}\x01\r\n"
        reply = await send(daemon, (raw + f"Host: 127.0.0.1:{daemon.port}\r\n\r\n").encode())
        assert reply is not None
        assert reply.status == 400
        assert reply.header("content-type") == "application/json"
        body = json.loads(reply.body)
        assert body["Code"] == body["code"] == "BadRequest"
        assert daemon.token not in reply.raw.decode("latin-1")
        assert await served(daemon)


async def test_an_oversized_request_line_is_refused(world: World) -> None:
    async with serving(world) as daemon:
        reply = await send(daemon, request(daemon, path="/v1/credentials/" + "a" * 9000))
        assert reply is not None
        assert reply.status in {400, 414}
        assert await served(daemon)


async def test_a_flood_of_pipelined_requests_is_answered_in_order(world: World) -> None:
    """Pipelining: aiohttp stops reading while its queue is full; every request is answered."""
    async with serving(world) as daemon:
        count = 2000
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        writer.write(request(daemon) * count)
        received = b""
        with anyio.fail_after(60):
            while received.count(b"HTTP/1.1 ") < count:
                chunk = await reader.read(65536)
                assert chunk, f"closed after {received.count(b'HTTP/1.1 ')} answers"
                received += chunk
        statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", received)
        writer.close()
        assert statuses == [b"200"] * count
        assert await served(daemon)


async def test_requests_waiting_beyond_the_limit_get_429(world: World) -> None:
    """Answers from memory never wait; requests parked on an upstream fetch are bounded."""
    server = dataclasses.replace(world.settings.server, max_waiting_requests=2)
    settings = dataclasses.replace(world.settings, server=server)
    world.emu.faults.add("AssumeRole", hang=True)  # admin's fetch never ends
    async with running_daemon(settings, clock=world.clock, request_deadline=60) as daemon:
        await daemon.broker.credentials("dev", wait=None)
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(get, daemon, "/v1/credentials/admin")
            await eventually(lambda: daemon.control.load.waiting.waiting == 2)

            reply = await send(daemon, request(daemon, "/v1/credentials/admin"))
            assert reply is not None
            assert reply.status == 429
            assert reply.header("retry-after") == "1"
            assert json.loads(reply.body)["Code"] == "TooManyRequests"
            assert await served(daemon)  # from memory: never counted, never refused
            endpoint = daemon.control.document()["daemon"]["endpoint"]
            assert endpoint["waiting_requests"] == 2
            assert endpoint["refused_requests"] == 1
            tg.cancel_scope.cancel()


#: DNS rebinding: a page whose name now resolves to 127.0.0.1 still sends its own Host
FOREIGN_HOSTS = (
    "evil.example",
    "evil.example:9911",
    "127.0.0.1.evil.example",
    "localhost.evil.example",
    "127.0.0.1@evil.example",
    "0x7f000001",
    "2130706433",
    "[::ffff:8.8.8.8]",
    "",
    "local host",
)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost:1", "LOCALHOST", "[::1]:9911", "127.9.9.9")
#: a browser marks cross-origin fetches with Origin; even with the token they are refused
ORIGINS = ("http://evil.example", "null", "http://127.0.0.1:9911")


async def test_only_loopback_hosts_and_no_web_pages_are_served(world: World) -> None:
    async with serving(world) as daemon:
        for host in FOREIGN_HOSTS:
            status, body = await get(daemon, "/v1/credentials/dev", headers={"Host": host})
            assert status in {400, 403}, host
            assert body["Code"] in {"Forbidden", "BadRequest"}, host
            assert "AccessKeyId" not in body
        for host in LOOPBACK_HOSTS:
            status, body = await get(daemon, "/v1/credentials/dev", headers={"Host": host})
            assert status == 200, host
            assert body["AccessKeyId"].startswith("ASIA")
        for origin in ORIGINS:
            for path in ("/v1/credentials/dev", "/v1/status", "/healthz"):
                status, body = await get(daemon, path, headers={"Origin": origin})
                assert (status, body["Code"]) == (403, "Forbidden"), (origin, path)
                assert "AccessKeyId" not in body
