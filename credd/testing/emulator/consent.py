"""The browser half of the sign-in flows: what the user's browser visits.

``GET /authorize`` (authorization code + PKCE, protocols.md §2.5) validates the
request and answers with a redirect to the client's loopback listener; errors
about the client or its redirect URI get a 400 page and never a redirect
(RFC 6749 §4.1.2.1), all other errors and a refusal go back to the client as
``error=…&state=…``. ``GET /device?user_code=…`` (device flow, §2.4) is the page
behind ``verificationUriComplete``: visiting it approves the code for the
directory's default user, or denies it with ``&deny=1``. Whether the user
approves is ``config.auto_approve``. :func:`decide_device` is the same decision
for the Python API. An application ARN is a ``client_id`` too: its code is for
CreateTokenWithIAM (§2.2), with the application's redirect URIs and scopes.
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from . import oauth
from .errors import PageError, html_page
from .iam_token import application_registration
from .operations import Operation, endpoint
from .runtime import Runtime
from .state import AuthCode, DeviceGrant, Registration


class DeviceDecisionError(LookupError):
    """The user code cannot be approved or denied (unknown, expired, already decided)."""


def decide_device(
    runtime: Runtime, user_code: str, *, approve: bool, user: str | None = None
) -> DeviceGrant:
    user = runtime.directory.user(user or runtime.directory.default_user).name
    grant = runtime.state.device_grant_by_user_code(user_code)
    if grant is None:
        raise DeviceDecisionError("Unknown code")
    if runtime.now() >= grant.expires_at:
        raise DeviceDecisionError("This code has expired")
    if grant.decision != "pending":
        raise DeviceDecisionError("This code has already been used")
    grant.decision = "approved" if approve else "denied"
    grant.user = user
    return grant


class _Redirect(Exception):
    """An error the client hears about through its redirect URI."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class ConsentPages:
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self.authorize = Operation("Authorize", PageError, self._authorize)
        self.verify_device = Operation("VerifyDevice", PageError, self._verify_device)

    @property
    def operations(self) -> tuple[Operation, ...]:
        return (self.authorize, self.verify_device)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/authorize", endpoint(self.authorize, self._rt)),
            web.get("/device", endpoint(self.verify_device, self._rt)),
        ]

    # /authorize -------------------------------------------------------------

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        registration = self._client(query.get("client_id", ""))
        redirect_uri = query.get("redirect_uri", "")
        if not any(oauth.redirect_matches(redirect_uri, r) for r in registration.redirect_uris):
            raise PageError("InvalidRedirectUri", "redirect_uri is not registered for this client")
        state = query.get("state", "")
        try:
            code = self._issue_code(registration, redirect_uri, query)
        except _Redirect as refusal:
            params = {"error": refusal.error, "error_description": refusal.description}
            return _redirect(redirect_uri, params, state)
        return _redirect(redirect_uri, {"code": code}, state)

    def _client(self, client_id: str) -> Registration:
        application = self._rt.directory.identity_center.application(client_id)
        if application is not None:
            # CreateTokenWithIAM's authorization code grant: the client is an application.
            return application_registration(application, self._rt.now())
        registration = self._rt.state.registrations.get(client_id)
        if registration is None:
            raise PageError("InvalidClient", "Unknown client_id")
        if not registration.is_live(self._rt.now()):
            raise PageError("InvalidClient", "The client registration has expired")
        return registration

    def _issue_code(
        self, registration: Registration, redirect_uri: str, query: Mapping[str, str]
    ) -> str:
        if oauth.AUTH_CODE_GRANT not in registration.grant_types:
            raise _Redirect(
                "unauthorized_client", "Client is not registered for authorization_code"
            )
        if query.get("response_type") != "code":
            raise _Redirect("unsupported_response_type", "response_type must be code")
        if not query.get("state"):
            raise _Redirect("invalid_request", "state is required")
        if query.get("code_challenge_method") != "S256":
            raise _Redirect("invalid_request", "code_challenge_method must be S256")
        challenge = query.get("code_challenge", "")
        if not oauth.CODE_CHALLENGE_RE.fullmatch(challenge):
            raise _Redirect("invalid_request", "code_challenge must be 43 base64url characters")
        scopes = tuple(query.get("scopes", "").split()) or registration.scopes
        if not set(scopes) <= set(registration.scopes):
            raise _Redirect("invalid_scope", "scopes must be a subset of the registered scopes")
        if not self._rt.config.auto_approve:
            raise _Redirect("access_denied", "The user denied the authorization request")
        return self._rt.state.add_auth_code(
            AuthCode(
                client_id=registration.client_id,
                redirect_uri=redirect_uri,
                code_challenge=challenge,
                scopes=scopes,
                user=self._rt.directory.default_user,
                expires_at=self._rt.in_seconds(self._rt.config.auth_code_ttl),
            )
        )

    # /device ----------------------------------------------------------------

    async def _verify_device(self, request: web.Request) -> web.StreamResponse:
        user_code = request.query.get("user_code")
        if not user_code:
            raise PageError("InvalidRequest", "Enter the code shown on your device")
        approve = self._rt.config.auto_approve and request.query.get("deny") not in {"1", "true"}
        try:
            decide_device(self._rt, user_code, approve=approve)
        except DeviceDecisionError as exc:
            raise PageError("InvalidRequest", str(exc)) from None
        if approve:
            return html_page("Request approved", "You can close this window.")
        return html_page("Request denied", "The device was not given access.")


def _redirect(redirect_uri: str, params: dict[str, str], state: str) -> web.Response:
    if state:
        params = {**params, "state": state}
    return web.Response(status=302, headers={"Location": oauth.with_query(redirect_uri, params)})
