"""The real ``credd`` as subprocesses, checked by real consumers.

``credd serve``, ``credd login`` (the headless browser shim plays the user),
``status``, ``env``, ``exec``, ``credential-process`` and ``logout`` run as
their own processes against the emulator, which runs in the test's event loop
on a loopback port. Consumers are boto3, the AWS CLI and the Node.js SDK, each
in a process of its own, reaching the daemon only through what ``credd exec``
puts in their environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support.configs import ACCOUNT, AWS_CONFIG, LISTEN_ANY_PORT, START_URL
from tests.support.home import Home
from tests.support.process import (
    CREDD,
    NODE_DIR,
    WHOAMI,
    Daemon,
    address_file,
    caller_identity,
    command_line,
    credd,
    is_owner_only,
    issued_secrets,
    log_paths,
    login,
    run,
    runtime_dir,
    serving,
    status_json,
    token_file,
)
from tests.support.waiting import eventually
from tests.support.world import World

AWS_CLI = Path(sys.executable).parent / "aws"
SSO_ROLE_ARN = re.compile(
    rf"^arn:aws:sts::{ACCOUNT}:assumed-role/AWSReservedSSO_ReadOnly_[0-9a-f]{{16}}/alice$"
)
ADMIN_ARN = "arn:aws:sts::222222222222:assumed-role/Admin/credd-test"


async def served_keys(daemon: Daemon, profile: str) -> dict[str, Any]:
    answer = await daemon.get(f"/v1/credentials/{profile}")
    assert answer.status == 200, answer.text
    return answer.json()


def by_name(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {record["name"]: record for record in records}


# ----------------------------------------------------------- login, status, credential-process, env


async def test_login_then_status_credential_process_and_env(world: World) -> None:
    emu = world.emu
    async with world.serving() as daemon:
        before = await status_json(world.env)
        assert by_name(before["sessions"])["my-sso"]["state"] == "login-required"

        logged_in = await login(world.env)
        assert f"{emu.url}/authorize?" in logged_in.stderr  # the URL is always printed
        assert "code_challenge_method=S256" in logged_in.stderr
        assert logged_in.stdout == ""
        assert emu.calls["Authorize"] == 1

        doc = await status_json(world.env)
        assert doc["daemon"]["running"] is True
        assert doc["daemon"]["pid"] == daemon.pid
        assert doc["daemon"]["listen"] == f"127.0.0.1:{daemon.port}"
        session = by_name(doc["sessions"])["my-sso"]
        assert session["state"] == "ok", session
        assert session["last_error"] is None
        assert set(by_name(doc["profiles"])) == {"dev", "admin"}

        result = await credd(world.env, "credential-process", "dev")
        assert result.returncode == 0, str(result)
        keys = json.loads(result.stdout)
        assert set(keys) == {
            "Version",
            "AccessKeyId",
            "SecretAccessKey",
            "SessionToken",
            "Expiration",
        }
        assert keys["Version"] == 1
        assert keys["AccessKeyId"].startswith("ASIA")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", keys["Expiration"])
        identity = await anyio.to_thread.run_sync(caller_identity, emu.url, keys)
        assert identity["Account"] == ACCOUNT
        assert SSO_ROLE_ARN.match(identity["Arn"]), identity["Arn"]

        result = await credd(world.env, "env", "dev")
        assert result.returncode == 0, str(result)
        # a token scoped to dev, as a file (0600, the token alone) and as its value
        scoped_file = runtime_dir(world.env) / "env" / "dev"
        assert is_owner_only(scoped_file)
        scoped = scoped_file.read_text()
        assert scoped != daemon.token
        assert result.stdout.splitlines() == [
            "unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY "
            "AWS_SESSION_TOKEN AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "export AWS_CONTAINER_CREDENTIALS_FULL_URI="
            f"http://127.0.0.1:{daemon.port}/v1/credentials/dev",
            f"export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={shlex.quote(str(scoped_file))}",
            f"export AWS_CONTAINER_AUTHORIZATION_TOKEN={shlex.quote(scoped)}",
            "export AWS_REGION=eu-west-1",
            "export AWS_DEFAULT_REGION=eu-west-1",
        ]
        assert result.stderr == ""


# ----------------------------------------------------------------------------------- real consumers


async def test_real_consumers_through_credd_exec(world: World) -> None:
    async with world.serving() as daemon:
        await login(world.env)

        boto = await credd(world.env, "exec", "dev", "--", sys.executable, "-c", WHOAMI)
        assert boto.returncode == 0, str(boto)
        seen = json.loads(boto.stdout)
        assert seen["method"] == "container-role"  # botocore's container provider, not luck
        assert SSO_ROLE_ARN.match(seen["arn"]), seen
        assert seen["account"] == ACCOUNT
        dev = await served_keys(daemon, "dev")
        assert seen["key"] == dev["AccessKeyId"]

        cli = await credd(
            world.env,
            "exec",
            "dev",
            "--",
            str(AWS_CLI),
            "sts",
            "get-caller-identity",
            "--output",
            "json",
        )
        assert cli.returncode == 0, str(cli)
        identity = json.loads(cli.stdout)
        assert SSO_ROLE_ARN.match(identity["Arn"]), identity
        assert identity["Account"] == ACCOUNT

        # admin names no region of its own (nor does the AWS CLI inherit one): the caller's
        unregioned = {**world.env, "AWS_DEFAULT_REGION": "us-east-1"}
        admin = await credd(unregioned, "exec", "admin", "--", sys.executable, "-c", WHOAMI)
        assert admin.returncode == 0, str(admin)
        chained = json.loads(admin.stdout)
        assert chained["arn"] == ADMIN_ARN
        assert chained["key"] == (await served_keys(daemon, "admin"))["AccessKeyId"]
        assert chained["key"] != dev["AccessKeyId"]

        status = await credd(world.env, "exec", "dev", "--", "sh", "-c", "exit 7")
        assert status.returncode == 7, str(status)


async def test_node_sdk_through_credd_exec(world: World) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed (`node` not on PATH)")
    if not (NODE_DIR / "node_modules" / "@aws-sdk" / "credential-provider-http").is_dir():
        pytest.skip("tests/node/node_modules is missing: run `cd tests/node && npm install`")
    env = {**world.env, "AWS_ENDPOINT_URL_STS": world.emu.url}
    async with world.serving() as daemon:
        await login(world.env)
        result = await credd(env, "exec", "dev", "--", node, str(NODE_DIR / "whoami.mjs"))
        assert result.returncode == 0, str(result)
        seen = json.loads(result.stdout)
        assert SSO_ROLE_ARN.match(seen["arn"]), seen
        assert seen["account"] == ACCOUNT
        dev = await served_keys(daemon, "dev")
        assert seen["accessKeyId"] == dev["AccessKeyId"]
        # the SDK parsed credd's Expiration: the same instant, in JS's own spelling
        assert seen["expiration"] == dev["Expiration"].replace("Z", ".000Z")


# ------------------------------------------------------------------------------- the endpoint token


async def test_endpoint_token_file_and_no_secret_on_any_command_line(world: World) -> None:
    async with world.serving() as daemon:
        path = token_file(world.env)
        raw = path.read_bytes()
        assert path.stat().st_mode & 0o777 == 0o600
        assert is_owner_only(path)
        assert is_owner_only(path.parent)
        assert not raw.endswith(b"\n")
        assert len(raw) >= 43
        assert raw.decode("ascii") == daemon.token  # what the endpoint accepts

        await login(world.env)
        await served_keys(daemon, "dev")
        await served_keys(daemon, "admin")
        secrets = [daemon.token, *(s for kind in issued_secrets(world.emu).values() for s in kind)]

        cmdline = command_line(daemon.pid)
        assert b"serve" in cmdline
        ps = await run(["ps", "-eww", "-o", "pid=,args="], world.env)
        assert ps.returncode == 0, str(ps)
        assert f"{daemon.pid} " in ps.stdout
        # SDKs get a token scoped to the profile, as a file and as its value (for SDKs
        # that predate the file); never the admin token, which unlocks everything
        child = await credd(world.env, "exec", "dev", "--", "env")
        assert child.returncode == 0, str(child)
        variables = dict(line.split("=", 1) for line in child.stdout.splitlines() if "=" in line)
        scoped_file = runtime_dir(world.env) / "env" / "dev"
        assert variables["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] == str(scoped_file)
        assert is_owner_only(scoped_file)
        scoped = variables["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
        assert scoped_file.read_text() == scoped
        assert scoped.encode() not in cmdline
        assert scoped not in ps.stdout
        for secret in secrets:
            assert secret.encode() not in cmdline
            assert secret not in ps.stdout
            assert secret not in child.stdout


# ---------------------------------------------------------------------------- restart after kill -9


async def test_restart_after_kill_9_serves_without_a_new_login(world: World) -> None:
    emu = world.emu
    async with world.serving(name="first") as first:
        await login(world.env)
        await served_keys(first, "dev")
        calls = dict(emu.calls)
        first.process.send_signal(signal.SIGKILL)
        assert await first.process.wait() == -signal.SIGKILL
    assert calls["Authorize"] == calls["CreateToken"] == calls["RegisterClient"] == 1

    cached = json.loads(world.cache_file.read_text())
    assert cached["startUrl"] == START_URL
    assert cached["accessToken"]
    assert cached["refreshToken"]

    async with world.serving(name="second") as second:
        assert second.token == first.token  # SDKs holding the token file keep working
        keys = await served_keys(second, "dev")
        identity = await anyio.to_thread.run_sync(caller_identity, emu.url, keys)
        assert SSO_ROLE_ARN.match(identity["Arn"]), identity
        # no new browser login, no new code redeemed, no new registration
        assert emu.calls["Authorize"] == 1
        assert emu.calls["CreateToken"] == calls["CreateToken"]
        assert emu.calls["RegisterClient"] == 1
        assert emu.calls["GetRoleCredentials"] == calls["GetRoleCredentials"] + 1
        doc = await status_json(world.env)
        assert by_name(doc["sessions"])["my-sso"]["state"] == "ok"
        assert await second.stop() == 0

    assert json.loads(world.cache_file.read_text())["refreshToken"]


# -------------------------------------------------------------------------------- concurrent logins

GATED_BROWSER = """\
#!/bin/sh
# The user is slow to approve: this browser waits for the test to open the gate.
: > {opened}
while [ ! -e {gate} ]; do sleep 0.02; done
exec {real} "$@"
"""


async def test_two_logins_at_once_make_one_browser_authorization(
    world: World, tmp_path: Path
) -> None:
    emu = world.emu
    opened, gate = tmp_path / "browser-opened", tmp_path / "browser-gate"
    browser = tmp_path / "gated-browser"
    browser.write_text(
        GATED_BROWSER.format(
            opened=shlex.quote(str(opened)),
            gate=shlex.quote(str(gate)),
            real=shlex.quote(world.env["BROWSER"]),
        )
    )
    browser.chmod(0o700)
    env = {**world.env, "BROWSER": str(browser)}
    outputs = {name: log_paths(world.logs, f"login-{name}") for name in "ab"}
    results: dict[str, int] = {}

    async def one_login(name: str, task_status: anyio.abc.TaskStatus[None]) -> None:
        out, err = outputs[name]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            async with await anyio.open_process(
                [*CREDD, "login", "my-sso"],
                env=env,
                stdout=stdout,
                stderr=stderr,
            ) as process:
                task_status.started()
                results[name] = await process.wait()

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                await tg.start(one_login, "a")
                # a holds the login lock while its user is at the browser
                await eventually(opened.exists, what="the first login opening the browser")
                await tg.start(one_login, "b")
                await eventually(
                    lambda: "in progress" in outputs["b"][1].read_text(),
                    what="the second login saying another one is in progress",
                )
                gate.touch()  # the user approves, once
    finally:
        gate.touch()  # a failed test must not leave the browser polling forever

    first, second = (outputs[n][1].read_text() for n in "ab")
    assert results == {"a": 0, "b": 0}, (first, second)
    assert emu.calls["Authorize"] == 1
    assert emu.calls["RegisterClient"] == 1
    assert emu.calls["CreateToken"] == 1
    assert re.search(r"another login for my-sso is in progress", second), second
    assert "in progress" not in first
    assert json.loads(world.cache_file.read_text())["refreshToken"]


# -------------------------------------------------------------------------- malformed configuration


@dataclass(frozen=True)
class BadConfig:
    aws: str
    toml: str
    #: which file the one line must name: "aws" or "toml"
    names: str
    line: int
    #: what else the line must say: the key, the problem
    says: tuple[str, ...]


BAD_CONFIGS = {
    "aws config: a broken line": BadConfig(
        AWS_CONFIG.replace("region = eu-west-1\n", "region = eu-west-1\nthis line is broken\n"),
        LISTEN_ANY_PORT,
        "aws",
        11,
        ("[profile dev]",),
    ),
    "aws config: sso_account_id not 12 digits": BadConfig(
        AWS_CONFIG.replace(f"sso_account_id = {ACCOUNT}", "sso_account_id = 12345"),
        LISTEN_ANY_PORT,
        "aws",
        8,
        ("sso_account_id", "12 digits"),
    ),
    "toml: an unknown key": BadConfig(
        AWS_CONFIG, LISTEN_ANY_PORT + 'lisen = "127.0.0.1:0"\n', "toml", 3, ("server.lisen",)
    ),
    "toml: a wrong type": BadConfig(
        AWS_CONFIG,
        LISTEN_ANY_PORT + '[refresh]\ntoken_margin_seconds = "soon"\n',
        "toml",
        4,
        ("refresh.token_margin_seconds", "str"),
    ),
    "toml: listen not on loopback": BadConfig(
        AWS_CONFIG, '[server]\nlisten = "0.0.0.0:9911"\n', "toml", 2, ("server.listen", "loopback")
    ),
}


@pytest.mark.parametrize("case", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
async def test_malformed_config_stops_with_one_line(home: Home, case: BadConfig) -> None:
    home.write_aws_config(case.aws)
    home.write_credd_config(case.toml)
    env = dict(os.environ)
    named = home.aws_config if case.names == "aws" else home.credd_config
    with anyio.fail_after(20):  # a daemon that started anyway never exits: killed, failed
        async with anyio.create_task_group() as tg:
            results: dict[str, Any] = {}

            async def one(*args: str) -> None:
                results[args[0]] = await credd(env, *args)

            tg.start_soon(one, "serve")
            tg.start_soon(one, "status")
    assert not address_file(env).exists()
    for result in results.values():
        assert result.returncode != 0, str(result)
        assert result.stdout == "", str(result)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, str(result)
        assert "Traceback" not in result.stderr
        assert f"{named}:{case.line}:" in lines[0], lines[0]
        for text in case.says:
            assert text in lines[0], lines[0]


@pytest.mark.parametrize("position", ["before", "after"])
async def test_config_flag_before_or_after_the_command_name(
    home: Home, tmp_path: Path, position: str
) -> None:
    home.write_aws_config()
    home.write_credd_config(LISTEN_ANY_PORT)
    other = tmp_path / "other.toml"
    other.write_text('[server]\nlisten = "192.0.2.1:9911"\n')
    flag = ["--config", str(other)]
    args = [*flag, "status"] if position == "before" else ["status", *flag]
    result = await credd(dict(os.environ), *args)
    assert result.returncode != 0, str(result)
    assert len(result.stderr.splitlines()) == 1, str(result)
    assert f"{other}:2:" in result.stderr


# ----------------------------------------------------------------------------- a corrupt cache file


@pytest.mark.parametrize("state_home", [None, "state"], ids=["default", "XDG_STATE_HOME"])
async def test_corrupt_cache_is_reported_kept_and_replaced_by_login(
    world: World, tmp_path: Path, state_home: str | None
) -> None:
    if state_home is not None:
        world.env["XDG_STATE_HOME"] = str(tmp_path / state_home)
        unreadable = tmp_path / state_home / "credd" / "unreadable"
    else:
        unreadable = world.home.root / ".local" / "state" / "credd" / "unreadable"
    garbage = b'{"accessToken": "aoa-half-written\x00\xff'
    world.cache_file.parent.mkdir(parents=True)
    world.cache_file.write_bytes(garbage)
    world.cache_file.chmod(0o600)

    async with world.serving() as daemon:
        answer = await daemon.get("/v1/credentials/dev")
        assert answer.status == 503, answer.text
        body = answer.json()
        assert body["code"] == body["Code"] == "LoginRequired"
        assert "credd login my-sso" in body["message"]

        doc = await status_json(world.env)
        session = by_name(doc["sessions"])["my-sso"]
        assert session["state"] == "login-required"
        assert str(world.cache_file) in session["last_error"]
        assert session["action"] == "credd login my-sso"
        table = await credd(world.env, "status")
        assert table.returncode == 0, str(table)
        assert str(world.cache_file) in table.stdout
        assert "credd login my-sso" in table.stdout

        # what a tool using `credential_process = credd credential-process dev` shows
        process = await credd(world.env, "credential-process", "dev")
        assert process.returncode != 0
        assert process.stdout == ""
        assert len(process.stderr.splitlines()) == 1, str(process)
        assert "credd login my-sso" in process.stderr

        assert daemon.process.returncode is None
        assert (await daemon.get("/healthz")).status == 200
        assert world.cache_file.read_bytes() == garbage  # never silently overwritten
        assert not unreadable.exists()

        await login(world.env)
        assert json.loads(world.cache_file.read_text())["refreshToken"]
        copies = list(unreadable.iterdir())
        assert len(copies) == 1, copies
        assert copies[0].read_bytes() == garbage
        assert copies[0].stat().st_mode & 0o777 == 0o600
        await served_keys(daemon, "dev")


# ------------------------------------------------------------------------------------------- logout


async def test_logout_forgets_the_session_locally_and_upstream(world: World) -> None:
    emu = world.emu
    async with world.serving() as daemon:
        await login(world.env)
        await served_keys(daemon, "dev")
        assert world.cache_file.exists()

        result = await credd(world.env, "logout", "my-sso")
        assert result.returncode == 0, str(result)
        assert not world.cache_file.exists()
        assert emu.calls["Logout"] == 1
        assert emu.state.sessions
        assert all(session.revoked for session in emu.state.sessions.values())
        # offline, the session needs a login too
        assert daemon.process.returncode is None
    session = by_name((await status_json(world.env))["sessions"])["my-sso"]
    assert session["state"] == "login-required"
    assert session["action"] == "credd login my-sso"


async def test_logout_stops_a_running_daemon_serving_without_restart(world: World) -> None:
    async with world.serving() as daemon:
        await login(world.env)
        await served_keys(daemon, "dev")
        await served_keys(daemon, "admin")

        result = await credd(world.env, "logout", "my-sso")
        assert result.returncode == 0, str(result)
        assert not world.cache_file.exists()

        for profile in ("dev", "admin"):
            answer = await daemon.get(f"/v1/credentials/{profile}")
            assert answer.status == 503, answer.text
            assert answer.json()["code"] == "LoginRequired"
            assert "credd login my-sso" in answer.json()["message"]
        session = by_name((await status_json(world.env))["sessions"])["my-sso"]
        assert session["state"] == "login-required"
        assert daemon.process.returncode is None


# ------------------------------------------------------------------------------------------ secrets


async def test_no_secret_reaches_the_log_status_or_error_bodies(world: World) -> None:
    world.home.write_credd_config(LISTEN_ANY_PORT + '[log]\nformat = "json"\n')
    async with world.serving("--debug") as daemon:
        logged_in = await login(world.env, "my-sso", "--debug")
        dev = await served_keys(daemon, "dev")
        admin = await served_keys(daemon, "admin")
        status = await credd(world.env, "status", "--json")
        assert status.returncode == 0, str(status)

        # error bodies: a profile named like a secret, a wrong token that is a secret
        probe = "p" * 80 + daemon.token
        not_found = await daemon.get(f"/v1/credentials/{probe}")
        assert not_found.status == 404
        assert not_found.json()["code"] == "NotFound"
        long_secret = dev["Token"]
        assert len(long_secret) > 80
        not_found_too = await daemon.get(f"/v1/credentials/{long_secret}")
        assert not_found_too.status == 404
        refresh = json.loads(world.cache_file.read_text())["refreshToken"]
        refused = await daemon.get("/v1/credentials/dev", token=refresh)
        assert refused.status == 401
        no_route = await daemon.get(f"/v1/{'q' * 80}/{daemon.token}")
        assert no_route.status == 404

        assert await daemon.stop(signal.SIGTERM) == 0

    issued = issued_secrets(world.emu)
    for kind in ("access token", "refresh token", "client secret", "authorization code"):
        assert issued[kind], kind
    assert len(issued["secret access key"]) == len(issued["session token"]) == 2
    assert {dev["SecretAccessKey"], admin["SecretAccessKey"]} == set(issued["secret access key"])
    assert {dev["Token"], admin["Token"]} == set(issued["session token"])

    log = daemon.output()
    events = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert {"credd_ready", "credentials_fetched"} <= {e.get("event") for e in events}
    places = {
        "the daemon's output": log,
        "credd status --json": status.stdout,
        "credd --debug login": logged_in.stdout + logged_in.stderr,
        "a 404 for a profile named like the endpoint token": not_found.text,
        "a 404 for a profile named like a session token": not_found_too.text,
        "a 401 for a wrong token": refused.text,
        "a 404 for a route": no_route.text,
    }
    secrets = {"endpoint token": [daemon.token], **issued}
    for place, text in places.items():
        for kind, values in secrets.items():
            for value in values:
                assert value not in text, f"a {kind} in {place}"


# ----------------------------------------------------------------------------------------- stopping


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stop_signal_exits_0_and_removes_the_address_file(
    world: World, sig: signal.Signals
) -> None:
    async with world.serving() as daemon:
        address = address_file(world.env)
        assert address.read_text() == f"127.0.0.1:{daemon.port}"
        assert await daemon.stop(sig) == 0
        assert not address.exists()
        assert "Traceback" not in daemon.output()
        assert token_file(world.env).exists()


async def test_the_event_loop_is_uvloop_when_installed_unless_asked_otherwise(
    home: Home, tmp_path: Path
) -> None:
    home.write_aws_config(AWS_CONFIG)
    home.write_credd_config(LISTEN_ANY_PORT)
    env = dict(os.environ)
    async with serving({**env, "CREDD_EVENT_LOOP": "asyncio"}, tmp_path / "asyncio") as daemon:
        assert '"event_loop": "asyncio.' in daemon.output()

    if importlib.util.find_spec("uvloop") is None:
        refused = await credd({**env, "CREDD_EVENT_LOOP": "uvloop"}, "serve")
        assert refused.returncode == 2
        assert "uvloop is not installed" in refused.stderr
        assert "pip install 'credd[uvloop]'" in refused.stderr
    else:
        async with serving(env, tmp_path / "auto") as daemon:
            assert '"event_loop": "uvloop"' in daemon.output()

    bogus = await credd({**env, "CREDD_EVENT_LOOP": "trio"}, "serve")
    assert bogus.returncode == 2
    assert "CREDD_EVENT_LOOP: expected auto, asyncio or uvloop, found 'trio'" in bogus.stderr
