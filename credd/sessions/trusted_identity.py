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
ahead of expiry with the ``refresh_token`` grant; it rotates, and is kept as
every rotated refresh token is (:class:`~credd.engine.session.KeptSession`,
design.md rule 8). When a
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
from credd.clock import Clock
from credd.config.settings import (
    AUTH_CODE_GRANT,
    IDENTITY_CONTEXT_SCOPE,
    JWT_BEARER_GRANT,
    TOKEN_EXCHANGE_GRANT,
    TrustedIdentitySpec,
)
from credd.engine.session import KeptSession, RefreshRefused, SessionContext
from credd.errors import AssertionRequired, LoginRequired, UpstreamError
from credd.files.store import CacheCorrupt, Fingerprint
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

log = structlog.get_logger(__name__)


class SubjectSession(Protocol):
    """A session whose access token another one exchanges (Identity Center, or trusted identity)."""

    name: str

    def status(self) -> SessionStatus: ...

    async def access_token(self) -> Secret: ...

    async def token_rejected(self, rejected: Secret) -> Secret: ...


class TrustedIdentityStrategy:
    """What a trusted-identity session knows: its grant, its refresh token, its answers."""

    kind = TrustedIdentitySpec.kind
    nothing_cached = "no cached token"

    def __init__(
        self,
        spec: TrustedIdentitySpec,
        *,
        cache: IamTokenCache,
        clients: AwsClients,
        clock: Clock,
        signer: Callable[[], Awaitable[SigningKeys]],
        sessions: Callable[[str], SubjectSession | None],
    ) -> None:
        self._spec = spec
        self._cache = cache
        self._client = IamTokenClient(spec, clients=clients, clock=clock)
        self._signer = signer
        self._sessions = sessions
        self.assertions: AssertionSource | None = None
        if spec.grant_type == JWT_BEARER_GRANT:
            self.assertions = AssertionSource(
                spec.name,
                file=spec.assertion_file,
                command=spec.assertion_command,
                clock=clock,
            )
        #: what token exchange asks for; access tokens only once the application says so
        self._requested_type = REFRESH_TOKEN_TYPE
        #: a refresh token Identity Center refused: never presented again
        self._refused: Secret | None = None

    @property
    def login_command(self) -> str:
        return f"credd login {self._spec.name}"

    @property
    def begins_alone(self) -> bool:
        """Every grant but the authorization code begins again without a person."""
        return self._spec.grant_type != AUTH_CODE_GRANT

    def read(self) -> tuple[IamToken | None, Fingerprint]:
        spec = self._spec
        token, fingerprint = self._cache.load_entry(spec.name)
        if token is not None and (token.client_id, token.region) != (spec.client_id, spec.region):
            return None, fingerprint  # the configuration changed: that token is for another
        return token, fingerprint

    def same(self, a: IamToken, b: IamToken) -> bool:
        return a.access_token == b.access_token

    def access(self, token: IamToken) -> Secret:
        return token.access_token

    def renewable(self, token: IamToken, now: datetime) -> bool:
        return token.refresh_token is not None or self.begins_alone

    def unrenewable(self, token: IamToken) -> str:
        return "the access token expired and cannot be renewed"

    def margin(self, configured: float) -> float:
        return configured

    def lifetime_start(self, token: IamToken, now: datetime, *, renewed: bool) -> datetime:
        return token.received_at

    def input_changed(self) -> bool:
        return self.assertions is not None and self.assertions.changed()

    def describe(self, token: IamToken | None) -> tuple[str | None, Mapping[str, object] | None]:
        spec = self._spec
        details: dict[str, object] = {
            "application": spec.client_id,
            "grant_type": spec.grant_type,
            "requested_scopes": list(spec.scopes),
        }
        if token is None:
            return None, details
        details.update(
            granted_scopes=list(token.scopes),
            downscoped=token.downscoped,
            issued_token_type=token.issued_token_type,
            refreshable=token.refresh_token is not None,
            identity_context=token.identity_context is not None,
            claims=token.claims(),
        )
        return token.who(), details

    # ------------------------------------------------------------------ the exchange

    async def exchange(self, current: IamToken | None, now: datetime) -> IamToken:
        """Refresh; or, the refresh token refused or absent, begin again with the grant."""
        spec = self._spec
        if (
            current is not None
            and current.refresh_token is not None
            and current.refresh_token != self._refused
        ):
            try:
                return await self._refresh(current)
            except GrantRefused as exc:
                log.warning("refresh_token_refused", session=spec.name, error=exc.message)
                self._refused = current.refresh_token
                if not self.begins_alone:
                    reason = f"the refresh token was refused ({exc.aws_code})"
                    kept = replace(current, refresh_token=None)
                    raise RefreshRefused(kept, LoginRequired(spec.name, reason)) from exc
        if spec.grant_type == JWT_BEARER_GRANT:
            return await self._jwt_bearer()
        if spec.grant_type == TOKEN_EXCHANGE_GRANT:
            return await self._token_exchange()
        reason = "the access token expired and cannot be renewed"
        raise LoginRequired(spec.name, reason if current else "not logged in")

    async def _refresh(self, current: IamToken) -> IamToken:
        assert current.refresh_token is not None
        grant = {"grantType": REFRESH_GRANT, "refreshToken": current.refresh_token.reveal()}
        fresh = await self._exchange(
            grant, began_with=current.grant_type, assertion_subject=current.assertion_subject
        )
        if fresh.refresh_token is None:
            fresh = replace(fresh, refresh_token=current.refresh_token)  # not rotated: still good
        return fresh

    async def _jwt_bearer(self) -> IamToken:
        assertions = self.assertions
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
                self._spec.name,
                f"Identity Center refused the assertion from {assertions.where}: {exc.message}",
                hint=assertions.hint,
            ) from exc

    async def _token_exchange(self) -> IamToken:
        spec = self._spec
        name = spec.subject_session
        assert name is not None
        subject = self._sessions(name)
        if subject is None:
            raise UpstreamError(f"subject_session {name!r} is not running", transient=False)
        subject_token = await subject.access_token()
        renewed_subject = False
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
                if exc.aws_code == "AccessDeniedException":
                    # The application refuses this user (not assigned, or the grant not
                    # allowed): this session's problem. The subject session is healthy,
                    # and renewing its token would change nothing.
                    raise UpstreamError(
                        f"Identity Center denied {spec.client_id} the token exchange for the "
                        f"user of session {name!r}: {exc.message}",
                        aws_code=exc.aws_code,
                        transient=False,
                        hint=f"check that the user of {name} is assigned to the application "
                        "and that the application allows the token-exchange grant",
                    ) from exc
                if renewed_subject:
                    raise UpstreamError(
                        f"Identity Center refused the access token of session {name!r} as a "
                        f"subject token, even renewed: {exc.message}",
                        aws_code=exc.aws_code,
                        transient=False,
                        hint=f"check that the application trusts the issuer of {name}'s tokens",
                    ) from exc
                renewed_subject = True  # the subject's token may have been revoked: renew it once
                subject_token = await subject.token_rejected(subject_token)
            except UpstreamError as exc:
                refused_refresh = exc.aws_code == "UnauthorizedClientException"
                if not refused_refresh or self._requested_type == ACCESS_TOKEN_TYPE:
                    raise
                # RFC 8693 section 2.1: the application may not issue refresh tokens; then
                # each renewal is a new exchange with the subject's current access token.
                log.info("token_exchange_without_refresh_token", session=spec.name)
                self._requested_type = ACCESS_TOKEN_TYPE

    async def _exchange(
        self,
        grant: Mapping[str, str],
        *,
        began_with: str,
        assertion_subject: str | None = None,
    ) -> IamToken:
        """One CreateTokenWithIAM call, signed with the session's source keys."""
        keys = await self._signer()
        fresh = await self._client.create(
            grant, keys=keys, began_with=began_with, assertion_subject=assertion_subject
        )
        log.info(
            "create_token_with_iam",
            session=self._spec.name,
            grant=grant["grantType"],
            refreshable=fresh.refresh_token is not None,
        )
        if fresh.downscoped:
            log.warning(
                "scopes_downscoped",
                session=self._spec.name,
                asked=list(fresh.requested_scopes),
                granted=list(fresh.scopes),
            )
        return fresh


class TrustedIdentitySession(KeptSession[IamToken]):
    """A ``[profiles.NAME]`` of type create-token-with-iam, kept alive.

    It hands out its access token (``/v1/tokens/NAME``, or as the subject of
    another session) and its identity context (STS ``ProvidedContexts``).
    """

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
        strategy = TrustedIdentityStrategy(
            spec,
            cache=cache,
            clients=clients,
            clock=context.clock,
            signer=signer,
            sessions=sessions,
        )
        super().__init__(spec, strategy, cache=cache, key=spec.name, context=context)

    def usable_token(self) -> IamToken | None:
        """The token held, if it is valid for a while yet: the request path, from memory."""
        return self.usable()

    async def access_token(self) -> Secret:
        return (await self.token()).access_token

    async def token_rejected(self, rejected: Secret) -> Secret:
        """Somebody saw ``rejected`` refused: renew once, whatever its expiry said."""
        return (await self.reject(rejected)).access_token

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
        token = self.record.value
        if token is not None and token.identity_context == rejected:
            await self.reject(token.access_token)
        return await self.identity_context()


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
