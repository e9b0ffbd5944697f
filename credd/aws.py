"""aiobotocore clients, and botocore's errors turned into credd's.

Every AWS call goes through a client made here, so the standard endpoint
overrides (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_<SERVICE>``, ``endpoint_url``
in a ``[services NAME]`` section) apply without credd resolving them itself:
botocore reads them from the environment and from the AWS config of the
profile the client is made for.

Whatever comes back is distrusted (issue 6, "a hostile world"): every call
has a read timeout and an overall deadline, no answer is read past
:data:`MAX_ANSWER_BYTES` (botocore itself reads any body whole), an answer
botocore cannot parse is an :class:`UpstreamError` like any other, and an error
message taken from an answer is cut short and never carries a body that is not
an AWS error. :class:`Answer` reads the members of a parsed answer with their
types checked: botocore's parsers check none (``"expiresIn": "soon"`` comes
through as a string).

botocore reads the AWS config and shared credentials files with blocking
calls; credd has it do so in worker threads, never on the event loop that
answers SDKs (issue 11): a new session's files are read before its first
client is made, and botocore's default credential chain runs in a thread
of its own.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Final, NoReturn
from xml.etree.ElementTree import ParseError

import aiohttp
import anyio
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import AioSession
from botocore import UNSIGNED
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError
from botocore.session import Session as BotocoreSession

from credd.botodata import ENDPOINT_PREFIXES, DataLoader
from credd.errors import UpstreamError
from credd.secret import Secret

# HTTP statuses that say "try again later" whatever the error code.
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 509})
_THROTTLING_CODES = frozenset(
    {
        "SlowDownException",
        "TooManyRequestsException",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerException",
        "ServiceUnavailable",
        "InternalFailure",
        "InternalError",
    }
)

#: how long to wait for a connection, and for each read of an answer (seconds); module
#: defaults so that tests can shorten them (every AwsClients made later takes them)
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 10.0
#: the most one operation may take, botocore's own retry included: a read timeout is
#: per read, and an answer that trickles in a byte at a time never trips it
CALL_DEADLINE_SECONDS = 25.0
#: how often botocore itself retries a call that failed for a transient reason
#: (``max_attempts`` of its standard mode: the retries, not counting the first try)
BOTOCORE_RETRIES = 2
#: the most of an answer credd reads. AWS's answers to what credd asks are a few
#: kilobytes (an idToken is at most 4 KiB); botocore would read any body whole
MAX_ANSWER_BYTES = 1024 * 1024
#: how much of a message taken from an answer reaches credd's errors (logs, status)
MAX_MESSAGE_CHARS = 240
#: an answer that lasts no longer than this is no answer: credd could not serve it
#: (it hands out nothing with under 30 seconds left)
MIN_LIFETIME_SECONDS: Final = 30.0
#: what botocore's parsers raise on an answer they cannot read, besides their own error
_PARSE_ERRORS = (
    ResponseParserError,
    ParseError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
)

#: what a default-chain lookup finds while an abandoned one still runs
_BUSY: Final = object()

#: AWS config keys that only choose a profile's credentials (and its region, which
#: every client here is given explicitly): no client credd makes reads them
_CREDENTIAL_KEYS = frozenset(
    {
        "region",
        "sso_session",
        "sso_account_id",
        "sso_role_name",
        "sso_start_url",
        "sso_region",
        "sso_registration_scopes",
        "login_session",
        "role_arn",
        "source_profile",
        "role_session_name",
        "duration_seconds",
        "external_id",
        "mfa_serial",
        "credential_source",
        "credential_process",
        "web_identity_token_file",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_security_token",
    }
)


@dataclass(frozen=True)
class SigningKeys:
    """IAM credentials a client signs with."""

    access_key_id: str
    secret_access_key: Secret
    session_token: Secret | None


class AwsClients:
    """Makes aiobotocore clients that honour the AWS config's endpoint overrides.

    Clients are short-lived, except with ``keep_open`` (the daemon's): then an
    unsigned client (the SSO portal, sso-oidc) is made once per service, region
    and kind of profile and used by every call, until :meth:`aclose`. A fetch
    then costs a call, not a client (botocore's client classes, hooks, an
    aiohttp session and a new connection), and a thousand profiles fetched at
    once leave no thousand clients' worth of fragments behind.
    """

    def __init__(
        self,
        config_file: Path,
        credentials_file: Path,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        keep_open: bool = False,
    ) -> None:
        self._config_file = config_file
        self._credentials_file = credentials_file
        self._keep_open = keep_open
        self._open: dict[tuple[object, str, str, int | None], Any] = {}
        self._closing = contextlib.AsyncExitStack()
        self._sessions: dict[object, AioSession] = {}
        #: botocore's (blocking) default chain, run in one worker thread at a time:
        #: a chain stuck on a file or an endpoint holds one thread, not the pool
        self._default_chain: BotocoreSession | None = None
        self._default_chain_lock = threading.Lock()
        self._default_chain_limiter = anyio.CapacityLimiter(1)
        #: the parsed AWS config (botocore's), read once: what tells profiles' clients apart
        self._parsed: AioSession | None = None
        #: botocore's service models and endpoint rules, parsed once for every session
        self._loader: DataLoader | None = None
        self._config = {
            "connect_timeout": connect_timeout or CONNECT_TIMEOUT_SECONDS,
            "read_timeout": read_timeout or READ_TIMEOUT_SECONDS,
            "http_session_cls": _BoundedSession,
            # A retry or two for a dropped connection or a 5xx (botocore sleeps a second
            # or so between them); credd's own backoff does the rest.
            "retries": {"mode": "standard", "max_attempts": BOTOCORE_RETRIES},
        }

    async def __aenter__(self) -> AwsClients:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the clients kept open (shielded: it runs when the daemon stops)."""
        self._open.clear()
        with anyio.CancelScope(shield=True):
            await self._closing.aclose()

    def _new_session(self, profile: str | None) -> AioSession:
        """A session with the AWS config read (blocking: run it in a thread)."""
        session = AioSession()
        session.set_config_variable("config_file", str(self._config_file))
        session.set_config_variable("credentials_file", str(self._credentials_file))
        if profile is not None:
            session.set_config_variable("profile", profile)
        if self._loader is None:
            self._loader = DataLoader(session.get_config_variable("data_path"))
        session.register_component("data_loader", self._loader)
        # botocore reads both files at the first client; here, off the event loop
        with contextlib.suppress(BotoCoreError):  # its complaint comes with the client
            session.full_config  # noqa: B018  # read for its side effect: the parse, cached
        return session

    def _client_settings(self, parsed: AioSession, profile: str) -> object:
        """What of ``profile``'s AWS config a client reads: profiles alike share a session.

        A botocore session parses the whole AWS config and keeps its own models, a
        few megabytes with a thousand profiles, and a client made for one profile
        reads its endpoint overrides, FIPS and dual-stack settings and so on from
        that profile's section. Two profiles whose sections differ only in what
        chooses their credentials (and their region, always passed explicitly)
        make the same clients, so they share one session.
        """
        try:
            section = parsed.full_config["profiles"].get(profile)
        except BotoCoreError:
            section = None  # botocore's own complaint comes with the client
        if not isinstance(section, dict):
            return ("profile", profile)
        shared = {k: v for k, v in section.items() if k not in _CREDENTIAL_KEYS}
        return ("settings", json.dumps(shared, sort_keys=True, default=str))

    async def _session(self, profile: str | None) -> tuple[object, AioSession]:
        """The session for ``profile``'s clients, and the key of the profiles sharing it."""
        key: object = None
        if profile is not None:
            if self._parsed is None:
                parsed = await anyio.to_thread.run_sync(self._new_session, None)
                self._parsed = self._parsed or parsed
            key = self._client_settings(self._parsed, profile)
        session = self._sessions.get(key)
        if session is None:
            made = await anyio.to_thread.run_sync(self._new_session, profile)
            session = self._sessions.setdefault(key, made)  # a concurrent first use: one wins
        return key, session

    async def default_keys(self) -> SigningKeys:
        """The keys botocore's default chain finds: the environment, the shared files, ...

        botocore's own chain (the one aiobotocore mirrors), in a worker thread:
        it reads the shared files, and may run a ``credential_process`` or ask
        an instance metadata service, all blocking. One session keeps, and
        refreshes, what the chain found.
        """
        try:
            # abandoned when cancelled (a daemon stopping, a deadline): what it finds is dropped
            frozen = await anyio.to_thread.run_sync(
                self._default_chain_keys,
                limiter=self._default_chain_limiter,
                abandon_on_cancel=True,
            )
        except BotoCoreError as exc:
            raise UpstreamError(f"the default credential chain failed: {exc}") from exc
        if frozen is _BUSY:
            raise UpstreamError(
                "the default credential chain has not answered a previous lookup yet",
                hint="check what it reads: the environment, the shared files, credential_process",
            )
        if frozen is None or not frozen.access_key or not frozen.secret_key:
            raise UpstreamError(
                "the default credential chain found no credentials",
                transient=False,
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or name a source_profile",
            )
        return SigningKeys(
            str(frozen.access_key),
            Secret(str(frozen.secret_key)),
            Secret(str(frozen.token)) if frozen.token else None,
        )

    def _default_chain_keys(self) -> Any:
        """botocore's frozen default credentials, or ``None`` (blocking: run it in a thread).

        :data:`_BUSY` while an abandoned lookup still runs: one stuck thread at most.
        """
        if not self._default_chain_lock.acquire(blocking=False):
            return _BUSY
        try:
            if self._default_chain is None:
                session = BotocoreSession()
                session.set_config_variable("config_file", str(self._config_file))
                session.set_config_variable("credentials_file", str(self._credentials_file))
                self._default_chain = session
            found = self._default_chain.get_credentials()
            return None if found is None else found.get_frozen_credentials()
        finally:
            self._default_chain_lock.release()

    @contextlib.asynccontextmanager
    async def client(
        self,
        service: str,
        *,
        region: str,
        profile: str | None,
        keys: SigningKeys | None = None,
        attempts: int | None = None,
    ) -> AsyncIterator[Any]:
        """An open client for ``service``; unsigned unless ``keys`` are given.

        ``attempts`` overrides botocore's retries (1: none, for calls that must
        not be repeated, such as redeeming a single-use authorization code).
        """
        if service not in ENDPOINT_PREFIXES:
            raise ValueError(f"credd makes no {service} clients: add it to ENDPOINT_PREFIXES")
        signing: dict[str, Any] = {}
        config = AioConfig(**self._config)
        if attempts is not None:
            retries = {"mode": "standard", "total_max_attempts": attempts}
            config = config.merge(AioConfig(retries=retries))
        if keys is None:
            config = config.merge(AioConfig(signature_version=UNSIGNED))
            # Keep botocore from looking for credentials it will never use.
            signing = {"aws_access_key_id": "unused", "aws_secret_access_key": "unused"}
        else:
            signing = {
                "aws_access_key_id": keys.access_key_id,
                "aws_secret_access_key": keys.secret_access_key.reveal(),
                "aws_session_token": keys.session_token.reveal() if keys.session_token else None,
            }
        key, session = await self._session(profile)
        try:
            if keys is None and self._keep_open:
                kept = (key, service, region, attempts)
                client = self._open.get(kept)
                if client is None:
                    made = session.create_client(
                        service, region_name=region, config=config, **signing
                    )
                    client = await self._closing.enter_async_context(made)
                    self._open[kept] = client
                yield _Translating(client, service)
            else:
                async with session.create_client(
                    service, region_name=region, config=config, **signing
                ) as client:
                    yield _Translating(client, service)
        except (ClientError, BotoCoreError) as exc:
            raise upstream_error(exc, service) from exc


class AnswerTooLarge(BotoCoreError):  # type: ignore[misc]  # botocore is untyped
    """An answer longer than :data:`MAX_ANSWER_BYTES`: not read to its end."""

    fmt = "the answer from {endpoint_url} is larger than {limit} bytes"


class _BoundedSession(AIOHTTPSession):  # type: ignore[misc]  # aiobotocore is untyped
    """aiobotocore's HTTP session, reading no answer past :data:`MAX_ANSWER_BYTES`.

    aiobotocore reads every non-streaming answer whole (``await response.content``)
    before botocore parses it, whatever its size: a misbehaving endpoint could fill
    the daemon's memory. Here the body is read in chunks and the connection is
    closed once the limit is passed; the answer botocore then parses is the one read.

    It also builds the TLS contexts once: aiobotocore makes a new ``SSLContext``
    (reading the whole CA bundle, in a worker thread) for every client, which is
    tens of milliseconds and a megabyte of OpenSSL's memory, left fragmented, per
    fetch. Clients with the same TLS settings share one.
    """

    _tls: ClassVar[dict[str, tuple[Any, Any]]] = {}

    def _build_ssl_contexts(self, proxy_url: str | None) -> tuple[Any, Any]:
        settings = sorted(self._proxy_config.settings.items())
        key = repr((self._verify, self._cert_file, self._key_file, proxy_url, settings))
        contexts = self._tls.get(key)
        if contexts is None:
            contexts = self._tls[key] = super()._build_ssl_contexts(proxy_url)
        return contexts

    async def send(self, request: Any) -> Any:
        if request.stream_output:
            return await super().send(request)
        request.stream_output = True  # read below, bounded, instead of whole
        try:
            response = await super().send(request)
        finally:
            request.stream_output = False
        raw: aiohttp.ClientResponse = response.raw
        try:
            body = await _read_bounded(raw, request.url)
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
            raise ConnectionClosedError(
                error=exc, request=request, endpoint_url=request.url
            ) from exc
        except aiohttp.ServerTimeoutError as exc:
            raise ReadTimeoutError(endpoint_url=request.url, error=exc) from exc
        finally:
            raw.release()
        # What ``response.content`` returns from now on (botocore's own cache of the body).
        response._content = body
        return response


async def _read_bounded(raw: aiohttp.ClientResponse, url: str) -> bytes:
    declared = raw.content_length
    if declared is not None and declared > MAX_ANSWER_BYTES:
        raw.close()
        raise AnswerTooLarge(endpoint_url=url, limit=MAX_ANSWER_BYTES)
    body = bytearray()
    async for chunk in raw.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raw.close()
            raise AnswerTooLarge(endpoint_url=url, limit=MAX_ANSWER_BYTES)
    return bytes(body)


class _Translating:
    """A client whose operations raise :class:`UpstreamError` instead of botocore's errors.

    Each call has :data:`CALL_DEADLINE_SECONDS`, retries included. What botocore's
    parsers raise on an answer they cannot read (``ResponseParserError``, which is
    not a ``BotoCoreError``, and plain ``ValueError`` for ``"expiration": "soon"``)
    is an unusable answer too, not a crash.
    """

    def __init__(self, client: Any, service: str) -> None:
        self._client = client
        self._service = service
        self.meta = client.meta

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        operation = getattr(self._client, name)

        async def call(**kwargs: Any) -> Any:
            deadline = CALL_DEADLINE_SECONDS
            try:
                with anyio.fail_after(deadline):
                    return await operation(**kwargs)
            except (ClientError, BotoCoreError) as exc:
                raise upstream_error(exc, self._service) from exc
            except TimeoutError as exc:
                raise UpstreamError(
                    f"{self._service} did not answer within {deadline:g} s", transient=True
                ) from exc
            except _PARSE_ERRORS as exc:
                # Never the exception's text: botocore puts the body in it (secrets too).
                raise UpstreamError(
                    f"{self._service} answered something that cannot be parsed "
                    f"({type(exc).__name__})",
                    transient=True,
                ) from exc

        return call


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def shortened(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` on one line and at most ``limit`` characters: fit for a log line or a status."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def upstream_error(exc: ClientError | BotoCoreError, service: str) -> UpstreamError:
    """One credd error for whatever botocore raised; the AWS code is kept verbatim.

    Only an AWS error's own message is shown (shortened): for an answer that is
    not an AWS error (a proxy's page, garbage) botocore uses the body as the
    message, and that is nobody's business, so only its status is told.
    """
    if isinstance(exc, ClientError):
        code = error_code(exc)
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        modeled = bool(code) and code != str(status)
        message = str(error.get("Message") or exc.response.get("error_description") or "")
        transient = status in _TRANSIENT_STATUSES or code in _THROTTLING_CODES
        if modeled:
            text = f"{service} answered {code}"
            text = f"{text}: {shortened(message)}" if message else text
        else:
            text = f"{service} answered HTTP {status} without an AWS error code"
        oauth = exc.response.get("error")
        return UpstreamError(
            text,
            aws_code=shortened(code, 100) or None,
            transient=transient,
            status=status or None,
            oauth_error=shortened(oauth, 100) if isinstance(oauth, str) and oauth else None,
        )
    # Connection failures, timeouts and unparsable answers: the network or the
    # service is having a bad moment; trying again later is the right thing.
    return UpstreamError(f"{service} could not be reached: {shortened(str(exc))}", transient=True)


class Answer:
    """A parsed AWS answer whose members are read with their types checked.

    botocore's parsers check no types: a JSON answer saying ``"accessToken": 5``
    or ``"expiresIn": "soon"`` comes through as it is. Every member credd keeps is
    read through here, and anything missing or mistyped is an :class:`UpstreamError`
    naming the member, never its value (it may be a secret).
    """

    def __init__(self, data: object, what: str) -> None:
        self._what = what
        if not isinstance(data, Mapping):
            raise self.unusable("is not an object")
        self._data: Mapping[str, Any] = data

    def unusable(self, problem: str) -> UpstreamError:
        return UpstreamError(f"{self._what} answered an unusable answer: {problem}")

    def member(self, key: str) -> Answer:
        """A nested object."""
        value = self._data.get(key)
        if value is None:
            raise self.unusable(f"{key} is missing")
        if not isinstance(value, Mapping):
            self._bad(key)
        return Answer(value, f"{self._what} ({key})")

    def text(self, key: str) -> str:
        """A string that must be there and not be empty."""
        value = self.optional_text(key)
        if value is None:
            raise self.unusable(f"{key} is missing")
        return value

    def optional_text(self, key: str) -> str | None:
        """A string, or ``None`` when it is absent (or empty)."""
        value = self._data.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            self._bad(key)
        return value

    def seconds(self, key: str, *, maximum: float, default: int | None = None) -> int:
        """A lifetime in whole seconds: over :data:`MIN_LIFETIME_SECONDS`, at most ``maximum``."""
        value = self._data.get(key, default)
        if value is None:
            raise self.unusable(f"{key} is missing")
        if isinstance(value, bool) or not isinstance(value, int):
            self._bad(key)
        if not MIN_LIFETIME_SECONDS < value <= maximum:
            raise self.unusable(f"{key} is out of range ({value} s)")
        return value

    def instant(self, key: str, *, now: datetime) -> datetime:
        """A timestamp botocore parsed (an aware datetime) later than ``now`` plus a little."""
        value = self._data.get(key)
        if value is None:
            raise self.unusable(f"{key} is missing")
        if not isinstance(value, datetime) or value.tzinfo is None:
            self._bad(key)
        if (value - now).total_seconds() <= MIN_LIFETIME_SECONDS:
            raise self.unusable(f"{key} is not in the future ({value.isoformat()})")
        return value

    def epoch_ms(self, key: str, *, now: datetime) -> datetime:
        """A timestamp in epoch milliseconds (the SSO portal's ``expiration``, protocols.md 3)."""
        value = self._data.get(key)
        if value is None:
            raise self.unusable(f"{key} is missing")
        if isinstance(value, bool) or not isinstance(value, int):
            self._bad(key)
        try:
            when = datetime.fromtimestamp(value / 1000, now.tzinfo)
        except (OverflowError, OSError, ValueError) as exc:
            raise self.unusable(f"{key} is out of range") from exc
        return self.__class__({key: when}, self._what).instant(key, now=now)

    def _bad(self, key: str) -> NoReturn:
        found = type(self._data.get(key)).__name__
        raise self.unusable(f"{key} has the wrong type ({found})")
