"""AWS Sign-In end to end with the real ``credd`` as subprocesses and real consumers.

``credd serve`` runs; ``credd login console --signin`` (the headless browser
shim plays the user) or ``--remote`` (the test reads the confirmation page and
pastes the code on stdin) signs a new profile in, writes ``login_session`` into
the AWS config, and the running daemon serves it at once. boto3 and the Node.js
SDK then prove the identity with GetCallerIdentity through ``credd exec``.
The emulator runs on the real clock here: nothing waits for a lifetime.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from datetime import UTC, datetime
from typing import Any

import aiohttp
import anyio
import pytest

from credd.sessions.dpop import DpopKey
from credd.testing.emulator import Emulator
from tests.support.configs import ACCOUNT, USER_ARN
from tests.support.home import Home
from tests.support.process import (
    COMMAND_DEADLINE,
    CREDD,
    NODE_DIR,
    WHOAMI,
    caller_identity,
    credd,
    log_paths,
    serving,
    status_json,
)
from tests.support.waiting import eventually
from tests.support.world import World

AWS_CONFIG = """\
# profiles of mine
[profile console]
output = json

[profile console-admin]
role_arn = arn:aws:iam::222222222222:role/Admin
source_profile = console
role_session_name = credd-console
"""


@pytest.fixture
def world(home: Home, emulator: object) -> World:
    assert isinstance(emulator, Emulator)
    home.write_aws_config(AWS_CONFIG)
    home.write_credd_config('[server]\nlisten = "127.0.0.1:0"\n')
    return World(home, emulator)


async def signin(world: World, *args: str) -> str:
    """``credd [ARGS] login console --signin``; its stderr."""
    result = await credd(world.env, *args, "login", "console", "--signin")
    assert result.returncode == 0, str(result)
    assert result.stdout == ""
    return result.stderr


async def test_signin_login_is_served_at_once_to_boto3_and_node(world: World) -> None:
    emu = world.emu
    async with serving(world.env, world.logs) as daemon:
        before = await daemon.get("/v1/credentials/console")
        assert before.status == 404  # not a served profile yet: no login_session

        said = await signin(world)
        assert f"{emu.url}/v1/authorize?response_type=code" in said  # the URL is always shown
        assert "code_challenge_method=SHA-256" in said
        assert f"Logged in to profile console as {USER_ARN}" in said
        assert "The running daemon serves it now." in said
        config = world.home.aws_config.read_text()
        assert config == AWS_CONFIG.replace(
            "output = json\n", f"output = json\nlogin_session = {USER_ARN}\nregion = us-east-1\n"
        )
        assert world.cached()["clientId"] == "arn:aws:signin:::devtools/same-device"

        boto = await credd(world.env, "exec", "console", "--", sys.executable, "-c", WHOAMI)
        assert boto.returncode == 0, str(boto)
        seen = json.loads(boto.stdout)
        assert seen["method"] == "container-role"  # through credd, not the login cache
        assert seen["arn"] == USER_ARN
        assert seen["account"] == ACCOUNT
        assert seen["key"] == world.cached()["accessToken"]["accessKeyId"]

        unregioned = {**world.env, "AWS_DEFAULT_REGION": "us-east-1"}  # admin names none
        admin = await credd(unregioned, "exec", "console-admin", "--", sys.executable, "-c", WHOAMI)
        assert admin.returncode == 0, str(admin)
        assert json.loads(admin.stdout)["arn"] == (
            "arn:aws:sts::222222222222:assumed-role/Admin/credd-console"
        )

        node = shutil.which("node")
        if node is not None and (NODE_DIR / "node_modules" / "@aws-sdk").is_dir():
            env = {**world.env, "AWS_ENDPOINT_URL_STS": emu.url}
            js = await credd(env, "exec", "console", "--", node, str(NODE_DIR / "whoami.mjs"))
            assert js.returncode == 0, str(js)
            seen_js = json.loads(js.stdout)
            assert seen_js["arn"] == USER_ARN
            assert seen_js["account"] == ACCOUNT
            assert seen_js["accessKeyId"] == seen["key"]
            served = (await daemon.get("/v1/credentials/console")).json()
            assert seen_js["expiration"] == served["Expiration"].replace("Z", ".000Z")

        doc = await status_json(world.env)
        session = next(s for s in doc["sessions"] if s["name"] == USER_ARN)
        assert session["kind"] == "signin"
        assert session["state"] == "ok"
        profile = next(p for p in doc["profiles"] if p["name"] == "console")
        assert (profile["kind"], profile["source"]) == ("signin", USER_ARN)
        env_lines = await credd(world.env, "env", "console")
        assert "export AWS_REGION=us-east-1" in env_lines.stdout.splitlines()
        assert emu.calls["CreateOAuth2Token"] == 1
        assert daemon.process.returncode is None

    if node is None:
        pytest.skip("Node.js is not installed: the boto3 half ran, the Node.js half did not")


async def test_remote_login_reads_the_code_pasted_on_stdin(world: World) -> None:
    stdout_path, stderr_path = log_paths(world.logs, "login-remote")
    async with serving(world.env, world.logs) as daemon:
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = await anyio.open_process(
                [*CREDD, "login", "console", "--signin", "--remote"],
                env=world.env,
                stdout=out,
                stderr=err,
            )
        async with process:
            assert process.stdin is not None
            with anyio.fail_after(COMMAND_DEADLINE):
                await eventually(
                    lambda: "/v1/authorize?" in stderr_path.read_text(), what="the URL shown"
                )
                url = next(
                    word for word in stderr_path.read_text().split() if "/v1/authorize?" in word
                )
                assert "client_id=arn%3Aaws%3Asignin%3A%3A%3Adevtools%2Fcross-device" in url
                # the user's browser on another device, then the code shown on the page
                async with aiohttp.ClientSession() as http, http.get(url) as page:
                    assert page.status == 200
                    text = await page.text()
                code = text.split('id="verification-code">', 1)[1].split("<", 1)[0]
                await process.stdin.send(code.encode() + b"\n")
                assert await process.wait() == 0, stderr_path.read_text()
        said = stderr_path.read_text()
        assert "paste the verification code" in said
        assert code not in said
        assert world.cached()["clientId"] == "arn:aws:signin:::devtools/cross-device"
        answer = await daemon.get("/v1/credentials/console")
        assert answer.status == 200, answer.text
        identity = await anyio.to_thread.run_sync(caller_identity, world.emu.url, answer.json())
        assert identity["Arn"] == USER_ARN


async def test_the_emulator_refuses_forged_and_replayed_proofs_and_credd_keeps_working(
    world: World,
) -> None:
    emu = world.emu
    async with serving(world.env, world.logs) as daemon:
        await signin(world)
        cached = world.cached()
        key = DpopKey.from_pem(cached["dpopKey"])
        url = f"{emu.url}/v1/token"
        grant = {"clientId": cached["clientId"], "grantType": "refresh_token"}
        now = datetime.now(UTC)

        async def token_call(body: dict[str, str], proof: str) -> tuple[int, dict[str, Any]]:
            async with (
                aiohttp.ClientSession() as http,
                http.post(url, json=body, headers={"DPoP": proof}) as answer,
            ):
                return answer.status, await answer.json()

        # forged: the session's public key in the header, signed by another key
        honest = key.proof(method="POST", url=url, now=now)
        other = DpopKey.generate().proof(method="POST", url=url, now=now)
        forged = ".".join([*honest.split(".")[:2], other.split(".")[2]])
        status, body = await token_call({**grant, "refreshToken": cached["refreshToken"]}, forged)
        assert (status, body["error"]) == (400, "INVALID_REQUEST")
        assert "signature does not verify" in body["message"]

        # another key's honest proof: the refresh token is bound to the session's key
        status, body = await token_call({**grant, "refreshToken": cached["refreshToken"]}, other)
        assert (status, body["error"]) == (400, "INVALID_REQUEST")
        assert "bound to another key" in body["message"]

        # replayed: a proof that was verified once is spent, whatever came of its request
        status, _ = await token_call({**grant, "refreshToken": "not-a-refresh-token"}, honest)
        assert status == 400
        status, body = await token_call({**grant, "refreshToken": cached["refreshToken"]}, honest)
        assert (status, body["error"]) == (400, "INVALID_REQUEST")
        assert "jti has been used before" in body["message"]

        # credd's own proofs were all accepted, and the session is untouched by the attempts
        assert world.cached()["refreshToken"] == cached["refreshToken"]
        process = await credd(world.env, "credential-process", "console")
        assert process.returncode == 0, str(process)
        keys = json.loads(process.stdout)
        assert (await anyio.to_thread.run_sync(caller_identity, emu.url, keys))["Arn"] == USER_ARN
        doc = await status_json(world.env)
        assert next(s for s in doc["sessions"] if s["name"] == USER_ARN)["state"] == "ok"
        assert "ValidationException" not in daemon.output()


async def test_logout_forgets_the_session_and_the_daemon_stops_serving_it(world: World) -> None:
    async with serving(world.env, world.logs) as daemon:
        await signin(world)
        assert (await daemon.get("/v1/credentials/console")).status == 200
        result = await credd(world.env, "logout", "console")
        assert result.returncode == 0, str(result)
        assert not world.cache_path().exists()
        answer = await daemon.get("/v1/credentials/console")
        assert answer.status == 503, answer.text
        assert "credd login console --signin" in answer.json()["message"]
        assert f"login_session = {USER_ARN}" in world.home.aws_config.read_text()  # kept

        # a login_session profile needs no --signin; a role on it logs its source in
        again = await credd(world.env, "login", "console-admin")
        assert again.returncode == 0, str(again)
        assert f"Logged in to profile console as {USER_ARN}" in again.stderr
        assert (await daemon.get("/v1/credentials/console-admin")).status == 200
        assert (await credd(world.env, "logout", USER_ARN)).returncode == 0  # by its ARN too
        assert not world.cache_path().exists()
    offline = await status_json(world.env)
    session = next(s for s in offline["sessions"] if s["name"] == USER_ARN)
    assert session["state"] == "login-required"
    assert session["action"] == "credd login console --signin"


async def test_no_secret_reaches_the_daemon_log_or_the_login_output(world: World) -> None:
    world.home.write_credd_config('[server]\nlisten = "127.0.0.1:0"\n[log]\nformat = "json"\n')
    async with serving(world.env, world.logs, "--debug") as daemon:
        said = await signin(world, "--debug")
        served = (await daemon.get("/v1/credentials/console")).json()
        chained = (await daemon.get("/v1/credentials/console-admin")).json()
        status = await credd(world.env, "status", "--json")
        cached = world.cached()
        assert await daemon.stop(signal.SIGTERM) == 0
    log = daemon.output()
    events = {json.loads(line).get("event") for line in log.splitlines() if line.strip()}
    assert {"credd_ready", "session_token_adopted", "credentials_fetched"} <= events
    secrets = {
        "refresh token": cached["refreshToken"],
        "id token": cached["idToken"],
        "secret access key": served["SecretAccessKey"],
        "session token": served["Token"],
        "chained secret access key": chained["SecretAccessKey"],
        **{
            f"dpopKey line {i}": line for i, line in enumerate(cached["dpopKey"].splitlines()[1:-1])
        },
    }
    for place, text in {
        "the daemon's log": log,
        "credd --debug login": said,
        "credd status --json": status.stdout,
    }.items():
        for kind, secret in secrets.items():
            assert secret not in text, f"a {kind} in {place}"


@pytest.mark.parametrize(
    ("refusal", "says"),
    [
        ("the user", "the sign-in was refused: The user denied the authorization request"),
        ("the policy", "the signed-in principal may not use AWS Sign-In for local development"),
    ],
)
async def test_a_refused_signin_login_says_why_in_one_line(
    world: World, refusal: str, says: str
) -> None:
    if refusal == "the user":
        world.emu.auto_approve = False  # the person at the browser denies the sign-in
    else:
        world.emu.signin_deny_permission()
    result = await credd(world.env, "login", "console", "--signin")
    assert result.returncode == 1, str(result)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr, str(result)
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("credd:")] == [lines[-1]], str(result)
    assert lines[-1].startswith(f"credd: {says}"), str(result)
    assert world.home.aws_config.read_text() == AWS_CONFIG  # no login_session written
    assert not world.cache_path().exists()
