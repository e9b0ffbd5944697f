"""The IAM Identity Center OIDC API (``sso-oidc``), protocols.md §2.

``POST /client/register`` (RegisterClient), ``POST /device_authorization``
(StartDeviceAuthorization) and ``POST /token`` (CreateToken with the device
code, authorization code + PKCE and refresh token grants). ``POST
/token?aws_iam=t`` is CreateTokenWithIAM, routed on the query string as AWS
does (§2.2, §11.3) and served by :mod:`.iam_token`. The browser half of the
flows lives in :mod:`.consent`.
"""

from __future__ import annotations

import hmac
import re
from datetime import datetime, timedelta
from typing import Final

from aiohttp import web

from credd.secret import Secret

from . import oauth
from .errors import OidcError
from .iam_token import IamTokenService
from .inputs import JsonInput
from .issuer import TokenIssuer
from .operations import Operation, endpoint, invoke, json_ok
from .runtime import Runtime
from .state import DeviceGrant, Registration, SsoSession, TokenSet, new_user_code, opaque

#: scope strings as Identity Center spells them: ``sso:account:access``, ``openid``, …
SCOPE_RE: Final = re.compile(r"[A-Za-z0-9_.*:/-]{1,256}")


def _invalid_request(message: str) -> OidcError:
    return OidcError("InvalidRequestException", message)


class OidcService:
    def __init__(self, runtime: Runtime, token_issuer: TokenIssuer) -> None:
        self._rt = runtime
        self._iam = IamTokenService(runtime, token_issuer)
        self.register_client = Operation("RegisterClient", OidcError, self._register_client)
        self.start_device_authorization = Operation(
            "StartDeviceAuthorization", OidcError, self._start_device_authorization
        )
        self.create_token = Operation("CreateToken", OidcError, self._create_token)
        self.create_token_with_iam = Operation(
            "CreateTokenWithIAM", OidcError, self._iam.create_token_with_iam
        )

    @property
    def operations(self) -> tuple[Operation, ...]:
        return (
            self.register_client,
            self.start_device_authorization,
            self.create_token,
            self.create_token_with_iam,
        )

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/client/register", endpoint(self.register_client, self._rt)),
            web.post("/device_authorization", endpoint(self.start_device_authorization, self._rt)),
            web.post("/token", self._token),
        ]

    async def _token(self, request: web.Request) -> web.StreamResponse:
        # Same path, two operations: the query string decides (protocols.md §2.2).
        with_iam = "aws_iam" in request.query
        operation = self.create_token_with_iam if with_iam else self.create_token
        return await invoke(operation, request, self._rt)

    # RegisterClient ---------------------------------------------------------

    async def _register_client(self, request: web.Request) -> web.StreamResponse:
        body = await JsonInput.read(request, _invalid_request)
        body.required_string("clientName")
        if body.required_string("clientType") != "public":
            raise OidcError("InvalidClientMetadataException", "Only public clients are supported")
        body.optional_string("entitledApplicationArn")  # accepted, not acted on
        registration = self._new_registration(
            scopes=_checked_scopes(body.string_list("scopes")),
            grant_types=_checked_grant_types(body.string_list("grantTypes")),
            redirect_uris=_checked_redirect_uris(body.string_list("redirectUris")),
            issuer_url=self._checked_issuer(body.optional_string("issuerUrl")),
        )
        return json_ok(
            {
                "clientId": registration.client_id,
                "clientSecret": registration.client_secret.reveal(),
                # epoch SECONDS (protocols.md §2.2, §11.4)
                "clientIdIssuedAt": int(registration.issued_at.timestamp()),
                "clientSecretExpiresAt": int(registration.expires_at.timestamp()),
            }
        )

    def _checked_issuer(self, issuer_url: str | None) -> str | None:
        if issuer_url is not None and not self._rt.directory.accepts_start_url(issuer_url):
            raise _invalid_request("Invalid issuerUrl")
        return issuer_url

    def _new_registration(
        self,
        *,
        scopes: tuple[str, ...],
        grant_types: frozenset[str],
        redirect_uris: tuple[str, ...],
        issuer_url: str | None,
    ) -> Registration:
        if oauth.AUTH_CODE_GRANT in grant_types and not redirect_uris:
            raise OidcError(
                "InvalidClientMetadataException", "authorization_code requires redirectUris"
            )
        issued_at = self._rt.now().replace(microsecond=0)
        registration = Registration(
            client_id=opaque("client-", 24),
            client_secret=Secret(opaque("secret-", 96)),
            issued_at=issued_at,
            expires_at=issued_at + timedelta(seconds=self._rt.config.registration_ttl),
            scopes=scopes,
            grant_types=grant_types,
            redirect_uris=redirect_uris,
            issuer_url=issuer_url,
        )
        self._rt.state.registrations[registration.client_id] = registration
        return registration

    # StartDeviceAuthorization -----------------------------------------------

    async def _start_device_authorization(self, request: web.Request) -> web.StreamResponse:
        body = await JsonInput.read(request, _invalid_request)
        registration = self._authenticated_client(body)
        start_url = body.required_string("startUrl")
        if not self._rt.directory.accepts_start_url(start_url):
            raise _invalid_request("Invalid start URL")
        if oauth.DEVICE_CODE_GRANT not in registration.grant_types:
            raise OidcError("UnauthorizedClientException", "Client is not allowed this grant")
        config, state = self._rt.config, self._rt.state
        grant = DeviceGrant(
            user_code=self._unused_user_code(),
            client_id=registration.client_id,
            start_url=start_url,
            expires_at=self._rt.in_seconds(config.device_code_ttl),
            interval=config.poll_interval,
        )
        device_code = state.start_device_grant(grant)
        verification_uri = f"{request.url.origin()}/device"
        return json_ok(
            {
                "deviceCode": device_code,
                "userCode": grant.user_code,
                "verificationUri": verification_uri,
                "verificationUriComplete": f"{verification_uri}?user_code={grant.user_code}",
                "expiresIn": config.device_code_ttl,
                "interval": grant.interval,
            }
        )

    def _unused_user_code(self) -> str:
        while (code := new_user_code()) in self._rt.state.user_codes:
            pass
        return code

    # CreateToken ------------------------------------------------------------

    async def _create_token(self, request: web.Request) -> web.StreamResponse:
        body = await JsonInput.read(request, _invalid_request)
        registration = self._authenticated_client(body)
        grant_type = body.required_string("grantType")
        if grant_type not in oauth.GRANT_TYPES:
            raise OidcError(
                "UnsupportedGrantTypeException", f"Unsupported grant type: {grant_type}"
            )
        if grant_type not in registration.grant_types:
            raise OidcError("UnauthorizedClientException", "Client is not allowed this grant")
        body.string_list("scope")  # documented as having no effect
        redeem = {
            oauth.DEVICE_CODE_GRANT: self._redeem_device_code,
            oauth.AUTH_CODE_GRANT: self._redeem_auth_code,
            oauth.REFRESH_GRANT: self._redeem_refresh_token,
        }[grant_type]
        tokens = redeem(body, registration, self._rt.now())
        members: dict[str, object] = {
            "accessToken": tokens.access_token.reveal(),
            "tokenType": "Bearer",
            "expiresIn": tokens.expires_in,
        }
        if tokens.refresh_token is not None:
            members["refreshToken"] = tokens.refresh_token.reveal()
        return json_ok(members)

    def _redeem_device_code(
        self, body: JsonInput, registration: Registration, now: datetime
    ) -> TokenSet:
        """RFC 8628 §3.4, §3.5; protocols.md §2.4."""
        grant = self._rt.state.device_grants.get(body.required_string("deviceCode"))
        if grant is None or grant.client_id != registration.client_id:
            raise OidcError("InvalidGrantException", "Invalid device code provided")
        if grant.redeemed:
            raise OidcError("InvalidGrantException", "Device code has already been used")
        if now >= grant.expires_at:
            raise OidcError("ExpiredTokenException", "Device code has expired")
        _check_poll_rate(grant, now)
        if grant.decision == "denied":
            raise OidcError("AccessDeniedException", "The user denied the authorization request")
        if grant.decision == "pending" or grant.user is None:
            raise OidcError("AuthorizationPendingException", "Authorization is still pending")
        grant.redeemed = True
        return self._open_session(grant.user, registration, registration.scopes, now)[1]

    def _redeem_auth_code(
        self, body: JsonInput, registration: Registration, now: datetime
    ) -> TokenSet:
        """RFC 6749 §4.1.3 with PKCE (RFC 7636 §4.6); protocols.md §2.5."""
        value = body.required_string("code")
        redirect_uri = body.required_string("redirectUri")
        verifier = body.required_string("codeVerifier")
        code = self._rt.state.auth_codes.get(value)
        if code is None or code.client_id != registration.client_id:
            raise OidcError("InvalidGrantException", "Invalid authorization code provided")
        if code.redeemed:
            # RFC 6749 §4.1.2: a replayed code revokes what it was redeemed for.
            if code.session_id is not None:
                self._rt.state.revoke_session(self._rt.state.sessions[code.session_id])
            raise OidcError("InvalidGrantException", "Authorization code has already been used")
        code.redeemed = True  # one attempt per code, whatever its outcome
        if now >= code.expires_at:
            raise OidcError("ExpiredTokenException", "Authorization code has expired")
        if redirect_uri != code.redirect_uri:
            raise OidcError("InvalidGrantException", "Redirect URI does not match the request")
        if not oauth.CODE_VERIFIER_RE.fullmatch(verifier) or not hmac.compare_digest(
            oauth.s256(verifier), code.code_challenge
        ):
            raise OidcError("InvalidGrantException", "Code verifier does not match the challenge")
        session, tokens = self._open_session(code.user, registration, code.scopes, now)
        code.session_id = session.session_id
        return tokens

    def _redeem_refresh_token(
        self, body: JsonInput, registration: Registration, now: datetime
    ) -> TokenSet:
        """Rotation: the presented refresh token dies, a new one is returned."""
        state = self._rt.state
        session = state.session_of_refresh_token(body.required_string("refreshToken"))
        if (
            session is None
            or session.client_id != registration.client_id
            or session.revoked
            or now >= session.expires_at
        ):
            raise OidcError("InvalidGrantException", "Invalid refresh token provided")
        return state.rotate_refresh_token(session, now, self._rt.config.access_token_ttl)

    def _open_session(
        self, user: str, registration: Registration, scopes: tuple[str, ...], now: datetime
    ) -> tuple[SsoSession, TokenSet]:
        # Refresh tokens go to clients registered with scopes (sso-session style);
        # legacy registrations without scopes get none (protocols.md §2.2).
        config = self._rt.config
        return self._rt.state.open_session(
            user=user,
            client_id=registration.client_id,
            scopes=scopes,
            now=now,
            session_ttl=config.refresh_token_ttl,
            access_ttl=config.access_token_ttl,
            with_refresh_token=bool(registration.scopes)
            and oauth.REFRESH_GRANT in registration.grant_types,
        )

    # shared -----------------------------------------------------------------

    def _authenticated_client(self, body: JsonInput) -> Registration:
        client_id = body.required_string("clientId")
        secret = Secret(body.required_string("clientSecret"))
        registration = self._rt.state.registrations.get(client_id)
        if registration is None or registration.client_secret != secret:
            raise OidcError("InvalidClientException", "Invalid client provided")
        if not registration.is_live(self._rt.now()):
            raise OidcError("InvalidClientException", "Client registration has expired")
        return registration


# -- validation ----------------------------------------------------------------


def _checked_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    for scope in scopes:
        if not SCOPE_RE.fullmatch(scope):
            raise OidcError("InvalidScopeException", f"Invalid scope: {scope!r}")
    return scopes


def _checked_grant_types(grant_types: tuple[str, ...]) -> frozenset[str]:
    unsupported = set(grant_types) - oauth.GRANT_TYPES
    if unsupported:
        raise OidcError(
            "UnsupportedGrantTypeException", f"Unsupported grant types: {sorted(unsupported)}"
        )
    return frozenset(grant_types) or oauth.DEFAULT_GRANT_TYPES


def _checked_redirect_uris(redirect_uris: tuple[str, ...]) -> tuple[str, ...]:
    for uri in redirect_uris:
        if not oauth.is_loopback_redirect(uri):
            raise OidcError(
                "InvalidRedirectUriException", f"Redirect URI must be a loopback http URI: {uri}"
            )
    return redirect_uris


def _check_poll_rate(grant: DeviceGrant, now: datetime) -> None:
    """RFC 8628 §3.5: polling faster than ``interval`` earns slow_down and 5 s more."""
    previous, grant.last_poll = grant.last_poll, now
    if (
        grant.interval
        and previous is not None
        and now - previous < timedelta(seconds=grant.interval)
    ):
        grant.interval += 5
        raise OidcError("SlowDownException", "Client is polling too quickly")
