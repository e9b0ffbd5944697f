"""aiobotocore clients, and botocore's errors turned into credd's.

Every AWS call goes through a client made here, so the standard endpoint
overrides (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_<SERVICE>``, ``endpoint_url``
in a ``[services NAME]`` section) apply without credd resolving them itself:
botocore reads them from the environment and from the AWS config of the
profile the client is made for.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore import UNSIGNED
from botocore.exceptions import BotoCoreError, ClientError

from credd.errors import UpstreamError
from credd.secret import Secret

# HTTP statuses that say "try again later" whatever the error code.
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 509})
_THROTTLING_CODES = frozenset(
    {
        "SlowDownException",
        "TooManyRequestsException",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerException",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
    }
)


@dataclass(frozen=True)
class SigningKeys:
    """IAM credentials a client signs with."""

    access_key_id: str
    secret_access_key: Secret
    session_token: Secret | None


class AwsClients:
    """Makes short-lived aiobotocore clients that honour the AWS config's endpoint overrides."""

    def __init__(
        self,
        config_file: Path,
        credentials_file: Path,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
    ) -> None:
        self._config_file = config_file
        self._credentials_file = credentials_file
        self._sessions: dict[str | None, AioSession] = {}
        self._config = {
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            # One retry for a dropped connection or a 5xx; credd's own backoff does the rest.
            "retries": {"mode": "standard", "max_attempts": 2},
        }

    def _session(self, profile: str | None) -> AioSession:
        session = self._sessions.get(profile)
        if session is None:
            session = AioSession()
            session.set_config_variable("config_file", str(self._config_file))
            session.set_config_variable("credentials_file", str(self._credentials_file))
            if profile is not None:
                session.set_config_variable("profile", profile)
            self._sessions[profile] = session
        return session

    async def default_keys(self) -> SigningKeys:
        """The keys botocore's default chain finds: the environment, the shared files, ..."""
        try:
            found = await self._session(None).get_credentials()
            frozen = None if found is None else await found.get_frozen_credentials()
        except BotoCoreError as exc:
            raise UpstreamError(f"the default credential chain failed: {exc}") from exc
        if frozen is None or not frozen.access_key or not frozen.secret_key:
            raise UpstreamError(
                "the default credential chain found no credentials",
                transient=False,
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a source_profile",
            )
        return SigningKeys(
            str(frozen.access_key),
            Secret(str(frozen.secret_key)),
            Secret(str(frozen.token)) if frozen.token else None,
        )

    @contextlib.asynccontextmanager
    async def client(
        self,
        service: str,
        *,
        region: str,
        profile: str | None,
        keys: SigningKeys | None = None,
        attempts: int | None = None,
    ) -> AsyncIterator[Any]:
        """An open client for ``service``; unsigned unless ``keys`` are given.

        ``attempts`` overrides botocore's retries (1: none, for calls that must
        not be repeated, such as redeeming a single-use authorization code).
        """
        signing: dict[str, Any] = {}
        config = AioConfig(**self._config)
        if attempts is not None:
            retries = {"mode": "standard", "total_max_attempts": attempts}
            config = config.merge(AioConfig(retries=retries))
        if keys is None:
            config = config.merge(AioConfig(signature_version=UNSIGNED))
            # Keep botocore from looking for credentials it will never use.
            signing = {"aws_access_key_id": "unused", "aws_secret_access_key": "unused"}
        else:
            signing = {
                "aws_access_key_id": keys.access_key_id,
                "aws_secret_access_key": keys.secret_access_key.reveal(),
                "aws_session_token": keys.session_token.reveal() if keys.session_token else None,
            }
        try:
            async with self._session(profile).create_client(
                service, region_name=region, config=config, **signing
            ) as client:
                yield _Translating(client, service)
        except (ClientError, BotoCoreError) as exc:
            raise upstream_error(exc, service) from exc


class _Translating:
    """A client whose operations raise :class:`UpstreamError` instead of botocore's errors."""

    def __init__(self, client: Any, service: str) -> None:
        self._client = client
        self._service = service
        self.meta = client.meta

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        operation = getattr(self._client, name)

        async def call(**kwargs: Any) -> Any:
            try:
                return await operation(**kwargs)
            except (ClientError, BotoCoreError) as exc:
                raise upstream_error(exc, self._service) from exc

        return call


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def upstream_error(exc: ClientError | BotoCoreError, service: str) -> UpstreamError:
    """One credd error for whatever botocore raised; the AWS code is kept verbatim."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = str(error.get("Message") or exc.response.get("error_description") or "")
        transient = status in _TRANSIENT_STATUSES or code in _THROTTLING_CODES
        text = f"{service} answered {code or status}"
        return UpstreamError(
            f"{text}: {message}" if message else text,
            aws_code=code or None,
            transient=transient,
            status=status or None,
            oauth_error=str(exc.response.get("error") or "") or None,
        )
    # Connection failures, timeouts and unparsable answers: the network or the
    # service is having a bad moment; trying again later is the right thing.
    return UpstreamError(f"{service} could not be reached: {exc}", transient=True)
