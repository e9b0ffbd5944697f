"""Interactive AWS Sign-In login, as ``aws login`` runs it (protocols.md 4.5).

Same device (the default): PKCE with ``code_challenge_method=SHA-256``, the
browser sent to ``{base}/v1/authorize`` and back to a one-shot listener on
``http://127.0.0.1:PORT/oauth/callback``. Cross device (``--remote``): the
redirect goes to the Sign-In host's ``/v1/sessions/confirmation`` page, which
shows a verification code (standard base64 of ``code=...&state=...``) for the
user to paste. Either way the code is redeemed with CreateOAuth2Token
(``authorization_code``) signed with a DPoP proof of a P-256 key made for this
session, and the result goes to the login cache under ``sha256(sub)`` of the
``idToken``, in the AWS CLI's format, key included (protocols.md 6.2).

``{base}`` is the Sign-In endpoint botocore resolves for the region (an
endpoint override moves it), learnt as the AWS CLI learns it: by preparing a
CreateOAuth2Token request and reading its URL, never sending it.

Writing ``login_session`` into the AWS config is the CLI's job
(:mod:`credd.config.writer`); this module never prints.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import parse_qs, urlencode

import anyio
import structlog

from credd.aws import AwsClients
from credd.clock import Clock
from credd.engine.schedule import backoff_seconds
from credd.errors import LoginError, UpstreamError
from credd.files.store import LoginCache, LoginToken
from credd.secret import Secret
from credd.sessions.dpop import DpopKey
from credd.sessions.loopback import (
    BROWSER_TIMEOUT_SECONDS,
    LoginUI,
    Pkce,
    loopback_redirect,
)

# the client id lives with Sign-In's other constants; logins and their tests name it here
from credd.sessions.signin import SAME_DEVICE_CLIENT as SAME_DEVICE_CLIENT
from credd.sessions.signin import (
    SERVICE,
    TOKEN_TYPE,
    attach_proofs,
    permission_missing,
    resolve_base_url,
)

log = structlog.get_logger(__name__)

CROSS_DEVICE_CLIENT: Final = "arn:aws:signin:::devtools/cross-device"
AUTH_CODE_GRANT: Final = "authorization_code"
AUTHORIZE_PATH: Final = "/v1/authorize"
CONFIRMATION_PATH: Final = "/v1/sessions/confirmation"
#: how many times a login starts over after its code expired (AUTHCODE_EXPIRED)
LOGIN_ATTEMPTS: Final = 3
#: how many times a code redemption is tried when Sign-In is throttling or failing
REDEEM_ATTEMPTS: Final = 3
_ACCOUNT_IN_ARN: Final = re.compile(r"^arn:[\w-]+:[\w-]+::(\d{12}):")
#: what a ``sub`` must be before it names a cache file and goes into the AWS config as
#: ``login_session``: an IAM user or STS session ARN (protocols.md 4.2) in any partition,
#: of the characters IAM names and paths allow; nothing that could end a config line
LOGIN_SESSION_ARN: Final = re.compile(
    r"arn:aws[-a-z]*:(?:iam|sts)::[0-9]{12}:[A-Za-z0-9+=,.@_/-]{1,512}", re.ASCII
)

#: reads the verification code the user pastes (``--remote``)
ReadCode = Callable[[], Awaitable[str]]


@dataclass(frozen=True)
class SigninTarget:
    """The profile a login is for."""

    profile: str
    #: the Sign-In region (the profile's, else us-east-1)
    region: str
    #: the AWS profile whose endpoint overrides apply; ``None`` when it does not exist yet
    endpoint_profile: str | None


@dataclass(frozen=True)
class SigninLoginOptions:
    #: the cross-device flow: print the URL, read the pasted code
    remote: bool = False
    open_browser: bool = True


@dataclass(frozen=True)
class SigninResult:
    #: the idToken ``sub``: the profile's ``login_session`` and the cache key
    login_session: str
    token: LoginToken


class _CodeExpired(Exception):
    """AUTHCODE_EXPIRED: the login starts over."""


def id_token_subject(id_token: str) -> str:
    """The ``sub`` of the idToken's payload: the ``login_session`` (protocols.md 4.2).

    Read, not verified, as the AWS CLI reads it: it comes from the token
    endpoint itself over TLS, in answer to a request only we could make. But it
    must be an ARN (:data:`LOGIN_SESSION_ARN`): it is written into the AWS
    config, where a newline would start a line of the endpoint's choosing
    (issue 11).
    """
    try:
        segment = id_token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        subject = claims["sub"]
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise UpstreamError("Sign-In returned an idToken without a subject") from exc
    if not isinstance(subject, str) or not subject:
        raise UpstreamError("Sign-In returned an idToken without a subject")
    if not LOGIN_SESSION_ARN.fullmatch(subject):
        # escaped and cut short: what came back may be built to break a line or a terminal
        shown = ascii(subject[:80]) + ("..." if len(subject) > 80 else "")
        raise UpstreamError(
            f"Sign-In returned an idToken whose subject is not an IAM or STS ARN ({shown}); "
            "nothing was written",
            transient=False,
            hint="check AWS_ENDPOINT_URL_SIGNIN and the [services] endpoint_url of the AWS config",
        )
    return subject


def account_of(login_session: str) -> str | None:
    """The account of an ARN such as ``arn:aws:iam::123456789012:user/alice``."""
    match = _ACCOUNT_IN_ARN.match(login_session)
    return match.group(1) if match else None


def parse_verification_code(pasted: str) -> tuple[str, str]:
    """``(code, state)`` from the cross-device page's code: base64 of ``code=...&state=...``."""
    text = "".join(pasted.split())
    try:
        query = base64.b64decode(text + "=" * (-len(text) % 4), validate=True).decode("utf-8")
        values = parse_qs(query, strict_parsing=True)
        code, state = values["code"][0], values["state"][0]
    except (ValueError, KeyError, IndexError, UnicodeDecodeError, binascii.Error) as exc:
        raise LoginError(
            "that is not a Sign-In verification code",
            hint="paste the whole code the browser shows, on one line",
        ) from exc
    return code, state


def authorize_url(base: str, client_id: str, state: str, redirect_uri: str, pkce: Pkce) -> str:
    """The CLI's URL: percent-encoded params in its order, then the challenge (4.5)."""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "state": state,
        # "SHA-256", literally: not the "S256" of RFC 7636 and of sso-oidc (4.5)
        "code_challenge_method": "SHA-256",
        "scope": "openid",
        "redirect_uri": redirect_uri,
    }
    return f"{base}{AUTHORIZE_PATH}?{urlencode(params)}&code_challenge={pkce.challenge}"


class SigninLogin:
    """One login for one profile; writes the login cache and returns the new session."""

    def __init__(
        self,
        target: SigninTarget,
        *,
        cache: LoginCache,
        clients: AwsClients,
        clock: Clock,
        ui: LoginUI,
        options: SigninLoginOptions,
        read_code: ReadCode | None = None,
    ) -> None:
        if options.remote and read_code is None:
            raise ValueError("a cross-device login needs a way to read the pasted code")
        self._target = target
        self._cache = cache
        self._clients = clients
        self._clock = clock
        self._ui = ui
        self._options = options
        self._read_code = read_code

    @property
    def _again(self) -> str:
        remote = " --remote" if self._options.remote else ""
        return f"run credd login {self._target.profile} --signin{remote} again"

    def _client(self, *, attempts: int | None = None) -> AbstractAsyncContextManager[Any]:
        return self._clients.client(
            SERVICE,
            region=self._target.region,
            profile=self._target.endpoint_profile,
            attempts=attempts,
        )

    async def run(self) -> SigninResult:
        """Log in, store the session, and return it; starts over if the code expires."""
        for _ in range(LOGIN_ATTEMPTS):
            try:
                return await self._attempt()
            except _CodeExpired:
                self._ui.notice(
                    "The authorization code expired before it could be redeemed "
                    "(AUTHCODE_EXPIRED); starting the sign-in again."
                )
        raise LoginError(
            f"the authorization code expired {LOGIN_ATTEMPTS} times before it could be redeemed",
            hint=f"check this machine's clock, then {self._again}",
        )

    async def base_url(self) -> str:
        """``scheme://host[:port]`` of the Sign-In endpoint botocore resolves (4.5)."""
        return await resolve_base_url(
            self._clients, region=self._target.region, profile=self._target.endpoint_profile
        )

    async def _attempt(self) -> SigninResult:
        key = DpopKey.generate()  # one key per session (protocols.md 4.4)
        pkce = Pkce.new()
        base = await self.base_url()
        if self._options.remote:
            client_id = CROSS_DEVICE_CLIENT
            redirect_uri = base + CONFIRMATION_PATH
            code = await self._pasted_code(base, redirect_uri, pkce)
        else:
            client_id = SAME_DEVICE_CLIENT
            async with loopback_redirect() as redirect:
                redirect_uri = redirect.uri
                url = authorize_url(base, client_id, redirect.state, redirect_uri, pkce)
                code = await redirect.code(
                    url,
                    ui=self._ui,
                    clock=self._clock,
                    open_browser=self._options.open_browser,
                    again=self._again,
                )
        issued = self._clock.now()
        answer = await self._redeem(
            key,
            {
                "clientId": client_id,
                "grantType": AUTH_CODE_GRANT,
                "code": code,
                "redirectUri": redirect_uri,
                "codeVerifier": pkce.verifier,
            },
        )
        return await self._store(answer, key, client_id, issued)

    async def _pasted_code(self, base: str, redirect_uri: str, pkce: Pkce) -> str:
        assert self._read_code is not None
        state = str(uuid.uuid4())
        url = authorize_url(base, CROSS_DEVICE_CLIENT, state, redirect_uri, pkce)
        deadline = self._clock.now() + timedelta(seconds=BROWSER_TIMEOUT_SECONDS)
        # Another device signs in: no browser here (as with `aws login --remote`).
        self._ui.prompt(url, None, deadline)
        try:
            with anyio.fail_after(BROWSER_TIMEOUT_SECONDS):
                pasted = await self._read_code()
        except TimeoutError as exc:
            raise LoginError(
                f"no code was pasted within {BROWSER_TIMEOUT_SECONDS / 60:.0f} minutes",
                hint=self._again,
            ) from exc
        if not pasted.strip():
            raise LoginError("no verification code was entered", hint=self._again)
        code, pasted_state = parse_verification_code(pasted)
        if pasted_state != state:
            raise LoginError(
                "that verification code belongs to another login (state mismatch)",
                hint=self._again,
            )
        return code

    async def _redeem(self, key: DpopKey, request: Mapping[str, str]) -> Mapping[str, Any]:
        # No botocore retries: a code is single-use, and a replayed one revokes the
        # session it gave (RFC 6749 section 4.1.2). Throttling and server errors
        # are answered before the code is spent, and tried again here.
        for attempt in range(REDEEM_ATTEMPTS):
            try:
                async with self._client(attempts=1) as signin:
                    attach_proofs(signin, key, self._clock)
                    answer: Mapping[str, Any] = await signin.create_oauth2_token(
                        tokenInput=dict(request)
                    )
                    return answer
            except UpstreamError as exc:
                error, status = exc.oauth_error, exc.status
                if exc.aws_code == "AccessDeniedException":
                    if error == "AUTHCODE_EXPIRED" or (error is None and status == 401):
                        raise _CodeExpired from exc
                    if error == "INSUFFICIENT_PERMISSIONS":
                        denied = permission_missing("the signed-in principal", exc)
                        raise LoginError(str(denied), hint=self._again) from exc
                    raise LoginError(
                        f"Sign-In refused the login ({status} {error}): {exc.message}",
                        hint=self._again,
                    ) from exc
                if not exc.transient or attempt == REDEEM_ATTEMPTS - 1:
                    raise LoginError(
                        f"Sign-In did not accept the authorization code: {exc.message}",
                        hint=self._again,
                    ) from exc
                self._ui.notice(f"Sign-In is busy ({exc.aws_code or status}); trying again")
                await anyio.sleep(backoff_seconds(attempt, draw=random.random()))  # noqa: S311
        raise AssertionError("unreachable")  # pragma: no cover

    async def _store(
        self, answer: Mapping[str, Any], key: DpopKey, client_id: str, issued: datetime
    ) -> SigninResult:
        try:
            output = answer["tokenOutput"]
            creds = output["accessToken"]
            refresh = output["refreshToken"]
            id_token = str(output["idToken"])
            lifetime = int(output.get("expiresIn") or 900)
            subject = id_token_subject(id_token)
            token = LoginToken(
                access_key_id=str(creds["accessKeyId"]),
                secret_access_key=Secret(str(creds["secretAccessKey"])),
                session_token=Secret(str(creds["sessionToken"])),
                account_id=account_of(subject),
                expires_at=issued + timedelta(seconds=lifetime),
                client_id=client_id,
                dpop_key=Secret(key.to_pem()),
                refresh_token=Secret(str(refresh)),
                token_type=str(output.get("tokenType") or TOKEN_TYPE),
                id_token=Secret(id_token),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(
                "signin CreateOAuth2Token answered without usable credentials"
            ) from exc
        async with self._cache.lock(subject):
            self._cache.save_token(subject, token)
        log.info("signin_logged_in", session=subject, expires_at=token.expires_at)
        return SigninResult(subject, token)
