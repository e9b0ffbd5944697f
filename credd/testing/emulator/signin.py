"""AWS Sign-In (``signin``), the service behind ``aws login``: protocols.md §4, §10, §11.

On the same base URL as the other services (``AWS_ENDPOINT_URL_SIGNIN``):

* ``GET /v1/authorize`` (operation ``SigninAuthorize``), the browser step (§4.5):
  ``response_type=code``, ``client_id`` one of the two devtools ARNs, ``state``,
  ``code_challenge_method=SHA-256`` (not ``S256``), ``scope=openid``,
  ``redirect_uri``, ``code_challenge``. The same-device client must redirect to
  ``http://127.0.0.1:PORT/oauth/callback``, the cross-device client to this
  host's ``/v1/sessions/confirmation``. A bad client id or redirect URI (or a
  repeated parameter) gets a 400 page and never a redirect; every other problem,
  and the user's refusal (``auto_approve`` off: ``error=access_denied``), goes
  back to the validated redirect URI with ``error``, ``error_description`` and
  ``state`` (RFC 6749 §4.1.2.1). The user who signs in is
  ``directory.signin_principal``.
* ``GET /v1/sessions/confirmation`` (``SigninConfirmation``): the cross-device
  page. It shows the verification code, standard base64 of ``code=…&state=…``,
  in the element with id ``verification-code`` (or the refusal in ``error``).
* ``POST /v1/token`` (``CreateOAuth2Token``, unsigned): the bare camelCase JSON
  object (§4.2), a ``DPoP`` proof on both grants (:mod:`.dpop`), and the answer
  ``{"accessToken": {…}, "tokenType": "aws_sigv4", "expiresIn", "refreshToken",
  "idToken" (code grant only)}``; the credentials are real to this emulator's
  STS (GetCallerIdentity names the principal) and expire.
* ``POST /v1/token?x-amz-client-auth-method=iam`` (``CreateOAuth2TokenWithIAM``):
  routed on the query string as the model does, and refused.

Where AWS publishes nothing, the emulator chooses, and credd must not count on more:

* **A bad DPoP proof is 400 ``ValidationException`` / ``INVALID_REQUEST``**:
  missing, malformed, badly signed, wrong ``htm`` or ``htu``, stale ``iat``,
  replayed ``jti``, and a proof signed by another key than the one the refresh
  token is bound to. RFC 9449 §5 makes a bad proof at a token endpoint an RFC
  6749 §5.2 error (400, ``invalid_dpop_proof``); the model has no such code and
  ``INVALID_REQUEST`` is the nearest. A 401 ``AccessDeniedException`` would have
  to say ``TOKEN_EXPIRED`` or ``AUTHCODE_EXPIRED``, which botocore turns into
  "run aws login again": wrong for a client bug. A proof the server rejects is
  spent all the same if it verified (its ``jti`` is remembered); an injected
  fault answers before the proof is looked at.
* **Refresh tokens are strictly single-use.** Every refresh returns a new one
  and the presented one stops working: 401 ``TOKEN_EXPIRED`` (botocore:
  ``LoginRefreshRequired``). The model calls refresh "idempotent within the
  token validity window"; credd must treat refresh tokens as single-use anyway,
  and this is how its tests find out if it does not. Reusing an old token does
  not end the session. A refresh token is bound to its client id too.
* A session lasts ``signin_session_ttl`` from code redemption, then 401
  ``TOKEN_EXPIRED``; ``emu.revoke_sessions()`` and ``expire_refresh_tokens()``
  end it the same way, ``emu.signin_change_user_credentials()`` with 403
  ``USER_CREDENTIALS_CHANGED``; ``signin_permission`` off is 403
  ``INSUFFICIENT_PERMISSIONS`` on both grants. Credentials last
  ``signin_credentials_ttl`` (at most 900 s) but never past the session's end.
* Codes last ``signin_code_ttl``, then 401 ``AUTHCODE_EXPIRED``. Unknown, used,
  another client's, wrong ``redirectUri`` or a verifier that does not match the
  challenge: 400 ``INVALID_REQUEST``. Every attempt spends the code, and a
  replayed code revokes the session it was redeemed into (RFC 6749 §4.1.2).
* The ``idToken`` is an ES256 JWT signed with a key made per emulator (``kid``
  ``credd-emulator``): ``iss`` (this base URL), ``sub`` (the principal's ARN, the
  CLI's ``login_session``), ``aud`` (the client id), ``iat``, ``exp`` (the
  session's end). Clients only read its payload.
* ``htu`` must be the URL the client addressed: ``scheme://`` + the request's
  ``Host`` header + ``/v1/token`` (RFC 3986 normalization; query ignored). Behind
  an endpoint override that is e.g. ``http://127.0.0.1:PORT/v1/token``.
"""

from __future__ import annotations

import base64
import hmac
import html
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final
from urllib.parse import urlencode, urlsplit

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from credd.secret import Secret

from . import dpop, identities, oauth
from .errors import PageError, SigninError
from .inputs import JsonInput
from .operations import Operation, endpoint, invoke, json_ok
from .runtime import Runtime
from .state import SigninCode, SigninSession

SAME_DEVICE: Final = "arn:aws:signin:::devtools/same-device"
CROSS_DEVICE: Final = "arn:aws:signin:::devtools/cross-device"
#: the model's ``ClientId`` and ``GrantType`` patterns (protocols.md §4.2)
CLIENT_ID_RE: Final = re.compile(r"arn:aws:signin:::devtools/(cross-device|same-device)")
GRANT_TYPE_RE: Final = re.compile(r"authorization_code|refresh_token")
CALLBACK_PATH: Final = "/oauth/callback"
CONFIRMATION_PATH: Final = "/v1/sessions/confirmation"
TOKEN_TYPE: Final = "aws_sigv4"
ID_TOKEN_KEY_ID: Final = "credd-emulator"
#: the query parameter that makes ``POST /v1/token`` CreateOAuth2TokenWithIAM (model)
IAM_AUTH_QUERY: Final = "x-amz-client-auth-method"

_AUTHORIZE_PARAMS: Final = (
    "response_type",
    "client_id",
    "state",
    "code_challenge_method",
    "scope",
    "redirect_uri",
    "code_challenge",
)


class _Refusal(Exception):
    """An authorize error the client hears about through its (validated) redirect URI."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class SigninService:
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        # Fail at start-up, not at the first login, on a directory that names nobody.
        self._principal = identities.console_principal(runtime.directory.signin_principal)
        self._id_token_key = ec.generate_private_key(ec.SECP256R1())
        self.authorize = Operation("SigninAuthorize", PageError, self._authorize)
        self.confirmation = Operation("SigninConfirmation", PageError, self._confirmation)
        self.create_token = Operation("CreateOAuth2Token", SigninError, self._create_token)
        self.create_token_with_iam = Operation(
            "CreateOAuth2TokenWithIAM", SigninError, self._create_token_with_iam
        )

    @property
    def operations(self) -> tuple[Operation, ...]:
        return (self.authorize, self.confirmation, self.create_token, self.create_token_with_iam)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/authorize", endpoint(self.authorize, self._rt)),
            web.get(CONFIRMATION_PATH, endpoint(self.confirmation, self._rt)),
            web.post("/v1/token", self._token),
        ]

    async def _token(self, request: web.Request) -> web.StreamResponse:
        # One path, two operations: the query string decides (the model's requestUri).
        with_iam = IAM_AUTH_QUERY in request.query
        operation = self.create_token_with_iam if with_iam else self.create_token
        return await invoke(operation, request, self._rt)

    # /v1/authorize ----------------------------------------------------------

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        repeated = sorted({p for p in _AUTHORIZE_PARAMS if len(query.getall(p, [])) > 1})
        if repeated:  # RFC 6749 §3.1: parameters must not be repeated
            raise PageError("InvalidRequest", f"Repeated parameters: {', '.join(repeated)}")
        client_id = query.get("client_id", "")
        if client_id not in (SAME_DEVICE, CROSS_DEVICE):
            raise PageError("InvalidClient", "Unknown client_id")
        redirect_uri = query.get("redirect_uri", "")
        if not self._redirect_allowed(request, client_id, redirect_uri):
            raise PageError("InvalidRedirectUri", "redirect_uri is not allowed for this client")
        state = query.get("state", "")
        try:
            code = self._issue_code(client_id, redirect_uri, query)
        except _Refusal as refusal:
            params = {"error": refusal.error, "error_description": refusal.description}
            return _redirect(redirect_uri, params, state)
        return _redirect(redirect_uri, {"code": code}, state)

    def _redirect_allowed(self, request: web.Request, client_id: str, redirect_uri: str) -> bool:
        try:
            parts = urlsplit(redirect_uri)
            port = parts.port
        except ValueError:
            return False
        if parts.query or parts.fragment:
            return False
        if client_id == SAME_DEVICE:
            # The CLI's loopback listener on a port of its choosing (protocols.md §4.5).
            return (
                parts.scheme == "http"
                and port is not None
                and parts.netloc == f"127.0.0.1:{port}"
                and parts.path == CALLBACK_PATH
            )
        return dpop.same_target(redirect_uri, _origin(request) + CONFIRMATION_PATH)

    def _issue_code(self, client_id: str, redirect_uri: str, query: Mapping[str, str]) -> str:
        if query.get("response_type") != "code":
            raise _Refusal("unsupported_response_type", "response_type must be code")
        if not query.get("state"):
            raise _Refusal("invalid_request", "state is required")
        if query.get("code_challenge_method") != "SHA-256":
            raise _Refusal("invalid_request", "code_challenge_method must be SHA-256")
        challenge = query.get("code_challenge", "")
        if not oauth.CODE_CHALLENGE_RE.fullmatch(challenge):
            raise _Refusal("invalid_request", "code_challenge must be 43 base64url characters")
        if query.get("scope") != "openid":
            raise _Refusal("invalid_scope", "scope must be openid")
        if not self._rt.config.auto_approve:
            raise _Refusal("access_denied", "The user denied the authorization request")
        return self._rt.state.signin.add_code(
            SigninCode(
                client_id=client_id,
                redirect_uri=redirect_uri,
                code_challenge=challenge,
                principal=self._principal,
                expires_at=self._rt.in_seconds(self._rt.config.signin_code_ttl),
            )
        )

    # /v1/sessions/confirmation ----------------------------------------------

    async def _confirmation(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        if "error" in query:
            description = query.get("error_description", "")
            return _page(
                "Sign-in was not completed",
                f'<p id="error">{html.escape(query["error"])}</p><p>{html.escape(description)}</p>',
            )
        value, state = query.get("code", ""), query.get("state", "")
        code = self._rt.state.signin.codes.get(value)
        if (
            not state
            or code is None
            or code.client_id != CROSS_DEVICE
            or code.redeemed
            or self._rt.now() >= code.expires_at
        ):
            raise PageError("InvalidRequest", "This sign-in link is invalid or has expired")
        verification = base64.b64encode(urlencode({"code": value, "state": state}).encode())
        return _page(
            "Verification code",
            "<p>Paste this code into the terminal where you ran aws login --remote:</p>"
            f'<p><code id="verification-code">{verification.decode()}</code></p>',
        )

    # CreateOAuth2Token ------------------------------------------------------

    async def _create_token(self, request: web.Request) -> web.StreamResponse:
        body = await JsonInput.read(request, SigninError.invalid_request)
        client_id = _member(body, "clientId", pattern=CLIENT_ID_RE)
        grant_type = _member(body, "grantType", pattern=GRANT_TYPE_RE)
        proof = self._verified_proof(request)
        now = self._rt.now()
        members: dict[str, object] = {}
        if grant_type == oauth.AUTH_CODE_GRANT:
            session, refresh_token = self._redeem_code(body, client_id, proof, now)
            members["idToken"] = self._id_token(request, session, now)
        else:
            session, refresh_token = self._refresh(body, client_id, proof, now)
        lifetime = self._credentials_lifetime(session, now)
        issued = self._rt.state.issue_credentials(
            session.principal, now + timedelta(seconds=lifetime), signin=True
        )
        return json_ok(
            {
                "accessToken": {
                    "accessKeyId": issued.access_key_id,
                    "secretAccessKey": issued.secret_access_key.reveal(),
                    "sessionToken": issued.session_token.reveal(),
                },
                "tokenType": TOKEN_TYPE,
                "expiresIn": lifetime,
                "refreshToken": refresh_token.reveal(),
                **members,
            }
        )

    def _verified_proof(self, request: web.Request) -> dpop.Proof:
        now = self._rt.now()
        try:
            proof = dpop.verify_proof(
                request.headers.getall(dpop.HEADER, []),
                method=request.method,
                url=_origin(request) + request.rel_url.raw_path,
                now=now,
            )
        except dpop.ProofError as exc:
            raise SigninError.invalid_request(f"Invalid DPoP proof: {exc}") from None
        window = timedelta(seconds=dpop.IAT_TOLERANCE)
        if not self._rt.state.signin.spend_proof_id(proof.jti, proof.iat, now, window):
            raise SigninError.invalid_request("Invalid DPoP proof: jti has been used before")
        return proof

    def _redeem_code(
        self, body: JsonInput, client_id: str, proof: dpop.Proof, now: datetime
    ) -> tuple[SigninSession, Secret]:
        """RFC 6749 §4.1.3 with PKCE (RFC 7636 §4.6, ``SHA-256``): protocols.md §4.5."""
        value = _member(body, "code", max_length=512)
        redirect_uri = _member(body, "redirectUri", max_length=2048)
        verifier = _member(body, "codeVerifier", pattern=oauth.CODE_VERIFIER_RE)  # RFC 7636 §4.1
        signin = self._rt.state.signin
        code = signin.codes.get(value)
        if code is None or code.client_id != client_id:
            raise SigninError.invalid_request("Invalid authorization code")
        if code.redeemed:
            if code.session_id is not None:  # RFC 6749 §4.1.2: revoke what it gave
                signin.sessions[code.session_id].revoked = True
            raise SigninError.invalid_request("Authorization code has already been used")
        code.redeemed = True  # one attempt per code, whatever its outcome
        if now >= code.expires_at:
            raise SigninError.access_denied("AUTHCODE_EXPIRED", "Authorization code has expired")
        if redirect_uri != code.redirect_uri:
            raise SigninError.invalid_request("redirectUri does not match the authorize request")
        if not hmac.compare_digest(oauth.s256(verifier), code.code_challenge):
            raise SigninError.invalid_request("codeVerifier does not match the code challenge")
        self._check_permission()
        session, refresh_token = signin.open_session(
            client_id=client_id,
            principal=code.principal,
            jkt=proof.jkt,
            now=now,
            ttl=self._rt.config.signin_session_ttl,
        )
        code.session_id = session.session_id
        return session, refresh_token

    def _refresh(
        self, body: JsonInput, client_id: str, proof: dpop.Proof, now: datetime
    ) -> tuple[SigninSession, Secret]:
        """Strict rotation of a DPoP-bound refresh token (RFC 9449 §5)."""
        presented = _member(body, "refreshToken", max_length=2048)
        signin = self._rt.state.signin
        session = signin.session_of_refresh_token(presented)
        if session is None or session.client_id != client_id:
            raise SigninError.invalid_request("Invalid refresh token")
        if not hmac.compare_digest(proof.jkt, session.jkt):
            raise SigninError.invalid_request(
                "Invalid DPoP proof: the refresh token is bound to another key"
            )
        if session.credentials_changed:
            raise SigninError.access_denied(
                "USER_CREDENTIALS_CHANGED", "The user's credentials have changed"
            )
        if session.revoked or now >= session.expires_at:
            raise SigninError.access_denied("TOKEN_EXPIRED", "The session has expired")
        if session.refresh_token != Secret(presented):
            raise SigninError.access_denied("TOKEN_EXPIRED", "Refresh token has already been used")
        self._check_permission()
        return session, signin.rotate_refresh_token(session)

    def _check_permission(self) -> None:
        if not self._rt.config.signin_permission:
            raise SigninError.access_denied(
                "INSUFFICIENT_PERMISSIONS",
                "The user is not allowed to use AWS Sign-In for local development",
            )

    def _credentials_lifetime(self, session: SigninSession, now: datetime) -> int:
        remaining = int((session.expires_at - now).total_seconds())
        return max(1, min(self._rt.config.signin_credentials_ttl, remaining))

    def _id_token(self, request: web.Request, session: SigninSession, now: datetime) -> str:
        header = {"alg": "ES256", "typ": "JWT", "kid": ID_TOKEN_KEY_ID}
        claims = {
            "iss": _origin(request),
            "sub": session.principal.arn,
            "aud": session.client_id,
            "iat": int(now.timestamp()),
            "exp": int(session.expires_at.timestamp()),
        }
        return dpop.es256_jwt(self._id_token_key, header, claims)

    # CreateOAuth2TokenWithIAM -----------------------------------------------

    async def _create_token_with_iam(self, request: web.Request) -> web.StreamResponse:
        raise SigninError.invalid_request(
            "CreateOAuth2TokenWithIAM is not supported by this emulator"
        )


# -- helpers ---------------------------------------------------------------------


def _member(
    body: JsonInput,
    name: str,
    *,
    max_length: int | None = None,
    pattern: re.Pattern[str] | None = None,
) -> str:
    """A required string member, checked against the model's constraints (§4.2)."""
    value = body.required_string(name)
    if max_length is not None and len(value) > max_length:
        raise SigninError.invalid_request(
            f"1 validation error detected: Value at '{name}' failed to satisfy constraint: "
            f"Member must have length less than or equal to {max_length}"
        )
    if pattern is not None and not pattern.fullmatch(value):
        raise SigninError.invalid_request(
            f"1 validation error detected: Value at '{name}' failed to satisfy constraint: "
            f"Member must satisfy regular expression pattern: {pattern.pattern}"
        )
    return value


def _origin(request: web.Request) -> str:
    """``scheme://host[:port]`` as the client addressed this server (its ``Host`` header)."""
    return f"{request.scheme}://{request.host}"


def _redirect(redirect_uri: str, params: dict[str, str], state: str) -> web.Response:
    if state:
        params = {**params, "state": state}
    return web.Response(status=302, headers={"Location": oauth.with_query(redirect_uri, params)})


def _page(title: str, body_html: str, status: int = 200) -> web.Response:
    text = (
        f"<!doctype html><html><head><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1>{body_html}</body></html>"
    )
    return web.Response(status=status, text=text, content_type="text/html")
