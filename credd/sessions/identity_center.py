"""IAM Identity Center sessions: keeping the access token alive with CreateToken.

One :class:`IdentityCenterSession` per ``[sso-session]`` (or legacy start URL)
owns the AWS CLI's token cache entry for it (protocols.md 6.1) and renews the
access token with the refresh-token grant ahead of expiry. The rules that keep
a rotated refresh token from ever being lost (design.md, rule 8):

* every refresh re-reads the cache under the cross-process lock first, so a
  token the AWS CLI or ``credd login`` wrote meanwhile is adopted, not fought;
* the exchange and the write that follows run shielded from cancellation, and
  the new token is on disk (fsync + rename) before anything uses it;
* only an answer proving the refresh token dead turns the session into
  "login required"; anything else keeps the old token and retries with backoff.

Interactive login lives in :mod:`credd.sessions.sso_login`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta

import anyio
import structlog
from anyio.abc import TaskGroup

from credd.aws import AwsClients
from credd.clock import Clock
from credd.config import SsoSessionSpec
from credd.errors import CreddError, LoginRequired, UpstreamError
from credd.flight import SingleFlight
from credd.schedule import renewal_time, retry_time
from credd.secret import Secret
from credd.sessions import SessionState, SessionStatus, run_renewal_loop
from credd.store import CacheCorrupt, SsoCache, SsoToken

log = structlog.get_logger(__name__)

REFRESH_GRANT = "refresh_token"
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
#: a token this close to expiry is not handed out: the call it is for must finish in time
MIN_TOKEN_SECONDS = 30.0
#: how long a refresh (exchange + persist) may run, shielded from cancellation
REFRESH_DEADLINE_SECONDS = 30.0
#: how often a session waiting for a login looks at its cache file
LOGIN_POLL_SECONDS = 2.0


class IdentityCenterSession:
    kind = "identity-center"

    def __init__(
        self,
        spec: SsoSessionSpec,
        *,
        cache: SsoCache,
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
        self.margin_seconds = margin_seconds
        self._draw = draw
        self._on_login_required = on_login_required
        self._token: SsoToken | None = None
        self._lifetime_start: datetime | None = None
        self._seen_mtime: float | None = None
        self._problem: CreddError | None = None
        self._failures = 0
        self._retry_at: datetime | None = None
        #: where in the jitter window this token's renewal falls, drawn once per token
        self._jitter = draw()
        #: an access token the portal refused: renewed even if it looks valid
        self._rejected: Secret | None = None
        self._flight: SingleFlight[SsoToken] = SingleFlight(task_group, self._refresh_shielded)

    @property
    def spec(self) -> SsoSessionSpec:
        return self._spec

    # ------------------------------------------------------------------ queries

    def _usable(self, now: datetime) -> SsoToken | None:
        token = self._token
        if token and token.expires_at - now > timedelta(seconds=MIN_TOKEN_SECONDS):
            return token
        return None

    def status(self) -> SessionStatus:
        now = self._clock.now()
        token = self._token
        problem = self._problem
        if isinstance(problem, LoginRequired) or (token is None and problem is None):
            state = SessionState.LOGIN_REQUIRED
        elif self._usable(now) is None:
            state = SessionState.RETRYING if problem else SessionState.LOGIN_REQUIRED
        elif problem is not None:
            state = SessionState.RETRYING
        elif token is not None and not token.can_refresh(now):
            state = SessionState.EXPIRING
        else:
            state = SessionState.OK
        action = None
        if state in (SessionState.LOGIN_REQUIRED, SessionState.EXPIRING):
            action = f"credd login {self.name}"
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

    # ------------------------------------------------------------------ cache adoption

    def _adopt_if_changed(self, now: datetime) -> None:
        """Pick up a token another process wrote (``aws sso login``, ``credd login``)."""
        mtime = self._cache.token_mtime(self.spec.cache_key)
        if mtime == self._seen_mtime:
            return
        self._seen_mtime = mtime
        self._load(now)

    def _load(self, now: datetime) -> None:
        try:
            token = self._cache.load_token(self.spec.cache_key)
        except CacheCorrupt as exc:
            self._set_token(None, now)
            self._problem = LoginRequired(self.name, exc.message)
            return
        if token is None:
            if self._token is not None:
                log.info("session_logged_out", session=self.name)
            self._set_token(None, now)
            self._problem = LoginRequired(
                self.name, "no cached token (never logged in, or logged out)"
            )
            return
        if self._token is None or token.access_token != self._token.access_token:
            self._set_token(token, now)
            self._problem = None
            self._failures = 0
            self._retry_at = None
            log.info("session_token_adopted", session=self.name, expires_at=token.expires_at)

    def _set_token(self, token: SsoToken | None, now: datetime) -> None:
        self._token = token
        self._lifetime_start = now
        self._jitter = self._draw()

    def sync(self) -> None:
        """Re-read the cache now (after ``credd login`` or ``credd logout`` in another process)."""
        self._seen_mtime = self._cache.token_mtime(self.spec.cache_key)
        self._load(self._clock.now())

    # ------------------------------------------------------------------ refresh

    async def _refresh_shielded(self) -> SsoToken:
        # Shielded under a deadline: once CreateToken has rotated the refresh
        # token upstream, the new one must reach the disk whatever happens.
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(REFRESH_DEADLINE_SECONDS):
                token = await self._refresh()
        except TimeoutError as exc:
            late = UpstreamError(f"renewal took longer than {REFRESH_DEADLINE_SECONDS:.0f} s")
            raise self._fail(late, self._clock.now()) from exc
        return token

    async def _refresh(self) -> SsoToken:
        key = self.spec.cache_key
        async with self._cache.lock(key):
            now = self._clock.now()
            try:
                on_disk = self._cache.load_token(key)
            except CacheCorrupt as exc:
                raise self._fail(LoginRequired(self.name, exc.message), now) from exc
            self._seen_mtime = self._cache.token_mtime(key)
            if on_disk is None:
                self._set_token(None, now)
                raise self._fail(LoginRequired(self.name, "no cached token (logged out)"), now)
            rejected = on_disk.access_token == self._rejected
            if self._token is None or on_disk.access_token != self._token.access_token:
                self._set_token(on_disk, now)  # another process renewed it first: adopt
                if not rejected and not self._due(on_disk, now):
                    self._succeeded()
                    return on_disk
            if not on_disk.can_refresh(now):
                reason = (
                    "the client registration expired"
                    if on_disk.refresh_token and on_disk.registration_expires_at
                    else "the session has no refresh token"
                )
                if on_disk.expires_at > now and not rejected:
                    self._succeeded()
                    return on_disk  # usable until it expires; status says a login is coming
                raise self._fail(
                    LoginRequired(self.name, f"access token expired and {reason}"), now
                )
            fresh = await self._create_token(on_disk, now)
            self._cache.save_token(key, fresh)  # on disk before anyone uses it
            self._seen_mtime = self._cache.token_mtime(key)
            self._set_token(fresh, now)
            self._rejected = None
            self._succeeded()
            log.info("session_token_renewed", session=self.name, expires_at=fresh.expires_at)
            return fresh

    async def _create_token(self, current: SsoToken, now: datetime) -> SsoToken:
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
                dead = LoginRequired(self.name, f"the refresh token was refused ({exc.aws_code})")
                raise self._fail(dead, now) from exc
            raise self._fail(exc, now) from exc
        try:
            access = str(answer["accessToken"])
            lifetime = int(answer["expiresIn"])
        except (KeyError, TypeError, ValueError) as exc:
            bad = UpstreamError("sso-oidc CreateToken answered without a usable token")
            raise self._fail(bad, now) from exc
        rotated = answer.get("refreshToken")
        return current.with_access_token(
            Secret(access),
            now + timedelta(seconds=lifetime),
            Secret(str(rotated)) if rotated else None,
        )

    def _due(self, token: SsoToken, now: datetime) -> bool:
        return now >= self._renewal_time(token)

    def _renewal_time(self, token: SsoToken) -> datetime:
        return renewal_time(
            lifetime_start=self._lifetime_start or self._clock.now(),
            expires_at=token.expires_at,
            margin_seconds=self.margin_seconds,
            draw=0.0,
        )

    def _succeeded(self) -> None:
        self._problem = None
        self._failures = 0
        self._retry_at = None

    def _fail(self, error: CreddError, now: datetime) -> CreddError:
        if isinstance(error, LoginRequired):
            if not isinstance(self._problem, LoginRequired):
                log.warning("session_login_required", session=self.name, reason=error.reason)
                if self._on_login_required is not None:
                    self._on_login_required(self.name, error.reason)
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
        """Keep the access token renewed ahead of expiry, for as long as the daemon runs.

        Sleeps in short chunks so that a token another process writes (a new
        login, an AWS CLI refresh) is picked up within seconds.
        """
        await run_renewal_loop(
            clock=self._clock,
            adopt=self._adopt_if_changed,
            next_wake=self._next_wake,
            renew=self._flight.run,
            poll_seconds=LOGIN_POLL_SECONDS,
            task_status=task_status,
        )

    def _next_wake(self, now: datetime) -> datetime | None:
        """When the loop has work to do; ``None`` while only a login can help."""
        token = self._token
        if (
            token is not None
            and self._problem is None
            and not token.can_refresh(now)
            and token.expires_at <= now
        ):
            expired = LoginRequired(self.name, "the access token expired and cannot be renewed")
            self._fail(expired, now)
        return self._planned_wake(now)

    def _planned_wake(self, now: datetime) -> datetime | None:
        token = self._token
        if token is None or isinstance(self._problem, LoginRequired):
            return None
        if self._retry_at is not None:
            return self._retry_at
        if not token.can_refresh(now):
            return token.expires_at
        return renewal_time(
            lifetime_start=self._lifetime_start or now,
            expires_at=token.expires_at,
            margin_seconds=self.margin_seconds,
            draw=self._jitter,
        )
