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
:mod:`credd.sessions.identity_center`: every refresh re-reads the cache under
the cross-process lock and adopts what ``aws`` wrote meanwhile; the exchange and
the write run shielded; the new refresh token is on disk (fsync + rename)
before the new credentials are used; only answers that prove the session dead
(``TOKEN_EXPIRED``, ``USER_CREDENTIALS_CHANGED``) make it "login required".

Interactive login lives in :mod:`credd.sessions.signin_login`.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import anyio
import structlog
from anyio.abc import TaskGroup

from credd.aws import AwsClients
from credd.clock import Clock
from credd.config import SigninSessionSpec
from credd.dpop import HEADER, DpopKey
from credd.errors import CreddError, LoginRequired, UpstreamError
from credd.flight import SingleFlight
from credd.schedule import renewal_time, retry_time
from credd.secret import Secret
from credd.sessions import SessionState, SessionStatus
from credd.store import CacheCorrupt, LoginCache, LoginToken

log = structlog.get_logger(__name__)

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
#: credentials this close to expiry are not handed out: the caller could not use them
MIN_SERVE_SECONDS: Final = 30.0
#: how long a refresh (exchange + persist) may run, shielded from cancellation
REFRESH_DEADLINE_SECONDS: Final = 30.0
#: how often the loop looks at the cache file (a login, an ``aws`` refresh)
CACHE_POLL_SECONDS: Final = 2.0
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
        return UpstreamError(
            f"Sign-In refused to renew the session (403 {error or 'AccessDenied'})",
            aws_code=exc.aws_code,
            transient=False,
            status=exc.status,
            oauth_error=error,
        )
    if exc.aws_code == "ValidationException":
        # A client bug (a proof the server did not like, a malformed body): not a
        # dead session. Kept, and tried again with backoff and a new proof.
        return UpstreamError(
            f"Sign-In refused the renewal request as invalid: {exc.message}",
            aws_code=exc.aws_code,
            transient=False,
            status=exc.status,
            oauth_error=error,
        )
    return exc  # TooManyRequestsError (429), server_error (500), the network: transient


def permission_missing(principal: str, exc: UpstreamError) -> UpstreamError:
    return UpstreamError(
        f"{principal} may not use AWS Sign-In for local development (INSUFFICIENT_PERMISSIONS)",
        aws_code=exc.aws_code,
        transient=False,
        status=exc.status,
        oauth_error=exc.oauth_error,
        hint=f"attach the AWS managed policy {REQUIRED_POLICY} to {principal}",
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


class SigninSession:
    kind = "signin"

    def __init__(
        self,
        spec: SigninSessionSpec,
        *,
        cache: LoginCache,
        clients: AwsClients,
        clock: Clock,
        task_group: TaskGroup,
        margin_seconds: float,
        draw: Callable[[], float] = random.random,
        on_login_required: Callable[[str, str], None] | None = None,
    ) -> None:
        self._spec = spec
        self.name = spec.name
        self._cache = cache
        self._clients = clients
        self._clock = clock
        #: ``credentials_margin_seconds``: these credentials are the served ones
        self.margin_seconds = margin_seconds
        self._draw = draw
        self._on_login_required = on_login_required
        self._token: LoginToken | None = None
        self._issued_at: datetime | None = None
        self._seen_mtime: float | None = None
        self._problem: CreddError | None = None
        self._failures = 0
        self._retry_at: datetime | None = None
        #: where in the jitter window this token's renewal falls, drawn once per token
        self._jitter = draw()
        self._flight: SingleFlight[LoginToken] = SingleFlight(task_group, self._refresh_shielded)

    @property
    def spec(self) -> SigninSessionSpec:
        return self._spec

    # ------------------------------------------------------------------ timing

    def _renewal(self, token: LoginToken, draw: float) -> datetime:
        return renewal_time(
            lifetime_start=self._issued_at or self._clock.now(),
            expires_at=token.expires_at,
            margin_seconds=max(self.margin_seconds, MIN_MARGIN_SECONDS),
            draw=draw,
        )

    def _due(self, token: LoginToken, now: datetime) -> bool:
        """Past the earliest point any jitter could put its renewal."""
        return now >= self._renewal(token, 1.0)

    def _usable(self, now: datetime) -> LoginToken | None:
        token = self._token
        if token and token.expires_at - now > timedelta(seconds=MIN_SERVE_SECONDS):
            return token
        return None

    # ------------------------------------------------------------------ queries

    def status(self) -> SessionStatus:
        now = self._clock.now()
        token = self._token
        problem = self._problem
        if isinstance(problem, LoginRequired) or (token is None and problem is None):
            state = SessionState.LOGIN_REQUIRED
        elif self._usable(now) is None:
            state = SessionState.RETRYING if problem else SessionState.LOGIN_REQUIRED
        elif isinstance(problem, UpstreamError) and not problem.transient:
            state = SessionState.ERROR  # a permission, a refused request: retried all the same
        elif problem is not None:
            state = SessionState.RETRYING
        elif token is not None and token.refresh_token is None:
            state = SessionState.EXPIRING
        else:
            state = SessionState.OK
        action = None
        if state in (SessionState.LOGIN_REQUIRED, SessionState.EXPIRING):
            action = self._spec.login_command
        elif problem is not None:
            action = problem.hint
        last_error = problem.message if problem else None
        if token is None and problem is None:
            last_error = "not logged in"
        return SessionStatus(
            name=self.name,
            kind=self.kind,
            state=state,
            expires_at=token.expires_at if token else None,
            next_renewal=self._planned_wake(now)
            if state is not SessionState.LOGIN_REQUIRED
            else None,
            last_error=last_error,
            action=action,
        )

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
            renewed = await self._renew(now)
        except CreddError:
            if token is not None and new_to_caller and self._usable(self._clock.now()) is token:
                return self._handed(token)
            raise
        return self._handed(renewed)

    def _handed(self, token: LoginToken) -> SigninCredentials:
        return SigninCredentials(
            token=token,
            issued_at=self._issued_at or self._clock.now(),
            renew_by=self._renewal(token, self._jitter),
        )

    async def _renew(self, now: datetime) -> LoginToken:
        problem = self._problem
        if isinstance(problem, LoginRequired):
            raise problem  # only a new login (adopted above) changes that
        if problem is not None and self._retry_at is not None and now < self._retry_at:
            raise problem  # backing off: the next attempt is the loop's
        await self._flight.run()
        token = self._usable(self._clock.now())
        if token is None:
            raise LoginRequired(
                self.name, "the renewed credentials are already expired", action=self._action
            )
        return token

    @property
    def _action(self) -> str:
        return self._spec.login_command

    # ------------------------------------------------------------------ cache adoption

    def _adopt_if_changed(self, now: datetime) -> None:
        """Pick up what another process wrote: ``aws login``, an ``aws`` refresh, a logout."""
        mtime = self._cache.token_mtime(self._spec.cache_key)
        if mtime == self._seen_mtime:
            return
        self._seen_mtime = mtime
        self._load(now)

    def _load(self, now: datetime) -> None:
        try:
            token = self._cache.load_token(self._spec.cache_key)
        except CacheCorrupt as exc:
            self._set_token(None, now)
            self._problem = LoginRequired(self.name, exc.message, action=self._action)
            return
        if token is None:
            if self._token is not None:
                log.info("session_logged_out", session=self.name)
            self._set_token(None, now)
            self._problem = LoginRequired(
                self.name,
                "no cached credentials (never logged in, or logged out)",
                action=self._action,
            )
            return
        if self._token is None or not _same(token, self._token):
            self._set_token(token, now)
            self._succeeded()
            log.info("session_token_adopted", session=self.name, expires_at=token.expires_at)

    def _set_token(
        self, token: LoginToken | None, now: datetime, issued_at: datetime | None = None
    ) -> None:
        self._token = token
        if issued_at is None and token is not None:
            # Credentials another process fetched: they started at most 15 minutes
            # before they end, and no later than now.
            issued_at = min(now, token.expires_at - timedelta(seconds=MAX_LIFETIME_SECONDS))
        self._issued_at = issued_at
        self._jitter = self._draw()

    def sync(self) -> None:
        """Re-read the cache now (after ``credd login`` or ``credd logout`` in another process)."""
        self._seen_mtime = self._cache.token_mtime(self._spec.cache_key)
        self._load(self._clock.now())

    # ------------------------------------------------------------------ refresh

    async def _refresh_shielded(self) -> LoginToken:
        # Shielded under a deadline: once CreateOAuth2Token has rotated the refresh
        # token upstream, the new one must reach the disk whatever happens.
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(REFRESH_DEADLINE_SECONDS):
                token = await self._refresh()
        except TimeoutError as exc:
            late = UpstreamError(f"renewal took longer than {REFRESH_DEADLINE_SECONDS:.0f} s")
            raise self._fail(late, self._clock.now()) from exc
        return token

    async def _refresh(self) -> LoginToken:
        key = self._spec.cache_key
        async with self._cache.lock(key):
            now = self._clock.now()
            try:
                on_disk = self._cache.load_token(key)
            except CacheCorrupt as exc:
                self._set_token(None, now)
                raise self._fail(
                    LoginRequired(self.name, exc.message, action=self._action), now
                ) from exc
            self._seen_mtime = self._cache.token_mtime(key)
            if on_disk is None:
                self._set_token(None, now)
                gone = LoginRequired(
                    self.name, "no cached credentials (logged out)", action=self._action
                )
                raise self._fail(gone, now)
            if self._token is None or not _same(on_disk, self._token):
                self._set_token(on_disk, now)  # `aws` renewed it first: adopt, don't fight
                if not self._due(on_disk, now) and self._usable(now) is not None:
                    self._succeeded()
                    return on_disk
            if on_disk.refresh_token is None:
                if self._usable(now) is not None:
                    self._succeeded()
                    return on_disk  # usable until it expires; status says a login is coming
                dead = LoginRequired(
                    self.name,
                    "the credentials expired and the cache has no refresh token",
                    action=self._action,
                )
                raise self._fail(dead, now)
            fresh = await self._create_token(on_disk, on_disk.refresh_token, now)
            self._cache.save_token(key, fresh)  # on disk before anyone uses it
            self._seen_mtime = self._cache.token_mtime(key)
            self._set_token(fresh, now, issued_at=now)
            self._succeeded()
            log.info("session_token_renewed", session=self.name, expires_at=fresh.expires_at)
            return fresh

    async def _create_token(
        self, current: LoginToken, refresh_token: Secret, now: datetime
    ) -> LoginToken:
        try:
            key = DpopKey.from_pem(current.dpop_key.reveal())
        except ValueError as exc:
            broken = LoginRequired(
                self.name, f"the login cache's dpopKey cannot be used: {exc}", action=self._action
            )
            raise self._fail(broken, now) from exc
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
            raise self._fail(explain_refusal(exc, self._spec), now) from exc
        try:
            output = answer["tokenOutput"]
            creds = output["accessToken"]
            # JS defaults a missing expiresIn to 900 (protocols.md 7.3); so do we.
            lifetime = int(output.get("expiresIn") or MAX_LIFETIME_SECONDS)
            rotated = output.get("refreshToken")
            return current.with_credentials(
                access_key_id=str(creds["accessKeyId"]),
                secret_access_key=Secret(str(creds["secretAccessKey"])),
                session_token=Secret(str(creds["sessionToken"])),
                expires_at=now + timedelta(seconds=lifetime),
                # Always present per the model; were it missing, the old one is all there is.
                refresh_token=Secret(str(rotated)) if rotated else refresh_token,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            bad = UpstreamError("signin CreateOAuth2Token answered without usable credentials")
            raise self._fail(bad, now) from exc

    def _succeeded(self) -> None:
        self._problem = None
        self._failures = 0
        self._retry_at = None

    def _fail(self, error: CreddError, now: datetime) -> CreddError:
        if isinstance(error, LoginRequired):
            if not isinstance(self._problem, LoginRequired):
                log.warning("session_login_required", session=self.name, reason=error.reason)
                if self._on_login_required is not None:
                    self._on_login_required(self._spec.profile, error.reason)
            self._retry_at = None
        else:
            token = self._token
            self._retry_at = retry_time(
                now,
                self._failures,
                draw=self._draw(),
                not_after=token.expires_at if token and token.expires_at > now else None,
            )
            log.warning(
                "session_renewal_failed",
                session=self.name,
                error=error.message,
                retry_at=self._retry_at,
            )
            self._failures += 1
        self._problem = error
        return error

    # ------------------------------------------------------------------ the background loop

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the credentials renewed ahead of the SDKs' window, for as long as the daemon runs.

        Renewal does not wait for a request: the shared cache then always holds
        credentials with more than 5 minutes left, so the AWS CLI and SDKs
        reading it never refresh (and rotate the refresh token) themselves.
        Sleeps in short chunks so that what another process writes is picked up
        within seconds.
        """
        self._adopt_if_changed(self._clock.now())
        task_status.started()
        while True:
            now = self._clock.now()
            wake = self._next_wake(now)
            poll_until = now + timedelta(seconds=CACHE_POLL_SECONDS)
            await self._clock.sleep_until(poll_until if wake is None else min(wake, poll_until))
            now = self._clock.now()
            self._adopt_if_changed(now)
            # Worked out again: a renewal (a profile's, another process's) may have moved it.
            wake = self._next_wake(now)
            if wake is None or now < wake:
                continue
            # A failure is recorded by _fail: the next wake retries, or waits for a login.
            with contextlib.suppress(CreddError):
                await self._flight.run()

    def _next_wake(self, now: datetime) -> datetime | None:
        """When the loop has work to do; ``None`` while only a login can help."""
        token = self._token
        if (
            token is not None
            and self._problem is None
            and token.refresh_token is None
            and token.expires_at <= now
        ):
            expired = LoginRequired(
                self.name, "the credentials expired and cannot be renewed", action=self._action
            )
            self._fail(expired, now)
        return self._planned_wake(now)

    def _planned_wake(self, now: datetime) -> datetime | None:
        token = self._token
        if token is None or isinstance(self._problem, LoginRequired):
            return None
        if self._retry_at is not None:
            return self._retry_at
        if token.refresh_token is None:
            return token.expires_at
        return self._renewal(token, self._jitter)


def _same(a: LoginToken, b: LoginToken) -> bool:
    return a.access_key_id == b.access_key_id and a.refresh_token == b.refresh_token


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
