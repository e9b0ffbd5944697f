"""Turning a session's access token, or another profile's keys, into role credentials.

One fetcher per served profile: ``sso:GetRoleCredentials`` for Identity
Center roles (protocols.md 3), STS ``AssumeRole`` for role chaining, and
``AssumeRole`` with the identity context of a trusted-identity session for
identity-enhanced role sessions (protocols.md 5). Fetchers only fetch;
keeping credentials warm is the broker's job.
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
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from credd.aws import Answer, AwsClients, SigningKeys
from credd.clock import Clock
from credd.config.settings import (
    AssumeRoleProfile,
    IdentityEnhancedProfile,
    ProcessProfile,
    ServedProfile,
    SigningSource,
    SigninProfile,
    SsoRoleProfile,
    StaticKeysProfile,
)
from credd.errors import LoginRequired, UpstreamError
from credd.files.store import format_timestamp
from credd.platform.process import child_environment
from credd.secret import Secret
from credd.sessions.identity_center import IdentityCenterSession
from credd.sessions.trusted_identity import TrustedIdentitySession

if TYPE_CHECKING:
    # Sign-In (and the cryptography its DPoP proofs need, some 7 MB) is imported
    # only where a login_session profile is served.
    from credd.sessions.signin import SigninSession

#: portal answers that mean "this session may not have that role" (protocols.md 3)
_ROLE_UNAVAILABLE = frozenset({"ForbiddenException", "ResourceNotFoundException"})
_ARN_ACCOUNT = re.compile(r"^arn:[\w-]+:(?:iam|sts)::(\d{12}):")
DEFAULT_STS_REGION = "us-east-1"
#: the provider of the identity contexts CreateTokenWithIAM issues (protocols.md 5)
IDENTITY_CENTER_PROVIDER = "arn:aws:iam::aws:contextProvider/IdentityCenter"


@dataclass(frozen=True, eq=False)
class RoleCredentials:
    access_key_id: str
    secret_access_key: Secret
    session_token: Secret
    expiration: datetime
    account_id: str | None
    #: when credd received them: the start of their lifetime as far as credd knows
    received_at: datetime = field(compare=False)
    #: when their source replaces them, if it says (a Sign-In session): renew by then
    renew_by: datetime | None = field(default=None, compare=False)

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
    """Run a ``credential_process`` and read its ``Version`` 1 answer.

    Its environment is the daemon's without credd's tokens and the service's
    channels (:func:`~credd.platform.process.child_environment`).
    """
    try:
        with anyio.fail_after(PROCESS_TIMEOUT_SECONDS):
            done = await anyio.run_process(
                shlex.split(profile.command), check=False, env=child_environment()
            )
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


async def source_keys(
    source: str | None,
    *,
    sources: Mapping[str, SigningSource],
    served: Callable[[str], Awaitable[SigningKeys]],
    clients: AwsClients,
) -> SigningKeys:
    """The keys that sign a call for something sourced from ``source``.

    Static keys or a ``credential_process`` directly; a served profile's credentials
    through ``served``; ``None``: botocore's default chain (the environment first).
    """
    if source is None:
        return await clients.default_keys()
    signer = sources.get(source)
    if isinstance(signer, StaticKeysProfile):
        return SigningKeys(signer.access_key_id, signer.secret_access_key, signer.session_token)
    if isinstance(signer, ProcessProfile):
        return await process_keys(signer)
    return await served(source)


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
        # Types checked: garbage is an UpstreamError (retried with backoff).
        now = self._clock.now()
        role = Answer(answer, "sso GetRoleCredentials").member("roleCredentials")
        return RoleCredentials(
            access_key_id=role.text("accessKeyId"),
            secret_access_key=Secret(role.text("secretAccessKey")),
            session_token=Secret(role.text("sessionToken")),
            expiration=role.epoch_ms("expiration", now=now),  # protocols.md 3
            account_id=self._profile.account_id,
            received_at=now,
        )

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
        return role_session_name(self._profile)

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
        return await assume_role(
            request,
            keys=keys,
            region=profile.region,
            endpoint_profile=profile.name,
            signer=f"profile {profile.source_profile}",
            clients=self._clients,
            clock=self._clock,
        )


def role_session_name(profile: AssumeRoleProfile | IdentityEnhancedProfile) -> str:
    """``role_session_name``, else ``credd-PROFILE`` made fit for STS."""
    name = re.sub(r"[^\w+=,.@-]", "-", f"credd-{profile.name}")
    return profile.role_session_name or name[:64]


async def assume_role(
    request: Mapping[str, Any],
    *,
    keys: SigningKeys,
    region: str | None,
    endpoint_profile: str | None,
    signer: str,
    clients: AwsClients,
    clock: Clock,
    hint: str = "check the role's trust policy, role_arn and external_id",
) -> RoleCredentials:
    """STS ``AssumeRole`` (protocols.md 5) signed with ``keys``; ``signer`` names their source."""
    role_arn = str(request["RoleArn"])
    try:
        async with clients.client(
            "sts", region=region or DEFAULT_STS_REGION, profile=endpoint_profile, keys=keys
        ) as sts:
            answer = await sts.assume_role(**request)
    except UpstreamError as exc:
        if exc.transient or exc.aws_code in {"ExpiredToken", "ExpiredTokenException"}:
            raise
        raise UpstreamError(
            f"cannot assume {role_arn} from {signer}: {exc.message}",
            aws_code=exc.aws_code,
            transient=False,
            hint=hint,
        ) from exc
    # Types checked: garbage is an UpstreamError (retried with backoff).
    now = clock.now()
    read = Answer(answer, "sts AssumeRole")
    creds = read.member("Credentials")
    user = answer.get("AssumedRoleUser")
    arn = user.get("Arn") if isinstance(user, dict) else None
    match = _ARN_ACCOUNT.match(arn) if isinstance(arn, str) else None
    match = match or _ARN_ACCOUNT.match(role_arn)
    return RoleCredentials(
        access_key_id=creds.text("AccessKeyId"),
        secret_access_key=Secret(creds.text("SecretAccessKey")),
        session_token=Secret(creds.text("SessionToken")),
        expiration=creds.instant("Expiration", now=now).astimezone(UTC),
        account_id=match.group(1) if match else None,
        received_at=now,
    )


class IdentityEnhancedRoleFetcher:
    """STS ``AssumeRole`` with ``ProvidedContexts``: a role session on a user's behalf.

    The identity context comes from the trusted-identity session (protocols.md 5);
    the call is signed with the same keys that sign its CreateTokenWithIAM.
    """

    def __init__(
        self,
        profile: IdentityEnhancedProfile,
        session: TrustedIdentitySession,
        source: Callable[[], Awaitable[SigningKeys]],
        *,
        clients: AwsClients,
        clock: Clock,
    ) -> None:
        self._profile = profile
        self._session = session
        self._source = source
        self._clients = clients
        self._clock = clock

    async def fetch(self) -> RoleCredentials:
        context = await self._session.identity_context()
        keys = await self._source()
        try:
            return await self._assume(keys, context)
        except UpstreamError as exc:
            if exc.aws_code != "ExpiredTokenException":
                raise
            # the identity context lapsed (it lives as long as the access token): renew once
            return await self._assume(keys, await self._session.context_rejected(context))

    async def _assume(self, keys: SigningKeys, context: Secret) -> RoleCredentials:
        profile = self._profile
        request: dict[str, Any] = {
            "RoleArn": profile.role_arn,
            "RoleSessionName": role_session_name(profile),
            "ProvidedContexts": [
                {"ProviderArn": IDENTITY_CENTER_PROVIDER, "ContextAssertion": context.reveal()}
            ],
        }
        if profile.duration_seconds is not None:
            request["DurationSeconds"] = profile.duration_seconds
        source = profile.source_profile
        return await assume_role(
            request,
            keys=keys,
            region=profile.region,
            endpoint_profile=profile.endpoint_profile,
            signer=f"profile {source}" if source else "the default credential chain",
            clients=self._clients,
            clock=self._clock,
            hint="check role_arn and that the role's trust policy allows sts:SetContext",
        )


class SigninFetcher:
    """A ``login_session`` profile: the Sign-In session's own credentials (protocols.md 4).

    Nothing to exchange: the session renews them, and this hands them on. Asked
    again while it still holds the set it handed out last, it has the session
    renew them (the keeper asks only when they are due), so a keeper never
    spins on credentials that are not replaced.
    """

    def __init__(self, profile: SigninProfile, session: SigninSession) -> None:
        self._profile = profile
        self._session = session
        self._handed: str | None = None

    async def fetch(self) -> RoleCredentials:
        issued = await self._session.credentials(replacing=self._handed)
        token = issued.token
        self._handed = token.access_key_id
        return RoleCredentials(
            access_key_id=token.access_key_id,
            secret_access_key=token.secret_access_key,
            session_token=token.session_token,
            expiration=token.expires_at,
            account_id=token.account_id,
            received_at=issued.issued_at,
            renew_by=issued.renew_by,
        )


def make_fetcher(
    spec: ServedProfile,
    *,
    sessions: Mapping[str, object],
    source_keys: Callable[[str | None], Awaitable[SigningKeys]],
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
    if isinstance(spec, SigninProfile):
        from credd.sessions.signin import SigninSession

        signin = sessions[spec.session]
        if not isinstance(signin, SigninSession):
            raise TypeError(f"profile {spec.name}: {spec.session} is not a Sign-In session")
        return SigninFetcher(spec, signin)
    if isinstance(spec, IdentityEnhancedProfile):
        trusted = sessions[spec.session]
        if not isinstance(trusted, TrustedIdentitySession):
            raise TypeError(f"profile {spec.name}: {spec.session} is no trusted-identity session")
        source = functools.partial(source_keys, spec.source_profile)
        return IdentityEnhancedRoleFetcher(spec, trusted, source, clients=clients, clock=clock)
    return AssumeRoleFetcher(
        spec, functools.partial(source_keys, spec.source_profile), clients=clients, clock=clock
    )
