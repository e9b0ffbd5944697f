"""``credd console PROFILE``: the AWS console, signed in with credentials credd already holds.

AWS's custom identity broker flow (IAM User Guide, "Enable custom identity
broker access to the AWS console"), in three steps:

1. PROFILE's current credentials: the running daemon's, asked with the admin
   token, else fetched in this process as the daemon fetches them
   (:func:`credd.daemon.fetch_once`). Never a second login.
2. ``GET {federation}?Action=getSigninToken&Session=<JSON>`` (and
   ``SessionDuration`` where AWS takes it, below) answers ``{"SigninToken"}``;
   the JSON is ``{"sessionId", "sessionKey", "sessionToken"}``.
3. ``{federation}?Action=login&Issuer=credd&Destination=URL&SigninToken=T`` is
   what the browser opens. That URL signs anyone who has it in, for 15 minutes
   ("The URL is valid for 15 minutes"): it stays a :class:`~credd.secret.Secret`
   until it is printed or handed to the browser, and no error quotes it.

**The federation endpoint** is ``/federation`` on the Sign-In endpoint of the
profile's region, resolved as ``credd login --signin`` resolves it
(:func:`~credd.sessions.signin.resolve_base_url`), so ``AWS_ENDPOINT_URL_SIGNIN``,
``AWS_ENDPOINT_URL`` and ``[services]`` in the AWS config move it too. That is the
regional endpoint (``https://eu-west-1.signin.aws.amazon.com/federation``), which
the AWS Sign-In endpoints table lists for every region and which opt-in regions
need; us-east-1's entry there is the global ``https://signin.aws.amazon.com``, the
guide's own, used for it and for a profile without a region.

**SessionDuration** (900 to 43200 seconds) sets the console session's length. The
guide allows it only with the credentials of an ``AssumeRole*`` operation called
"as an IAM user with long-term credentials. Otherwise, the call to the
federation endpoint fails", and never with ``GetFederationToken``'s; AWS refuses
it for role-chained credentials (aws-sso-cli PR 1247, aws-vault issue 77). So
credd sends it for Identity Center role credentials (the role session AWS
itself starts) and for a role assumed with an IAM user's static keys, and
never for a role chained on another profile's credentials, on a
``credential_process``, on temporary static keys or on the default chain, nor
for Sign-In's (``aws login``) credentials, which no ``AssumeRole*`` issues.
Either way a role session keeps its own remaining lifetime: where credd sends
``SessionDuration`` it is the time the credentials have left (at most 12
hours), and where it does not, AWS ends the console session with the
credentials ("defaults to the duration of the credentials").
"""

from __future__ import annotations

import functools
import json
import re
import webbrowser
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import anyio
import yarl
from botocore.loaders import create_loader

from credd import wiring
from credd.aws import Answer
from credd.clock import Clock, SystemClock
from credd.config.settings import (
    DEFAULT_SIGNIN_REGION,
    AssumeRoleProfile,
    IdentityEnhancedProfile,
    ServedProfile,
    Settings,
    SigningSource,
    SsoRoleProfile,
    StaticKeysProfile,
    TrustedIdentitySpec,
)
from credd.endpoint import client
from credd.errors import DaemonUnavailable, NotServed, UpstreamError
from credd.files.store import parse_timestamp
from credd.profiles import RoleCredentials
from credd.secret import Secret
from credd.sessions.signin import resolve_base_url

#: who sent the user, as the console shows it (the guide: "your internal sign-in page")
ISSUER: Final = "credd"
FEDERATION_PATH: Final = "/federation"
#: the Sign-In endpoints table lists us-east-1's as the global host; botocore names it
#: by region. Only that exact default is replaced, never an endpoint override.
_GLOBAL_SIGNIN: Final = {"https://us-east-1.signin.aws.amazon.com": "https://signin.aws.amazon.com"}
#: ``SessionDuration``'s range (the guide: 900 seconds to 43,200)
MIN_SESSION_SECONDS: Final = 900
MAX_SESSION_SECONDS: Final = 43200
#: the console of each partition (others have no public console): the Destination's host
_CONSOLE_HOSTS: Final = {
    "aws": "console.aws.amazon.com",
    "aws-cn": "console.amazonaws.cn",
    "aws-us-gov": "console.amazonaws-us-gov.com",
}
#: how long the federation endpoint may take to answer
TIMEOUT_SECONDS: Final = 20.0
#: the most of its answer that is read: a SigninToken is about a kilobyte
_MAX_ANSWER_BYTES: Final = 64 * 1024
_TOKEN_SHAPE: Final = re.compile(r"[A-Za-z0-9._~+/=-]{1,8192}")


@dataclass(frozen=True)
class ConsoleLogin:
    """A signed-in console URL, and what it opens."""

    profile: str
    #: the ``login`` URL: a bearer credential until it is used or 15 minutes pass
    url: Secret
    destination: str
    #: the ``SessionDuration`` sent, if any
    session_duration: int | None
    #: when the console session ends, as far as credd can tell
    session_ends: datetime


def console_profile(settings: Settings, profile: str) -> ServedProfile:
    """The served profile ``profile``; why the console cannot use it, if it cannot."""
    spec = settings.profiles.get(profile)
    if spec is not None:
        return spec
    if isinstance(settings.sessions.get(profile), TrustedIdentitySpec):
        raise NotServed(
            f"profile {profile!r} serves only a bearer token (its [profiles.{profile}] has no "
            "role_arn), and the AWS console signs in with IAM role credentials",
            hint=f"add role_arn to [profiles.{profile}] in the credd config",
        )
    reason = settings.unserved.get(profile)
    raise NotServed(
        f"profile {profile!r} is not served, so credd holds no credentials for it"
        + (f": {reason}" if reason else " (no such profile in the AWS config)"),
        hint="see credd status",
    )


def takes_session_duration(spec: ServedProfile, sources: Mapping[str, SigningSource]) -> bool:
    """Whether AWS's federation endpoint takes ``SessionDuration`` with ``spec``'s credentials.

    Identity Center role credentials, and roles assumed with an IAM user's
    long-term keys: yes. Role chaining, Sign-In's credentials, and every
    source whose keys may be temporary: no (the module's docstring says why).
    """
    if isinstance(spec, SsoRoleProfile):
        return True
    if isinstance(spec, AssumeRoleProfile | IdentityEnhancedProfile):
        source = sources.get(spec.source_profile) if spec.source_profile else None
        return isinstance(source, StaticKeysProfile) and source.session_token is None
    return False


def session_duration(
    spec: ServedProfile,
    sources: Mapping[str, SigningSource],
    expiration: datetime,
    now: datetime,
) -> int | None:
    """The ``SessionDuration`` to send: the credentials' remaining lifetime, where AWS takes it.

    ``None`` where AWS takes none, and where less than AWS's least (15 minutes)
    is left: the console session then ends with the credentials.
    """
    if not takes_session_duration(spec, sources):
        return None
    remaining = int((expiration - now).total_seconds())
    if remaining < MIN_SESSION_SECONDS:
        return None
    return min(remaining, MAX_SESSION_SECONDS)


@functools.cache
def _partitions() -> tuple[tuple[str, frozenset[str], re.Pattern[str]], ...]:
    data = create_loader().load_data("partitions")
    return tuple(
        (p["id"], frozenset(p.get("regions", {})), re.compile(p["regionRegex"]))
        for p in data["partitions"]
    )


def partition_of(region: str) -> str:
    """The partition botocore puts ``region`` in: a listed region first, then the patterns."""
    partitions = _partitions()
    for name, regions, _ in partitions:
        if region in regions:
            return name
    for name, _, pattern in partitions:
        if pattern.match(region):
            return name
    return "aws"


def console_home(region: str | None) -> str:
    """The console home page of ``region`` (without one: the console's own home)."""
    if region is None:
        return f"https://{_CONSOLE_HOSTS['aws']}/console/home"
    host = _CONSOLE_HOSTS.get(partition_of(region), _CONSOLE_HOSTS["aws"])
    return f"https://{host}/console/home?region={quote(region, safe='')}"


def checked_destination(url: str) -> str:
    """``--destination``: an absolute ``https`` URL (AWS sends the browser nowhere else)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"expected an https:// URL of the AWS console, got {url!r}")
    return url


async def federation_url(settings: Settings, spec: ServedProfile) -> str:
    """The federation endpoint for ``spec``: its region's Sign-In endpoint + ``/federation``."""
    endpoint_profile = (
        spec.endpoint_profile if isinstance(spec, IdentityEnhancedProfile) else spec.name
    )
    async with wiring.aws_clients(settings) as clients:
        base = await resolve_base_url(
            clients, region=spec.region or DEFAULT_SIGNIN_REGION, profile=endpoint_profile
        )
    return _GLOBAL_SIGNIN.get(base, base) + FEDERATION_PATH


async def current_credentials(settings: Settings, profile: str, *, clock: Clock) -> RoleCredentials:
    """``profile``'s credentials from the running daemon, else fetched here as it would."""
    path = f"/v1/credentials/{quote(profile, safe='')}"
    try:
        answer = await anyio.to_thread.run_sync(client.request, settings, path)
    except DaemonUnavailable:
        # imported only here: the daemon's parts are not needed while one runs
        from credd.daemon import fetch_once

        return await fetch_once(settings, profile, clock=clock)
    read = Answer(answer, "credd's endpoint")
    try:
        expiration = parse_timestamp(read.text("Expiration"))
    except ValueError:
        raise read.unusable("Expiration is not a timestamp") from None
    return RoleCredentials(
        access_key_id=read.text("AccessKeyId"),
        secret_access_key=Secret(read.text("SecretAccessKey")),
        session_token=Secret(read.text("Token")),
        expiration=expiration,
        account_id=read.optional_text("AccountId"),
        received_at=clock.now(),
    )


async def signin_token(
    federation: str, creds: RoleCredentials, duration: int | None, *, profile: str
) -> Secret:
    """``getSigninToken``: the credentials exchanged for a sign-in token."""
    session = json.dumps(
        {
            "sessionId": creds.access_key_id,
            "sessionKey": creds.secret_access_key.reveal(),
            "sessionToken": creds.session_token.reveal(),
        },
        separators=(",", ":"),
    )
    params = {"Action": "getSigninToken"}
    if duration is not None:
        params["SessionDuration"] = str(duration)
    params["Session"] = session
    # %20, never +: the JSON goes through exactly as encoded, whatever reads it
    url = yarl.URL(f"{federation}?{urlencode(params, quote_via=quote)}", encoded=True)
    where = _described(federation)
    try:
        with anyio.fail_after(TIMEOUT_SECONDS):
            async with (
                aiohttp.ClientSession(trust_env=True) as http,
                http.get(url, allow_redirects=False) as answer,
            ):
                status = answer.status
                body = await answer.content.read(_MAX_ANSWER_BYTES + 1)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        # from None: an HTTP library's error may quote the URL, and the URL holds the keys
        raise UpstreamError(
            f"the AWS federation endpoint {where} could not be reached ({type(exc).__name__})",
            hint="check the network, then try again",
        ) from None
    if status != 200:
        raise UpstreamError(
            f"the AWS federation endpoint {where} refused the credentials of profile "
            f"{profile} (HTTP {status})",
            status=status,
            transient=status >= 500 or status == 429,
            hint="see credd status; if they are valid, the role may not be able to use the console",
        )
    return _signin_token_of(body, where)


def _signin_token_of(body: bytes, where: str) -> Secret:
    problem = f"the AWS federation endpoint {where} answered no SigninToken"
    if len(body) > _MAX_ANSWER_BYTES:
        raise UpstreamError(problem + " (its answer is too large)")
    try:
        answer: Any = json.loads(body)
    except ValueError:
        raise UpstreamError(problem + " (its answer is not JSON)") from None
    token = answer.get("SigninToken") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not _TOKEN_SHAPE.fullmatch(token):
        raise UpstreamError(problem)
    return Secret(token)


def login_url(federation: str, token: Secret, destination: str) -> Secret:
    """The ``login`` URL: opens ``destination``, signed in (a bearer credential)."""
    params = {
        "Action": "login",
        "Issuer": ISSUER,
        "Destination": destination,
        "SigninToken": token.reveal(),
    }
    return Secret(f"{federation}?{urlencode(params, quote_via=quote)}")


def _described(url: str) -> str:
    """``scheme://host[:port]/path``: what an error may say of a URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


async def console_login(
    settings: Settings,
    profile: str,
    *,
    destination: str | None = None,
    clock: Clock | None = None,
) -> ConsoleLogin:
    """A signed-in console URL for ``profile``: its credentials, a sign-in token, the URL."""
    spec = console_profile(settings, profile)
    clock = clock or SystemClock()
    creds = await current_credentials(settings, profile, clock=clock)
    federation = await federation_url(settings, spec)
    now = clock.now()
    duration = session_duration(spec, settings.sources, creds.expiration, now)
    token = await signin_token(federation, creds, duration, profile=profile)
    target = destination or console_home(spec.region)
    return ConsoleLogin(
        profile=profile,
        url=login_url(federation, token, target),
        destination=target,
        session_duration=duration,
        session_ends=creds.expiration if duration is None else now + timedelta(seconds=duration),
    )


def open_in_browser(login: ConsoleLogin) -> bool:
    """Open the URL with :mod:`webbrowser` (``$BROWSER`` honoured); whether a browser took it."""
    return webbrowser.open(login.url.reveal())
