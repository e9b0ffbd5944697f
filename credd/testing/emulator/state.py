"""The emulator's memory: everything it has issued, and the few transitions on it.

Client registrations, device codes, authorization codes, sign-in sessions with
their access and refresh tokens, every IAM credential handed out (SSO role
credentials, AssumeRole results, static IAM user keys, AWS Sign-In credentials)
and AWS Sign-In's own codes, DPoP-bound sessions and spent proof ids
(:class:`SigninState`), how CreateTokenWithIAM sessions began and the
identity contexts they carried (:class:`IamTokenState`; the sessions and
tokens themselves are ordinary sign-in sessions), and the console's sign-in
tokens and the console sessions they opened (:class:`FederationState`). Services validate a
request, then call one synchronous method here; nothing awaits between a check
and the state change that follows it, so concurrent requests can never spend a
code or a refresh token twice.

Secret values live only as dictionary keys and :class:`~credd.secret.Secret`
fields, so no ``repr`` of a record shows one.
"""

from __future__ import annotations

import base64
import secrets
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

from credd.secret import Secret

from .identities import Principal

# -- identifiers ---------------------------------------------------------------

_USER_CODE_ALPHABET: Final = "BCDFGHJKLMNPQRSTVWXZ"  # no vowels: no words, no 0/O or 1/I
_KEY_ALPHABET: Final = string.ascii_uppercase + "234567"


def opaque(prefix: str, nbytes: int = 32) -> str:
    """A random token, tagged by kind so a mix-up is obvious in a test failure."""
    return prefix + secrets.token_urlsafe(nbytes)


def new_user_code() -> str:
    """``XXXX-XXXX`` as Identity Center shows it (RFC 8628 §6.1)."""
    chars = "".join(secrets.choice(_USER_CODE_ALPHABET) for _ in range(8))
    return f"{chars[:4]}-{chars[4:]}"


def new_access_key_id(prefix: str) -> str:
    """``AKIA…`` (long-term) or ``ASIA…`` (temporary): 20 characters like AWS's."""
    return prefix + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))


def new_secret_access_key() -> str:
    return base64.b64encode(secrets.token_bytes(30)).decode()


# -- records -------------------------------------------------------------------


@dataclass
class Registration:
    """One RegisterClient result (protocols.md §2.2)."""

    client_id: str
    client_secret: Secret
    issued_at: datetime
    expires_at: datetime
    scopes: tuple[str, ...]
    grant_types: frozenset[str]
    redirect_uris: tuple[str, ...]
    issuer_url: str | None

    def is_live(self, now: datetime) -> bool:
        return now < self.expires_at


Decision = Literal["pending", "approved", "denied"]


@dataclass
class DeviceGrant:
    """One StartDeviceAuthorization: the device code, its user code and the user's decision."""

    user_code: str
    client_id: str
    start_url: str
    expires_at: datetime
    interval: int
    last_poll: datetime | None = None
    decision: Decision = "pending"
    user: str | None = None
    redeemed: bool = False


@dataclass
class AuthCode:
    """One ``/authorize`` success, waiting to be redeemed once (RFC 6749 §4.1.2)."""

    client_id: str
    redirect_uri: str
    code_challenge: str
    scopes: tuple[str, ...]
    user: str
    expires_at: datetime
    redeemed: bool = False
    #: the session the code was redeemed into: revoked if the code is replayed
    session_id: str | None = None


@dataclass
class SsoSession:
    """A sign-in: refresh tokens and access tokens die with it."""

    session_id: str
    user: str
    client_id: str
    scopes: tuple[str, ...]
    #: refresh tokens stop working at this instant
    expires_at: datetime
    revoked: bool = False
    #: the one refresh token that currently works, if the session has any
    refresh_token: Secret | None = None


@dataclass
class AccessToken:
    session_id: str
    expires_at: datetime
    revoked: bool = False


@dataclass(frozen=True)
class TokenSet:
    """What CreateToken hands out."""

    access_token: Secret
    expires_in: int
    refresh_token: Secret | None


@dataclass(frozen=True)
class TemporaryCredentials:
    """``ASIA…`` keys with a session token and an expiry (role sessions)."""

    access_key_id: str
    secret_access_key: Secret
    session_token: Secret
    expires_at: datetime
    principal: Principal
    #: set for identity-enhanced role sessions (AssumeRole with ProvidedContexts, §5)
    identity_context: IdentityContext | None = None
    #: AssumeRole signed with temporary credentials (another role session's, Sign-In's):
    #: role chaining, as far as the console's federation endpoint is concerned
    from_temporary: bool = False
    #: issued by AWS Sign-In (``aws login``), not by an ``AssumeRole*`` operation
    signin: bool = False


@dataclass(frozen=True)
class LongTermCredentials:
    """``AKIA…`` IAM user keys: no session token, no expiry."""

    access_key_id: str
    secret_access_key: Secret
    principal: Principal


IssuedCredentials = TemporaryCredentials | LongTermCredentials


@dataclass
class LiveToken:
    token: AccessToken
    session: SsoSession


# -- AWS Sign-In (``aws login``, protocols.md §4) -------------------------------


@dataclass
class SigninCode:
    """One ``/v1/authorize`` success, redeemable once by CreateOAuth2Token."""

    client_id: str
    redirect_uri: str
    #: base64url(SHA-256(verifier)) without padding (``code_challenge_method=SHA-256``)
    code_challenge: str
    principal: Principal
    expires_at: datetime
    redeemed: bool = False
    #: the session the code was redeemed into: revoked if the code is replayed
    session_id: str | None = None


@dataclass
class SigninSession:
    """One ``aws login``: its refresh tokens are bound to one DPoP key (RFC 9449 §5)."""

    session_id: str
    client_id: str
    principal: Principal
    #: RFC 7638 thumbprint of the DPoP key presented at code redemption (``cnf.jkt``)
    jkt: str
    #: refreshing fails with ``TOKEN_EXPIRED`` from this instant on
    expires_at: datetime
    #: the one refresh token that currently works
    refresh_token: Secret | None = None
    revoked: bool = False
    #: the user's password or keys changed: refreshing fails with USER_CREDENTIALS_CHANGED
    credentials_changed: bool = False


@dataclass(repr=False)  # its keys are live codes and refresh tokens
class SigninState:
    codes: dict[str, SigninCode] = field(default_factory=dict)
    sessions: dict[str, SigninSession] = field(default_factory=dict)
    #: every refresh token ever issued -> session id; only ``session.refresh_token`` works,
    #: but a rotated one is still recognised (and refused as used)
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    #: DPoP proof ids (``jti``) seen -> the proof's ``iat``
    proof_ids: dict[str, datetime] = field(default_factory=dict)

    def add_code(self, code: SigninCode) -> str:
        value = opaque("sac-", 32)
        self.codes[value] = code
        return value

    def open_session(
        self, *, client_id: str, principal: Principal, jkt: str, now: datetime, ttl: int
    ) -> tuple[SigninSession, Secret]:
        """A new session and its first refresh token."""
        session = SigninSession(
            session_id=opaque("signin-", 12),
            client_id=client_id,
            principal=principal,
            jkt=jkt,
            expires_at=now + timedelta(seconds=ttl),
        )
        self.sessions[session.session_id] = session
        return session, self.rotate_refresh_token(session)

    def session_of_refresh_token(self, refresh_token: str) -> SigninSession | None:
        session_id = self.refresh_tokens.get(refresh_token)
        return None if session_id is None else self.sessions.get(session_id)

    def rotate_refresh_token(self, session: SigninSession) -> Secret:
        """A new refresh token for ``session``; the one before it stops working."""
        value = opaque("srt-", 64)
        self.refresh_tokens[value] = session.session_id
        session.refresh_token = Secret(value)
        return session.refresh_token

    def spend_proof_id(self, jti: str, iat: datetime, now: datetime, window: timedelta) -> bool:
        """Remember ``jti``; ``False`` if it was seen before (a replayed proof).

        Ids whose proofs are too old to be accepted anyway are forgotten.
        """
        self.proof_ids = {k: v for k, v in self.proof_ids.items() if v >= now - window}
        if jti in self.proof_ids:
            return False
        self.proof_ids[jti] = iat
        return True

    def revoke_sessions(self) -> int:
        live = [s for s in self.sessions.values() if not s.revoked]
        for session in live:
            session.revoked = True
        return len(live)

    def expire_sessions(self, now: datetime) -> None:
        for session in self.sessions.values():
            session.expires_at = min(session.expires_at, now)

    def change_user_credentials(self) -> int:
        """The user changed their password or keys: every live session is refused."""
        live = [s for s in self.sessions.values() if not s.revoked]
        for session in live:
            session.credentials_changed = True
        return len(live)


# -- trusted identity propagation (CreateTokenWithIAM, protocols.md §2.2, §5) --


@dataclass(frozen=True)
class IdentityContext:
    """Whom an ``sts:identity_context`` assertion vouches for, and until when."""

    #: the directory user's name and Identity Store user id (the idToken ``sub``)
    user: str
    user_id: str
    identity_store_arn: str
    #: the application whose token carried it
    application_arn: str
    expires_at: datetime


@dataclass(frozen=True)
class IamSessionStart:
    """How a CreateTokenWithIAM session began; its refreshed idTokens keep saying so."""

    grant_type: str
    authenticated_at: datetime
    #: the idToken ``act`` subject: the trusted token issuer of a jwt-bearer grant
    actor: str | None = None


@dataclass(repr=False)  # its keys are identity context assertions
class IamTokenState:
    #: session id (the sessions live in :attr:`State.sessions`) -> how it began
    session_starts: dict[str, IamSessionStart] = field(default_factory=dict)
    #: every identity context assertion issued, expired ones included
    identity_contexts: dict[str, IdentityContext] = field(default_factory=dict)

    def add_identity_context(self, context: IdentityContext) -> str:
        # STS-signed and encrypted on AWS; opaque here, within the 4-2048 characters
        # that AssumeRole's ContextAssertion allows.
        value = opaque("AQoJYXdzEJr", 600)
        self.identity_contexts[value] = context
        return value


# -- the console's federation endpoint (custom identity broker) ------------------


@dataclass
class SigninTokenGrant:
    """One ``getSigninToken`` answer: a sign-in token, good for one ``login`` within 15 minutes."""

    #: the temporary credentials it signs in with
    access_key_id: str
    principal: Principal
    #: the ``login`` step must come before this instant
    expires_at: datetime
    #: when the console session it opens ends (``SessionDuration``, else the credentials')
    session_ends_at: datetime
    #: the ``SessionDuration`` asked for, if any
    session_duration: int | None
    used: bool = False


@dataclass(frozen=True)
class ConsoleSession:
    """A browser signed in to the console by a ``login`` redirect."""

    principal: Principal
    access_key_id: str
    issuer: str | None
    destination: str
    started_at: datetime
    ends_at: datetime


@dataclass(repr=False)  # its keys are live sign-in tokens
class FederationState:
    grants: dict[str, SigninTokenGrant] = field(default_factory=dict)
    #: every console session opened, oldest first
    console_sessions: list[ConsoleSession] = field(default_factory=list)

    def add_grant(self, grant: SigninTokenGrant) -> str:
        value = opaque("fst-", 96)
        self.grants[value] = grant
        return value


# -- the store -----------------------------------------------------------------


@dataclass(repr=False)  # its keys are live tokens and codes
class State:
    registrations: dict[str, Registration] = field(default_factory=dict)
    #: by device code
    device_grants: dict[str, DeviceGrant] = field(default_factory=dict)
    #: user code -> device code
    user_codes: dict[str, str] = field(default_factory=dict)
    auth_codes: dict[str, AuthCode] = field(default_factory=dict)
    sessions: dict[str, SsoSession] = field(default_factory=dict)
    access_tokens: dict[str, AccessToken] = field(default_factory=dict)
    #: current refresh token -> session id
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    #: access key id -> credentials
    credentials: dict[str, IssuedCredentials] = field(default_factory=dict)
    #: AWS Sign-In (``aws login``)
    signin: SigninState = field(default_factory=SigninState)
    #: CreateTokenWithIAM's sessions and identity contexts
    iam: IamTokenState = field(default_factory=IamTokenState)
    #: the console's federation endpoint: sign-in tokens and the console sessions they opened
    federation: FederationState = field(default_factory=FederationState)

    # sso-oidc ---------------------------------------------------------------

    def start_device_grant(self, grant: DeviceGrant) -> str:
        device_code = opaque("dc-", 48)
        self.device_grants[device_code] = grant
        self.user_codes[grant.user_code] = device_code
        return device_code

    def device_grant_by_user_code(self, user_code: str) -> DeviceGrant | None:
        device_code = self.user_codes.get(normalize_user_code(user_code))
        return None if device_code is None else self.device_grants.get(device_code)

    def add_auth_code(self, code: AuthCode) -> str:
        value = opaque("ac-", 32)
        self.auth_codes[value] = code
        return value

    def open_session(
        self,
        *,
        user: str,
        client_id: str,
        scopes: tuple[str, ...],
        now: datetime,
        session_ttl: int,
        access_ttl: int,
        with_refresh_token: bool,
    ) -> tuple[SsoSession, TokenSet]:
        session = SsoSession(
            session_id=opaque("session-", 12),
            user=user,
            client_id=client_id,
            scopes=scopes,
            expires_at=now + timedelta(seconds=session_ttl),
        )
        self.sessions[session.session_id] = session
        refresh = self._new_refresh_token(session) if with_refresh_token else None
        return session, self._new_access_token(session, now, access_ttl, refresh)

    def session_of_refresh_token(self, refresh_token: str) -> SsoSession | None:
        session_id = self.refresh_tokens.get(refresh_token)
        return None if session_id is None else self.sessions.get(session_id)

    def rotate_refresh_token(self, session: SsoSession, now: datetime, access_ttl: int) -> TokenSet:
        """Refresh grant: the old refresh token dies, a new one and a new access token are born."""
        self._forget_refresh_token(session)
        return self._new_access_token(session, now, access_ttl, self._new_refresh_token(session))

    def live_access_token(self, token: str, now: datetime) -> LiveToken | None:
        access = self.access_tokens.get(token)
        if access is None or access.revoked or now >= access.expires_at:
            return None
        session = self.sessions[access.session_id]
        return None if session.revoked else LiveToken(access, session)

    def revoke_session(self, session: SsoSession) -> None:
        """Logout or admin revocation: the refresh token and every access token die."""
        session.revoked = True
        self._forget_refresh_token(session)

    def revoke_sessions(self) -> int:
        live = [s for s in self.sessions.values() if not s.revoked]
        for session in live:
            self.revoke_session(session)
        return len(live) + self.signin.revoke_sessions()

    def expire_refresh_tokens(self, now: datetime) -> None:
        """Every session ends now for refreshing; issued access tokens run their course."""
        for session in self.sessions.values():
            session.expires_at = min(session.expires_at, now)
        self.signin.expire_sessions(now)

    def _new_refresh_token(self, session: SsoSession) -> Secret:
        value = opaque("aor-", 48)
        self.refresh_tokens[value] = session.session_id
        session.refresh_token = Secret(value)
        return session.refresh_token

    def _forget_refresh_token(self, session: SsoSession) -> None:
        if session.refresh_token is not None:
            self.refresh_tokens.pop(session.refresh_token.reveal(), None)
            session.refresh_token = None

    def _new_access_token(
        self, session: SsoSession, now: datetime, ttl: int, refresh: Secret | None
    ) -> TokenSet:
        value = opaque("aoa-", 48)
        self.access_tokens[value] = AccessToken(session.session_id, now + timedelta(seconds=ttl))
        return TokenSet(Secret(value), ttl, refresh)

    # IAM credentials --------------------------------------------------------

    def issue_credentials(
        self,
        principal: Principal,
        expires_at: datetime,
        identity_context: IdentityContext | None = None,
        *,
        from_temporary: bool = False,
        signin: bool = False,
    ) -> TemporaryCredentials:
        credentials = TemporaryCredentials(
            access_key_id=new_access_key_id("ASIA"),
            secret_access_key=Secret(new_secret_access_key()),
            session_token=Secret(opaque("IQoJb3JpZ2luX2VjE", 96)),
            expires_at=expires_at,
            principal=principal,
            identity_context=identity_context,
            from_temporary=from_temporary,
            signin=signin,
        )
        self.credentials[credentials.access_key_id] = credentials
        return credentials

    def add_access_key(self, principal: Principal) -> LongTermCredentials:
        credentials = LongTermCredentials(
            access_key_id=new_access_key_id("AKIA"),
            secret_access_key=Secret(new_secret_access_key()),
            principal=principal,
        )
        self.credentials[credentials.access_key_id] = credentials
        return credentials


def normalize_user_code(user_code: str) -> str:
    """Users type codes in any case, with or without the dash."""
    compact = user_code.strip().upper().replace("-", "")
    return f"{compact[:4]}-{compact[4:]}" if len(compact) == 8 else compact
