"""Real aiobotocore clients aimed at an emulator, and sign-ins run through them.

For tests, the emulator's own and credd's: :func:`aws_client` opens an
aiobotocore client for ``sso-oidc``, ``sso`` or ``sts`` at a base URL (unsigned
for the two bearer/OAuth services as botocore itself does, protocols.md §2.2;
SigV4 with the given keys for STS), with retries off unless asked for.
:func:`device_login` runs a whole device-code sign-in, the browser step
included, and :func:`role_keys` turns its access token into role credentials.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiobotocore.session import AioSession
from botocore import UNSIGNED
from botocore.config import Config

from .config import DEFAULT_START_URL
from .oauth import DEVICE_CODE_GRANT

DEFAULT_SCOPES = ("sso:account:access",)


@dataclass(frozen=True)
class Keys:
    """IAM credentials as a test hands them to botocore."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ClientRegistration:
    client_id: str
    client_secret: str = field(repr=False)


@dataclass(frozen=True)
class Tokens:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_in: int


@functools.cache
def _session() -> AioSession:
    """One session for all clients: botocore then loads each service model only once."""
    return AioSession()


@asynccontextmanager
async def aws_client(
    endpoint_url: str,
    service: str,
    keys: Keys | None = None,
    *,
    region: str = "us-east-1",
    attempts: int = 1,
    **config: Any,
) -> AsyncIterator[Any]:
    """An aiobotocore client; ``attempts`` counts the first try (standard retry mode)."""
    retries = {"mode": "standard", "total_max_attempts": attempts}
    signing = {"signature_version": UNSIGNED} if keys is None else {}
    credentials = (
        {}
        if keys is None
        else {
            "aws_access_key_id": keys.access_key_id,
            "aws_secret_access_key": keys.secret_access_key,
            "aws_session_token": keys.session_token,
        }
    )
    async with _session().create_client(
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(retries=retries, **signing, **config),
        **credentials,
    ) as client:
        yield client


async def register(
    oidc: Any, *, scopes: tuple[str, ...] = DEFAULT_SCOPES, **members: Any
) -> ClientRegistration:
    """RegisterClient as the CLI does for an sso-session (``scopes=()``: legacy)."""
    if scopes:
        members["scopes"] = list(scopes)
    answer = await oidc.register_client(clientName="credd-test", clientType="public", **members)
    return ClientRegistration(answer["clientId"], answer["clientSecret"])


async def visit(url: str) -> tuple[int, str | None]:
    """One browser GET without following redirects: the status and any ``Location``."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, allow_redirects=False) as response,
    ):
        await response.read()
        return response.status, response.headers.get("Location")


async def device_login(
    oidc: Any, registration: ClientRegistration, *, start_url: str = DEFAULT_START_URL
) -> Tokens:
    """StartDeviceAuthorization, the user's visit to the verification page, CreateToken."""
    started = await oidc.start_device_authorization(
        clientId=registration.client_id,
        clientSecret=registration.client_secret,
        startUrl=start_url,
    )
    status, _ = await visit(started["verificationUriComplete"])
    if status != 200:
        raise RuntimeError(f"the device verification page answered {status}")
    answer = await oidc.create_token(
        clientId=registration.client_id,
        clientSecret=registration.client_secret,
        grantType=DEVICE_CODE_GRANT,
        deviceCode=started["deviceCode"],
    )
    return Tokens(answer["accessToken"], answer.get("refreshToken"), answer["expiresIn"])


async def role_keys(sso: Any, access_token: str, account_id: str, role_name: str) -> Keys:
    """GetRoleCredentials, as the keys botocore signs with."""
    answer = await sso.get_role_credentials(
        accessToken=access_token, accountId=account_id, roleName=role_name
    )
    creds = answer["roleCredentials"]
    return Keys(creds["accessKeyId"], creds["secretAccessKey"], creds["sessionToken"])
