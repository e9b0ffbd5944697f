"""Trusted identity propagation: one CreateTokenWithIAM session per ``[profiles.NAME]``.

An application signs in to IAM Identity Center on a user's behalf with its
own IAM credentials (the profile's ``source_profile``, or the default chain)
and one of the grants of protocols.md 2.2:

* ``jwt-bearer``: an external identity provider's assertion
  (:mod:`credd.sessions.assertions`), fetched anew only when the one held nears its
  ``exp``;
* ``token-exchange``: the access token of another credd session (the
  ``subject_session``). credd asks for ``requestedTokenType`` refresh token, so
  that the session renews itself without the subject; should the
  application not allow refresh tokens, it exchanges for access tokens only
  and exchanges again, with the subject's current token, at each renewal;
* ``authorization_code``: ``credd login NAME`` (:mod:`credd.sessions.iam_login`).

Whatever the grant, a refresh token that comes back is kept
(:class:`~credd.sessions.iam_tokens.IamTokenCache`) and renews the access token
ahead of expiry with the ``refresh_token`` grant; it rotates, and the new one
is on disk before the new access token is used (design.md rule 8). When a
refresh token is refused, the session begins again with its grant if it can
do that alone (a fresh assertion, the subject's token); only an
authorization-code session then needs a login.

The session hands out its access token (the bearer route ``/v1/tokens/NAME``,
or as the subject of another session) and its identity context (for STS
AssumeRole with ``ProvidedContexts``, :mod:`credd.profiles`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Protocol

import structlog

from credd.aws import AwsClients, SigningKeys
from credd.config.settings import (
    AUTH_CODE_GRANT,
    IDENTITY_CONTEXT_SCOPE,
    JWT_BEARER_GRANT,
    TOKEN_EXCHANGE_GRANT,
    TrustedIdentitySpec,
)
from credd.engine.schedule import renewal_time
from credd.errors import AssertionRequired, LoginRequired, UpstreamError
from credd.files.store import CacheCorrupt
from credd.secret import Secret
from credd.sessions import SessionState, SessionStatus
from credd.sessions.assertions import AssertionSource
from credd.sessions.iam_tokens import (
    ACCESS_TOKEN_TYPE,
    REFRESH_GRANT,
    REFRESH_TOKEN_TYPE,
    GrantRefused,
    IamToken,
    IamTokenCache,
    IamTokenClient,
)
from credd.sessions.renewing import (
    REFRESH_DEADLINE_SECONDS,
    RenewingSession,
    SessionContext,
    shielded,
)

log = structlog.get_logger(__name__)


class SubjectSession(Protocol):
    """A session whose access token another one exchanges (Identity Center, or trusted identity)."""

    name: str

    def status(self) -> SessionStatus: ...

    async def access_token(self) -> Secret: ...

    async def token_rejected(self, rejected: Secret) -> Secret: ...


class TrustedIdentitySession(RenewingSession[TrustedIdentitySpec, IamToken]):
    kind = TrustedIdentitySpec.kind

    def __init__(
        self,
        spec: TrustedIdentitySpec,
        *,
        cache: IamTokenCache,
        clients: AwsClients,
        signer: Callable[[], Awaitable[SigningKeys]],
        sessions: Callable[[str], SubjectSession | None],
        context: SessionContext,
    ) -> None:
        super().__init__(spec, context)
        self._cache = cache
        self._client = IamTokenClient(spec, clients=clients, clock=context.clock)
        self._signer = signer
        self._sessions = sessions
        self._assertions: AssertionSource | None = None
        if spec.grant_type == JWT_BEARER_GRANT:
            self._assertions = AssertionSource(
                spec.name,
                file=spec.assertion_file,
                command=spec.assertion_command,
                clock=context.clock,
            )
        #: what token exchange asks for; access tokens only once the application says so
        self._requested_type = REFRESH_TOKEN_TYPE

    @property
    def _automatic(self) -> bool:
        """Whether it can begin again without a person (every grant but the authorization code)."""
        return self._spec.grant_type != AUTH_CODE_GRANT

    def _renewable(self, token: IamToken) -> bool:
        return token.refresh_token is not None or self._automatic

    # ------------------------------------------------------------------ queries

    def _usable(self, now: datetime) -> IamToken | None:
        token = super()._usable(now)
        return token if token is not None and token.access_token != self._rejected else None

    def usable_token(self) -> IamToken | None:
        """The token held, if it is valid for a while yet: the request path, from memory."""
        return self._usable(self._clock.now())

    def status(self) -> SessionStatus:
        now = self._clock.now()
        token, problem = self._token, self._problem
        action: str | None = None
        last_error = problem.message if problem else None
        if isinstance(problem, AssertionRequired):
            state, action = SessionState.ASSERTION_REQUIRED, problem.hint
        elif isinstance(problem, LoginRequired):
            state, action = SessionState.LOGIN_REQUIRED, problem.action
        elif isinstance(problem, UpstreamError) and not problem.transient:
            state, action = SessionState.ERROR, problem.hint
        elif problem is not None:
            state = SessionState.RETRYING
        elif token is None and not self._automatic:
            state, action = SessionState.LOGIN_REQUIRED, self.login_command
            last_error = "not logged in"
        elif token is not None and not self._renewable(token):
            state, action = SessionState.EXPIRING, self.login_command
        else:
            state = SessionState.OK
        return _status(
            self._spec,
            token,
            state,
            next_renewal=self._next_wake(now),
            last_error=last_error,
            action=action,
            details=self._details(token),
        )

    def _details(self, token: IamToken | None) -> dict[str, object]:
        spec = self._spec
        details: dict[str, object] = {
            "application": spec.client_id,
            "grant_type": spec.grant_type,
            "requested_scopes": list(spec.scopes),
        }
        if token is not None:
            details.update(
                granted_scopes=list(token.scopes),
                downscoped=token.downscoped,
                issued_token_type=token.issued_token_type,
                refreshable=token.refresh_token is not None,
                identity_context=token.identity_context is not None,
                claims=token.claims(),
            )
        return details

    # ------------------------------------------------------------------ the request path

    async def token(self) -> IamToken:
        """A valid token, renewing it first if needed; raises what keeps it from being had."""
        now = self._clock.now()
        self._adopt_if_changed(now)
        held = self._usable(now)
        if held is not None:
            return held
        problem = self._problem
        if problem is not None and (self._parked or not self._retry_due(now)):
            raise problem  # failing fast until a login, or until the backoff says try again
        token = await self._flight.run()
        if self._usable(self._clock.now()) is None:
            raise UpstreamError(f"the new access token of {self.name} is already expiring")
        return token

    async def access_token(self) -> Secret:
        return (await self.token()).access_token

    async def token_rejected(self, rejected: Secret) -> Secret:
        """Somebody saw ``rejected`` refused: renew once, whatever its expiry said."""
        self._rejected = rejected
        return await self.access_token()

    async def identity_context(self) -> Secret:
        """The identity context for STS ``ProvidedContexts`` (protocols.md 5)."""
        token = await self.token()
        if token.identity_context is None:
            granted = ", ".join(token.scopes) or "none"
            raise UpstreamError(
                f"session {self.name!r} got no identity context (granted scopes: {granted})",
                transient=False,
                hint=f"add {IDENTITY_CONTEXT_SCOPE} to {self._spec.key('scopes')}",
            )
        return token.identity_context

    async def context_rejected(self, rejected: Secret) -> Secret:
        """STS refused ``rejected`` (expired, unknown): renew once for a new one."""
        token = self._token
        if token is not None and token.identity_context == rejected:
            self._rejected = token.access_token
        return await self.identity_context()

    # ------------------------------------------------------------------ the cache

    def _cache_mtime(self) -> float | None:
        return self._cache.token_mtime(self.name)

    def _read(self) -> IamToken | None:
        try:
            return self._cache.load(self._spec)
        except CacheCorrupt as exc:
            if not self._automatic:
                raise LoginRequired(self.name, exc.message) from exc
            log.warning("session_cache_unreadable", session=self.name, error=exc.message)
            return None  # begun again; the unreadable file is kept aside when replaced

    def _nothing_cached(self, now: datetime) -> None:
        if self._token is not None:
            self._set_token(None, now)
        if not self._automatic:
            self._problem = None  # status says: not logged in

    @staticmethod
    def _same(a: IamToken, b: IamToken) -> bool:
        return a.access_token == b.access_token

    # ------------------------------------------------------------------ renewal

    async def _renew(self) -> IamToken:
        """Renew under the cache lock: adopt, refresh, or begin again with the grant."""
        async with self._cache.lock(self.name):
            now = self._clock.now()
            on_disk = self._read()
            self._mark_seen()
            if (
                on_disk is not None
                and self._adopt(on_disk, now)  # another process renewed it, or logged in
                and self._usable(now) is not None
                and now < self._renewal_time(on_disk)
            ):
                return on_disk
            current = self._token if on_disk is not None else None
            if current is not None and current.refresh_token is not None:
                try:
                    return await self._refresh(current)
                except GrantRefused as exc:
                    log.warning("refresh_token_refused", session=self.name, error=exc.message)
                    self._forget_refresh_token(current)
                    if not self._automatic:
                        reason = f"the refresh token was refused ({exc.aws_code})"
                        raise LoginRequired(self.name, reason) from exc
            if self._spec.grant_type == JWT_BEARER_GRANT:
                return await self._jwt_bearer()
            if self._spec.grant_type == TOKEN_EXCHANGE_GRANT:
                return await self._token_exchange()
            if current is not None and self._usable(now) is not None:
                return current  # valid until it expires; status says a login is coming
            reason = "the access token expired and cannot be renewed"
            raise LoginRequired(self.name, reason if current else "not logged in")

    def _forget_refresh_token(self, current: IamToken) -> None:
        """A refused refresh token is never tried again, by this process or another."""
        kept = replace(current, refresh_token=None)
        self._cache.save_token(self.name, kept)
        self._mark_seen()
        self._token = kept

    async def _refresh(self, current: IamToken) -> IamToken:
        assert current.refresh_token is not None
        grant = {"grantType": REFRESH_GRANT, "refreshToken": current.refresh_token.reveal()}
        return await self._exchange(
            grant,
            began_with=current.grant_type,
            assertion_subject=current.assertion_subject,
            presented=current.refresh_token,
        )

    async def _jwt_bearer(self) -> IamToken:
        assertions = self._assertions
        assert assertions is not None
        assertion = await assertions.get()
        grant = {"grantType": JWT_BEARER_GRANT, "assertion": assertion.value.reveal()}
        try:
            return await self._exchange(
                grant, began_with=JWT_BEARER_GRANT, assertion_subject=assertion.subject
            )
        except GrantRefused as exc:
            assertions.refused()
            raise AssertionRequired(
                self.name,
                f"Identity Center refused the assertion from {assertions.where}: {exc.message}",
                hint=assertions.hint,
            ) from exc

    async def _token_exchange(self) -> IamToken:
        name = self._spec.subject_session
        assert name is not None
        subject = self._sessions(name)
        if subject is None:
            raise UpstreamError(f"subject_session {name!r} is not running", transient=False)
        subject_token = await subject.access_token()
        retried = False
        while True:
            grant = {
                "grantType": TOKEN_EXCHANGE_GRANT,
                "subjectToken": subject_token.reveal(),
                "subjectTokenType": ACCESS_TOKEN_TYPE,
                "requestedTokenType": self._requested_type,
            }
            try:
                return await self._exchange(grant, began_with=TOKEN_EXCHANGE_GRANT)
            except GrantRefused as exc:
                if retried:
                    reason = f"its access token was refused as a subject token: {exc.message}"
                    raise LoginRequired(name, reason) from exc
                retried = True  # the subject's token may have been revoked: renew it once
                subject_token = await subject.token_rejected(subject_token)
            except UpstreamError as exc:
                refused_refresh = exc.aws_code == "UnauthorizedClientException"
                if not refused_refresh or self._requested_type == ACCESS_TOKEN_TYPE:
                    raise
                # RFC 8693 section 2.1: the application may not issue refresh tokens; then
                # each renewal is a new exchange with the subject's current access token.
                log.info("token_exchange_without_refresh_token", session=self.name)
                self._requested_type = ACCESS_TOKEN_TYPE

    async def _exchange(
        self,
        grant: Mapping[str, str],
        *,
        began_with: str,
        assertion_subject: str | None = None,
        presented: Secret | None = None,
    ) -> IamToken:
        """One CreateTokenWithIAM call; the answer is on disk before anything uses it.

        ``presented`` is the refresh token of a refresh grant: kept if no new one comes back.
        """
        keys = await self._signer()
        with shielded(REFRESH_DEADLINE_SECONDS, "CreateTokenWithIAM"):
            fresh = await self._client.create(
                grant, keys=keys, began_with=began_with, assertion_subject=assertion_subject
            )
            if fresh.refresh_token is None and presented is not None:
                fresh = replace(fresh, refresh_token=presented)  # not rotated: still good
            self._cache.save_token(self.name, fresh)
        self._mark_seen()
        self._set_token(fresh, self._clock.now(), renewed=True)
        log.info(
            "session_token_renewed",
            session=self.name,
            grant=grant["grantType"],
            expires_at=fresh.expires_at,
            refreshable=fresh.refresh_token is not None,
        )
        if fresh.downscoped:
            log.warning(
                "scopes_downscoped",
                session=self.name,
                asked=list(fresh.requested_scopes),
                granted=list(fresh.scopes),
            )
        return fresh

    def _renewal_time(self, token: IamToken, draw: float = 0.0) -> datetime:
        return renewal_time(
            lifetime_start=token.received_at,
            expires_at=token.expires_at,
            margin_seconds=self.margin_seconds,
            draw=draw,
        )

    # ------------------------------------------------------------------ failures

    def _retry_due(self, now: datetime) -> bool:
        """Whether to try again now: the backoff is over, or what was missing is there now."""
        if super()._retry_due(now):
            return True
        problem = self._problem
        if isinstance(problem, AssertionRequired):
            return self._assertions is not None and self._assertions.changed()
        if isinstance(problem, LoginRequired):  # of another session: the subject, the signer
            other = self._sessions(problem.session)
            return other is not None and other.status().state is not SessionState.LOGIN_REQUIRED
        return False

    # ------------------------------------------------------------------ the background loop

    def _next_wake(self, now: datetime) -> datetime | None:
        """When the loop has work to do; ``None`` while only a login can help."""
        if self._parked:
            return None
        if self._problem is not None and self._retry_at is not None:
            return now if self._retry_due(now) else self._retry_at
        token = self._token
        if token is None:
            return now if self._automatic else None
        if not self._renewable(token):
            return token.expires_at  # then it is "login required"
        return self._renewal_time(token, self._jitter)


def offline_status(spec: TrustedIdentitySpec, cache: IamTokenCache, now: datetime) -> SessionStatus:
    """What the cache says of a session, for ``credd status`` when no daemon is running."""
    action: str | None = None
    error: str | None = None
    try:
        token = cache.load(spec)
    except CacheCorrupt as exc:
        token, error = None, exc.message
    automatic = spec.grant_type != AUTH_CODE_GRANT
    if token is None or (token.expires_at <= now and token.refresh_token is None):
        state = SessionState.OK if automatic else SessionState.LOGIN_REQUIRED
        if not automatic:
            action, error = f"credd login {spec.name}", error or "not logged in"
    elif token.refresh_token is None and not automatic:
        state, action = SessionState.EXPIRING, f"credd login {spec.name}"
    else:
        state = SessionState.OK
    return _status(spec, token, state, last_error=error, action=action)


def _status(
    spec: TrustedIdentitySpec,
    token: IamToken | None,
    state: SessionState,
    *,
    next_renewal: datetime | None = None,
    last_error: str | None = None,
    action: str | None = None,
    details: Mapping[str, object] | None = None,
) -> SessionStatus:
    return SessionStatus(
        name=spec.name,
        kind=spec.kind,
        state=state,
        expires_at=token.expires_at if token else None,
        next_renewal=next_renewal,
        last_error=last_error,
        action=action,
        who=token.who() if token else None,
        details=details,
    )
