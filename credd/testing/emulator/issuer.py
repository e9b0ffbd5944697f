"""Signed JWTs: the test trusted token issuer the emulator hosts, and its own idTokens.

:class:`TokenIssuer` plays an external IdP (Okta, Entra ID, …) that an Identity
Center instance trusts: a test mints an assertion for the jwt-bearer grant of
CreateTokenWithIAM with ``emu.issuer.mint(sub="alice@example.com")``
(protocols.md §2.2; RFC 7523 §3). :class:`JwtSigner` is the same machinery for
the idTokens Identity Center signs. Tokens are ES256 (RFC 7518 §3.4: the
signature is the raw 64-byte ``r‖s``, not DER) with a ``kid``, and every time
comes from the emulator's clock, so a ``ManualClock`` ages assertions too.

:func:`decode` is the verifying half: it checks structure, algorithm, key id
and signature, and leaves the claims (``iss``, ``aud``, ``exp``, …) to the
caller, which knows what it expects.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from credd.clock import Clock

from .identity_center import DEFAULT_AUDIENCE, DEFAULT_ISSUER_URL

ALGORITHM: Final = "ES256"
#: whom :meth:`TokenIssuer.mint` vouches for unless told: the default directory's user
DEFAULT_SUBJECT: Final = "alice@example.com"
_COORDINATE_BYTES: Final = 32  # P-256


class InvalidJwt(ValueError):
    """A token that is not a well-formed JWT signed by the expected key."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidJwt("not base64url") from None


class JwtSigner:
    """One P-256 key pair that signs JWTs (RFC 7515 compact serialization)."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        numbers = self._key.public_key().public_numbers()
        self._public_jwk = {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url(numbers.x.to_bytes(_COORDINATE_BYTES, "big")),
            "y": b64url(numbers.y.to_bytes(_COORDINATE_BYTES, "big")),
        }
        self.kid = _thumbprint(self._public_jwk)

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def jwks(self) -> dict[str, object]:
        """The public key as a JWK Set (RFC 7517 §5), as an IdP publishes it."""
        return {"keys": [{**self._public_jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}]}

    def sign(self, claims: Mapping[str, object]) -> str:
        header = {"alg": ALGORITHM, "typ": "JWT", "kid": self.kid}
        signing_input = f"{_segment(header)}.{_segment(claims)}"
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        raw = r.to_bytes(_COORDINATE_BYTES, "big") + s.to_bytes(_COORDINATE_BYTES, "big")
        return f"{signing_input}.{b64url(raw)}"


class TokenIssuer(JwtSigner):
    """The test trusted token issuer: mints assertions as an external IdP would."""

    def __init__(
        self, clock: Clock, *, url: str = DEFAULT_ISSUER_URL, audience: str = DEFAULT_AUDIENCE
    ) -> None:
        super().__init__()
        self._clock = clock
        #: the ``iss`` of its tokens
        self.url = url
        #: the ``aud`` :meth:`mint` uses unless told otherwise
        self.audience = audience

    def mint(
        self,
        sub: str = DEFAULT_SUBJECT,
        *,
        aud: str | Sequence[str] | None = None,
        lifetime: int = 300,
        iat: int | None = None,
        claims: Mapping[str, object] | None = None,
    ) -> str:
        """A signed assertion for ``sub``, valid ``lifetime`` seconds from ``iat`` (default: now).

        ``claims`` are added last, so they can override (or, set to ``None``,
        remove) any standard claim for a test of a broken token.
        """
        issued_at = int(self._clock.now().timestamp()) if iat is None else iat
        payload: dict[str, object] = {
            "iss": self.url,
            "sub": sub,
            "aud": self.audience if aud is None else (aud if isinstance(aud, str) else list(aud)),
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + lifetime,
            "jti": secrets.token_urlsafe(12),
        }
        for name, value in (claims or {}).items():
            if value is None:
                payload.pop(name, None)
            else:
                payload[name] = value
        return self.sign(payload)


@dataclass(frozen=True)
class Jwt:
    header: dict[str, Any]
    claims: dict[str, Any]


def peek(token: str) -> Jwt:
    """Header and claims, unverified: to find out who claims to have signed it."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidJwt("a JWT has three dot-separated parts")
    header, claims = (_json_object(b64url_decode(part)) for part in parts[:2])
    return Jwt(header, claims)


def decode(token: str, key: ec.EllipticCurvePublicKey, kid: str) -> Jwt:
    """The verified token: ES256, the expected ``kid`` (if it names one), a valid signature."""
    jwt = peek(token)
    if jwt.header.get("alg") != ALGORITHM:
        raise InvalidJwt(f"unsupported alg {jwt.header.get('alg')!r}")
    if jwt.header.get("kid", kid) != kid:
        raise InvalidJwt("unknown kid")
    signing_input, _, signature = token.rpartition(".")
    raw = b64url_decode(signature)
    if len(raw) != 2 * _COORDINATE_BYTES:
        raise InvalidJwt("an ES256 signature is 64 bytes")
    der = encode_dss_signature(
        int.from_bytes(raw[:_COORDINATE_BYTES], "big"),
        int.from_bytes(raw[_COORDINATE_BYTES:], "big"),
    )
    try:
        key.verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise InvalidJwt("bad signature") from None
    return jwt


def _segment(value: Mapping[str, object]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidJwt("not JSON") from None
    if not isinstance(value, dict):
        raise InvalidJwt("not a JSON object")
    return value


def _thumbprint(jwk: Mapping[str, str]) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, no whitespace."""
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode()).digest())
