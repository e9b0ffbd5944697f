"""CreateTokenWithIAM: the signed call, its answer in full, what its errors mean, its cache.

``POST /token?aws_iam=t`` (protocols.md 2.2) is signed with SigV4 for
``sso-oauth`` by botocore's own signer: :class:`IamTokenClient` gets keys from
the session's source and hands them to an aiobotocore client. Its answer
becomes an :class:`IamToken`, every member kept: the access token, its type
and lifetime, the refresh token, the idToken (whose claims say whom the
session belongs to), ``issuedTokenType``, the granted ``scope`` next to the
one asked for, and ``awsAdditionalDetails.identityContext`` for STS.

Errors (protocols.md 2.3) are sorted once, here: transient ones stay
:class:`~credd.errors.UpstreamError` to be retried; the ones that prove a
grant dead become :class:`GrantRefused`, which the session turns into
"login required" or "assertion required"; the ones only a configuration
change can fix name the key to change; anything else is passed on verbatim.

Tokens are kept in credd's state directory (no AWS tool has a cache for
them), one JSON file per session, written atomically with mode 0600 under a
cross-process lock (:class:`~credd.store.JsonCacheDir`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from credd.aws import Answer, AwsClients, SigningKeys
from credd.clock import Clock
from credd.config.settings import TrustedIdentitySpec
from credd.errors import CreddError, UpstreamError
from credd.files.store import (
    CacheCorrupt,
    TokenCache,
    format_timestamp,
    parse_timestamp,
    sha1_name,
)
from credd.secret import Secret
from credd.sessions import claims

REFRESH_GRANT: Final = "refresh_token"
#: the longest access token lifetime believed (a year): more is garbage
MAX_TOKEN_SECONDS: Final = 366 * 86400.0
#: RFC 8693 section 3 token types: ``subjectTokenType``, ``requestedTokenType``, ``issuedTokenType``
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105  # a URI
REFRESH_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:refresh_token"  # noqa: S105  # a URI

#: errors that may pass by themselves: retried with backoff
TRANSIENT_CODES: Final = frozenset(
    {"InternalServerException", "SlowDownException", "AuthorizationPendingException"}
)
#: errors that prove what was presented (refresh token, assertion, subject token, code) dead
DEAD_GRANT_CODES: Final = frozenset(
    {"InvalidGrantException", "ExpiredTokenException", "AccessDeniedException"}
)
#: errors only a configuration change fixes, and the key to change
CONFIG_KEYS: Final[Mapping[str, str]] = {
    "InvalidClientException": "client_id",
    "InvalidScopeException": "scopes",
    "UnsupportedGrantTypeException": "grant_type",
    "UnauthorizedClientException": "grant_type",
    "InvalidRequestRegionException": "sso_region",
    "InvalidRequestException": "grant_type",
}
#: what the SigV4 front door answers about the signing credentials (any AWS JSON service)
SIGNER_CODES: Final = frozenset(
    {
        "MissingAuthenticationTokenException",
        "IncompleteSignatureException",
        "InvalidSignatureException",
        "UnrecognizedClientException",
    }
)


class GrantRefused(CreddError):
    """What was presented is dead for good (protocols.md 2.3): trying it again cannot help."""

    code = "GrantRefused"

    def __init__(self, message: str, aws_code: str) -> None:
        super().__init__(message)
        self.aws_code = aws_code


@dataclass(frozen=True)
class IamToken:
    """One CreateTokenWithIAM answer, every member kept (protocols.md 2.2)."""

    access_token: Secret
    token_type: str
    expires_at: datetime
    #: when credd received it: the start of its lifetime as far as credd knows
    received_at: datetime
    refresh_token: Secret | None
    id_token: Secret | None
    issued_token_type: str | None
    #: what was granted (the answer's ``scope``)
    scopes: tuple[str, ...]
    #: ``awsAdditionalDetails.identityContext`` (the idToken's ``sts:identity_context``)
    identity_context: Secret | None
    #: what it is for: the application, the region, the grant that began the session
    client_id: str
    region: str
    grant_type: str
    #: what was asked for; empty: everything the application grants
    requested_scopes: tuple[str, ...] = ()
    #: jwt-bearer: whom the identity provider's assertion named
    assertion_subject: str | None = None

    @property
    def downscoped(self) -> bool:
        """Granted less than asked (Identity Center may narrow a grant, never widen it)."""
        return bool(self.requested_scopes) and not set(self.requested_scopes) <= set(self.scopes)

    def claims(self) -> dict[str, Any]:
        """The idToken's claims fit to show (unverified: it came from Identity Center over TLS)."""
        if self.id_token is None:
            return {}
        try:
            return claims.shown(claims.claims(self.id_token.reveal()))
        except claims.NotAJwt:
            return {}

    def who(self) -> str | None:
        """Whom the session belongs to, in one line (for ``credd status``)."""
        found = self.claims()
        user, store = found.get("sub"), found.get("aws:identity_store_id")
        parts = []
        if self.assertion_subject:
            parts.append(self.assertion_subject)
        if isinstance(user, str):
            where = f" in {store}" if isinstance(store, str) else ""
            parts.append(f"Identity Store user {user}{where}")
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else f"{parts[0]} ({parts[1]})"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "clientId": self.client_id,
            "region": self.region,
            "grantType": self.grant_type,
            "accessToken": self.access_token.reveal(),
            "tokenType": self.token_type,
            "expiresAt": format_timestamp(self.expires_at),
            "receivedAt": format_timestamp(self.received_at),
            "scope": list(self.scopes),
            "requestedScope": list(self.requested_scopes),
        }
        optional = {
            "refreshToken": self.refresh_token,
            "idToken": self.id_token,
            "identityContext": self.identity_context,
        }
        out.update({key: value.reveal() for key, value in optional.items() if value})
        if self.issued_token_type:
            out["issuedTokenType"] = self.issued_token_type
        if self.assertion_subject:
            out["assertionSubject"] = self.assertion_subject
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path) -> IamToken:
        try:
            return cls(
                access_token=Secret(_text(data, "accessToken")),
                token_type=_text(data, "tokenType"),
                expires_at=parse_timestamp(data["expiresAt"]),
                received_at=parse_timestamp(data["receivedAt"]),
                refresh_token=_secret(data, "refreshToken"),
                id_token=_secret(data, "idToken"),
                issued_token_type=_optional(data, "issuedTokenType"),
                scopes=_strings(data, "scope"),
                identity_context=_secret(data, "identityContext"),
                client_id=_text(data, "clientId"),
                region=_text(data, "region"),
                grant_type=_text(data, "grantType"),
                requested_scopes=_strings(data, "requestedScope"),
                assertion_subject=_optional(data, "assertionSubject"),
            )
        except KeyError as exc:
            raise CacheCorrupt(path, f"{exc.args[0]} is missing") from exc
        except (TypeError, ValueError) as exc:
            raise CacheCorrupt(path, str(exc)) from exc


def _optional(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return value or None


def _text(data: Mapping[str, Any], key: str) -> str:
    value = _optional(data, key)
    if value is None:
        raise KeyError(key)
    return value


def _secret(data: Mapping[str, Any], key: str) -> Secret | None:
    value = _optional(data, key)
    return Secret(value) if value else None


def _strings(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key) or []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"{key} is not a list of strings")
    return tuple(value)


class IamTokenCache(TokenCache[IamToken]):
    """``$XDG_STATE_HOME/credd/tokens/<sha1(name)>.json``: one file per session, by its name."""

    @staticmethod
    def token_name(key: str) -> str:
        return sha1_name(f"create-token-with-iam:{key}")

    def _parse(self, data: Mapping[str, Any], path: Path) -> IamToken:
        return IamToken.from_json(data, path)

    def load(self, spec: TrustedIdentitySpec) -> IamToken | None:
        """The session's token; ``None`` when absent or left by another application or region."""
        token = self.load_token(spec.name)
        if token is not None and (token.client_id, token.region) != (spec.client_id, spec.region):
            return None  # the configuration changed: that token is for something else
        return token


class IamTokenClient:
    """CreateTokenWithIAM for one session's application."""

    def __init__(self, spec: TrustedIdentitySpec, *, clients: AwsClients, clock: Clock) -> None:
        self._spec = spec
        self._clients = clients
        self._clock = clock

    async def create(
        self,
        grant: Mapping[str, str],
        *,
        keys: SigningKeys,
        began_with: str,
        assertion_subject: str | None = None,
    ) -> IamToken:
        """One CreateTokenWithIAM call with ``grant`` (``grantType`` and its members).

        Signed with ``keys`` (the session's source). ``began_with`` is the grant
        that began the session (the refresh grant continues one). Raises
        :class:`GrantRefused`, or :class:`UpstreamError` (transient or not,
        naming the key to fix where a key can fix it).
        """
        spec = self._spec
        request: dict[str, Any] = {"clientId": spec.client_id, **grant}
        if spec.scopes:
            request["scope"] = list(spec.scopes)
        now = self._clock.now()
        try:
            async with self._clients.client(
                "sso-oidc", region=spec.region, profile=spec.endpoint_profile, keys=keys
            ) as oidc:
                answer = await oidc.create_token_with_iam(**request)
        except UpstreamError as exc:
            raise self.explain(exc) from exc
        return self._token(answer, now, began_with, assertion_subject)

    def explain(self, exc: UpstreamError) -> CreddError:
        """What an error of CreateTokenWithIAM means for this session (protocols.md 2.3)."""
        spec, code = self._spec, exc.aws_code or ""
        if code in TRANSIENT_CODES:
            return UpstreamError(exc.message, aws_code=code, transient=True, status=exc.status)
        if code == "ExpiredTokenException" and exc.status == 403:
            # the SigV4 front door's, not the modeled 400: the signing keys expired
            return UpstreamError(
                f"{self._signer_name} was made with expired keys: {exc.message}",
                aws_code=code,
                transient=True,
                status=exc.status,
            )
        if code in DEAD_GRANT_CODES:
            # the message names the code already ("sso-oidc answered InvalidGrantException: ...")
            return GrantRefused(exc.message, code)
        key = "source_profile" if code in SIGNER_CODES else CONFIG_KEYS.get(code)
        if key is not None:
            refused = self._signer_name if key == "source_profile" else spec.key(key)
            return UpstreamError(
                f"CreateTokenWithIAM refused {refused}: {exc.message}",
                aws_code=code,
                transient=False,
                status=exc.status,
                hint=f"check {key} in [profiles.{spec.name}]",
            )
        return exc  # unknown: reported verbatim, retried with backoff

    @property
    def _signer_name(self) -> str:
        source = self._spec.source_profile
        signer = f"source_profile {source!r}" if source else "the default credential chain"
        return f"the signature of {signer}"

    def _token(
        self, answer: Mapping[str, Any], now: datetime, began_with: str, subject: str | None
    ) -> IamToken:
        spec = self._spec
        # Types checked: garbage is an UpstreamError (retried), never a dead grant.
        read = Answer(answer, "CreateTokenWithIAM")
        access = read.text("accessToken")
        lifetime = read.seconds("expiresIn", maximum=MAX_TOKEN_SECONDS)
        refresh = read.optional_text("refreshToken")
        id_token = read.optional_text("idToken")
        scope = answer.get("scope")
        granted = tuple(map(str, scope)) if isinstance(scope, list) else spec.scopes
        details = answer.get("awsAdditionalDetails") or {}
        context = details.get("identityContext") if isinstance(details, dict) else None
        if not context and id_token is not None:
            context = _context_claim(id_token)
        return IamToken(
            access_token=Secret(access),
            token_type=_string_or_none(answer.get("tokenType")) or "Bearer",
            expires_at=now + timedelta(seconds=lifetime),
            received_at=now,
            refresh_token=Secret(refresh) if refresh else None,
            id_token=Secret(id_token) if id_token else None,
            issued_token_type=_string_or_none(answer.get("issuedTokenType")),
            scopes=granted,
            identity_context=Secret(context) if isinstance(context, str) and context else None,
            client_id=spec.client_id,
            region=spec.region,
            grant_type=began_with,
            requested_scopes=spec.scopes,
            assertion_subject=subject,
        )


def _string_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _context_claim(id_token: str) -> str | None:
    try:
        value = claims.claims(id_token).get("sts:identity_context")
    except claims.NotAJwt:
        return None
    return value if isinstance(value, str) and value else None
