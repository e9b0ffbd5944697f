"""IAM Identity Center sessions: keeping the access token alive with CreateToken.

One :class:`IdentityCenterSession` per ``[sso-session]`` (or legacy start URL)
owns the AWS CLI's token cache entry for it (protocols.md 6.1) and renews the
access token with the refresh-token grant ahead of expiry. The rules that keep
a rotated refresh token from ever being lost (design.md, rule 8), kept by
:class:`~credd.sessions.renewing.SharedCacheSession` for it and for Sign-In:

* every refresh re-reads the cache under the cross-process lock first, so a
  token the AWS CLI or ``credd login`` wrote meanwhile is adopted, not fought;
* the exchange and the write that follows run shielded from cancellation, and
  the new token is on disk (fsync + rename) before anything uses it;
* only an answer proving the refresh token dead turns the session into
  "login required"; anything else keeps the old token and retries with backoff.

Interactive login lives in :mod:`credd.sessions.sso_login`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from credd.aws import Answer
from credd.config.settings import SsoSessionSpec
from credd.errors import CreddError, LoginRequired, UpstreamError
from credd.files.store import SsoToken
from credd.secret import Secret
from credd.sessions import SessionState
from credd.sessions.renewing import SharedCacheSession

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


class IdentityCenterSession(SharedCacheSession[SsoSessionSpec, SsoToken]):
    kind = "identity-center"

    # ------------------------------------------------------------------ the request path

    async def access_token(self) -> Secret:
        """A valid access token, renewing it first if needed; raises :class:`LoginRequired`."""
        now = self._clock.now()
        self._adopt_if_changed(now)
        token = self._usable(now)
        if token is None:
            if isinstance(self._problem, LoginRequired):
                raise self._problem  # only a new login (adopted above) changes that
            token = await self._flight.run()
            if self._usable(self._clock.now()) is None:
                raise LoginRequired(self.name, "the new access token is already expired")
        return token.access_token

    async def token_rejected(self, rejected: Secret) -> Secret:
        """The portal refused ``rejected``: renew it once, whatever its expiry said."""
        self._rejected = rejected
        if self._token is not None and self._token.access_token == rejected:
            self._token = None
        return await self.access_token()

    # ------------------------------------------------------------------ refresh

    @staticmethod
    def _same(a: SsoToken, b: SsoToken) -> bool:
        return a.access_token == b.access_token

    def _renewable(self, token: SsoToken, now: datetime) -> bool:
        return token.can_refresh(now)

    def _servable(self, token: SsoToken, now: datetime) -> bool:
        return token.expires_at > now and token.access_token != self._rejected

    def _unrenewable(self, token: SsoToken) -> str:
        reason = (
            "the client registration expired"
            if token.refresh_token and token.registration_expires_at
            else "the session has no refresh token"
        )
        return f"access token expired and {reason}"

    def _failure_state(self, problem: CreddError) -> SessionState:
        # Identity Center sessions have always said "retrying" for every failure the
        # backoff retries, a refused request too (Sign-In and trusted identity say "error").
        return SessionState.RETRYING

    async def _exchange(self, current: SsoToken, now: datetime) -> SsoToken:
        # can_refresh() vouched for all three
        assert current.refresh_token
        assert current.client_id
        assert current.client_secret
        try:
            async with self._clients.client(
                "sso-oidc", region=self.spec.region, profile=self.spec.endpoint_profile
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
                raise self._login_required(reason) from exc
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
