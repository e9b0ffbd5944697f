"""CreateTokenWithIAM (``POST /token?aws_iam=t``): tokens for applications, protocols.md §2.2.

The caller is an IAM principal, not an OAuth client: the request must be SigV4
signed (service ``sso-oauth``) with credentials the emulator issued, for the
Identity Center home region. ``clientId`` is an application ARN from
:attr:`Directory.identity_center <.config.Directory.identity_center>`, and the
application decides which grants, scopes, token issuers and callers it accepts.

Grants, each validated the way Identity Center would (RFC numbers for the rules):

* ``urn:ietf:params:oauth:grant-type:jwt-bearer`` (RFC 7523 §3): ``assertion``
  is an ES256 JWT of a trusted token issuer the application trusts, signed by
  its key, with an accepted ``aud``, ``exp`` in the future, ``iat``/``nbf`` not
  ahead of the clock by more than a minute, and a subject claim naming a
  directory user. Any flaw is ``InvalidGrantException``.
* ``urn:ietf:params:oauth:grant-type:token-exchange`` (RFC 8693 §2.1):
  ``subjectToken`` is a live Identity Center access token issued to another
  client or application; ``subjectTokenType`` must be the access token URI;
  ``requestedTokenType`` (default: access token) decides whether a refresh
  token comes back. An expired subject token is ``ExpiredTokenException``
  (the model: "the token issued by the service is expired"), an unknown or
  revoked one ``InvalidGrantException``; bad token types are
  ``InvalidRequestException`` (RFC 8693 §2.2.2).
* ``authorization_code``: a code from ``/authorize`` with the application ARN
  as ``client_id``, single use (a replay revokes what it bought), PKCE S256,
  the exact ``redirectUri``; an expired code is ``ExpiredTokenException``.
* ``refresh_token``: rotates; the presented token dies (reuse, expiry,
  revocation: ``InvalidGrantException``).

A refresh token (and ``issuedTokenType`` = the refresh token URI) comes back
when the application allows the ``refresh_token`` grant, for every grant but
token exchange, which returns one only when ``requestedTokenType`` asks for it;
otherwise ``issuedTokenType`` is the access token URI. ``scope`` downscopes: a
subset of what the grant allows is granted as asked, anything else is
``InvalidScopeException``. ``idToken`` comes with the ``openid`` scope and the
identity context (``sts:identity_context`` claim and
``awsAdditionalDetails.identityContext``, remembered in ``State.iam`` for STS,
§5) with the ``sts:identity_context`` scope; both are granted by default.

Errors no request can provoke here (``AuthorizationPendingException``,
``SlowDownException``, ``InternalServerException``) come from faults.

SigV4 failures are refused before sso-oidc sees the request, by the same
front door every AWS JSON service has: the coral shapes, all HTTP 403, with a
``{"message"}`` body (as Lambda or API Gateway answer): ``MissingAuthenticationTokenException``,
``IncompleteSignatureException``, ``UnrecognizedClientException`` (unknown key,
wrong session token), ``ExpiredTokenException`` (expired credentials; 403,
unlike the modeled 400 one), ``InvalidSignatureException`` (bad signature,
wrong service, clock skew). botocore reads the code from ``x-amzn-ErrorType``.
A request signed for another region is ``InvalidRequestRegionException`` (400)
naming the home region's ``endpoint`` and ``region``: one emulator serves every
region, so this is how "you called the wrong region's Identity Center" looks.
"""

from __future__ import annotations

import hmac
import json
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Final, cast

from aiohttp import web

from credd.secret import Secret

from . import issuer, oauth, sigv4
from .config import User
from .errors import ERROR_TYPE_HEADER, AwsError, OidcError
from .identity_center import Application, IdentityCenter, TrustedTokenIssuer
from .inputs import JsonInput
from .operations import json_ok
from .runtime import Runtime
from .state import (
    AuthCode,
    IamSessionStart,
    IdentityContext,
    IssuedCredentials,
    Registration,
    SsoSession,
    TokenSet,
)

SIGNING_NAME: Final = "sso-oauth"
#: the namespace suffix of the SigV4 front door's error types (clients strip it, §1)
CORAL_SERVICE_NAMESPACE: Final = "http://internal.amazon.com/coral/com.amazon.coral.service/"
IDENTITY_CONTEXT_SCOPE: Final = "sts:identity_context"
#: how far ahead of the emulator's clock an assertion's ``iat``/``nbf`` may be
ASSERTION_LEEWAY: Final = 60


class FrontDoorError(AwsError):
    """A request the SigV4 layer in front of sso-oidc refuses (see the module docstring)."""

    STATUSES: ClassVar[dict[str, int]] = {
        "MissingAuthenticationTokenException": 403,
        "IncompleteSignatureException": 403,
        "InvalidSignatureException": 403,
        "UnrecognizedClientException": 403,
        "ExpiredTokenException": 403,
    }

    def response(self, request_id: str) -> web.Response:
        return web.Response(
            status=self.status,
            body=json.dumps({"message": self.message}).encode(),
            content_type=self.CONTENT_TYPE,
            headers={ERROR_TYPE_HEADER: f"{self.code}:{CORAL_SERVICE_NAMESPACE}"},
        )


_AUTH_FAILURE_CODES: Final[Mapping[sigv4.FailureReason, str]] = {
    "missing": "MissingAuthenticationTokenException",
    "incomplete": "IncompleteSignatureException",
    "wrong_service": "InvalidSignatureException",
    "unknown_key": "UnrecognizedClientException",
    "bad_token": "UnrecognizedClientException",
    "expired": "ExpiredTokenException",
    "skewed": "InvalidSignatureException",
    "signature": "InvalidSignatureException",
}


class RegionError(OidcError):
    """``InvalidRequestRegionException`` with its ``endpoint`` and ``region`` members."""

    def __init__(self, endpoint: str, region: str) -> None:
        super().__init__(
            "InvalidRequestRegionException",
            f"The request must be made to the IAM Identity Center endpoint of {region}",
        )
        self.endpoint = endpoint
        self.region = region

    def response(self, request_id: str) -> web.Response:
        response = super().response(request_id)
        body = json.loads(cast("bytes", response.body))
        members = {**body, "endpoint": self.endpoint, "region": self.region}
        response.body = json.dumps(members).encode()
        return response


def _invalid_request(message: str) -> OidcError:
    return OidcError("InvalidRequestException", message)


def _invalid_grant(message: str) -> OidcError:
    return OidcError("InvalidGrantException", message)


@dataclass(frozen=True)
class _Subject:
    """What a validated grant yields: whose tokens, which scopes at most, which session."""

    user: str
    allowed_scopes: tuple[str, ...]
    with_refresh_token: bool
    #: the session a refresh continues; ``None``: a new one, begun as ``start`` says
    session: SsoSession | None = None
    start: IamSessionStart | None = None
    #: the authorization code being redeemed: it learns the session it bought
    code: AuthCode | None = None


Redeemer = Callable[[JsonInput, Application, datetime], _Subject]


class IamTokenService:
    """The CreateTokenWithIAM handler; ``token_issuer`` is the test issuer the emulator hosts."""

    def __init__(self, runtime: Runtime, token_issuer: issuer.TokenIssuer) -> None:
        self._rt = runtime
        self._token_issuer = token_issuer
        #: Identity Center's own key for the idTokens it signs
        self._signer = issuer.JwtSigner()
        self._redeemers: dict[str, Redeemer] = {
            oauth.JWT_BEARER_GRANT: self._redeem_assertion,
            oauth.TOKEN_EXCHANGE_GRANT: self._redeem_subject_token,
            oauth.AUTH_CODE_GRANT: self._redeem_auth_code,
            oauth.REFRESH_GRANT: self._redeem_refresh_token,
        }

    @property
    def _instance(self) -> IdentityCenter:
        return self._rt.directory.identity_center

    async def create_token_with_iam(self, request: web.Request) -> web.StreamResponse:
        # The body is read (and cached) first: nothing suspends between the checks
        # and the issuing, so a code or refresh token cannot be spent twice.
        raw = await request.read()
        caller = self._authenticate(request, raw)
        body = await JsonInput.read(request, _invalid_request)
        application = self._application(body.required_string("clientId"))
        if not application.allows_caller(caller.principal.arn):
            raise OidcError(
                "AccessDeniedException",
                f"User: {caller.principal.arn} is not authorized to perform: "
                f"sso-oauth:CreateTokenWithIAM on resource: {application.arn}",
            )
        grant_type = body.required_string("grantType")
        if grant_type not in oauth.IAM_GRANT_TYPES:
            raise OidcError(
                "UnsupportedGrantTypeException", f"Unsupported grant type: {grant_type}"
            )
        if grant_type not in application.grants:
            raise OidcError(
                "UnauthorizedClientException", f"The application is not allowed {grant_type}"
            )
        requested = self._requested_scopes(body, application)
        now = self._rt.now()
        subject = self._redeemers[grant_type](body, application, now)
        granted = _granted(requested, subject.allowed_scopes)
        return json_ok(self._issue(application, subject, granted, now))

    # authentication ---------------------------------------------------------

    def _authenticate(self, request: web.Request, body: bytes) -> IssuedCredentials:
        signed = sigv4.SignedRequest.of(request, body)
        try:
            caller = sigv4.authenticate(
                signed,
                service=SIGNING_NAME,
                lookup=self._rt.state.credentials.get,
                now=self._rt.now(),
                max_skew=self._rt.config.max_clock_skew,
            )
        except sigv4.AuthFailure as failure:
            raise FrontDoorError(_AUTH_FAILURE_CODES[failure.reason], failure.message) from None
        region = sigv4.parse_authorization(request.headers["Authorization"]).scope.region
        if region != self._instance.region:
            raise RegionError(self._instance.endpoint, self._instance.region)
        return caller

    def _application(self, client_id: str) -> Application:
        application = self._instance.application(client_id)
        if application is None:
            raise OidcError("InvalidClientException", "Invalid client provided")
        return application

    def _requested_scopes(self, body: JsonInput, application: Application) -> tuple[str, ...]:
        requested = body.string_list("scope")
        unknown = [s for s in requested if s not in application.all_scopes]
        if unknown:
            raise OidcError("InvalidScopeException", f"Invalid scopes: {', '.join(unknown)}")
        return tuple(dict.fromkeys(requested))

    # grants -----------------------------------------------------------------

    def _redeem_assertion(
        self, body: JsonInput, application: Application, now: datetime
    ) -> _Subject:
        """RFC 7523 §3: a JWT of a trusted token issuer the application trusts."""
        token = body.required_string("assertion")
        try:
            claimed = issuer.peek(token)
        except issuer.InvalidJwt as exc:
            raise _invalid_grant(f"Invalid assertion: {exc}") from None
        iss = claimed.claims.get("iss")
        trusted = self._instance.token_issuer(iss) if isinstance(iss, str) else None
        if trusted is None or trusted.arn not in application.token_issuers:
            raise _invalid_grant("The assertion's issuer is not trusted by this application")
        if trusted.issuer_url != self._token_issuer.url:
            raise _invalid_grant("The trusted token issuer's keys cannot be retrieved")
        try:
            claims = issuer.decode(
                token, self._token_issuer.public_key, self._token_issuer.kid
            ).claims
        except issuer.InvalidJwt as exc:
            raise _invalid_grant(f"Invalid assertion: {exc}") from None
        _check_audience(claims, application.token_issuers[trusted.arn])
        _check_times(claims, now)
        user = self._assertion_user(claims, trusted)
        return _Subject(
            user=user.name,
            allowed_scopes=application.all_scopes,
            with_refresh_token=oauth.REFRESH_GRANT in application.grants,
            start=IamSessionStart(oauth.JWT_BEARER_GRANT, now, actor=trusted.arn),
        )

    def _assertion_user(self, claims: Mapping[str, object], trusted: TrustedTokenIssuer) -> User:
        value = claims.get(trusted.claim)
        if not isinstance(value, str) or not value:
            raise _invalid_grant(f"The assertion has no {trusted.claim} claim")
        for user in self._rt.directory.users:
            known = user.name if trusted.attribute == "userName" else user.email
            if known is not None and known.casefold() == value.casefold():
                return user
        raise _invalid_grant("The assertion's subject is not a user of the identity store")

    def _redeem_subject_token(
        self, body: JsonInput, application: Application, now: datetime
    ) -> _Subject:
        """RFC 8693 §2.1: an Identity Center access token of another client or application."""
        subject_token = body.required_string("subjectToken")
        if body.required_string("subjectTokenType") != oauth.ACCESS_TOKEN_TYPE:
            raise _invalid_request(f"subjectTokenType must be {oauth.ACCESS_TOKEN_TYPE}")
        requested_type = body.optional_string("requestedTokenType") or oauth.ACCESS_TOKEN_TYPE
        if requested_type not in (oauth.ACCESS_TOKEN_TYPE, oauth.REFRESH_TOKEN_TYPE):
            raise _invalid_request(f"Unsupported requestedTokenType: {requested_type}")
        with_refresh_token = requested_type == oauth.REFRESH_TOKEN_TYPE
        if with_refresh_token and oauth.REFRESH_GRANT not in application.grants:
            raise OidcError(
                "UnauthorizedClientException", "The application is not allowed refresh tokens"
            )
        state = self._rt.state
        access = state.access_tokens.get(subject_token)
        if access is None:
            raise _invalid_grant("Invalid subject token")
        session = state.sessions[access.session_id]
        if access.revoked or session.revoked:
            raise _invalid_grant("The subject token has been revoked")
        if now >= access.expires_at:
            raise OidcError("ExpiredTokenException", "The subject token has expired")
        if session.client_id == application.arn:
            raise _invalid_grant(
                "The subject token must be issued to another client or application"
            )
        return _Subject(
            user=session.user,
            allowed_scopes=application.all_scopes,
            with_refresh_token=with_refresh_token,
            start=IamSessionStart(oauth.TOKEN_EXCHANGE_GRANT, now),
        )

    def _redeem_auth_code(
        self, body: JsonInput, application: Application, now: datetime
    ) -> _Subject:
        """RFC 6749 §4.1.3 with PKCE (RFC 7636 §4.6), as CreateToken redeems codes."""
        value = body.required_string("code")
        redirect_uri = body.required_string("redirectUri")
        verifier = body.required_string("codeVerifier")
        state = self._rt.state
        code = state.auth_codes.get(value)
        if code is None or code.client_id != application.arn:
            raise _invalid_grant("Invalid authorization code provided")
        if code.redeemed:
            # RFC 6749 §4.1.2: a replayed code revokes what it was redeemed for.
            if code.session_id is not None:
                state.revoke_session(state.sessions[code.session_id])
            raise _invalid_grant("Authorization code has already been used")
        code.redeemed = True  # one attempt per code, whatever its outcome
        if now >= code.expires_at:
            raise OidcError("ExpiredTokenException", "Authorization code has expired")
        if redirect_uri != code.redirect_uri:
            raise _invalid_grant("Redirect URI does not match the request")
        if not oauth.CODE_VERIFIER_RE.fullmatch(verifier) or not hmac.compare_digest(
            oauth.s256(verifier), code.code_challenge
        ):
            raise _invalid_grant("Code verifier does not match the challenge")
        return _Subject(
            user=code.user,
            allowed_scopes=code.scopes,
            with_refresh_token=oauth.REFRESH_GRANT in application.grants,
            start=IamSessionStart(oauth.AUTH_CODE_GRANT, now),
            code=code,
        )

    def _redeem_refresh_token(
        self, body: JsonInput, application: Application, now: datetime
    ) -> _Subject:
        session = self._rt.state.session_of_refresh_token(body.required_string("refreshToken"))
        if (
            session is None
            or session.client_id != application.arn
            or session.revoked
            or now >= session.expires_at
        ):
            raise _invalid_grant("Invalid refresh token provided")
        return _Subject(
            user=session.user,
            allowed_scopes=session.scopes,
            with_refresh_token=True,
            session=session,
        )

    # issuing ----------------------------------------------------------------

    def _issue(
        self,
        application: Application,
        subject: _Subject,
        granted: tuple[str, ...],
        now: datetime,
    ) -> dict[str, object]:
        config, state = self._rt.config, self._rt.state
        session, tokens = self._tokens(application, subject, granted, now)
        start = state.iam.session_starts[session.session_id]
        user_id = user_uuid(self._instance, subject.user)
        expires_at = now + timedelta(seconds=config.iam_token_ttl)
        context = None
        if IDENTITY_CONTEXT_SCOPE in granted:
            context = state.iam.add_identity_context(
                IdentityContext(
                    user=subject.user,
                    user_id=user_id,
                    identity_store_arn=self._instance.identity_store_arn,
                    application_arn=application.arn,
                    expires_at=expires_at,
                )
            )
        members: dict[str, object] = {
            "accessToken": tokens.access_token.reveal(),
            "tokenType": "Bearer",
            "expiresIn": tokens.expires_in,
        }
        if tokens.refresh_token is not None:
            members["refreshToken"] = tokens.refresh_token.reveal()
        if "openid" in granted:
            members["idToken"] = self._id_token(
                application, user_id, start, context, now, expires_at
            )
        members["issuedTokenType"] = (
            oauth.ACCESS_TOKEN_TYPE if tokens.refresh_token is None else oauth.REFRESH_TOKEN_TYPE
        )
        members["scope"] = list(granted)
        if context is not None:
            members["awsAdditionalDetails"] = {"identityContext": context}
        return members

    def _tokens(
        self, application: Application, subject: _Subject, granted: tuple[str, ...], now: datetime
    ) -> tuple[SsoSession, TokenSet]:
        config, state = self._rt.config, self._rt.state
        if subject.session is not None:
            return subject.session, state.rotate_refresh_token(
                subject.session, now, config.iam_token_ttl
            )
        assert subject.start is not None  # every grant but refresh begins a session
        session, tokens = state.open_session(
            user=subject.user,
            client_id=application.arn,
            # the refresh token's scopes: later refreshes may narrow them, never widen
            scopes=granted,
            now=now,
            session_ttl=config.iam_refresh_token_ttl,
            access_ttl=config.iam_token_ttl,
            with_refresh_token=subject.with_refresh_token,
        )
        state.iam.session_starts[session.session_id] = subject.start
        if subject.code is not None:
            subject.code.session_id = session.session_id
        return session, tokens

    def _id_token(
        self,
        application: Application,
        user_id: str,
        start: IamSessionStart,
        context: str | None,
        now: datetime,
        expires_at: datetime,
    ) -> str:
        """The claims of the AWS documentation's example (protocols.md §2.2)."""
        instance = self._instance
        claims: dict[str, object] = {
            "aws:identity_store_id": instance.identity_store_id,
            "sub": user_id,
            "aws:instance_account": instance.account_id,
            "iss": instance.issuer_url,
            "aws:identity_store_arn": instance.identity_store_arn,
            "aud": application.arn,
            "aws:instance_arn": instance.instance_arn,
            "aws:credential_id": secrets.token_urlsafe(32),
            "auth_time": start.authenticated_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "exp": int(expires_at.timestamp()),
            "iat": int(now.timestamp()),
        }
        if context is not None:
            claims[IDENTITY_CONTEXT_SCOPE] = context
        if start.actor is not None:
            claims["act"] = {"sub": start.actor}
        return self._signer.sign(claims)


def user_uuid(instance: IdentityCenter, user_name: str) -> str:
    """The user's Identity Store id: a UUID, stable per instance and user."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{instance.identity_store_arn}/{user_name}"))


def application_registration(application: Application, now: datetime) -> Registration:
    """An application as ``/authorize`` sees a client: its redirect URIs, grants and scopes.

    It has no secret and is never stored: CreateToken cannot be called with it.
    """
    return Registration(
        client_id=application.arn,
        client_secret=Secret(""),
        issued_at=now,
        expires_at=datetime.max.replace(tzinfo=UTC),
        scopes=application.all_scopes,
        grant_types=application.grants,
        redirect_uris=application.redirect_uris,
        issuer_url=None,
    )


def _granted(requested: tuple[str, ...], allowed: tuple[str, ...]) -> tuple[str, ...]:
    """Downscoping: a subset is granted as asked; nothing asked is everything allowed."""
    if not requested:
        return allowed
    if not set(requested) <= set(allowed):
        wider = ", ".join(s for s in requested if s not in allowed)
        raise OidcError("InvalidScopeException", f"Scopes not granted to this grant: {wider}")
    return requested


def _check_audience(claims: Mapping[str, object], accepted: tuple[str, ...]) -> None:
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(isinstance(a, str) and a in accepted for a in audiences):
        raise _invalid_grant("The assertion's audience is not accepted by this application")


def _check_times(claims: Mapping[str, object], now: datetime) -> None:
    """RFC 7523 §3 items 4-6: ``exp`` required and strict; ``iat``/``nbf`` not in the future."""
    times = {name: claims.get(name) for name in ("exp", "iat", "nbf")}
    for name, value in times.items():
        if value is None and name == "nbf":
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _invalid_grant(f"The assertion's {name} claim must be a number")
    at = now.timestamp()
    if at >= cast("float", times["exp"]):
        raise _invalid_grant("The assertion has expired")
    for name in ("iat", "nbf"):
        value = times[name]
        if value is not None and cast("float", value) > at + ASSERTION_LEEWAY:
            raise _invalid_grant(f"The assertion's {name} is in the future")
