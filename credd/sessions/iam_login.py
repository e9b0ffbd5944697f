"""``credd login NAME`` for a trusted-identity session with the authorization-code grant.

The application ARN is the OAuth ``client_id`` (no registration: Identity
Center knows its redirect URIs and scopes). The browser goes to the
sso-oidc ``/authorize`` page with PKCE S256 and comes back to credd's
loopback listener (:mod:`credd.sessions.loopback`, as for Identity Center
logins, protocols.md 2.5); the code is redeemed with CreateTokenWithIAM,
signed with the session's source keys (protocols.md 2.2). The token, and the
refresh token that keeps the session alive, go to the session's cache, where
a running daemon picks them up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

import structlog

from credd.aws import AwsClients, SigningKeys
from credd.clock import Clock
from credd.config.settings import AUTH_CODE_GRANT, TrustedIdentitySpec
from credd.errors import LoginError
from credd.sessions.iam_tokens import GrantRefused, IamToken, IamTokenCache, IamTokenClient
from credd.sessions.loopback import LoginOptions, LoginUI, Pkce, loopback_redirect

log = structlog.get_logger(__name__)


async def login_trusted_identity(
    spec: TrustedIdentitySpec,
    *,
    cache: IamTokenCache,
    clients: AwsClients,
    signer: Callable[[], Awaitable[SigningKeys]],
    clock: Clock,
    ui: LoginUI,
    options: LoginOptions,
) -> IamToken:
    """Log in one authorization-code trusted-identity session, store the token, return it."""
    if spec.grant_type != AUTH_CODE_GRANT:
        raise LoginError(
            f"{spec.name} signs in with {spec.grant_type}: credd does that by itself, "
            "no login is needed",
            hint="see credd status",
        )
    if options.device:
        raise LoginError(
            "CreateTokenWithIAM has no device code grant", hint=f"run credd login {spec.name}"
        )
    keys = await signer()  # before the browser: a missing signer fails at once
    pkce = Pkce.new()
    again = f"run credd login {spec.name} again"
    async with loopback_redirect() as redirect:
        params = {
            "response_type": "code",
            "client_id": spec.client_id,
            "redirect_uri": redirect.uri,
            "state": redirect.state,
            "code_challenge_method": "S256",
            "code_challenge": pkce.challenge,
        }
        if spec.scopes:
            params["scopes"] = " ".join(spec.scopes)
        url = f"{await _authorize_base(spec, clients)}/authorize?{urlencode(params)}"
        code = await redirect.code(
            url, ui=ui, clock=clock, open_browser=options.open_browser, again=again
        )
        grant = {
            "grantType": AUTH_CODE_GRANT,
            "code": code,
            "redirectUri": redirect.uri,
            "codeVerifier": pkce.verifier,
        }
        client = IamTokenClient(spec, clients=clients, clock=clock)
        try:
            token = await client.create(grant, keys=keys, began_with=AUTH_CODE_GRANT)
        except GrantRefused as exc:
            raise LoginError(
                f"Identity Center refused the authorization code: {exc.message}", hint=again
            ) from exc
    async with cache.lock(spec.name):
        cache.save_token(spec.name, token)
    log.info("session_logged_in", session=spec.name, expires_at=token.expires_at)
    return token


async def _authorize_base(spec: TrustedIdentitySpec, clients: AwsClients) -> str:
    """The resolved sso-oidc endpoint: an endpoint override moves the browser URL too."""
    async with clients.client(
        "sso-oidc", region=spec.region, profile=spec.endpoint_profile
    ) as oidc:
        return str(oidc.meta.endpoint_url).rstrip("/")
