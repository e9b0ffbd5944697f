"""AWS Signature Version 4, checked from the receiving end.

The first half recomputes a signature from what arrived on the wire (the
canonical request of the SigV4 specification, built the way botocore's
``SigV4Auth`` builds it: double-encoded path, sorted query, signed headers with
collapsed whitespace, SHA-256 of the body). The second half,
:func:`authenticate`, decides whether a request comes from credentials the
emulator issued: known access key, matching session token, not expired, signed
within the allowed clock skew, and a signature that matches. It knows nothing
of any one service's error codes; callers translate :class:`AuthFailure`
reasons (STS: protocols.md §5).

https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Final, Literal
from urllib.parse import quote, unquote_plus

from aiohttp import web
from multidict import MultiMapping

from credd.secret import Secret

from .state import IssuedCredentials, TemporaryCredentials

ALGORITHM: Final = "AWS4-HMAC-SHA256"
AMZ_DATE_FORMAT: Final = "%Y%m%dT%H%M%SZ"
SECURITY_TOKEN_HEADER: Final = "X-Amz-Security-Token"
CONTENT_SHA256_HEADER: Final = "X-Amz-Content-SHA256"
UNSIGNED_PAYLOAD: Final = "UNSIGNED-PAYLOAD"


class MalformedAuthorization(ValueError):
    """The Authorization header or the request date cannot be understood."""


@dataclass(frozen=True)
class CredentialScope:
    access_key_id: str
    date: str
    region: str
    service: str

    def __str__(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclass(frozen=True)
class Authorization:
    scope: CredentialScope
    signed_headers: tuple[str, ...]
    signature: str


@dataclass(frozen=True)
class SignedRequest:
    """What the signature covers, as received."""

    method: str
    #: percent-encoded as sent, without the query
    raw_path: str
    raw_query: str
    headers: MultiMapping[str]
    body: bytes

    @classmethod
    def of(cls, request: web.Request, body: bytes) -> SignedRequest:
        """The parts of an aiohttp request that SigV4 signs, exactly as they arrived."""
        return cls(
            method=request.method,
            raw_path=request.rel_url.raw_path,
            raw_query=request.rel_url.raw_query_string,
            headers=request.headers,
            body=body,
        )


# -- the signature -------------------------------------------------------------


def parse_authorization(value: str) -> Authorization:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise MalformedAuthorization(f"Unsupported AWS 'algorithm': '{algorithm}'")
    params: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, val = part.strip().partition("=")
        if sep:
            params[key] = val
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if not params.get(k)]
    if missing:
        raise MalformedAuthorization(
            " ".join(f"Authorization header requires '{k}' parameter." for k in missing)
        )
    credential = params["Credential"].split("/")
    if len(credential) != 5 or credential[4] != "aws4_request" or not all(credential):
        raise MalformedAuthorization(
            "Credential should be scoped to a valid region, like AKID/YYYYMMDD/REGION/"
            "SERVICE/aws4_request."
        )
    signed_headers = tuple(params["SignedHeaders"].split(";"))
    if "host" not in signed_headers:
        raise MalformedAuthorization("'Host' must be a 'SignedHeader' in the AWS Authorization.")
    return Authorization(CredentialScope(*credential[:4]), signed_headers, params["Signature"])


def request_time(headers: MultiMapping[str]) -> tuple[str, datetime]:
    """The signing timestamp: ``X-Amz-Date``, else ``Date`` (as botocore sends them)."""
    if (amz_date := headers.get("X-Amz-Date")) is not None:
        try:
            when = datetime.strptime(amz_date, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
        except ValueError:
            raise MalformedAuthorization(f"Invalid X-Amz-Date: {amz_date!r}") from None
        return amz_date, when
    if (date := headers.get("Date")) is not None:
        try:
            when = parsedate_to_datetime(date).astimezone(UTC)
        except (TypeError, ValueError):
            raise MalformedAuthorization(f"Invalid Date: {date!r}") from None
        return when.strftime(AMZ_DATE_FORMAT), when
    raise MalformedAuthorization(
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
    )


def canonical_request(request: SignedRequest, signed_headers: tuple[str, ...]) -> str:
    return "\n".join(
        [
            request.method.upper(),
            # The path as sent is encoded once; SigV4 (non-S3) encodes it again.
            quote(_remove_dot_segments(request.raw_path), safe="/~"),
            _canonical_query(request.raw_query),
            _canonical_headers(request.headers, signed_headers) + "\n",
            ";".join(signed_headers),
            _payload_hash(request),
        ]
    )


def expected_signature(
    request: SignedRequest, authorization: Authorization, amz_date: str, secret_key: Secret
) -> str:
    scope = authorization.scope
    string_to_sign = "\n".join(
        [
            ALGORITHM,
            amz_date,
            str(scope),
            _sha256_hex(canonical_request(request, authorization.signed_headers).encode()),
        ]
    )
    key = f"AWS4{secret_key.reveal()}".encode()
    for part in (scope.date, scope.region, scope.service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4, and repeated slashes collapse, as botocore normalises paths."""
    if not path:
        return "/"
    output: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if output:
                output.pop()
        elif segment and segment != ".":
            output.append(segment)
    first = "/" if path.startswith("/") else ""
    last = "/" if path.endswith("/") and output else ""
    return first + "/".join(output) + last


def _canonical_query(raw_query: str) -> str:
    pairs = []
    for pair in filter(None, raw_query.split("&")):
        key, _, value = pair.partition("=")
        pairs.append((_encode(key), _encode(value)))
    return "&".join(f"{key}={value}" for key, value in sorted(pairs))


def _encode(component: str) -> str:
    # Clients put form-encoded queries on the wire ("+" for a space, as botocore's
    # prepared URLs do) but sign them percent-encoded: decode both, then re-encode.
    return quote(unquote_plus(component), safe="-_.~")


def _canonical_headers(headers: MultiMapping[str], signed_headers: tuple[str, ...]) -> str:
    lines = []
    for name in signed_headers:
        values = headers.getall(name, [])
        lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}")
    return "\n".join(lines)


def _payload_hash(request: SignedRequest) -> str:
    actual = _sha256_hex(request.body)
    declared = request.headers.get(CONTENT_SHA256_HEADER)
    # A declared hash counts only if it is honest (or explicitly "unsigned").
    return declared if declared in (UNSIGNED_PAYLOAD, actual) else actual


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the caller ----------------------------------------------------------------

FailureReason = Literal[
    "missing",  # no Authorization header at all
    "incomplete",  # an Authorization header or date that cannot be parsed
    "wrong_service",  # scoped to another service
    "unknown_key",  # an access key the emulator never issued
    "bad_token",  # session token missing, wrong, or sent with long-term keys
    "expired",  # temporary credentials past their expiry
    "skewed",  # signed too far from the emulator's clock
    "signature",  # the signature does not match
]


class AuthFailure(Exception):
    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


SIGNATURE_MISMATCH: Final = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)


def authenticate(
    request: SignedRequest,
    *,
    service: str,
    lookup: Callable[[str], IssuedCredentials | None],
    now: datetime,
    max_skew: int | None,
) -> IssuedCredentials:
    """The issued credentials that signed ``request``, or :class:`AuthFailure`."""
    header = request.headers.get("Authorization")
    if not header:
        raise AuthFailure("missing", "Request is missing Authentication Token")
    try:
        authorization = parse_authorization(header)
        amz_date, signed_at = request_time(request.headers)
    except MalformedAuthorization as exc:
        raise AuthFailure("incomplete", str(exc)) from None
    _check_scope(authorization.scope, service, amz_date)
    credentials = lookup(authorization.scope.access_key_id)
    if credentials is None:
        raise AuthFailure("unknown_key", "The security token included in the request is invalid.")
    _check_session_token(credentials, request.headers.get(SECURITY_TOKEN_HEADER))
    if isinstance(credentials, TemporaryCredentials) and now >= credentials.expires_at:
        raise AuthFailure("expired", "The security token included in the request is expired")
    if max_skew is not None:
        _check_skew(signed_at, now, max_skew)
    expected = expected_signature(request, authorization, amz_date, credentials.secret_access_key)
    if not hmac.compare_digest(expected, authorization.signature):
        raise AuthFailure("signature", SIGNATURE_MISMATCH)
    return credentials


def _check_scope(scope: CredentialScope, service: str, amz_date: str) -> None:
    if scope.service != service:
        raise AuthFailure(
            "wrong_service", f"Credential should be scoped to correct service: '{service}'. "
        )
    if scope.date != amz_date[:8]:
        raise AuthFailure(
            "signature",
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{scope.date}' != '{amz_date[:8]}', from '{amz_date}'.",
        )


def _check_session_token(credentials: IssuedCredentials, presented: str | None) -> None:
    if isinstance(credentials, TemporaryCredentials):
        matches = presented is not None and Secret(presented) == credentials.session_token
    else:
        matches = presented is None
    if not matches:
        raise AuthFailure("bad_token", "The security token included in the request is invalid.")


def _check_skew(signed_at: datetime, now: datetime, max_skew: int) -> None:
    """AWS's own wording, e.g. ``Signature expired: … is now earlier than … (… - 5 min.)``."""
    skew = timedelta(seconds=max_skew)
    minutes = f"{max_skew / 60:g} min."
    if signed_at < now - skew:
        raise AuthFailure(
            "skewed",
            f"Signature expired: {_fmt(signed_at)} is now earlier than {_fmt(now - skew)} "
            f"({_fmt(now)} - {minutes})",
        )
    if signed_at > now + skew:
        raise AuthFailure(
            "skewed",
            f"Signature not yet current: {_fmt(signed_at)} is still later than "
            f"{_fmt(now + skew)} ({_fmt(now)} + {minutes})",
        )


def _fmt(when: datetime) -> str:
    return when.astimezone(UTC).strftime(AMZ_DATE_FORMAT)
