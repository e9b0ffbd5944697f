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

This module is the strategy; the rules that keep a rotated refresh token from
ever being lost (adoption, the lock, the compare-and-swap write, the backoff)
are :class:`~credd.engine.session.KeptSession`'s, the same for every kind of
sign-in. Only answers that prove the session dead (``TOKEN_EXPIRED``,
``USER_CREDENTIALS_CHANGED``) make it "login required".

Interactive login lives in :mod:`credd.sessions.signin_login`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

from credd.aws import Answer, AwsClients
from credd.clock import Clock
from credd.config.settings import SigninSessionSpec
from credd.engine.session import KeptSession, SessionContext
from credd.errors import CreddError, LoginRequired, UpstreamError
from credd.files.store import CacheCorrupt, Fingerprint, LoginCache, LoginToken
from credd.secret import Secret
from credd.sessions import SessionState, SessionStatus
from credd.sessions.dpop import HEADER, DpopKey

SERVICE: Final = "signin"
#: the client id of ``aws login`` on the same device (protocols.md 4.5)
SAME_DEVICE_CLIENT: Final = "arn:aws:signin:::devtools/same-device"
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


class _Resolved(Exception):  # control flow, not an error
    """Carries the URL of a request that was prepared and never sent."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


async def resolve_base_url(clients: AwsClients, *, region: str, profile: str | None) -> str:
    """``scheme://host[:port]`` of the Sign-In endpoint botocore resolves for ``region``.

    Endpoint overrides included (``AWS_ENDPOINT_URL_SIGNIN``, ``AWS_ENDPOINT_URL``,
    ``endpoint_url`` of ``profile``'s ``[services]``), learnt as the AWS CLI
    learns it (``get_base_sign_in_uri``, protocols.md 4.5): by preparing a
    CreateOAuth2Token request and reading its URL, never sending it. Every
    browser URL on the Sign-In host is built on it: ``/v1/authorize`` and the
    console's ``/federation``.
    """

    def resolved(request: Any, **_: Any) -> None:
        raise _Resolved(str(request.url))

    async with clients.client(SERVICE, region=region, profile=profile, attempts=1) as signin:
        signin.meta.events.register(f"before-send.{SERVICE}.CreateOAuth2Token", resolved)
        try:
            await signin.create_oauth2_token(
                tokenInput={
                    "clientId": SAME_DEVICE_CLIENT,
                    "grantType": REFRESH_GRANT,
                    "refreshToken": "never-sent",
                }
            )
        except _Resolved as found:
            parts = urlsplit(found.url)
            return f"{parts.scheme}://{parts.netloc}"
    raise UpstreamError("could not work out the Sign-In endpoint")  # pragma: no cover


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


class SigninStrategy:
    """What a Sign-In session knows of its credentials and their renewal."""

    kind = "signin"
    nothing_cached = "no cached credentials"
    begins_alone = False

    def __init__(
        self, spec: SigninSessionSpec, *, cache: LoginCache, clients: AwsClients, clock: Clock
    ) -> None:
        self._spec = spec
        self._cache = cache
        self._clients = clients
        self._clock = clock

    @property
    def login_command(self) -> str:
        return self._spec.login_command

    def read(self) -> tuple[LoginToken | None, Fingerprint]:
        return self._cache.load_entry(self._spec.cache_key)

    def same(self, a: LoginToken, b: LoginToken) -> bool:
        return a.access_key_id == b.access_key_id and a.refresh_token == b.refresh_token

    def access(self, token: LoginToken) -> Secret:
        return token.session_token

    def renewable(self, token: LoginToken, now: datetime) -> bool:
        return token.refresh_token is not None

    def unrenewable(self, token: LoginToken) -> str:
        return "the credentials expired and the cache has no refresh token"

    def margin(self, configured: float) -> float:
        return max(configured, MIN_MARGIN_SECONDS)

    def lifetime_start(self, token: LoginToken, now: datetime, *, renewed: bool) -> datetime:
        if renewed:
            return now
        # Credentials another process fetched: they started at most 15 minutes
        # before they end, and no later than now.
        return min(now, token.expires_at - timedelta(seconds=MAX_LIFETIME_SECONDS))

    def input_changed(self) -> bool:
        return False

    def describe(self, token: LoginToken | None) -> tuple[str | None, Mapping[str, object] | None]:
        return None, None

    async def exchange(self, current: LoginToken | None, now: datetime) -> LoginToken:
        assert current is not None  # renewable() vouched for it
        refresh_token = current.refresh_token
        assert refresh_token is not None
        spec = self._spec
        try:
            key = DpopKey.from_pem(current.dpop_key.reveal())
        except ValueError as exc:
            reason = f"the login cache's dpopKey cannot be used: {exc}"
            raise LoginRequired(spec.name, reason, action=spec.login_command) from exc
        try:
            async with self._clients.client(
                SERVICE, region=spec.region, profile=spec.endpoint_profile
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
            raise explain_refusal(exc, spec) from exc
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


class SigninSession(KeptSession[LoginToken]):
    """A ``login_session``, kept alive: its credentials are the served ones."""

    def __init__(
        self,
        spec: SigninSessionSpec,
        *,
        cache: LoginCache,
        clients: AwsClients,
        context: SessionContext,
    ) -> None:
        strategy = SigninStrategy(spec, cache=cache, clients=clients, clock=context.clock)
        super().__init__(spec, strategy, cache=cache, key=spec.cache_key, context=context)

    async def credentials(self, *, replacing: str | None = None) -> SigninCredentials:
        """Valid credentials, renewed first if they are due.

        ``replacing`` is the access key id of the credentials the caller holds
        and wants replaced: those are renewed even if not yet due. When a
        renewal fails, credentials the caller does not hold yet are still handed
        out while valid (last good wins); the caller's own are not handed back.
        Raises :class:`LoginRequired` or :class:`UpstreamError`.
        """
        if self._stale:
            await self._sync()
        now = self._clock.now()
        token = self.usable()
        new_to_caller = token is not None and token.access_key_id != replacing
        if token is not None and new_to_caller and not self._due(token, now):
            return self._handed(token)
        try:
            renewed = await self.renew_now()
        except CreddError:
            if token is not None and new_to_caller and self.usable() is token:
                return self._handed(token)
            raise
        return self._handed(renewed)

    def _handed(self, token: LoginToken) -> SigninCredentials:
        return SigninCredentials(
            token=token,
            issued_at=self._lifetime_start or self._clock.now(),
            renew_by=self.renew_by(token),
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
    return SessionStatus(spec.name, SigninStrategy.kind, state, expires_at, None, error, action)
