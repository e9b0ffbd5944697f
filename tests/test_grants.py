"""Scoped tokens: the grants file, the daemon's index, the endpoint's two kinds of token.

The store and the hand-out run on real files in a private HOME; the endpoint tests run
the daemon in process on a ManualClock (a grant's lifetime passes when the test says
so) and ask it over real loopback sockets, with botocore's own container provider
where an SDK is what matters.
"""

from __future__ import annotations

import asyncio
import json
import stat
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from botocore.credentials import ContainerProvider

from credd.clock import ManualClock
from credd.daemon import DaemonHandle, running_daemon
from credd.endpoint.grants import (
    ID_LENGTH,
    Grants,
    GrantsError,
    GrantStore,
    digest,
    mint,
)
from credd.endpoint.handout import hand_out, read_token_file, token_file_name
from credd.errors import CreddError
from credd.testing.emulator import Emulator
from credd.wiring import env_token_dir, grant_store
from tests.support.home import Home
from tests.support.inprocess import get, login
from tests.support.logs import captured_log
from tests.support.waiting import eventually
from tests.support.world import World

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
#: the connection bound of the closing tests: what 16 idle keep-alives used to fill
MAX_CONNECTIONS = 16


@pytest.fixture
def store(home: Home) -> GrantStore:
    home.write_aws_config()
    return grant_store(home.settings())


def file_text(store: GrantStore) -> str:
    return store.path.read_text()


# --------------------------------------------------------------------------- the grants file


def test_a_grant_is_kept_hashed_owner_only_and_found_by_its_token(store: GrantStore) -> None:
    grant, token = store.issue("dev", now=NOW, purpose="grant", ttl_seconds=60)
    assert token.startswith("credd_")
    assert len(token) == len("credd_") + 43  # 256 bits, URL-safe base64
    assert grant.digest == digest(token)
    assert grant.expires == NOW + timedelta(seconds=60)
    text = file_text(store)
    assert token not in text  # the file grants nothing to whoever copies it
    assert grant.digest in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert store.path == store.files.directory / "grants.json"
    assert json.loads(text)["grants"][0]["profile"] == "dev"
    assert store.find(token) == grant
    assert store.find(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.load() == [grant]


def test_revoke_by_token_by_id_by_profile_and_all(store: GrantStore) -> None:
    dev1, token1 = store.issue("dev", now=NOW, purpose="grant")
    dev2, _ = store.issue("dev", now=NOW, purpose="env")
    admin1, _ = store.issue("admin", now=NOW, purpose="grant")
    admin2, _ = store.issue("admin", now=NOW, purpose="grant")
    assert store.revoke(now=NOW, token=token1) == [dev1]
    assert len(admin1.id) == ID_LENGTH
    assert store.revoke(now=NOW, token=admin1.id) == [admin1]
    assert store.revoke(now=NOW, token="not a token") == []
    assert store.revoke(now=NOW, profile="dev") == [dev2]
    assert store.load() == [admin2]
    assert store.revoke(now=NOW, everything=True) == [admin2]
    assert store.load() == []


def test_expired_grants_are_dropped_at_the_next_write(store: GrantStore) -> None:
    short, _ = store.issue("dev", now=NOW, purpose="grant", ttl_seconds=30)
    assert store.load() == [short]
    later = NOW + timedelta(seconds=30)
    kept, _ = store.issue("dev", now=later, purpose="grant")
    assert store.load() == [kept]
    # an expired grant is not "ended" by a revoke: it had ended already
    assert store.revoke(now=later, profile="dev") == [kept]


def test_lifetimes_must_be_positive() -> None:
    for ttl in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            mint("dev", now=NOW, purpose="grant", ttl_seconds=ttl)


def test_an_unreadable_file_is_never_silently_replaced(store: GrantStore, home: Home) -> None:
    _, token = store.issue("dev", now=NOW, purpose="grant")
    garbage = b'{"grants": [{"profile": "dev", "sha256": "nope"}]}'
    store.path.write_bytes(garbage)
    with pytest.raises(GrantsError) as refused:
        store.issue("dev", now=NOW, purpose="grant")
    assert "grant 1: sha256" in str(refused.value)
    assert "credd revoke --all" in str(refused.value)
    with pytest.raises(GrantsError):
        store.revoke(now=NOW, token=token)
    assert store.path.read_bytes() == garbage
    assert store.find(token) is None

    # revoke --all starts anew, and keeps the bad file aside first
    assert store.revoke(now=NOW, everything=True) == []
    assert store.load() == []
    kept = list((store.files.directory / "unreadable").iterdir())
    assert [p.read_bytes() for p in kept] == [garbage]


def test_a_symlink_at_the_grants_path_is_refused_and_replaced_not_followed(
    store: GrantStore, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "planted.json"
    grant, _ = mint("dev", now=NOW, purpose="grant")
    planted = json.dumps({"grants": [grant.to_json()]})
    elsewhere.write_text(planted)
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.symlink_to(elsewhere)
    with pytest.raises(GrantsError, match="symbolic link"):
        store.load()
    store.revoke(now=NOW, everything=True)
    assert not store.path.is_symlink()
    assert elsewhere.read_text() == planted


# --------------------------------------------------------------------------- the index


def test_the_index_checks_tokens_and_tells_expiry_and_use_without_the_token() -> None:
    live, live_token = mint("dev", now=NOW, purpose="env")
    brief, brief_token = mint("admin", now=NOW, purpose="grant", ttl_seconds=10)
    index = Grants([live, brief])
    assert index.check(live_token.encode(), NOW) == live
    assert index.check(brief_token.encode(), NOW + timedelta(seconds=9)) == brief
    assert index.check(brief_token.encode(), NOW + timedelta(seconds=10)) is None
    assert index.check(b"", NOW) is None
    assert index.check(live_token.encode()[:-1], NOW) is None

    index.used(live, NOW + timedelta(seconds=5))
    listed = index.describe(NOW)
    assert [g["profile"] for g in listed] == ["admin", "dev"]
    assert listed[1] == {
        "id": live.id,
        "profile": "dev",
        "purpose": "env",
        "created": "2030-01-02T03:04:05Z",
        "expires": None,
        "last_used": "2030-01-02T03:04:10Z",
    }
    assert listed[0]["expires"] == "2030-01-02T03:04:15Z"
    text = json.dumps(listed)
    assert live_token not in text
    assert brief_token not in text
    assert live.digest not in text  # only the id, a prefix too short to match a token by
    assert [g["profile"] for g in index.describe(NOW + timedelta(seconds=10))] == ["dev"]
    index.replace([brief])
    assert index.last_used == {}  # a grant gone takes its last use with it


# --------------------------------------------------------------------------- credd env's file


def test_token_file_names_are_safe_and_distinct() -> None:
    assert token_file_name("dev") == "dev"
    assert token_file_name("team.dev@acme+x=1,2-3") == "team.dev@acme+x=1,2-3"
    odd = [token_file_name(n) for n in ("a/b", "a-b", "a b", "..", ".hidden", "", "é")]
    assert odd[1] == "a-b"
    assert len(set(odd)) == len(odd)
    for name in odd:
        assert name
        assert "/" not in name
        assert not name.startswith(".")
    assert len(token_file_name("x" * 300)) < 120


def test_credd_env_reuses_an_intact_live_token_and_replaces_anything_else(
    store: GrantStore, home: Home, tmp_path: Path
) -> None:
    directory = env_token_dir(home.settings())
    first = hand_out(store, directory, "dev", now=NOW)
    assert not first.reused
    assert first.token_file == directory / "dev"
    assert first.token_file.read_text() == first.token  # the token alone, no newline
    assert stat.S_IMODE(first.token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert first.token not in repr(first)

    again = hand_out(store, directory, "dev", now=NOW + timedelta(days=30))
    assert (again.reused, again.token, again.grant) == (True, first.token, first.grant)
    other = hand_out(store, directory, "admin", now=NOW)
    assert other.token != first.token

    # a file others may have read: a new token, and the old one ends
    first.token_file.chmod(0o644)
    widened = hand_out(store, directory, "dev", now=NOW)
    assert not widened.reused
    assert stat.S_IMODE(widened.token_file.stat().st_mode) == 0o600
    assert store.find(first.token) is None

    # a symlink to a planted file: never read as the token, never written through
    planted = tmp_path / "planted"
    planted.write_text("credd_" + "p" * 43)
    planted.chmod(0o600)
    widened.token_file.unlink()
    widened.token_file.symlink_to(planted)
    assert read_token_file(widened.token_file) is None
    linked = hand_out(store, directory, "dev", now=NOW)
    assert not linked.reused
    assert linked.token != "credd_" + "p" * 43
    assert planted.read_text() == "credd_" + "p" * 43
    assert not linked.token_file.is_symlink()
    assert store.find(widened.token) is None

    # revoked elsewhere: the intact file's token is dead, so a new one
    store.revoke(now=NOW, profile="dev")
    revived = hand_out(store, directory, "dev", now=NOW)
    assert not revived.reused
    assert [g.profile for g in store.load()] == ["admin", "dev"]


def test_two_credd_envs_at_once_agree_on_one_token(store: GrantStore, home: Home) -> None:
    directory = env_token_dir(home.settings())
    tokens: list[str] = []
    start = threading.Barrier(8)

    def one() -> None:
        start.wait()
        tokens.append(hand_out(store, directory, "dev", now=NOW).token)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(tokens)) == 1
    assert [g.purpose for g in store.load()] == ["env"]


def test_a_token_directory_that_is_not_ours_is_refused(store: GrantStore, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "env"
    link.symlink_to(real)
    with pytest.raises(CreddError, match="not a directory of your own"):
        hand_out(store, link, "dev", now=NOW)
    assert list(real.iterdir()) == []


# --------------------------------------------------------------------------- the endpoint


@pytest.fixture
async def world(home: Home, clocked: tuple[Emulator, ManualClock]) -> World:
    """A logged-in session; the connection bound the closing tests fill, and a long idle
    time so that only closing by the daemon frees a slot."""
    emu, clock = clocked
    home.write_credd_config(
        f"""\
        [server]
        listen = "127.0.0.1:0"
        max_connections = {MAX_CONNECTIONS}
        idle_connection_seconds = 120
        """
    )
    world = World(home, emu)
    await login(world.settings, clock)
    return world


@asynccontextmanager
async def serving(world: World) -> AsyncIterator[DaemonHandle]:
    async with running_daemon(world.settings, clock=world.clock) as daemon:
        await daemon.broker.credentials("dev", wait=None)
        yield daemon


async def granted(
    daemon: DaemonHandle, world: World, profile: str = "dev", ttl: float | None = None
) -> str:
    """``credd grant PROFILE``, as the CLI does it: the file, then the daemon told."""
    _, token = grant_store(world.settings).issue(
        profile, now=world.clock.now(), purpose="grant", ttl_seconds=ttl
    )
    await synced(daemon)
    return token


async def synced(daemon: DaemonHandle) -> None:
    status, body = await get(daemon, "/v1/grants/sync", method="POST")
    assert status == 200, body


def container_provider_keys(daemon: DaemonHandle, profile: str, token: str) -> str:
    """botocore's container provider, given only the token's value (as SDKs from before
    the token file are): the access key it got."""
    provider = ContainerProvider(
        environ={
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"{daemon.url}/v1/credentials/{profile}",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": token,
        }
    )
    creds = provider.load()
    assert creds is not None
    return str(creds.get_frozen_credentials().access_key)


REFUSED_TO_A_SCOPED_TOKEN = [
    ("GET", "/v1/credentials/admin"),
    ("GET", "/v1/credentials/nobody"),
    ("GET", "/v1/status"),
    ("GET", "/v1/tokens/analyst"),
    ("POST", "/v1/reload"),
    ("POST", "/v1/grants/sync"),
    ("POST", "/v1/sessions/my-sso/sync"),
    ("POST", "/v1/credentials/dev"),
    ("GET", "/v1/credentials/dev/x"),
    ("GET", "/v1/nothing"),
]


async def test_a_scoped_token_fetches_its_profile_and_nothing_else(world: World) -> None:
    async with serving(world) as daemon:
        token = await granted(daemon, world)
        status, body = await get(daemon, "/v1/credentials/dev", token=token)
        assert status == 200, body
        assert body["AccessKeyId"].startswith("ASIA")
        key = await anyio.to_thread.run_sync(container_provider_keys, daemon, "dev", token)
        assert key == body["AccessKeyId"]

        for method, path in REFUSED_TO_A_SCOPED_TOKEN:
            status, body = await get(daemon, path, token=token, method=method)
            assert status == 403, (method, path, body)
            assert body["code"] == body["Code"] == "Forbidden"
            assert body["message"] == body["Message"]
            assert set(body) == {"code", "message", "Code", "Message"}
            assert "admin" not in body["message"]  # nothing of what else is served

        # the admin token still unlocks everything
        assert (await get(daemon, "/v1/credentials/admin"))[0] == 200
        assert (await get(daemon, "/v1/status"))[0] == 200
        for wrong in ("", "x" * 43, token[:-1], token + "x", daemon.token[:-1]):
            status, body = await get(daemon, "/v1/credentials/dev", token=wrong)
            assert (status, body["Code"]) == (401, "Unauthorized"), wrong


async def test_status_lists_grants_and_their_last_use_never_their_value(world: World) -> None:
    async with serving(world) as daemon:
        token = await granted(daemon, world, ttl=3600)
        unused = await granted(daemon, world, "admin")
        world.clock.advance(5)
        assert (await get(daemon, "/v1/credentials/dev", token=token))[0] == 200
        status, doc = await get(daemon, "/v1/status")
        assert status == 200
        listed = {g["profile"]: g for g in doc["grants"]}
        assert listed["dev"]["id"] == digest(token)[:ID_LENGTH]
        assert listed["dev"]["purpose"] == "grant"
        assert listed["dev"]["last_used"] is not None
        assert listed["dev"]["expires"] is not None
        assert listed["admin"]["last_used"] is None
        assert listed["admin"]["expires"] is None
        text = json.dumps(doc)
        assert token not in text
        assert unused not in text


async def test_revoking_ends_access_at_once_and_a_lifetime_ends_it_on_time(world: World) -> None:
    # on a whole second: a lifetime ends on one (the file keeps whole seconds, rounded up)
    world.clock.set(world.clock.now().replace(microsecond=0) + timedelta(seconds=1))
    async with serving(world) as daemon:
        store = grant_store(world.settings)
        token = await granted(daemon, world)
        brief = await granted(daemon, world, ttl=60)
        assert (await get(daemon, "/v1/credentials/dev", token=token))[0] == 200
        store.revoke(now=world.clock.now(), token=token)
        await synced(daemon)
        assert (await get(daemon, "/v1/credentials/dev", token=token))[0] == 401

        assert (await get(daemon, "/v1/credentials/dev", token=brief))[0] == 200
        world.clock.advance(59)
        assert (await get(daemon, "/v1/credentials/dev", token=brief))[0] == 200
        world.clock.advance(1)
        assert (await get(daemon, "/v1/credentials/dev", token=brief))[0] == 401
        _, doc = await get(daemon, "/v1/status")
        assert doc["grants"] == []


async def test_a_change_by_another_writer_is_picked_up_by_the_watcher(world: World) -> None:
    """No sync request: the watcher sees the file replaced, the daemon re-reads it."""
    store = grant_store(world.settings)
    async with serving(world) as daemon:
        _, token = store.issue("dev", now=world.clock.now(), purpose="grant")
        keeper = daemon.control.grants
        assert keeper is not None
        await eventually(lambda: len(keeper.grants) == 1, what="the new grant being read")
        assert (await get(daemon, "/v1/credentials/dev", token=token))[0] == 200
        store.revoke(now=world.clock.now(), everything=True)
        await eventually(lambda: len(keeper.grants) == 0, what="the revocation being read")
        assert (await get(daemon, "/v1/credentials/dev", token=token))[0] == 401


async def test_grants_on_file_at_start_are_served(world: World) -> None:
    store = grant_store(world.settings)
    _, token = store.issue("dev", now=world.clock.now(), purpose="env")
    async with serving(world) as daemon:
        assert (await get(daemon, "/v1/credentials/dev", token=token))[0] == 200


async def test_an_unreadable_grants_file_is_logged_once_and_the_grants_held_stay(
    world: World,
) -> None:
    store = grant_store(world.settings)
    with captured_log("info") as logged:
        async with serving(world) as daemon:
            token = await granted(daemon, world)
            garbage = b'{"grants": "half'
            tmp = store.path.with_name("grants.new")
            tmp.write_bytes(garbage)
            tmp.replace(store.path)
            await synced(daemon)
            await synced(daemon)  # the same bad file again: no second line
            assert (await get(daemon, "/v1/credentials/dev", token=token))[0] == 200
            _, doc = await get(daemon, "/v1/status")
            assert "not valid JSON" in doc["grants_problem"]
            assert [g["profile"] for g in doc["grants"]] == ["dev"]

            store.revoke(now=world.clock.now(), everything=True)
            await synced(daemon)
            assert (await get(daemon, "/v1/credentials/dev", token=token))[0] == 401
            assert "grants_problem" not in (await get(daemon, "/v1/status"))[1]
    lines = [json.loads(line) for line in logged.getvalue().splitlines()]
    problems = [line for line in lines if line.get("event") == "grants_unreadable"]
    assert len(problems) == 1, problems
    assert problems[0]["level"] == "error"
    assert str(store.path) in problems[0]["error"]
    assert problems[0]["kept"] == 1
    assert token not in logged.getvalue()


# --------------------------------------------------------------------------- closing connections


def open_connections(daemon: DaemonHandle) -> int:
    connections = daemon.control.load.connections
    assert connections is not None
    return connections.open


async def closed_after_answer(
    daemon: DaemonHandle, head: str
) -> tuple[bytes, asyncio.StreamWriter]:
    """Send ``head`` on a keep-alive connection; everything read until the daemon closed it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(head.encode())
    with anyio.fail_after(30):  # a bound for a broken daemon only: it closes at once
        return await reader.read(), writer


def head(daemon: DaemonHandle, path: str, **headers: str) -> str:
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{daemon.port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return "\r\n".join(lines) + "\r\n\r\n"


@pytest.mark.parametrize(
    "kind", ["healthz", "no token", "wrong token", "scoped, other profile", "foreign Host"]
)
async def test_unauthenticated_keep_alives_no_longer_fill_the_connection_limit(
    world: World, kind: str
) -> None:
    async with serving(world) as daemon:
        scoped = await granted(daemon, world)
        request = {
            "healthz": head(daemon, "/healthz"),
            "no token": head(daemon, "/v1/credentials/dev"),
            "wrong token": head(daemon, "/v1/credentials/dev", Authorization="x" * 43),
            "scoped, other profile": head(daemon, "/v1/credentials/admin", Authorization=scoped),
            "foreign Host": head(daemon, "/v1/credentials/dev").replace(
                f"Host: 127.0.0.1:{daemon.port}", "Host: evil.example"
            ),
        }[kind]
        expected = {"healthz": 200, "foreign Host": 403, "scoped, other profile": 403}.get(
            kind, 401
        )
        # the grant's own requests are over: every slot is free for the test's
        await eventually(lambda: open_connections(daemon) == 0, what="every slot free")
        answers = await asyncio.gather(
            *(closed_after_answer(daemon, request) for _ in range(MAX_CONNECTIONS))
        )
        for answer, _ in answers:
            assert answer.startswith(f"HTTP/1.1 {expected} ".encode()), answer[:200]
            assert b"\r\nConnection: close\r\n" in answer
        # the clients still hold their ends open; the daemon has let go of its own
        await eventually(lambda: open_connections(daemon) == 0, what="every slot back")
        status, body = await get(daemon, "/v1/credentials/dev", token=scoped)
        assert status == 200, body
        assert daemon.control.document()["daemon"]["endpoint"]["refused_connections"] == 0
        for _, writer in answers:
            writer.close()


async def test_a_served_token_keeps_its_connection_alive(world: World) -> None:
    async with serving(world) as daemon:
        scoped = await granted(daemon, world)
        await eventually(lambda: open_connections(daemon) == 0, what="every slot free")
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        try:
            for token in (scoped, daemon.token, scoped):
                writer.write(head(daemon, "/v1/credentials/dev", Authorization=token).encode())
                with anyio.fail_after(30):
                    status_line = await reader.readline()
                    length = 0
                    while (line := await reader.readline()) != b"\r\n":
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                        assert not line.lower().startswith(b"connection: close")
                    body: dict[str, Any] = json.loads(await reader.readexactly(length))
                assert status_line.startswith(b"HTTP/1.1 200 "), status_line
                assert body["AccessKeyId"].startswith("ASIA")
            assert open_connections(daemon) == 1
        finally:
            writer.close()
