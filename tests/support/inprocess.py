"""The daemon in the test's own process: logging in without a person, asking it, proving identities.

``running_daemon()`` is entered in the test body (design.md, rule 12); these
are what a test does with the handle it gets.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import anyio
import boto3
from botocore.credentials import ContainerProvider

from credd.clock import Clock
from credd.config.settings import Settings, SsoSessionSpec
from credd.daemon import DaemonHandle
from credd.files.store import SsoToken
from credd.sessions.sso_login import LoginOptions, SsoLogin
from credd.wiring import aws_clients, sso_cache


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
