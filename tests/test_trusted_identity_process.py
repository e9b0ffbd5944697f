"""Trusted identity propagation with the real ``credd`` command, as subprocesses.

The README's CreateTokenWithIAM profile, ``credd serve``, ``credd login``,
``credd token``, ``credd status``, ``credd exec`` and ``credd logout`` run as
their own processes against the emulator (in the test's event loop); boto3
runs in a process of its own, reaching credd only through what ``credd exec``
puts in its environment. Nothing here waits for a lifetime to pass.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from credd.testing.emulator import Emulator
from credd.testing.emulator.iam_token import user_uuid
from credd.testing.emulator.identity_center import DEFAULT_APPLICATION_ARN
from credd.testing.emulator.state import TemporaryCredentials
from tests.support.configs import AWS_CONFIG, static_keys_profile
from tests.support.home import Home
from tests.support.process import WHOAMI, credd, issued_secrets, login, serving
from tests.support.world import World

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ANALYST_ARN = "arn:aws:sts::111111111111:assumed-role/Analyst/credd-analyst"


def readme_profile(jwt: Path, **changes: str) -> str:
    """The README's worked example, with the emulator's application; ``""`` drops a key."""
    table = {
        "type": '"create-token-with-iam"',
        "client_id": f'"{DEFAULT_APPLICATION_ARN}"',
        "sso_region": '"us-east-1"',
        "source_profile": '"app-iam"',
        "grant_type": f'"{JWT_BEARER}"',
        "assertion_file": f'"{jwt}"',
        "scopes": '["openid", "sts:identity_context"]',
        "role_arn": '"arn:aws:iam::111111111111:role/Analyst"',
        "role_session_name": '"credd-analyst"',
        "duration_seconds": "3600",
        "region": '"eu-west-1"',
        **changes,
    }
    lines = ['[server]\nlisten = "127.0.0.1:0"\n', "[profiles.analyst]"]
    lines += [f"{key} = {value}" for key, value in table.items() if value]
    return "\n".join(lines) + "\n"


def configure(world: World, **changes: str) -> None:
    """credd's config: the README's example, changed by ``changes``."""
    world.home.write_credd_config(readme_profile(world.assertion_file, **changes))


@pytest.fixture
def world(home: Home, emulator: object) -> World:
    assert isinstance(emulator, Emulator)
    world = World(home, emulator)
    home.write_aws_config(AWS_CONFIG + static_keys_profile(world.keys))
    return world


def identity_context_user(emu: Emulator, key: str) -> str | None:
    issued = emu.state.credentials[key]
    assert isinstance(issued, TemporaryCredentials)
    return issued.identity_context.user if issued.identity_context else None


async def whoami(env: dict[str, str], profile: str = "analyst") -> dict[str, Any]:
    result = await credd(env, "exec", profile, "--", sys.executable, "-c", WHOAMI)
    assert result.returncode == 0, str(result)
    seen: dict[str, Any] = json.loads(result.stdout)
    return seen


async def test_the_readme_example_end_to_end(world: World) -> None:
    emu = world.emu
    assertion = world.write_assertion()
    configure(world)
    async with world.serving() as daemon:
        seen = await whoami(world.env)
        assert seen["method"] == "container-role"
        assert seen["arn"] == ANALYST_ARN
        assert identity_context_user(emu, seen["key"]) == "alice"  # identity-enhanced
        exports = await credd(world.env, "env", "analyst")
        assert "export AWS_REGION=eu-west-1" in exports.stdout.splitlines()

        token = await credd(world.env, "token", "analyst")
        assert token.returncode == 0, str(token)
        assert token.stdout.strip() in emu.state.access_tokens
        assert token.stdout.count("\n") == 1

        status = await credd(world.env, "status", "--json")
        assert status.returncode == 0, str(status)
        session = next(s for s in json.loads(status.stdout)["sessions"] if s["name"] == "analyst")
        alice = user_uuid(emu.directory.identity_center, "alice")
        assert session["state"] == "ok"
        assert session["who"] == f"alice@example.com (Identity Store user {alice} in d-1234567890)"
        table = await credd(world.env, "status")
        assert f"alice@example.com (Identity Store user {alice}" in table.stdout

        secrets = [s for kind in issued_secrets(emu).values() for s in kind]
        secrets += [*emu.state.iam.identity_contexts, assertion, daemon.token]
        for output in (daemon.output(), status.stdout, table.stdout):
            for secret in secrets:
                assert secret not in output
        assert "session_token_renewed" in daemon.output()  # the log is there, and clean

    stored = world.home.root / ".local" / "state" / "credd" / "tokens"
    (cache,) = stored.iterdir()
    assert cache.stat().st_mode & 0o777 == 0o600
    assert json.loads(cache.read_text())["refreshToken"]


async def test_authorization_code_login_token_and_logout(world: World) -> None:
    configure(world, grant_type='"authorization_code"', assertion_file="")
    async with world.serving():
        before = await credd(world.env, "token", "analyst")
        assert before.returncode == 1
        assert "credd login analyst" in before.stderr

        logged_in = await login(world.env, "analyst")
        assert f"{world.emu.url}/authorize?" in logged_in.stderr
        assert "Logged in to analyst as alice" not in logged_in.stderr  # no assertion: no email
        assert "Identity Store user" in logged_in.stderr
        assert "The running daemon serves it now." in logged_in.stderr

        token = await credd(world.env, "token", "analyst")
        assert token.returncode == 0, str(token)
        assert token.stdout.strip() in world.emu.state.access_tokens
        seen = await whoami(world.env)
        assert seen["arn"] == ANALYST_ARN
        assert identity_context_user(world.emu, seen["key"]) == "alice"

        logged_out = await credd(world.env, "logout", "analyst")
        assert logged_out.returncode == 0, str(logged_out)
        after = await credd(world.env, "token", "analyst")
        assert after.returncode == 1
        assert "credd login analyst" in after.stderr
        assert "Traceback" not in after.stderr


async def test_token_exchange_signed_by_the_environment(world: World) -> None:
    env = {
        **world.env,
        "AWS_ACCESS_KEY_ID": world.keys.access_key_id,
        "AWS_SECRET_ACCESS_KEY": world.keys.secret_access_key.reveal(),
    }
    configure(
        world,
        grant_type=f'"{TOKEN_EXCHANGE}"',
        assertion_file="",
        subject_session='"my-sso"',
        source_profile="",  # the default chain: the environment's keys
    )
    async with serving(env, world.logs):
        await login(env, "my-sso")
        seen = await whoami(env)
        assert seen["arn"] == ANALYST_ARN
        assert identity_context_user(world.emu, seen["key"]) == "alice"
        token = await credd(env, "token", "analyst")
        assert token.returncode == 0, str(token)


async def test_a_bearer_only_profile_is_not_for_sdks(world: World) -> None:
    world.write_assertion()
    configure(world, role_arn="", role_session_name="", duration_seconds="", region="")
    async with world.serving():
        token = await credd(world.env, "token", "analyst")
        assert token.returncode == 0, str(token)
        env = await credd(world.env, "env", "analyst")
        assert env.returncode == 1
        assert "serves only a bearer token" in env.stderr
        assert "credd token analyst" in env.stderr


async def test_an_invalid_profile_is_one_line_naming_file_line_and_key(world: World) -> None:
    configure(world, assertion_file="")
    result = await credd(world.env, "status")
    assert result.returncode == 2
    text = world.home.credd_config.read_text()
    line = next(n for n, s in enumerate(text.splitlines(), 1) if s.startswith("grant_type"))
    assert result.stderr == (
        f"credd: {world.home.credd_config}:{line}: profiles.analyst.grant_type: "
        "the jwt-bearer grant needs assertion_file or assertion_command\n"
    )


async def test_commands_that_do_not_apply_say_so_in_one_line(world: World) -> None:
    world.write_assertion()
    configure(world)
    login_ = await credd(world.env, "login", "analyst")
    assert login_.returncode == 1
    assert login_.stderr.startswith("credd: analyst signs in with")
    assert "no login is needed" in login_.stderr
    async with world.serving():
        unknown = await credd(world.env, "token", "my-sso")  # not a trusted-identity session
        assert unknown.returncode == 1
        assert unknown.stderr.count("\n") == 1
        assert "no trusted-identity session named 'my-sso'" in unknown.stderr
