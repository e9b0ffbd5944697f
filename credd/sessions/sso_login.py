"""Interactive Identity Center login, as the AWS CLI v2 runs it (protocols.md 2.4, 2.5).

Authorization code with PKCE and a loopback redirect listener by default, the
device code flow on request (and always for legacy start-URL profiles, as
with the AWS CLI). The client registration is cached the AWS CLI's way and
reused until it nears expiry. What the user sees goes through a
:class:`LoginUI`; this module never prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import anyio
import structlog

from credd.aws import AwsClients
from credd.clock import Clock
from credd.config.settings import SsoSessionSpec
from credd.errors import LoginError, UpstreamError
from credd.files.store import Registration, SsoCache, SsoToken, registration_cache_name
from credd.secret import Secret
from credd.sessions.loopback import (
    REGISTERED_REDIRECT,
    LoginOptions,
    LoginUI,
    Pkce,
    loopback_redirect,
    open_in_browser,
)

__all__ = ["LoginOptions", "LoginUI", "SsoLogin"]

log = structlog.get_logger(__name__)

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
AUTH_CODE_GRANT = "authorization_code"
#: a registration closer than this to its expiry is replaced at login, so that
#: the session the login starts can be renewed for a good while
REGISTRATION_RENEW_WINDOW = timedelta(days=7)


class SsoLogin:
    """One login of one Identity Center session; writes the AWS CLI's token cache."""

    def __init__(
        self,
        spec: SsoSessionSpec,
        *,
        cache: SsoCache,
        clients: AwsClients,
        clock: Clock,
        ui: LoginUI,
        options: LoginOptions,
    ) -> None:
        self._spec = spec
        self._cache = cache
        self._clients = clients
        self._clock = clock
        self._ui = ui
        self._options = options

    async def run(self) -> SsoToken:
        """Log in, store the token, and return it; at most one login per session at a time."""
        waited = False

        def on_wait() -> None:
            nonlocal waited
            waited = True
            self._ui.notice(f"another login for {self._spec.name} is in progress; waiting for it")

        lock_name = "login-" + self._cache.token_name(self._spec.cache_key)
        async with self._cache.files.lock(lock_name, on_wait=on_wait):
            if waited:
                current = self._cache.load_token(self._spec.cache_key)
                if current and current.expires_at > self._clock.now():
                    return current  # the login we waited for did the job
            device = self._options.device or self._spec.legacy
            answer = await (self._device_flow() if device else self._auth_code_flow())
            return await self._store(answer)

    # ------------------------------------------------------------------ registration

    async def _registration(self, *, auth_code: bool) -> Registration:
        scopes = self._spec.registration_scopes or None
        name = registration_cache_name(
            self._spec.start_url,
            self._spec.region,
            scopes,
            None if self._spec.legacy else self._spec.name,
        )
        cached = self._cache.load_registration(name)
        now = self._clock.now()
        if (
            cached is not None
            and cached.for_auth_code == auth_code
            and cached.expires_at - now > REGISTRATION_RENEW_WINDOW
        ):
            return cached
        # Named like the AWS CLI's botocore-client-<session> (protocols.md 2.2).
        suffix = str(int(now.timestamp())) if self._spec.legacy else self._spec.name
        request: dict[str, Any] = {"clientName": f"credd-{suffix}", "clientType": "public"}
        if scopes:
            request["scopes"] = list(scopes)
        if auth_code:
            request["grantTypes"] = [AUTH_CODE_GRANT, "refresh_token"]
            request["redirectUris"] = [REGISTERED_REDIRECT]
            request["issuerUrl"] = self._spec.start_url
        async with self._oidc() as oidc:
            answer = await oidc.register_client(**request)
        registration = Registration(
            client_id=str(answer["clientId"]),
            client_secret=Secret(str(answer["clientSecret"])),
            # epoch seconds (protocols.md 2.2, RegisterClient)
            expires_at=datetime.fromtimestamp(int(answer["clientSecretExpiresAt"]), UTC),
            scopes=scopes,
            grant_types=tuple(request["grantTypes"]) if auth_code else None,
        )
        self._cache.save_registration(name, registration)
        log.info("client_registered", session=self._spec.name, expires_at=registration.expires_at)
        return registration

    def _oidc(self) -> Any:
        return self._clients.client(
            "sso-oidc", region=self._spec.region, profile=self._spec.endpoint_profile
        )

    # ------------------------------------------------------------------ device code

    async def _device_flow(self) -> _Answer:
        registration = await self._registration(auth_code=False)
        async with self._oidc() as oidc:
            start = await oidc.start_device_authorization(
                clientId=registration.client_id,
                clientSecret=registration.client_secret.reveal(),
                startUrl=self._spec.start_url,
            )
            given = start.get("interval")
            interval = 5 if given is None else int(given)  # RFC 8628 section 3.2 default
            deadline = self._clock.now() + timedelta(seconds=int(start["expiresIn"]))
            grant = {
                "clientId": registration.client_id,
                "clientSecret": registration.client_secret.reveal(),
                "grantType": DEVICE_GRANT,
                "deviceCode": start["deviceCode"],
            }
            url = str(start.get("verificationUriComplete") or start["verificationUri"])
            shown = False
            while True:
                try:
                    token = await oidc.create_token(**grant)
                    return _Answer(token, registration)
                except UpstreamError as exc:
                    code = exc.aws_code
                    if code == "SlowDownException":
                        interval += 5  # cumulative, as RFC 8628 section 3.5 asks
                    elif code == "ExpiredTokenException":
                        raise LoginError(
                            "the code expired before it was approved",
                            hint=f"run credd login {self._spec.name} again",
                        ) from exc
                    elif code == "AccessDeniedException":
                        raise LoginError("the sign-in was denied in the browser") from exc
                    elif code != "AuthorizationPendingException":
                        raise
                # One attempt before showing the code handles pre-authorized clients
                # (protocols.md 2.4 step 4).
                if not shown:
                    shown = True
                    self._ui.prompt(url, str(start["userCode"]), deadline)
                    await self._open_browser(url)
                await anyio.sleep(interval)

    # ------------------------------------------------------------------ authorization code

    async def _auth_code_flow(self) -> _Answer:
        registration = await self._registration(auth_code=True)
        pkce = Pkce.new()
        async with loopback_redirect() as redirect, self._oidc() as oidc:
            params = {
                "response_type": "code",
                "client_id": registration.client_id,
                "redirect_uri": redirect.uri,
                "state": redirect.state,
                "code_challenge_method": "S256",
                "scopes": " ".join(self._spec.registration_scopes),
                "code_challenge": pkce.challenge,
            }
            url = f"{oidc.meta.endpoint_url.rstrip('/')}/authorize?{urlencode(params)}"
            code = await redirect.code(
                url,
                ui=self._ui,
                clock=self._clock,
                open_browser=self._options.open_browser,
                again=f"run credd login {self._spec.name} again, or use --device",
            )
            try:
                token = await oidc.create_token(
                    clientId=registration.client_id,
                    clientSecret=registration.client_secret.reveal(),
                    grantType=AUTH_CODE_GRANT,
                    code=code,
                    redirectUri=redirect.uri,
                    codeVerifier=pkce.verifier,
                )
            except UpstreamError as exc:
                if exc.aws_code == "ExpiredTokenException":
                    raise LoginError(
                        "the authorization code expired before it was redeemed",
                        hint=f"run credd login {self._spec.name} again",
                    ) from exc
                raise
            return _Answer(token, registration)

    async def _open_browser(self, url: str) -> None:
        await open_in_browser(url, self._ui, enabled=self._options.open_browser)

    # ------------------------------------------------------------------ storing

    async def _store(self, answer: _Answer) -> SsoToken:
        now = self._clock.now()
        body = answer.body
        try:
            refresh = body.get("refreshToken")
            token = SsoToken(
                access_token=Secret(str(body["accessToken"])),
                expires_at=now + timedelta(seconds=int(body["expiresIn"])),
                start_url=self._spec.start_url,
                region=self._spec.region,
                client_id=answer.registration.client_id,
                client_secret=answer.registration.client_secret,
                registration_expires_at=answer.registration.expires_at,
                refresh_token=Secret(str(refresh)) if refresh else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError("sso-oidc CreateToken answered without a usable token") from exc
        async with self._cache.lock(self._spec.cache_key):
            self._cache.save_token(self._spec.cache_key, token)
        log.info("session_logged_in", session=self._spec.name, expires_at=token.expires_at)
        return token


@dataclass(frozen=True)
class _Answer:
    body: Mapping[str, Any]
    registration: Registration
