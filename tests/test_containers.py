"""Containers: ``[containers] listen``, the container listener, ``credd container env``.

Without root: the configuration key, and the listener on a loopback address (127.0.0.2,
which every Linux loopback holds), where the routes, the ``Host`` check and the
capability paths are the same as on 169.254.170.2.

As root (tests/support/netns.py; skipped elsewhere, failed under ``$CI``): a
network namespace joined to a bridge holding 169.254.170.2/24 is the "container".
Its SDKs (boto3, the Node.js SDK) get what ``credd container env`` printed as
Docker's ``--env-file`` gives it, and nothing else, and prove their identity with
GetCallerIdentity on the emulator (reached through a relay on the bridge's
address: it listens on loopback only). The rest: the admin token, another
profile and ``/v1/status`` refused from inside, a revocation while the container
runs, a ``--ttl`` running out (on the daemon's ManualClock), credd started before
the bridge exists, and ``AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`` through the
setup's port-80 redirect.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from anyio.abc import Process

from credd.clock import ManualClock, SystemClock
from credd.config.settings import ContainersSettings
from credd.daemon import make_broker, running_daemon
from credd.endpoint.container_env import env_file_lines
from credd.endpoint.containers import RETRY_SECONDS, ContainerListener, accepted_hosts
from credd.endpoint.grants import Grants
from credd.endpoint.limits import WaitLimit
from credd.engine.watch import CacheWatcher
from credd.errors import ConfigError
from credd.files.store import parse_timestamp
from credd.platform import containers as setup
from credd.platform.addresses import AddressWatch
from credd.testing.emulator import Emulator
from credd.wiring import aws_clients, ensure_endpoint_token
from tests.support.configs import ACCOUNT, LISTEN_ANY_PORT
from tests.support.home import Home
from tests.support.netns import (
    AGENT_ADDRESS,
    Bridge,
    Namespace,
    agent_network,
    ip,
    leftovers,
    new_name,
    relay,
    write_env_file,
)
from tests.support.old_sdks import unavailable
from tests.support.process import NODE_DIR, WHOAMI, Daemon, Result, credd, free_port, login
from tests.support.waiting import DEADLINE, POLL, eventually
from tests.support.world import World

FULL_URI = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
RELATIVE_URI = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
TOKEN = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
#: a loopback address other than the loopback endpoint's: the listener without root
LOOPBACK_LISTENER = "127.0.0.2"
#: Docker's --env-file: KEY=VALUE, nothing to quote, unquote or expand
ENV_FILE_LINE = re.compile(r"^[A-Z][A-Z0-9_]*=[A-Za-z0-9_./:-]+$")

#: in a container: raw GETs, each [url, {header: value}], answered with status and code
PROBE = textwrap.dedent(
    """\
    import http.client, json, sys, urllib.parse
    out = []
    for url, headers in json.loads(sys.argv[1]):
        parts = urllib.parse.urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=5)
        try:
            connection.request("GET", parts.path, headers=headers)
            answer = connection.getresponse()
            body = answer.read()
            code = json.loads(body).get("Code") if body.startswith(b"{") else None
            out.append([answer.status, code, body.decode("utf-8", "replace")])
        except OSError as exc:
            out.append([0, type(exc).__name__, str(exc)])
        finally:
            connection.close()
    print(json.dumps(out))
    """
)
#: a container that keeps running: each line on stdin is a fresh fetch of credentials
#: (a new boto3 session, as a new SDK client makes) and a GetCallerIdentity with them
FETCH_LOOP = textwrap.dedent(
    """\
    import http.client, json, os, sys, urllib.parse
    import boto3
    for _ in sys.stdin:
        try:
            arn = boto3.Session().client("sts").get_caller_identity()["Arn"]
            print(json.dumps({"ok": True, "arn": arn}), flush=True)
        except Exception as exc:
            parts = urllib.parse.urlsplit(os.environ["AWS_CONTAINER_CREDENTIALS_FULL_URI"])
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
            connection.request(
                "GET", parts.path,
                headers={"Authorization": os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]},
            )
            status = connection.getresponse().status
            print(json.dumps({"ok": False, "status": status, "error": type(exc).__name__}),
                  flush=True)
    """
)


# --------------------------------------------------------------------------- helpers


def containers_config(listen: str) -> str:
    return LISTEN_ANY_PORT + f'\n[containers]\nlisten = "{listen}"\n'


def env_file_values(printed: str) -> dict[str, str]:
    """What ``docker run --env-file`` makes of ``printed``; every line must be KEY=VALUE."""
    values = {}
    for line in printed.splitlines():
        assert ENV_FILE_LINE.match(line), f"not an env-file line: {line!r}"
        key, _, value = line.partition("=")
        values[key] = value
    return values


async def ok(result: Result) -> str:
    assert result.returncode == 0, str(result)
    return result.stdout


async def container_env(env: dict[str, str], *args: str) -> str:
    return await ok(await credd(env, "container", "env", *args))


async def answer(
    url: str, *, token: str | None = None, host: str | None = None, method: str = "GET"
) -> tuple[int, dict[str, Any]]:
    headers = {} if token is None else {"Authorization": token}
    if host is not None:
        headers["Host"] = host
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, headers=headers, allow_redirects=False) as got,
    ):
        return got.status, json.loads(await got.read())


async def status_doc(daemon: Daemon) -> dict[str, Any]:
    got = await daemon.get("/v1/status")
    assert got.status == 200, got.text
    return got.json()


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll an asynchronous ``check`` until it holds (a state, never a duration)."""
    try:
        with anyio.fail_after(DEADLINE):
            while not await check():  # noqa: ASYNC110  # another process's state
                await anyio.sleep(POLL * 10)
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {DEADLINE} s") from None


async def listener_state(daemon: Daemon) -> str:
    containers = (await status_doc(daemon))["containers"]
    assert containers is not None
    state: str = containers["state"]
    return state


def emulator_port(emu: Emulator) -> int:
    port = urllib.parse.urlsplit(emu.url).port
    assert port is not None
    return port


@dataclass
class Container:
    """A network namespace on the bridge, run as ``docker run --env-file`` would run it."""

    namespace: Namespace
    #: the container's own environment (its image's): PATH, HOME, the emulator for STS
    env: dict[str, str]
    directory: Path

    def env_file(self, printed: str, name: str = "container.env") -> Path:
        return write_env_file(self.directory, printed, name)

    async def run(self, printed: str, argv: list[str]) -> Result:
        return await self.namespace.run(self.env_file(printed), argv, self.env)

    async def whoami(self, printed: str) -> dict[str, Any]:
        """boto3's default chain in the container; its identity according to STS."""
        seen: dict[str, Any] = json.loads(
            await ok(await self.run(printed, [sys.executable, "-c", WHOAMI]))
        )
        return seen

    async def probe(self, printed: str, requests: list[tuple[str, dict[str, str]]]) -> list[Any]:
        """Raw GETs from inside: [status, Code, body] for each."""
        got: list[Any] = json.loads(
            await ok(await self.run(printed, [sys.executable, "-c", PROBE, json.dumps(requests)]))
        )
        return got


def make_container(namespace: Namespace, tmp_path: Path, sts_port: int) -> Container:
    home = tmp_path / "container-home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        # nothing of this machine's: no config, no credentials file, no instance metadata
        "AWS_CONFIG_FILE": str(home / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL_STS": f"http://{AGENT_ADDRESS}:{sts_port}",
    }
    return Container(namespace, env, tmp_path)


def node_or_skip() -> str:
    node = shutil.which("node")
    if node is None:
        unavailable("Node.js is not installed (`node` not on PATH)")
    if not (NODE_DIR / "node_modules" / "@aws-sdk" / "credential-provider-http").is_dir():
        unavailable("tests/node/node_modules is missing: run `cd tests/node && npm install`")
    assert node is not None
    return node


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After the module: none of the bridges, veths or namespaces it made is still there."""
    yield
    if shutil.which("ip") or Path("/usr/sbin/ip").exists():
        assert leftovers() == []


# --------------------------------------------------------------------------- [containers] listen


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("169.254.170.2:9912", "169.254.170.2", 9912),
        ("169.254.170.23:80", "169.254.170.23", 80),
        ("127.0.0.2:9912", "127.0.0.2", 9912),
        ("localhost:9912", "127.0.0.1", 9912),
        ("[::1]:9912", "::1", 9912),
        ("[fe80::2%credd0]:9912", "fe80::2%credd0", 9912),
    ],
)
def test_container_listen_accepts_link_local_and_loopback(
    home: Home, listen: str, host: str, port: int
) -> None:
    home.write_aws_config()
    home.write_credd_config(containers_config(listen))
    containers = home.settings().containers
    assert (containers.host, containers.port) == (host, port)


@pytest.mark.parametrize(
    ("listen", "why"),
    [
        ("10.0.0.1:9912", "neither link-local"),
        ("0.0.0.0:9912", "neither link-local"),
        ("192.0.2.2:9912", "neither link-local"),
        ("[fd00:ec2::23]:9912", "neither link-local"),
        ("host.docker.internal:9912", "not an IP address"),
        ("169.254.170.2", "expected HOST:PORT"),
        ("169.254.170.2:0", "expected HOST:PORT"),
        ("169.254.170.2:65536", "expected HOST:PORT"),
        ("fe80::2:9912", "expected HOST:PORT"),
        ("[fe80::2]:9912", "needs its interface"),
    ],
)
def test_container_listen_refuses_anything_else_naming_file_line_and_key(
    home: Home, listen: str, why: str
) -> None:
    home.write_aws_config()
    home.write_credd_config(containers_config(listen))
    with pytest.raises(ConfigError) as refused:
        home.settings()
    message = str(refused.value)
    line = home.credd_config.read_text().splitlines().index(f'listen = "{listen}"') + 1
    assert message.startswith(f"{home.credd_config}:{line}: containers.listen: "), message
    assert why in message


def test_container_listen_unset_means_no_listener_and_other_keys_are_refused(home: Home) -> None:
    home.write_aws_config()
    home.write_credd_config(LISTEN_ANY_PORT)
    assert home.settings().containers == ContainersSettings()
    home.write_credd_config(LISTEN_ANY_PORT + "\n[containers]\nport = 9912\n")
    with pytest.raises(ConfigError, match=r"containers\.port: unknown key"):
        home.settings()
    home.write_credd_config(
        '[server]\nlisten = "127.0.0.1:9912"\n[containers]\nlisten = "127.0.0.1:9912"\n'
    )
    with pytest.raises(ConfigError, match="same address and port as"):
        home.settings()


def test_the_example_config_loads_and_documents_the_agent_address(home: Home) -> None:
    example = (Path(__file__).parent.parent / "config.example.toml").read_text()
    home.write_aws_config()
    home.write_credd_config(example)
    assert home.settings().containers == ContainersSettings()
    documented = '# listen = "169.254.170.2:9912"'
    assert documented in example
    home.write_credd_config(example.replace(documented, documented.removeprefix("# ")))
    assert home.settings().containers == ContainersSettings("169.254.170.2", 9912)


def test_accepted_hosts_are_the_listen_address_with_its_port_port_80_or_none() -> None:
    assert accepted_hosts("169.254.170.2", 9912) == {
        "169.254.170.2",
        "169.254.170.2:9912",
        "169.254.170.2:80",
    }
    assert "[fe80::2%25credd0]:9912" in accepted_hosts("fe80::2%credd0", 9912)
    assert "[fe80::2]" in accepted_hosts("fe80::2%credd0", 9912)


def test_env_file_lines_are_docker_lines_and_refuse_what_would_break_them() -> None:
    assert env_file_lines({"A": "x", "B": "http://h:1/p"}) == ["A=x", "B=http://h:1/p"]
    with pytest.raises(ValueError, match="B"):
        env_file_lines({"B": "x\nC=y"})


# --------------------------------------------------------------------------- on loopback, no root


@pytest.fixture
def loopback_listener(world: World) -> str:
    """The standard world with a container listener on 127.0.0.2 (any root-free machine)."""
    listen = f"{LOOPBACK_LISTENER}:{free_port()}"
    world.home.write_credd_config(containers_config(listen))
    return listen


async def test_container_listener_serves_a_container_token_its_profile_and_nothing_else(
    world: World, loopback_listener: str
) -> None:
    base = f"http://{loopback_listener}"
    async with world.serving() as daemon:
        await login(world.env)
        printed = await container_env(world.env, "dev")
        values = env_file_values(printed)
        assert list(values) == [FULL_URI, TOKEN, "AWS_REGION", "AWS_DEFAULT_REGION"]
        assert values[FULL_URI] == f"{base}/v1/credentials/dev"
        assert values["AWS_REGION"] == values["AWS_DEFAULT_REGION"] == "eu-west-1"
        token = values[TOKEN]
        assert token.startswith("credd_")
        assert token != daemon.token

        status, creds = await answer(values[FULL_URI], token=token)
        assert status == 200, creds
        _, held = await answer(f"{daemon.url}/v1/credentials/dev", token=daemon.token)
        assert creds["AccessKeyId"] == held["AccessKeyId"]

        refused = [
            ("/v1/credentials/admin", token, 403),  # another profile
            ("/v1/status", token, 403),
            ("/v1/credentials/dev", daemon.token, 403),  # the admin token, on any route
            ("/v1/status", daemon.token, 403),
            ("/v1/tokens/dev", daemon.token, 403),
            ("/v1/status", None, 401),
            ("/v1/credentials/dev", "credd_wrong", 401),
        ]
        for path, given, expected in refused:
            status, body = await answer(base + path, token=given)
            assert (status, set(body)) == (expected, {"code", "message", "Code", "Message"}), path
        for path in ("/v1/reload", "/v1/grants/sync"):
            status, body = await answer(base + path, token=daemon.token, method="POST")
            assert status == 403, (path, body)
        assert (await answer(base + "/healthz"))[0] == 200
        # its own address only: not the loopback endpoint's names
        for host in ("127.0.0.1", "localhost", f"localhost:{loopback_listener.split(':')[1]}"):
            status, body = await answer(values[FULL_URI], token=token, host=host)
            assert (status, body["Code"]) == (403, "Forbidden"), host

        doc = await status_doc(daemon)
        containers = doc["containers"]
        assert (containers["listen"], containers["state"]) == (loopback_listener, "bound")
        assert containers["last_error"] is None
        assert containers["watch"] == "netlink"
        [grant] = doc["grants"]
        assert (grant["profile"], grant["purpose"]) == ("dev", "container")
        assert grant["last_used"] is not None
        table = await ok(await credd(world.env, "status"))
        assert f"containers: listening on {loopback_listener} since " in table
        assert token not in table + json.dumps(doc) + daemon.output()

        # revoked: refused at once
        await ok(await credd(world.env, "revoke", token))
        assert (await answer(values[FULL_URI], token=token))[0] == 401


async def test_capability_paths_serve_container_grants_only_and_never_echo_the_path(
    world: World, loopback_listener: str
) -> None:
    base = f"http://{loopback_listener}"
    async with world.serving() as daemon:
        await login(world.env)
        token = env_file_values(await container_env(world.env, "dev", "--ttl", "3600"))[TOKEN]
        status, creds = await answer(f"{base}/v2/credentials/{token}")  # no header at all
        assert status == 200, creds
        _, held = await answer(f"{daemon.url}/v1/credentials/dev", token=daemon.token)
        assert creds["AccessKeyId"] == held["AccessKeyId"]

        granted = (await ok(await credd(world.env, "grant", "dev"))).strip()
        for given in (granted, daemon.token, "credd_" + "A" * 43, "", f"{token}/x"):
            status, body = await answer(f"{base}/v2/credentials/{given}")
            assert (status, body["Code"]) == (404, "NotFound"), given
            if given:
                assert given not in json.dumps(body)
        # the loopback endpoint has no capability paths
        assert (await answer(f"{daemon.url}/v2/credentials/{token}"))[0] == 401

        await ok(await credd(world.env, "revoke", "--profile", "dev"))
        assert (await answer(f"{base}/v2/credentials/{token}"))[0] == 404


async def test_container_env_refuses_in_one_line_and_issues_nothing(world: World) -> None:
    grants = world.home.root / ".local" / "state" / "credd" / "grants.json"
    unset = await credd(world.env, "container", "env", "dev")
    assert unset.returncode == 2, str(unset)
    assert unset.stdout == ""
    [line] = unset.stderr.splitlines()
    assert "[containers] listen is not set" in line
    assert "credd container setup" in line
    assert str(world.home.credd_config) in line

    world.home.write_credd_config(containers_config(f"{LOOPBACK_LISTENER}:9912"))
    for args, words in [
        (("nosuch",), "not served"),
        (("dev", "--relative"), "always means http://169.254.170.2 port 80"),
    ]:
        refused = await credd(world.env, "container", "env", *args)
        assert refused.returncode == 1, str(refused)
        assert refused.stdout == ""
        [line] = refused.stderr.splitlines()
        assert line.startswith("credd: ")
        assert words in line
    usage = await credd(world.env, "container", "env", "dev", "--ttl", "0")
    assert usage.returncode == 2
    assert "expected a positive number of seconds" in usage.stderr.splitlines()[-1]
    assert not grants.exists()


async def test_a_taken_port_leaves_the_listener_waiting_with_the_error(
    world: World, loopback_listener: str
) -> None:
    host, _, port = loopback_listener.rpartition(":")
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        async with world.serving() as daemon:
            containers = (await status_doc(daemon))["containers"]
            assert containers["state"] == "waiting"
            assert "Address already in use" in containers["last_error"]
            assert "cannot listen on" in await ok(await credd(world.env, "status"))
            # the loopback endpoint serves regardless
            assert (await daemon.get("/healthz")).status == 200


class RefusedNetlink(AddressWatch):
    """What a sandbox without ``AF_NETLINK`` gives (credd.service's RestrictAddressFamilies=)."""

    def __enter__(self) -> AddressWatch:
        self.problem = "netlink is not available: Address family not supported by protocol"
        return self


@asynccontextmanager
async def listener_alone(
    world: World,
    listen: ContainersSettings,
    *,
    watch: Callable[[], AddressWatch] = AddressWatch,
    retry_seconds: float = RETRY_SECONDS,
) -> AsyncIterator[ContainerListener]:
    """A container listener in this process, as the daemon builds it, with a broker idle
    (only ``/healthz`` is asked)."""
    settings = world.settings
    async with aws_clients(settings) as clients, anyio.create_task_group() as tg:
        clock = SystemClock()
        broker = make_broker(
            settings, clients=clients, clock=clock, task_group=tg, watcher=CacheWatcher()
        )
        listener = ContainerListener(
            listen,
            broker=broker,
            admin_token=ensure_endpoint_token(settings.server.token_file),
            grants=Grants(),
            waiting=WaitLimit(8),
            server=settings.server,
            now=clock.now,
            watch=watch,
            retry_seconds=retry_seconds,
        )
        await tg.start(listener.run)
        try:
            yield listener
        finally:
            tg.cancel_scope.cancel()


async def healthz(host: str, port: int) -> int:
    try:
        return (await answer(f"http://{host}:{port}/healthz"))[0]
    except aiohttp.ClientError:
        return 0


async def test_a_failed_bind_is_tried_again_until_it_works(world: World) -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind((LOOPBACK_LISTENER, port))
        taken.listen()
        listen = ContainersSettings(LOOPBACK_LISTENER, port)
        async with listener_alone(world, listen, retry_seconds=0.05) as listener:
            assert (listener.state, listener.bound) == ("waiting", False)
            assert listener.last_error is not None
            assert "Address already in use" in listener.last_error
            taken.close()
            await eventually(lambda: listener.bound, what="the bind tried again")
            assert listener.state == "bound"
            assert listener.describe()["last_error"] is None
            assert await healthz(LOOPBACK_LISTENER, port) == 200


# --------------------------------------------------------------------------- a namespaced container


@pytest.fixture
def network() -> Iterator[tuple[Bridge, Namespace]]:
    """The bridge with 169.254.170.2/24 and a namespace on it (root; removed afterwards)."""
    with agent_network() as made:
        yield made


@pytest.fixture
def agent_listen(world: World) -> str:
    """The standard world with ``[containers] listen`` on 169.254.170.2."""
    listen = f"{AGENT_ADDRESS}:{free_port()}"
    world.home.write_credd_config(containers_config(listen))
    return listen


async def test_a_namespaced_container_gets_its_profile_from_container_env_alone(
    world: World, network: tuple[Bridge, Namespace], agent_listen: str, tmp_path: Path
) -> None:
    _, namespace = network
    async with (
        relay(AGENT_ADDRESS, emulator_port(world.emu)) as sts_port,
        world.serving() as daemon,
    ):
        container = make_container(namespace, tmp_path, sts_port)
        assert await listener_state(daemon) == "bound"
        await login(world.env)
        printed = await container_env(world.env, "dev")
        values = env_file_values(printed)
        assert values[FULL_URI] == f"http://{agent_listen}/v1/credentials/dev"
        _, held = await answer(f"{daemon.url}/v1/credentials/dev", token=daemon.token)

        seen = await container.whoami(printed)
        assert seen["method"] == "container-role"
        assert seen["key"] == held["AccessKeyId"]
        assert seen["account"] == ACCOUNT

        node = node_or_skip()
        result = await container.run(printed, [node, str(NODE_DIR / "whoami.mjs")])
        assert json.loads(await ok(result))["accessKeyId"] == held["AccessKeyId"]

        # from inside: nothing but that profile, and not the loopback endpoint at all
        token, admin = values[TOKEN], daemon.token
        base = f"http://{agent_listen}"
        got = await container.probe(
            printed,
            [
                (f"{base}/v1/credentials/dev", {"Authorization": admin}),
                (f"{base}/v1/status", {"Authorization": admin}),
                (f"{base}/v1/credentials/admin", {"Authorization": token}),
                (f"{base}/v1/status", {"Authorization": token}),
                (f"{base}/v1/status", {}),
                (f"http://127.0.0.1:{daemon.port}/v1/status", {"Authorization": admin}),
                (f"{base}/v1/credentials/dev", {"Authorization": token}),
            ],
        )
        assert [status for status, _, _ in got] == [403, 403, 403, 403, 401, 0, 200]
        assert got[5][1] == "ConnectionRefusedError"  # the container's own loopback


async def test_a_token_revoked_while_the_container_runs_fails_its_next_fetch(
    world: World, network: tuple[Bridge, Namespace], agent_listen: str, tmp_path: Path
) -> None:
    _, namespace = network
    async with AsyncExitStack() as stack:
        sts_port = await stack.enter_async_context(relay(AGENT_ADDRESS, emulator_port(world.emu)))
        await stack.enter_async_context(world.serving())
        container = make_container(namespace, tmp_path, sts_port)
        await login(world.env)
        printed = await container_env(world.env, "dev")
        argv = namespace.command(
            container.env_file(printed), [sys.executable, "-c", FETCH_LOOP], container.env
        )
        running = await stack.enter_async_context(
            await anyio.open_process(argv, env={"PATH": "/usr/sbin:/usr/bin:/bin"})
        )
        stack.push_async_callback(_stop, running)
        first = await fetch_in(running)
        assert first["ok"], first
        assert first["arn"].startswith(
            f"arn:aws:sts::{ACCOUNT}:assumed-role/AWSReservedSSO_ReadOnly_"
        )

        await ok(await credd(world.env, "revoke", env_file_values(printed)[TOKEN]))
        second = await fetch_in(running)
        assert second == {"ok": False, "status": 401, "error": second["error"]}


async def fetch_in(process: Process) -> dict[str, Any]:
    """Ask the running container for one fetch; its answer."""
    assert process.stdin is not None
    assert process.stdout is not None
    await process.stdin.send(b"fetch\n")
    line = b""
    with anyio.fail_after(DEADLINE):
        while not line.endswith(b"\n"):
            line += await process.stdout.receive(1)
    answer: dict[str, Any] = json.loads(line)
    return answer


async def _stop(process: Process) -> None:
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.fixture
def clocked_world(home: Home, clocked: tuple[Emulator, ManualClock]) -> World:
    """The standard world on a ManualClock shared by the emulator and the daemon."""
    emu, _ = clocked
    home.write_credd_config(containers_config(f"{AGENT_ADDRESS}:{free_port()}"))
    return World(home, emu)


async def test_a_ttl_token_runs_out_on_the_daemons_clock(
    clocked_world: World, network: tuple[Bridge, Namespace], tmp_path: Path
) -> None:
    world, clock = clocked_world, clocked_world.clock
    _, namespace = network
    async with (
        relay(AGENT_ADDRESS, emulator_port(world.emu)) as sts_port,
        running_daemon(world.settings, clock=clock) as daemon,
    ):
        container = make_container(namespace, tmp_path, sts_port)
        await world.login()
        printed = await container_env(world.env, "dev", "--ttl", "600")
        url, token = env_file_values(printed)[FULL_URI], env_file_values(printed)[TOKEN]
        assert (await container.whoami(printed))["account"] == ACCOUNT
        _, doc = await answer(f"{daemon.url}/v1/status", token=daemon.token)
        [grant] = doc["grants"]
        expires = parse_timestamp(grant["expires"])
        # the CLI stamped it on the wall clock; the daemon checks it on its own
        clock.set(expires - timedelta(seconds=1))
        [[before, _, _]] = await container.probe(printed, [(url, {"Authorization": token})])
        assert before == 200
        clock.set(expires)
        [[after, code, _]] = await container.probe(printed, [(url, {"Authorization": token})])
        assert (after, code) == (401, "Unauthorized")


async def test_credd_started_before_the_bridge_binds_when_it_appears_and_lets_go_when_it_goes(
    world: World, agent_listen: str, tmp_path: Path
) -> None:
    with agent_network(bridge_first=False) as (bridge, namespace):
        async with world.serving() as daemon:
            await login(world.env)
            doc = (await status_doc(daemon))["containers"]
            assert (doc["state"], doc["last_error"]) == ("waiting", None)
            assert "credd container setup" in doc["action"]
            assert f"containers: waiting for {agent_listen}" in await ok(
                await credd(world.env, "status")
            )
            printed = await container_env(world.env, "dev")  # before the bridge: fine
            url, token = env_file_values(printed)[FULL_URI], env_file_values(printed)[TOKEN]
            container = make_container(namespace, tmp_path, 0)

            bridge.create()
            namespace.create()
            await until(lambda: _is(daemon, "bound"), "binding the new address")
            [[status, _, _]] = await container.probe(printed, [(url, {"Authorization": token})])
            assert status == 200

            bridge.delete()  # the address goes with it
            await until(lambda: _is(daemon, "waiting"), "letting the address go")

            again = Bridge()  # the same address on another bridge: bound afresh
            try:
                again.create()
                ip_link_master(namespace, again)
                await until(lambda: _is(daemon, "bound"), "binding it again")
                [[status, _, _]] = await container.probe(printed, [(url, {"Authorization": token})])
                assert status == 200
            finally:
                again.delete()
            assert "container_listener_released" in daemon.output()


async def test_without_netlink_the_address_is_looked_for_on_a_timer(world: World) -> None:
    port = free_port()
    with agent_network(bridge_first=False) as (bridge, _):
        listen = ContainersSettings(AGENT_ADDRESS, port)
        async with listener_alone(
            world, listen, watch=RefusedNetlink, retry_seconds=0.05
        ) as listener:
            assert listener.describe()["watch"].startswith("netlink is not available")
            assert not listener.bound
            bridge.create()
            await eventually(lambda: listener.bound, what="the timer's look binding it")
            assert await healthz(AGENT_ADDRESS, port) == 200
            bridge.delete()
            await eventually(lambda: not listener.bound, what="the timer's look releasing it")


async def test_the_address_watch_wakes_for_an_address_and_sleeps_otherwise() -> None:
    with agent_network(bridge_first=False) as (bridge, _), AddressWatch() as watch:
        assert watch.watching, watch.problem
        assert not await watch.changed(0.05)  # nothing changed: it waits, it does not poll
        bridge.create()
        with anyio.fail_after(DEADLINE):
            assert await watch.changed(None)
        bridge.delete()
        with anyio.fail_after(DEADLINE):
            assert await watch.changed(None)


def ip_link_master(namespace: Namespace, bridge: Bridge) -> None:
    ip("link", "set", namespace.host_end, "master", bridge.name, "up")


async def _is(daemon: Daemon, state: str) -> bool:
    return await listener_state(daemon) == state


# --------------------------------------------------------------------------- RELATIVE_URI


@pytest.fixture
def port_80(network: tuple[Bridge, Namespace], agent_listen: str, tmp_path: Path) -> Iterator[str]:
    """The setup's own port-80 redirect (credd.platform.containers), for this bridge only:
    an nftables table of its own, deleted afterwards."""
    bridge, _ = network
    if shutil.which("nft") is None:
        unavailable("nft is not installed (apt-get install -y nftables)")
    table = new_name()
    target = setup.Target(bridge=bridge.name, table=table, root=tmp_path / "root")
    port = int(agent_listen.rpartition(":")[2])
    try:
        report = setup.setup(
            False,
            listen_port=port,
            env={"PATH": "/usr/sbin:/usr/bin:/bin"},
            target=target,
            networkd=False,
            backend="nft",
        )
        assert report.changed, report.lines
        yield table
    finally:
        nft = shutil.which("nft")
        assert nft is not None
        subprocess.run([nft, "delete", "table", "ip", table], check=False, capture_output=True)


async def test_relative_uri_through_port_80_for_a_client_that_knows_only_it(
    world: World,
    network: tuple[Bridge, Namespace],
    agent_listen: str,
    port_80: str,
    tmp_path: Path,
) -> None:
    _, namespace = network
    async with (
        relay(AGENT_ADDRESS, emulator_port(world.emu)) as sts_port,
        world.serving() as daemon,
    ):
        container = make_container(namespace, tmp_path, sts_port)
        await login(world.env)
        printed = await container_env(world.env, "dev", "--relative")
        values = env_file_values(printed)
        assert list(values) == [RELATIVE_URI, "AWS_REGION", "AWS_DEFAULT_REGION"]
        path = values[RELATIVE_URI]
        assert re.fullmatch(r"/v2/credentials/credd_[A-Za-z0-9_-]{43}", path)
        _, held = await answer(f"{daemon.url}/v1/credentials/dev", token=daemon.token)

        seen = await container.whoami(printed)  # botocore: http://169.254.170.2 + the path
        assert seen["method"] == "container-role"
        assert seen["key"] == held["AccessKeyId"]
        [grant] = (await status_doc(daemon))["grants"]
        assert grant["purpose"] == "container"

        await ok(await credd(world.env, "revoke", "--profile", "dev"))
        [[status, code, _]] = await container.probe(
            printed, [(f"http://{AGENT_ADDRESS}{path}", {})]
        )
        assert (status, code) == (404, "NotFound")


async def test_relative_without_port_80_says_so(
    world: World, network: tuple[Bridge, Namespace], agent_listen: str
) -> None:
    async with world.serving():
        refused = await credd(world.env, "container", "env", "dev", "--relative")
        assert refused.returncode == 1, str(refused)
        assert refused.stdout == ""
        [line] = refused.stderr.splitlines()
        assert "port 80 on 169.254.170.2 is not sent on" in line
        assert "credd container setup" in line
