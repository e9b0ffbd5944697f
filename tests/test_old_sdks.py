"""SDKs older than the token file, working from what ``credd env PROFILE`` prints.

Clients that predate ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`` (late 2023) send only the
value of ``AWS_CONTAINER_AUTHORIZATION_TOKEN``. Debian 12 ships two, which run here as
programs of their own (:mod:`tests.support.old_sdks`): botocore 1.29 and the Go SDK v2.
Each runs against a real ``credd serve`` and the emulator, in the environment a shell gets
from ``eval "$(credd env dev)"``, and must prove the identity of ``dev`` (STS
GetCallerIdentity) and nothing more: the token in that environment unlocks ``dev`` only.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from tests.support.old_sdks import OldClient, debian_botocore, debian_go_sdk, run_client
from tests.support.process import Daemon, caller_identity, credd, login
from tests.support.world import World

TOKEN = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
FULL_URI = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
#: the provider each client names as the source of its credentials: the container endpoint
CONTAINER_SOURCES = {"container-role", "CredentialsEndpointProvider"}


@pytest.fixture(scope="session")
def go_sdk(tmp_path_factory: pytest.TempPathFactory) -> OldClient:
    """The Go client, built once per run (about 10 s cold)."""
    return debian_go_sdk(tmp_path_factory.mktemp("oldsdk-go"))


@pytest.fixture(params=["botocore", "go"])
def old_client(request: pytest.FixtureRequest) -> OldClient:
    if request.param == "botocore":
        return debian_botocore()
    client = request.getfixturevalue("go_sdk")
    assert isinstance(client, OldClient)
    return client


async def served_keys(daemon: Daemon, profile: str) -> dict[str, Any]:
    """What the daemon serves for ``profile``, asked with the admin token."""
    answer = await daemon.get(f"/v1/credentials/{profile}")
    assert answer.status == 200, answer.text
    return answer.json()


async def printed_env(world: World, profile: str) -> str:
    result = await credd(world.env, "env", profile)
    assert result.returncode == 0, str(result)
    return result.stdout


async def test_an_old_sdk_proves_the_identity_from_credd_env(
    world: World, old_client: OldClient
) -> None:
    async with world.serving() as daemon:
        await login(world.env)
        printed = await printed_env(world, "dev")

        seen = await run_client(old_client, printed, world.env, world.emu.url)
        assert seen.failed is None, f"{old_client.name}:\n{seen.result}"
        dev = await served_keys(daemon, "dev")
        expected = await anyio.to_thread.run_sync(caller_identity, world.emu.url, dev)
        assert seen.said["arn"] == expected["Arn"]
        assert seen.said["account"] == expected["Account"]
        assert seen.said["accessKeyId"] == dev["AccessKeyId"]  # dev's keys, from credd
        assert seen.said["source"] in CONTAINER_SOURCES, seen.said

        # it worked through the value alone: this client does not read the token file
        blind = await run_client(old_client, printed, world.env, world.emu.url, unset=[TOKEN])
        assert blind.failed == "credentials", f"{old_client.name}:\n{blind.result}"
        assert blind.status == 401, blind.said


async def test_the_token_from_credd_env_unlocks_that_profile_only(
    world: World, old_client: OldClient
) -> None:
    async with world.serving() as daemon:
        await login(world.env)
        printed = await printed_env(world, "dev")
        await served_keys(daemon, "admin")  # admin is served: a refusal is the token's scope

        # the same client and token, pointed at another profile's URL
        admin_url = f"{daemon.url}/v1/credentials/admin"
        other = await run_client(
            old_client, printed, world.env, world.emu.url, override={FULL_URI: admin_url}
        )
        assert other.failed == "credentials", f"{old_client.name}:\n{other.result}"
        # 403, not 401: the daemon knew the token, and it does not grant admin
        assert other.status == 403, other.said
