"""IAM Identity Center sessions: keeping the access token alive with CreateToken.

One :class:`IdentityCenterSession` per ``[sso-session]`` (or legacy start URL)
owns the AWS CLI's token cache entry for it (protocols.md 6.1) and renews the
access token with the refresh-token grant ahead of expiry. This module is the
strategy (read the entry, exchange the refresh token, what its errors mean);
adoption, the lock, the compare-and-swap write and the backoff are
:class:`~credd.engine.session.KeptSession`'s, the same for every kind of sign-in.
Only an answer proving the refresh token dead turns the session into "login
required"; anything else keeps the old token and retries with backoff.

Interactive login lives in :mod:`credd.sessions.sso_login`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from credd.aws import Answer, AwsClients
from credd.config.settings import SsoSessionSpec
from credd.engine.session import KeptSession, SessionContext
from credd.errors import LoginRequired, UpstreamError
from credd.files.store import Fingerprint, SsoCache, SsoToken
from credd.secret import Secret

REFRESH_GRANT = "refresh_token"
#: the longest access token lifetime believed (a year): more is garbage
MAX_TOKEN_SECONDS = 366 * 86400.0
#: CreateToken errors that prove the refresh token (or its registration) dead
#: (protocols.md 2.3): trying again with the same token cannot succeed.
DEAD_SESSION_CODES = frozenset(
    {
        "InvalidGrantException",
        "ExpiredTokenException",
        "AccessDeniedException",
        "InvalidClientException",
        "UnauthorizedClientException",
    }
)


class IdentityCenterStrategy:
    """What an Identity Center session knows of its tokens."""

    kind = "identity-center"
    nothing_cached = "no cached token"
    begins_alone = False

    def __init__(self, spec: SsoSessionSpec, *, cache: SsoCache, clients: AwsClients) -> None:
        self._spec = spec
        self._cache = cache
        self._clients = clients

    @property
    def login_command(self) -> str:
        return f"credd login {self._spec.name}"

    def read(self) -> tuple[SsoToken | None, Fingerprint]:
        return self._cache.load_entry(self._spec.cache_key)

    def same(self, a: SsoToken, b: SsoToken) -> bool:
        return a.access_token == b.access_token

    def access(self, token: SsoToken) -> Secret:
        return token.access_token

    def renewable(self, token: SsoToken, now: datetime) -> bool:
        return token.can_refresh(now)

    def unrenewable(self, token: SsoToken) -> str:
        reason = (
            "the client registration expired"
            if token.refresh_token and token.registration_expires_at
            else "the session has no refresh token"
        )
        return f"access token expired and {reason}"

    def margin(self, configured: float) -> float:
        return configured

    def lifetime_start(self, token: SsoToken, now: datetime, *, renewed: bool) -> datetime:
        return now

    def input_changed(self) -> bool:
        return False

    def describe(self, token: SsoToken | None) -> tuple[str | None, Mapping[str, object] | None]:
        return None, None

    async def exchange(self, current: SsoToken | None, now: datetime) -> SsoToken:
        # renewable() vouched for all three
        assert current is not None
        assert current.refresh_token
        assert current.client_id
        assert current.client_secret
        spec = self._spec
        try:
            async with self._clients.client(
                "sso-oidc", region=spec.region, profile=spec.endpoint_profile
            ) as oidc:
                answer = await oidc.create_token(
                    clientId=current.client_id,
                    clientSecret=current.client_secret.reveal(),
                    grantType=REFRESH_GRANT,
                    refreshToken=current.refresh_token.reveal(),
                )
        except UpstreamError as exc:
            if exc.aws_code in DEAD_SESSION_CODES:
                reason = f"the refresh token was refused ({exc.aws_code})"
                raise LoginRequired(spec.name, reason, action=self.login_command) from exc
            raise
        # Types checked: garbage is an UpstreamError (retried), never a dead session, and
        # nothing of it is kept: the refresh token held stays the one on disk.
        read = Answer(answer, "sso-oidc CreateToken")
        access = read.text("accessToken")
        lifetime = read.seconds("expiresIn", maximum=MAX_TOKEN_SECONDS)
        rotated = read.optional_text("refreshToken")
        return current.with_access_token(
            Secret(access),
            now + timedelta(seconds=lifetime),
            Secret(rotated) if rotated else None,
        )


class IdentityCenterSession(KeptSession[SsoToken]):
    """An ``[sso-session]``, kept alive; its access token is what GetRoleCredentials takes."""

    def __init__(
        self,
        spec: SsoSessionSpec,
        *,
        cache: SsoCache,
        clients: AwsClients,
        context: SessionContext,
    ) -> None:
        strategy = IdentityCenterStrategy(spec, cache=cache, clients=clients)
        super().__init__(spec, strategy, cache=cache, key=spec.cache_key, context=context)

    async def access_token(self) -> Secret:
        """A valid access token, renewing it first if needed; raises :class:`LoginRequired`."""
        return (await self.token()).access_token

    async def token_rejected(self, rejected: Secret) -> Secret:
        """The portal refused ``rejected``: renew it once, whatever its expiry said."""
        return (await self.reject(rejected)).access_token
