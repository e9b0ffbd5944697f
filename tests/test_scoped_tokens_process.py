"""Scoped tokens with the real ``credd``: grant, revoke, env, exec, status, a restart.

``credd serve`` and every command run as processes of their own against the emulator.
Consumers (boto3, the AWS CLI, the Node.js SDK) run in the environment a shell gets from
``eval "$(credd env PROFILE)"``, and only through it; the token in that environment
fetches that profile and nothing else, before and after the daemon restarts.
"""

from __future__ import annotations

import json
import shutil
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from tests.support.configs import ACCOUNT
from tests.support.process import (
    NODE_DIR,
    WHOAMI,
    Daemon,
    Result,
    credd,
    free_port,
    login,
    status_json,
    token_file,
)
from tests.support.shells import exported, run_in_printed_env, unset
from tests.support.waiting import DEADLINE, POLL
from tests.support.world import World

AWS_CLI = Path(sys.executable).parent / "aws"
TOKEN = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
TOKEN_FILE = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
FULL_URI = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
#: everything a scoped token for dev must be refused (403), with the admin token's answer
REFUSED = [
    ("GET", "/v1/credentials/admin", 200),
    ("GET", "/v1/status", 200),
    ("GET", "/v1/tokens/dev", 404),
    ("POST", "/v1/reload", 200),
    ("POST", "/v1/grants/sync", 200),
]


async def ask(daemon: Daemon, path: str, token: str, method: str = "GET") -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, daemon.url + path, headers={"Authorization": token}) as answer,
    ):
        return answer.status, json.loads(await answer.read())


async def status_of(daemon: Daemon, token: str, profile: str = "dev") -> int:
    return (await ask(daemon, f"/v1/credentials/{profile}", token))[0]


async def ok(result: Result) -> str:
    assert result.returncode == 0, str(result)
    return result.stdout


async def printed_env(world: World, profile: str = "dev") -> str:
    return await ok(await credd(world.env, "env", profile))


async def whoami(world: World, printed: str, *, without: tuple[str, ...] = ()) -> dict[str, Any]:
    """boto3's default chain in the environment of ``printed`` (minus ``without``)."""
    result = await run_in_printed_env(
        printed, [sys.executable, "-c", WHOAMI], world.env, unset=without
    )
    seen: dict[str, Any] = json.loads(await ok(result))
    return seen


def owner_only_text(path: Path) -> str:
    """What ``path`` holds; it must be a file of mode 0600."""
    assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    assert stat.S_ISREG(path.lstat().st_mode)
    return path.read_text()


# --------------------------------------------------------------------------- credd env


async def test_credd_env_serves_every_client_its_profile_and_nothing_else(world: World) -> None:
    async with world.serving() as daemon:
        await login(world.env)
        printed = await printed_env(world)
        values = exported(printed)
        scoped = values[TOKEN]
        assert values[FULL_URI] == f"{daemon.url}/v1/credentials/dev"
        assert len(scoped) == len("credd_") + 43
        assert scoped.startswith("credd_")
        assert scoped != daemon.token
        assert daemon.token not in printed
        path = Path(values[TOKEN_FILE])
        assert path != token_file(world.env)
        assert owner_only_text(path) == scoped  # the file holds that token and nothing else
        assert path.parent == token_file(world.env).parent / "env"
        assert TOKEN not in unset(printed)
        assert {"AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN"} <= set(unset(printed))
        assert values["AWS_REGION"] == values["AWS_DEFAULT_REGION"] == "eu-west-1"

        dev = (await ask(daemon, "/v1/credentials/dev", daemon.token))[1]
        seen = await whoami(world, printed)
        assert seen["method"] == "container-role"
        assert seen["key"] == dev["AccessKeyId"]
        assert seen["account"] == ACCOUNT
        # SDKs from before the token file send the value alone; this one does too now
        assert (await whoami(world, printed, without=(TOKEN_FILE,)))["key"] == dev["AccessKeyId"]

        cli = await run_in_printed_env(
            printed,
            [str(AWS_CLI), "sts", "get-caller-identity", "--output", "json"],
            world.env,
        )
        assert json.loads(await ok(cli))["Arn"] == seen["arn"]

        for method, route, admin_answer in REFUSED:
            status, body = await ask(daemon, route, scoped, method)
            assert status == 403, (method, route, body)
            assert set(body) == {"code", "message", "Code", "Message"}
            assert body["Code"] == "Forbidden"
            assert (await ask(daemon, route, daemon.token, method))[0] == admin_answer, route
        assert await status_of(daemon, scoped, "admin") == 403

        # again (a new shell): the same token, so the first shell keeps working
        assert exported(await printed_env(world))[TOKEN] == scoped
        # credd exec hands the same one, both ways
        child = await ok(await credd(world.env, "exec", "dev", "--", "env"))
        variables = dict(line.split("=", 1) for line in child.splitlines() if "=" in line)
        assert variables[TOKEN] == scoped
        assert variables[TOKEN_FILE] == str(path)
        assert daemon.token not in child

        # the grants file: the grant, never a token
        grants = world.home.root / ".local" / "state" / "credd" / "grants.json"
        stored = owner_only_text(grants)
        assert scoped not in stored
        assert daemon.token not in stored

        doc = await status_json(world.env)
        [listed] = doc["grants"]
        assert (listed["profile"], listed["purpose"]) == ("dev", "env")
        assert listed["last_used"] is not None
        assert listed["expires"] is None
        table = await ok(await credd(world.env, "status"))
        assert "SCOPED TOKENS" in table
        assert listed["id"] in table
        for text in (json.dumps(doc), table, daemon.output()):
            assert scoped not in text


async def test_node_sdk_through_credd_env(world: World) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed (`node` not on PATH)")
    if not (NODE_DIR / "node_modules" / "@aws-sdk" / "credential-provider-http").is_dir():
        pytest.skip("tests/node/node_modules is missing: run `cd tests/node && npm install`")
    env = {**world.env, "AWS_ENDPOINT_URL_STS": world.emu.url}
    async with world.serving() as daemon:
        await login(world.env)
        printed = await printed_env(world)
        result = await run_in_printed_env(printed, [node, str(NODE_DIR / "whoami.mjs")], env)
        seen = json.loads(await ok(result))
        dev = (await ask(daemon, "/v1/credentials/dev", daemon.token))[1]
        assert seen["accessKeyId"] == dev["AccessKeyId"]
        assert seen["account"] == ACCOUNT
        # and with a token scoped to another profile, nothing
        other = exported(await printed_env(world, "admin"))[TOKEN]
        refused = await run_in_printed_env(
            printed + f"\nexport {TOKEN}={other}\n",
            [node, str(NODE_DIR / "whoami.mjs")],
            env,
            unset=(TOKEN_FILE,),
        )
        assert refused.returncode != 0, str(refused)


# --------------------------------------------------------------------------- grant, revoke


async def test_grant_and_revoke_by_token_id_profile_and_all(world: World) -> None:
    async with world.serving() as daemon:
        await login(world.env)
        first = (await ok(await credd(world.env, "grant", "dev"))).strip()
        second = (await ok(await credd(world.env, "grant", "dev", "--ttl", "3600"))).strip()
        third = (await ok(await credd(world.env, "grant", "admin"))).strip()
        shell = exported(await printed_env(world))[TOKEN]
        assert len({first, second, third, shell}) == 4
        for token, profile in ((first, "dev"), (second, "dev"), (third, "admin"), (shell, "dev")):
            assert await status_of(daemon, token, profile) == 200, profile

        refused = await credd(world.env, "grant", "nobody")
        assert refused.returncode == 1
        assert refused.stdout == ""
        assert refused.stderr.splitlines() == [
            "credd: profile 'nobody' is not served (no such profile in the AWS config) "
            "(see credd status)"
        ]
        bad_ttl = await credd(world.env, "grant", "dev", "--ttl", "0")
        assert bad_ttl.returncode == 2
        assert "positive number of seconds" in bad_ttl.stderr

        # by the token itself: at once, when the command returns
        said = await ok(await credd(world.env, "revoke", first))
        assert said.startswith("revoked ")
        assert "(dev, grant, created " in said
        assert first not in said
        assert await status_of(daemon, first) == 401
        assert await status_of(daemon, second) == 200

        # by the id status shows
        ids = {g["expires"] is not None: g["id"] for g in (await status_json(world.env))["grants"]}
        said = await ok(await credd(world.env, "revoke", ids[True]))
        assert said.startswith(f"revoked {ids[True]} (dev, grant")
        assert await status_of(daemon, second) == 401

        # by profile: admin's end, dev's stay
        said = await ok(await credd(world.env, "revoke", "--profile", "admin"))
        assert said.count("revoked ") == 1
        assert await status_of(daemon, third, "admin") == 401
        assert await status_of(daemon, shell) == 200

        # all
        said = await ok(await credd(world.env, "revoke", "--all"))
        assert "(dev, env, " in said
        assert await status_of(daemon, shell) == 401
        assert (await status_json(world.env))["grants"] == []

        again = await credd(world.env, "revoke", first)
        assert again.returncode == 1
        assert len(again.stderr.splitlines()) == 1
        assert "no live scoped token" in again.stderr
        usage = await credd(world.env, "revoke", first, "--all")
        assert usage.returncode == 2

        # the shell's file is intact but its grant is gone: credd env issues a new one
        fresh = exported(await printed_env(world))[TOKEN]
        assert fresh != shell
        assert await status_of(daemon, fresh) == 200

        # a lifetime ends access by itself (a real second: nothing sleeps through it; the
        # exact instant is tested on the daemon's own clock in tests/test_grants.py)
        brief = (await ok(await credd(world.env, "grant", "dev", "--ttl", "1"))).strip()
        with anyio.fail_after(DEADLINE):
            while await status_of(daemon, brief) != 401:  # noqa: ASYNC110  # another process
                await anyio.sleep(POLL)
        assert await status_of(daemon, fresh) == 200


async def test_status_without_a_daemon_lists_the_grants_on_file(world: World) -> None:
    async with world.serving():
        token = (await ok(await credd(world.env, "grant", "dev", "--ttl", "600"))).strip()
    doc = await status_json(world.env)
    assert doc["daemon"]["running"] is False
    [listed] = doc["grants"]
    assert (listed["profile"], listed["purpose"], listed["last_used"]) == ("dev", "grant", None)
    table = await ok(await credd(world.env, "status"))
    assert listed["id"] in table
    assert token not in table
    # revoking needs no daemon either
    assert (await ok(await credd(world.env, "revoke", "--all"))).startswith("revoked ")


# --------------------------------------------------------------------------- a restart


async def test_what_credd_env_printed_keeps_working_across_a_restart(world: World) -> None:
    """The listen port is fixed, as it is by default (9911): the printed URL stays valid."""
    port = free_port()
    listen = f"127.0.0.1:{port}"
    world.home.write_credd_config(f'[server]\nlisten = "{listen}"\n')
    async with world.serving(name="first", listen=listen) as first:
        await login(world.env)
        printed = await printed_env(world)
        before = await whoami(world, printed)
        assert before["method"] == "container-role"
        assert await first.stop() == 0

    async with world.serving(name="second", listen=listen) as second:
        assert second.port == port
        after = await whoami(world, printed)
        assert after["arn"] == before["arn"]
        served = (await ask(second, "/v1/credentials/dev", second.token))[1]
        assert after["key"] == served["AccessKeyId"]
        assert (await whoami(world, printed, without=(TOKEN_FILE,)))["arn"] == before["arn"]
        assert exported(await printed_env(world))[TOKEN] == exported(printed)[TOKEN]
        second.process.send_signal(signal.SIGKILL)
        await second.process.wait()

    async with world.serving(name="third", listen=listen) as third:
        scoped = exported(printed)[TOKEN]
        assert await status_of(third, scoped) == 200
        assert await status_of(third, scoped, "admin") == 403
        await ok(await credd(world.env, "revoke", "--profile", "dev"))
        assert await status_of(third, scoped) == 401
