"""AWS Sign-In (``aws login``) sessions: 15-minute credentials kept alive with CreateOAuth2Token.

One :class:`SigninSession` per ``login_session`` owns the AWS CLI's login cache
entry for it (``~/.aws/login/cache/<sha256>.json``, protocols.md 6.2). Unlike an
Identity Center session, what it renews is not a bearer token but the served
credentials themselves: CreateOAuth2Token with the ``refresh_token`` grant
returns SigV4 credentials that last at most 15 minutes, and a new refresh
token, bound (DPoP, RFC 9449) to the session's P-256 key. Every call carries a
fresh proof, made per HTTP attempt in a ``before-send`` handler: botocore's
retries would otherwise resend a spent ``jti`` (protocols.md 4.4).

The 15-minute policy (interface.md; README "AWS Sign-In"): botocore re-fetches
container credentials on every call once fewer than 15 minutes remain, which
with 15-minute credentials is always (protocols.md 7.2); the JS, Go and Java
SDKs refresh once fewer than 5 minutes remain, and so do botocore's and the JS
SDK's own readers of the login cache (protocols.md 7.3). So the session renews
its credentials well before they enter that 5-minute window: at
``credentials_margin_seconds`` before expiry, capped at half the lifetime
(450 s for 900 s credentials) and never less than :data:`MIN_MARGIN_SECONDS`.
No SDK then ever sees credentials it wants to replace, and no AWS CLI reading
the shared cache starts a refresh of its own that would rotate the refresh
token under credd (protocols.md 7.4, "Implication").

The rules that keep a rotated refresh token from ever being lost are those of
:mod:`credd.sessions.identity_center`, kept for both by
:class:`~credd.sessions.renewing.SharedCacheSession`: every refresh re-reads the cache under
the cross-process lock and adopts what ``aws`` wrote meanwhile; the exchange and
the write run shielded; the new refresh token is on disk (fsync + rename)
before the new credentials are used; only answers that prove the session dead
(``TOKEN_EXPIRED``, ``USER_CREDENTIALS_CHANGED``) make it "login required".

Interactive login lives in :mod:`credd.sessions.signin_login`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from credd.aws import Answer
from credd.clock import Clock
from credd.config.settings import SigninSessionSpec
from credd.errors import CreddError, LoginRequired, UpstreamError
from credd.files.store import CacheCorrupt, LoginCache, LoginToken
from credd.secret import Secret
from credd.sessions import SessionState, SessionStatus
from credd.sessions.dpop import HEADER, DpopKey
from credd.sessions.renewing import SharedCacheSession

SERVICE: Final = "signin"
REFRESH_GRANT: Final = "refresh_token"
TOKEN_TYPE: Final = "aws_sigv4"  # noqa: S105  # a tokenType, not a secret
#: Sign-In credentials last at most this long (``expiresIn`` 1..900, protocols.md 4.2)
MAX_LIFETIME_SECONDS: Final = 900.0
#: the SDKs' refresh window: JS, Go and Java (and the login-cache readers of botocore
#: and JS) replace credentials once fewer than 5 minutes remain (protocols.md 7.3, 8.2)
SDK_REFRESH_WINDOW_SECONDS: Final = 300.0
#: the least renewal margin: the SDKs' window and a minute for the renewal itself
MIN_MARGIN_SECONDS: Final = SDK_REFRESH_WINDOW_SECONDS + 60.0
#: what the principal needs to use ``aws login`` (protocols.md 4.2)
REQUIRED_POLICY: Final = "SignInLocalDevelopmentAccess"
#: Sign-In sessions last at most this long; a cache whose credentials lapsed longer
#: ago than this belongs to a session that is over (protocols.md 4.2)
MAX_SESSION_SECONDS: Final = 12 * 3600.0


def attach_proofs(client: Any, key: DpopKey, clock: Clock) -> None:
    """Sign every CreateOAuth2Token attempt of ``client`` with a new DPoP proof.

    ``before-send`` runs once per HTTP attempt, after the endpoint is resolved:
    ``htu`` is the URL really addressed (an endpoint override included), and a
    retry carries a new ``jti`` (botocore's own handler runs ``before-call``,
    once per call, and its retries resend a spent proof).
    """

    def add_proof(request: Any, **_: Any) -> None:
        request.headers[HEADER] = key.proof(method=request.method, url=request.url, now=clock.now())

    client.meta.events.register(f"before-send.{SERVICE}.CreateOAuth2Token", add_proof)


def explain_refusal(exc: UpstreamError, spec: SigninSessionSpec) -> CreddError:
    """What a refused CreateOAuth2Token means for the session (protocols.md 4.3).

    ``AccessDeniedException`` is 401 when the token (or code) is dead and 403
    when the principal is refused; the ``error`` member says which, and the
    status decides when the member is missing or unknown.
    """
    error = exc.oauth_error
    if exc.aws_code == "AccessDeniedException":
        if error == "USER_CREDENTIALS_CHANGED":
            return LoginRequired(
                spec.name,
                "the user's credentials changed since the login (USER_CREDENTIALS_CHANGED)",
                action=spec.login_command,
            )
        if error == "INSUFFICIENT_PERMISSIONS":
            return permission_missing(spec.name, exc)
        if error in ("TOKEN_EXPIRED", "AUTHCODE_EXPIRED") or exc.status != 403:
            return LoginRequired(
                spec.name,
                f"the Sign-In session has ended ({error or exc.status or 'AccessDenied'}): "
                "it lasts at most 12 hours, and a password change or a revocation ends it sooner",
                action=spec.login_command,
            )
        return _refused(
            exc, f"Sign-In refused to renew the session (403 {error or 'AccessDenied'})"
        )
    if exc.aws_code == "ValidationException":
        # A client bug (a proof the server did not like, a malformed body): not a
        # dead session. Kept, and tried again with backoff and a new proof.
        return _refused(exc, f"Sign-In refused the renewal request as invalid: {exc.message}")
    return exc  # TooManyRequestsError (429), server_error (500), the network: transient


def permission_missing(principal: str, exc: UpstreamError) -> UpstreamError:
    return _refused(
        exc,
        f"{principal} may not use AWS Sign-In for local development (INSUFFICIENT_PERMISSIONS)",
        hint=f"attach the AWS managed policy {REQUIRED_POLICY} to {principal}",
    )


def _refused(exc: UpstreamError, message: str, *, hint: str | None = None) -> UpstreamError:
    """``exc`` told as ``message``: a refusal that trying again will not fix by itself."""
    return UpstreamError(
        message,
        aws_code=exc.aws_code,
        transient=False,
        status=exc.status,
        oauth_error=exc.oauth_error,
        hint=hint,
    )


@dataclass(frozen=True, repr=False)
class SigninCredentials:
    """What the session hands out: the credentials and their timing."""

    token: LoginToken
    #: the start of their lifetime, as far as credd knows it
    issued_at: datetime
    #: when the session will replace them: holders renew by then
    renew_by: datetime

    def __repr__(self) -> str:
        return f"SigninCredentials(access_key_id={self.token.access_key_id!r})"


class SigninSession(SharedCacheSession[SigninSessionSpec, LoginToken]):
    kind = "signin"
    nothing_cached = "no cached credentials"
    expired = "the credentials expired and cannot be renewed"

    @property
    def login_name(self) -> str:
        return self._spec.profile

    @property
    def login_command(self) -> str:
        return self._spec.login_command

    # ------------------------------------------------------------------ timing

    @property
    def _renewal_margin(self) -> float:
        return max(self.margin_seconds, MIN_MARGIN_SECONDS)

    def _due(self, token: LoginToken, now: datetime) -> bool:
        """Past the earliest point any jitter could put its renewal."""
        return now >= self._renewal_time(token, 1.0)

    def _adopted_since(self, token: LoginToken, now: datetime) -> datetime:
        # Credentials another process fetched: they started at most 15 minutes
        # before they end, and no later than now.
        return min(now, token.expires_at - timedelta(seconds=MAX_LIFETIME_SECONDS))

    # ------------------------------------------------------------------ what profiles ask for

    async def credentials(self, *, replacing: str | None = None) -> SigninCredentials:
        """Valid credentials, renewed first if they are due.

        ``replacing`` is the access key id of the credentials the caller holds
        and wants replaced: those are renewed even if not yet due. When a
        renewal fails, credentials the caller does not hold yet are still handed
        out while valid (last good wins); the caller's own are not handed back.
        Raises :class:`LoginRequired` or :class:`UpstreamError`.
        """
        now = self._clock.now()
        self._adopt_if_changed(now)
        token = self._usable(now)
        new_to_caller = token is not None and token.access_key_id != replacing
        if token is not None and new_to_caller and not self._due(token, now):
            return self._handed(token)
        try:
            renewed = await self._renew_now(now)
        except CreddError:
            if token is not None and new_to_caller and self._usable(self._clock.now()) is token:
                return self._handed(token)
            raise
        return self._handed(renewed)

    def _handed(self, token: LoginToken) -> SigninCredentials:
        return SigninCredentials(
            token=token,
            issued_at=self._lifetime_start or self._clock.now(),
            renew_by=self._renewal_time(token, self._jitter),
        )

    async def _renew_now(self, now: datetime) -> LoginToken:
        problem = self._problem
        if problem is not None and (self._parked or not self._retry_due(now)):
            raise problem  # parked until a new login (adopted above), or backing off
        await self._flight.run()
        token = self._usable(self._clock.now())
        if token is None:
            raise self._login_required("the renewed credentials are already expired")
        return token

    # ------------------------------------------------------------------ refresh

    @staticmethod
    def _same(a: LoginToken, b: LoginToken) -> bool:
        return a.access_key_id == b.access_key_id and a.refresh_token == b.refresh_token

    def _renewable(self, token: LoginToken, now: datetime) -> bool:
        return token.refresh_token is not None

    def _servable(self, token: LoginToken, now: datetime) -> bool:
        return self._usable(now) is not None

    def _unrenewable(self, token: LoginToken) -> str:
        return "the credentials expired and the cache has no refresh token"

    async def _exchange(self, current: LoginToken, now: datetime) -> LoginToken:
        refresh_token = current.refresh_token
        assert refresh_token is not None  # _renewable() vouched for it
        try:
            key = DpopKey.from_pem(current.dpop_key.reveal())
        except ValueError as exc:
            reason = f"the login cache's dpopKey cannot be used: {exc}"
            raise self._login_required(reason) from exc
        try:
            async with self._clients.client(
                SERVICE, region=self._spec.region, profile=self._spec.endpoint_profile
            ) as signin:
                attach_proofs(signin, key, self._clock)
                # The wire body is the bare object: tokenInput is the HTTP payload (4.2).
                answer = await signin.create_oauth2_token(
                    tokenInput={
                        "clientId": current.client_id,
                        "grantType": REFRESH_GRANT,
                        "refreshToken": refresh_token.reveal(),
                    }
                )
        except UpstreamError as exc:
            raise explain_refusal(exc, self._spec) from exc
        # Types checked: garbage is an UpstreamError (retried), never a dead session.
        output = Answer(answer, "signin CreateOAuth2Token").member("tokenOutput")
        creds = output.member("accessToken")
        # JS defaults a missing expiresIn to 900 (protocols.md 7.3); so do we. More
        # than the model's 900 is not believed: renewing early is safe, late is not.
        lifetime = output.seconds("expiresIn", maximum=1e9, default=int(MAX_LIFETIME_SECONDS))
        rotated = output.optional_text("refreshToken")
        return current.with_credentials(
            access_key_id=creds.text("accessKeyId"),
            secret_access_key=Secret(creds.text("secretAccessKey")),
            session_token=Secret(creds.text("sessionToken")),
            expires_at=now + timedelta(seconds=min(lifetime, MAX_LIFETIME_SECONDS)),
            # Always present per the model; were it missing, the old one is all there is.
            refresh_token=Secret(rotated) if rotated else refresh_token,
        )


def offline_status(spec: SigninSessionSpec, cache: LoginCache, now: datetime) -> SessionStatus:
    """What the login cache says of a session, for when no daemon is running."""
    action: str | None = spec.login_command
    expires_at = None
    error: str | None = None
    try:
        token = cache.load_token(spec.cache_key)
    except CacheCorrupt as exc:
        token, error = None, exc.message
    if token is None:
        state = SessionState.LOGIN_REQUIRED
        error = error or "not logged in"
    else:
        expires_at = token.expires_at
        lapsed = (now - token.expires_at).total_seconds()
        if token.refresh_token is None:
            state = SessionState.EXPIRING if lapsed < 0 else SessionState.LOGIN_REQUIRED
        elif lapsed > MAX_SESSION_SECONDS:
            state = SessionState.LOGIN_REQUIRED
            error = "the credentials lapsed over 12 hours ago: the Sign-In session is over"
        else:
            state, action = SessionState.OK, None
    return SessionStatus(spec.name, SigninSession.kind, state, expires_at, None, error, action)
