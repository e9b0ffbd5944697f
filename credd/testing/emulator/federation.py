"""The AWS console's federation endpoint (custom identity broker), on the Sign-In host.

IAM User Guide, "Enable custom identity broker access to the AWS console":
``GET {signin}/federation`` with

* ``Action=getSigninToken`` (operation ``GetSigninToken``): ``Session`` is the
  JSON ``{"sessionId", "sessionKey", "sessionToken"}`` of temporary
  credentials, optionally with ``SessionDuration`` (the console session's
  length in seconds, 900 to 43200); the answer is ``{"SigninToken": "..."}``.
* ``Action=login`` (operation ``FederationLogin``): ``SigninToken``,
  ``Destination`` (a console URL) and ``Issuer`` (optional); the answer is a
  302 to ``Destination``, the browser now signed in. A sign-in token is good
  for one login within 15 minutes of its issue.

The rules it applies, and where they come from:

* Only temporary credentials this emulator issued and that are still valid on
  its clock: secret and session token must match (compared in constant time).
  Long-term IAM user keys are refused: the guide's broker exchanges
  temporary credentials only.
* ``SessionDuration`` only for credentials of an ``AssumeRole*`` operation
  (the SSO portal's role credentials; AssumeRole) that was not itself signed
  with temporary credentials. The guide: "If you use the AssumeRole* API
  operations, you must call them as an IAM user with long-term credentials.
  Otherwise, the call to the federation endpoint in step 3 fails", and "Do not
  use the SessionDuration HTTP parameter if you got the temporary credentials
  with GetFederationToken". Role-chained credentials with ``SessionDuration``
  fail on AWS (aws-sso-cli PR 1247, aws-vault issue 77). Sign-In's (``aws
  login``) credentials come from no ``AssumeRole*`` operation: refused too,
  where AWS publishes nothing. Without ``SessionDuration`` the console session
  ends with the credentials ("defaults to the duration of the credentials").
* ``Destination`` must be an ``https`` URL on a console host
  (``console.aws.amazon.com`` and its regional names, and the China and
  GovCloud consoles): the endpoint is no open redirect.

Every refusal is an HTML page with status 400, as AWS answers ("Invalid
credentials parameter"); what AWS says exactly is not published, and credd
must count on no more than "not 200". The state lives in
:class:`~.state.FederationState` (``emu.state.federation``): the grants, and
the console sessions ``login`` opened.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from credd.secret import Secret

from .errors import PageError
from .operations import Operation, invoke, json_ok
from .runtime import Runtime
from .state import ConsoleSession, SigninTokenGrant, TemporaryCredentials

PATH: Final = "/federation"
#: a sign-in token is good for this long ("The URL is valid for 15 minutes")
SIGNIN_TOKEN_TTL: Final = 900
#: ``SessionDuration``'s range: 15 minutes to 12 hours
MIN_SESSION_DURATION: Final = 900
MAX_SESSION_DURATION: Final = 43200
SESSION_MEMBERS: Final = frozenset({"sessionId", "sessionKey", "sessionToken"})
#: the consoles ``Destination`` may name, each also behind a region (``eu-west-1.console...``)
CONSOLE_HOSTS: Final = (
    "console.aws.amazon.com",
    "console.amazonaws.cn",
    "console.amazonaws-us-gov.com",
)
_MAX_SESSION_CHARS: Final = 8192


def _refused(message: str) -> PageError:
    return PageError("InvalidRequest", message, status=400)


class FederationService:
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self.get_signin_token = Operation("GetSigninToken", PageError, self._get_signin_token)
        self.login = Operation("FederationLogin", PageError, self._login)
        self._by_action = {"getSigninToken": self.get_signin_token, "login": self.login}

    @property
    def operations(self) -> tuple[Operation, ...]:
        return (self.get_signin_token, self.login)

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self._dispatch)]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        # One path, two operations: ``Action`` decides.
        operation = self._by_action.get(request.query.get("Action", ""))
        if operation is None:
            return web.Response(
                status=400,
                text="Action must be getSigninToken or login",
                content_type="text/plain",
            )
        return await invoke(operation, request, self._rt)

    # getSigninToken -----------------------------------------------------------

    async def _get_signin_token(self, request: web.Request) -> web.StreamResponse:
        query = _single(request, ("Action", "Session", "SessionDuration", "SessionType"))
        now = self._rt.now()
        credentials = self._credentials(query.get("Session"), now)
        duration = self._session_duration(query.get("SessionDuration"), credentials)
        ends_at = credentials.expires_at if duration is None else now + timedelta(seconds=duration)
        token = self._rt.state.federation.add_grant(
            SigninTokenGrant(
                access_key_id=credentials.access_key_id,
                principal=credentials.principal,
                expires_at=now + timedelta(seconds=SIGNIN_TOKEN_TTL),
                session_ends_at=ends_at,
                session_duration=duration,
            )
        )
        return json_ok({"SigninToken": token})

    def _credentials(self, raw: str | None, now: datetime) -> TemporaryCredentials:
        if not raw or len(raw) > _MAX_SESSION_CHARS:
            raise _refused("Session is required: the JSON of temporary credentials")
        try:
            session = json.loads(raw)
        except ValueError:
            raise _refused("Session is not JSON") from None
        if (
            not isinstance(session, dict)
            or set(session) != SESSION_MEMBERS
            or not all(isinstance(v, str) and v for v in session.values())
        ):
            raise _refused("Session must hold sessionId, sessionKey and sessionToken, no more")
        issued = self._rt.state.credentials.get(session["sessionId"])
        if not isinstance(issued, TemporaryCredentials):
            # unknown keys, and long-term IAM user keys: both are refused alike
            raise _refused("Invalid credentials parameter")
        # Secret compares in constant time
        secret_ok = issued.secret_access_key == Secret(session["sessionKey"])
        token_ok = issued.session_token == Secret(session["sessionToken"])
        if not (secret_ok and token_ok):
            raise _refused("Invalid credentials parameter")
        if now >= issued.expires_at:
            raise _refused("The credentials have expired")
        return issued

    def _session_duration(self, raw: str | None, credentials: TemporaryCredentials) -> int | None:
        if raw is None:
            return None
        try:
            duration = int(raw)
        except ValueError:
            raise _refused("SessionDuration must be a number of seconds") from None
        if not MIN_SESSION_DURATION <= duration <= MAX_SESSION_DURATION:
            raise _refused(
                f"SessionDuration must be between {MIN_SESSION_DURATION} and "
                f"{MAX_SESSION_DURATION} seconds"
            )
        if credentials.from_temporary or credentials.signin:
            raise _refused(
                "SessionDuration is allowed only with the credentials of an AssumeRole "
                "called with long-term credentials (not with role chaining)"
            )
        return duration

    # login --------------------------------------------------------------------

    async def _login(self, request: web.Request) -> web.StreamResponse:
        query = _single(request, ("Action", "SigninToken", "Destination", "Issuer"))
        destination = query.get("Destination", "")
        if not _is_console_url(destination):
            raise _refused("Destination must be an https URL of the AWS console")
        federation = self._rt.state.federation
        value = query.get("SigninToken", "")
        grant = federation.grants.get(value)
        now = self._rt.now()
        if grant is None:
            raise _refused("Invalid SigninToken")
        if grant.used:
            raise _refused("The SigninToken has already been used")
        grant.used = True  # one attempt per token, whatever comes of it
        if now >= grant.expires_at or now >= grant.session_ends_at:
            raise _refused("The SigninToken has expired")
        federation.console_sessions.append(
            ConsoleSession(
                principal=grant.principal,
                access_key_id=grant.access_key_id,
                issuer=query.get("Issuer"),
                destination=destination,
                started_at=now,
                ends_at=grant.session_ends_at,
            )
        )
        return web.Response(status=302, headers={"Location": destination})


def _single(request: web.Request, names: tuple[str, ...]) -> dict[str, str]:
    """The query parameters ``names``, each at most once (a repeated one is refused)."""
    repeated = sorted(name for name in names if len(request.query.getall(name, [])) > 1)
    if repeated:
        raise _refused(f"Repeated parameters: {', '.join(repeated)}")
    return {name: request.query[name] for name in names if name in request.query}


def _is_console_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port
    except ValueError:
        return False
    if parts.scheme != "https" or parts.username or parts.password:
        return False
    return any(host == console or host.endswith("." + console) for console in CONSOLE_HOSTS)
