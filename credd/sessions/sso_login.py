"""Interactive Identity Center login, as the AWS CLI v2 runs it (protocols.md 2.4, 2.5).

Authorization code with PKCE and a loopback redirect listener by default, the
device code flow on request (and always for legacy start-URL profiles, as
with the AWS CLI). The client registration is cached the AWS CLI's way and
reused until it nears expiry. What the user sees goes through a
:class:`LoginUI`; this module never prints.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import string
import uuid
import webbrowser
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlencode

import anyio
import structlog
from aiohttp import web

from credd.aws import AwsClients
from credd.clock import Clock
from credd.config import SsoSessionSpec
from credd.errors import LoginError, UpstreamError
from credd.secret import Secret
from credd.store import Registration, SsoCache, SsoToken, registration_cache_name

log = structlog.get_logger(__name__)

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
AUTH_CODE_GRANT = "authorization_code"
CALLBACK_PATH = "/oauth/callback"
#: registered without a port; the port is added per login (RFC 8252 section 7.3)
REGISTERED_REDIRECT = f"http://127.0.0.1{CALLBACK_PATH}"
#: how long the browser step may take before the login gives up (the AWS CLI's 10 min)
BROWSER_TIMEOUT_SECONDS = 600.0
#: a registration closer than this to its expiry is replaced at login, so that
#: the session the login starts can be renewed for a good while
REGISTRATION_RENEW_WINDOW = timedelta(days=7)
_VERIFIER_ALPHABET = string.ascii_letters + string.digits + "-._~"


class LoginUI(Protocol):
    """How a login talks to the person at the keyboard."""

    def prompt(self, url: str, user_code: str | None, deadline: datetime) -> None:
        """Show the URL to open (and the code to check), and start showing progress."""

    def browser_opened(self, opened: bool) -> None:
        """Say whether a browser was started for the URL."""

    def notice(self, message: str) -> None:
        """A line of news (another login is in progress, a code was refused...)."""


@dataclass(frozen=True)
class LoginOptions:
    device: bool = False
    open_browser: bool = True


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
        verifier = "".join(secrets.choice(_VERIFIER_ALPHABET) for _ in range(64))
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .decode()
            .rstrip("=")
        )
        state = str(uuid.uuid4())
        async with _callback_listener() as (port, callback), self._oidc() as oidc:
            redirect_uri = f"http://127.0.0.1:{port}{CALLBACK_PATH}"
            params = {
                "response_type": "code",
                "client_id": registration.client_id,
                "redirect_uri": redirect_uri,
                "state": state,
                "code_challenge_method": "S256",
                "scopes": " ".join(self._spec.registration_scopes),
                "code_challenge": challenge,
            }
            url = f"{oidc.meta.endpoint_url.rstrip('/')}/authorize?{urlencode(params)}"
            deadline = self._clock.now() + timedelta(seconds=BROWSER_TIMEOUT_SECONDS)
            self._ui.prompt(url, None, deadline)
            await self._open_browser(url)
            try:
                with anyio.fail_after(BROWSER_TIMEOUT_SECONDS):
                    query = await callback.receive()
            except TimeoutError as exc:
                raise LoginError(
                    f"no answer from the browser within {BROWSER_TIMEOUT_SECONDS / 60:.0f} minutes",
                    hint=f"run credd login {self._spec.name} again, or use --device",
                ) from exc
            if query.get("state") != state:
                raise LoginError("the browser answered for another login (state mismatch)")
            if "error" in query:
                detail = query.get("error_description") or query["error"]
                raise LoginError(f"the sign-in was refused: {detail}")
            if not query.get("code"):
                raise LoginError("the browser came back without an authorization code")
            try:
                token = await oidc.create_token(
                    clientId=registration.client_id,
                    clientSecret=registration.client_secret.reveal(),
                    grantType=AUTH_CODE_GRANT,
                    code=query["code"],
                    redirectUri=redirect_uri,
                    codeVerifier=verifier,
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
        opened = False
        if self._options.open_browser:
            # webbrowser may block (it can start a text-mode browser): keep it off the loop.
            opened = await anyio.to_thread.run_sync(webbrowser.open, url)
        self._ui.browser_opened(opened)

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


_PAGE = (
    "<!doctype html><meta charset=utf-8><title>credd</title>"
    "<body style='font-family:sans-serif'><h1>{title}</h1><p>{text}</p>"
)


@asynccontextmanager
async def _callback_listener() -> AsyncIterator[
    tuple[int, anyio.abc.ObjectReceiveStream[dict[str, str]]]
]:
    """A one-shot HTTP listener on 127.0.0.1 for the browser's redirect (protocols.md 2.5)."""
    send, receive = anyio.create_memory_object_stream[dict[str, str]](1)

    async def callback(request: web.Request) -> web.Response:
        query = dict(request.query)
        ok = "error" not in query and "code" in query
        try:
            send.send_nowait(query)
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            ok = False  # a second redirect after the first one was taken
        title = "Signed in" if ok else "Sign-in not completed"
        text = (
            "credd has your session. You can close this tab."
            if ok
            else "Go back to the terminal for details."
        )
        return web.Response(text=_PAGE.format(title=title, text=text), content_type="text/html")

    app = web.Application()
    app.router.add_get(CALLBACK_PATH, callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    try:
        async with receive:
            yield port, receive
    finally:
        send.close()
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
