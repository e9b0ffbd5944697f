"""Turning a session's access token, or another profile's keys, into role credentials.

One fetcher per served profile: ``sso:GetRoleCredentials`` for Identity
Center roles (protocols.md 3), STS ``AssumeRole`` for role chaining
(protocols.md 5). Fetchers only fetch; keeping credentials warm is the
broker's job.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Protocol

import anyio

from credd.aws import AwsClients, SigningKeys
from credd.clock import Clock
from credd.config import AssumeRoleProfile, ProcessProfile, ServedProfile, SsoRoleProfile
from credd.errors import LoginRequired, UpstreamError
from credd.secret import Secret
from credd.sessions import Session
from credd.sessions.identity_center import IdentityCenterSession
from credd.store import format_timestamp

#: portal answers that mean "this session may not have that role" (protocols.md 3)
_ROLE_UNAVAILABLE = frozenset({"ForbiddenException", "ResourceNotFoundException"})
_ARN_ACCOUNT = re.compile(r"^arn:[\w-]+:(?:iam|sts)::(\d{12}):")
DEFAULT_STS_REGION = "us-east-1"


@dataclass(frozen=True, eq=False)
class RoleCredentials:
    access_key_id: str
    secret_access_key: Secret
    session_token: Secret
    expiration: datetime
    account_id: str | None
    #: when credd received them: the start of their lifetime as far as credd knows
    received_at: datetime = field(compare=False)

    @cached_property
    def body(self) -> bytes:
        """The container-credentials answer (protocols.md 8.1, 8.3), made once."""
        document: dict[str, str] = {
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key.reveal(),
            "Token": self.session_token.reveal(),
            "Expiration": format_timestamp(self.expiration),
        }
        if self.account_id:
            document["AccountId"] = self.account_id
        return json.dumps(document).encode()

    def signing_keys(self) -> SigningKeys:
        return SigningKeys(self.access_key_id, self.secret_access_key, self.session_token)

    def __repr__(self) -> str:
        return (
            f"RoleCredentials(access_key_id={self.access_key_id!r}, "
            f"expiration={format_timestamp(self.expiration)}, account_id={self.account_id!r})"
        )


#: how long a credential_process may take
PROCESS_TIMEOUT_SECONDS = 60.0


async def process_keys(profile: ProcessProfile) -> SigningKeys:
    """Run a ``credential_process`` and read its ``Version`` 1 answer."""
    try:
        with anyio.fail_after(PROCESS_TIMEOUT_SECONDS):
            done = await anyio.run_process(shlex.split(profile.command), check=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UpstreamError(f"credential_process of profile {profile.name} failed: {exc}") from exc
    if done.returncode != 0:
        raise UpstreamError(
            f"credential_process of profile {profile.name} exited with {done.returncode}"
        )
    try:
        answer = json.loads(done.stdout)
        token = answer.get("SessionToken")
        return SigningKeys(
            str(answer["AccessKeyId"]),
            Secret(str(answer["SecretAccessKey"])),
            Secret(str(token)) if token else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UpstreamError(
            f"credential_process of profile {profile.name} printed no usable credentials"
        ) from exc


class Fetcher(Protocol):
    async def fetch(self) -> RoleCredentials: ...


class SsoRoleFetcher:
    """``sso:GetRoleCredentials`` with the session's bearer token."""

    def __init__(
        self,
        profile: SsoRoleProfile,
        session: IdentityCenterSession,
        *,
        clients: AwsClients,
        clock: Clock,
    ) -> None:
        self._profile = profile
        self._session = session
        self._clients = clients
        self._clock = clock

    async def fetch(self) -> RoleCredentials:
        token = await self._session.access_token()
        try:
            answer = await self._get(token)
        except UpstreamError as exc:
            if exc.aws_code != "UnauthorizedException":
                raise self._explain(exc) from exc
            # The token was revoked or logged out elsewhere: renew it once and retry.
            token = await self._session.token_rejected(token)
            try:
                answer = await self._get(token)
            except UpstreamError as again:
                if again.aws_code == "UnauthorizedException":
                    raise LoginRequired(
                        self._session.name, "the SSO portal refused the access token"
                    ) from again
                raise self._explain(again) from again
        try:
            role = answer["roleCredentials"]
            return RoleCredentials(
                access_key_id=str(role["accessKeyId"]),
                secret_access_key=Secret(str(role["secretAccessKey"])),
                session_token=Secret(str(role["sessionToken"])),
                # epoch milliseconds (protocols.md 3)
                expiration=datetime.fromtimestamp(int(role["expiration"]) / 1000, UTC),
                account_id=self._profile.account_id,
                received_at=self._clock.now(),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise UpstreamError("sso GetRoleCredentials answered without credentials") from exc

    async def _get(self, token: Secret) -> dict[str, Any]:
        spec = self._session.spec
        async with self._clients.client(
            "sso", region=spec.region, profile=self._profile.name
        ) as portal:
            answer: dict[str, Any] = await portal.get_role_credentials(
                roleName=self._profile.role_name,
                accountId=self._profile.account_id,
                accessToken=token.reveal(),
            )
            return answer

    def _explain(self, exc: UpstreamError) -> UpstreamError:
        if exc.aws_code in _ROLE_UNAVAILABLE or (exc.aws_code and not exc.transient):
            return UpstreamError(
                f"role {self._profile.role_name} in account {self._profile.account_id} is not "
                f"available to session {self._session.name}: {exc.message}",
                aws_code=exc.aws_code,
                transient=False,
                hint="check sso_account_id and sso_role_name in the AWS config",
            )
        return exc


class AssumeRoleFetcher:
    """STS ``AssumeRole`` signed with the source profile's credentials."""

    def __init__(
        self,
        profile: AssumeRoleProfile,
        source: Callable[[], Awaitable[SigningKeys]],
        *,
        clients: AwsClients,
        clock: Clock,
    ) -> None:
        self._profile = profile
        self._source = source
        self._clients = clients
        self._clock = clock

    @property
    def session_name(self) -> str:
        name = re.sub(r"[^\w+=,.@-]", "-", f"credd-{self._profile.name}")
        return self._profile.role_session_name or name[:64]

    async def fetch(self) -> RoleCredentials:
        profile = self._profile
        keys = await self._source()
        request: dict[str, Any] = {
            "RoleArn": profile.role_arn,
            "RoleSessionName": self.session_name,
        }
        if profile.duration_seconds is not None:
            request["DurationSeconds"] = profile.duration_seconds
        if profile.external_id is not None:
            request["ExternalId"] = profile.external_id
        try:
            async with self._clients.client(
                "sts", region=profile.region or DEFAULT_STS_REGION, profile=profile.name, keys=keys
            ) as sts:
                answer = await sts.assume_role(**request)
        except UpstreamError as exc:
            if exc.transient or exc.aws_code in {"ExpiredToken", "ExpiredTokenException"}:
                raise
            raise UpstreamError(
                f"cannot assume {profile.role_arn} from profile {profile.source_profile}: "
                f"{exc.message}",
                aws_code=exc.aws_code,
                transient=False,
                hint="check the role's trust policy, role_arn and external_id",
            ) from exc
        try:
            creds = answer["Credentials"]
            expiration = creds["Expiration"]
            if not isinstance(expiration, datetime):
                raise TypeError("Expiration is not a timestamp")
            match = _ARN_ACCOUNT.match(str(answer.get("AssumedRoleUser", {}).get("Arn", "")))
            match = match or _ARN_ACCOUNT.match(profile.role_arn)
            return RoleCredentials(
                access_key_id=str(creds["AccessKeyId"]),
                secret_access_key=Secret(str(creds["SecretAccessKey"])),
                session_token=Secret(str(creds["SessionToken"])),
                expiration=expiration.astimezone(UTC),
                account_id=match.group(1) if match else None,
                received_at=self._clock.now(),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError("sts AssumeRole answered without credentials") from exc


def make_fetcher(
    spec: ServedProfile,
    *,
    sessions: Mapping[str, Session],
    source_keys: Callable[[str], Awaitable[SigningKeys]],
    clients: AwsClients,
    clock: Clock,
) -> Fetcher:
    """The fetcher for one served profile, by its kind."""
    if isinstance(spec, SsoRoleProfile):
        session = sessions[spec.session]
        if not isinstance(session, IdentityCenterSession):
            raise TypeError(
                f"profile {spec.name}: {spec.session} is not an Identity Center session"
            )
        return SsoRoleFetcher(spec, session, clients=clients, clock=clock)
    return AssumeRoleFetcher(
        spec, functools.partial(source_keys, spec.source_profile), clients=clients, clock=clock
    )
