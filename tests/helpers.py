"""Test helpers: logging in without a person, asking the endpoint, proving identities."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import anyio
import boto3
import structlog
from botocore.credentials import ContainerProvider

from credd.clock import Clock
from credd.config.settings import Settings, SsoSessionSpec
from credd.daemon import DaemonHandle, aws_clients, sso_cache
from credd.files.store import SsoToken
from credd.log import configure_logging
from credd.sessions.sso_login import LoginOptions, SsoLogin
from credd.testing.emulator import AccessKey


@dataclass
class RecordingUI:
    """A LoginUI that remembers what it was asked to show."""

    prompts: list[tuple[str, str | None]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    opened: list[bool] = field(default_factory=list)

    def prompt(self, url: str, user_code: str | None, deadline: datetime) -> None:
        self.prompts.append((url, user_code))

    def browser_opened(self, opened: bool) -> None:
        self.opened.append(opened)

    def notice(self, message: str) -> None:
        self.notices.append(message)


def static_keys_profile(keys: AccessKey, name: str = "app-iam") -> str:
    """An AWS config ``[profile NAME]`` with an emulator IAM user's static keys."""
    return (
        f"\n[profile {name}]\n"
        f"aws_access_key_id = {keys.access_key_id}\n"
        f"aws_secret_access_key = {keys.secret_access_key.reveal()}\n"
    )


async def login(
    settings: Settings,
    clock: Clock,
    name: str = "my-sso",
    *,
    device: bool = False,
    ui: RecordingUI | None = None,
) -> SsoToken:
    """``credd login NAME`` in process; ``$BROWSER`` (the test browser) approves."""
    spec = settings.session_for(name)
    assert isinstance(spec, SsoSessionSpec)
    return await SsoLogin(
        spec,
        cache=sso_cache(settings),
        clients=aws_clients(settings),
        clock=clock,
        ui=ui or RecordingUI(),
        options=LoginOptions(device=device),
    ).run()


async def get(
    handle: DaemonHandle,
    path: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    method: str = "GET",
) -> tuple[int, dict[str, Any]]:
    """One request to the daemon; (status, JSON body)."""
    sent = {"Authorization": handle.token if token is None else token, **(headers or {})}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, handle.url + path, headers=sent) as answer,
    ):
        return answer.status, json.loads(await answer.read())


def _identity(
    uri: str, token_file: str, sts_url: str, raw: list[bytes] | None = None
) -> dict[str, Any]:
    provider = ContainerProvider(
        environ={
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": uri,
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": token_file,
        }
    )
    creds = provider.load()
    assert creds is not None, "botocore's container provider found no credentials"
    frozen = creds.get_frozen_credentials()
    sts = boto3.client(
        "sts",
        region_name="us-east-1",
        endpoint_url=sts_url,
        aws_access_key_id=frozen.access_key,
        aws_secret_access_key=frozen.secret_key,
        aws_session_token=frozen.token,
    )
    if raw is not None:  # what botocore's parser drops (an identity-enhanced OnBehalfOf)
        sts.meta.events.register(
            "after-call.sts.GetCallerIdentity",
            lambda http_response, **_: raw.append(http_response.content),
        )
    identity: dict[str, Any] = sts.get_caller_identity()
    return identity


async def sdk_identity(
    handle: DaemonHandle,
    settings: Settings,
    profile: str,
    sts_url: str,
    *,
    raw: list[bytes] | None = None,
) -> dict[str, Any]:
    """What STS says of the credentials botocore's container provider gets from credd.

    ``raw`` collects the answer's XML, which has what botocore's parser drops.
    """
    call: Callable[[], dict[str, Any]] = lambda: _identity(  # noqa: E731
        f"{handle.url}/v1/credentials/{profile}", str(settings.server.token_file), sts_url, raw
    )
    return await anyio.to_thread.run_sync(call)


async def eventually(predicate: Callable[[], bool], *, within: float = 10.0) -> None:
    """Wait for background work to reach a state (never for a token lifetime)."""
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110  # polling another task's state is the point
            await anyio.sleep(0.01)


@contextlib.contextmanager
def captured_log(level: str = "debug") -> Iterator[io.StringIO]:
    """Everything credd (and botocore, aiohttp) logs meanwhile, as ``credd serve`` renders it.

    Logging is process-wide: the configuration before is put back afterwards.
    """
    stream = io.StringIO()
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    configure_logging(level, "json", stream)
    try:
        yield stream
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(root_level)
