"""DPoP proofs (RFC 9449) for AWS Sign-In's CreateOAuth2Token, and the key they are signed with.

Built exactly as botocore builds them (protocols.md 4.4): a compact JWS with
header ``{"typ":"dpop+jwt","alg":"ES256","jwk":{"kty":"EC","x","y","crv":"P-256"}}``
and payload ``{"htm","htu","iat","jti"}``, signed ES256 with the session's P-256
key, the DER signature turned into the raw 64-byte ``r‖s`` that JWS wants
(RFC 7518 section 3.4). Signing is ``cryptography``'s; nothing here is crypto
of our own.

One key per Sign-In session, kept in the login cache as the AWS CLI keeps it:
PEM ``EC PRIVATE KEY`` (SEC1 / RFC 5915 DER with the curve and the public key,
base64 wrapped at 64 columns, a trailing newline; protocols.md 6.2). A
:class:`DpopKey` never shows its private half in ``repr``.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Final
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

HEADER: Final = "DPoP"
_COORDINATE_BYTES: Final = 32


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _compact_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def target_uri(url: str) -> str:
    """``htu``: the request URL without query or fragment (RFC 9449 section 4.2)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class DpopKey:
    """A P-256 private key that signs DPoP proofs."""

    __slots__ = ("_key",)

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("a DPoP key for AWS Sign-In must be on P-256")
        self._key = key

    @classmethod
    def generate(cls) -> DpopKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: str) -> DpopKey:
        """Load the cache's ``dpopKey``; :class:`ValueError` if it is not a P-256 private key."""
        try:
            key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
        except (ValueError, TypeError, UnicodeEncodeError) as exc:
            raise ValueError("dpopKey is not a PEM private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("dpopKey is not an elliptic-curve key")
        return cls(key)

    def to_pem(self) -> str:
        """``-----BEGIN EC PRIVATE KEY-----`` (SEC1), as ``aws login`` writes it."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,  # SEC1 for EC keys
            serialization.NoEncryption(),
        ).decode("ascii")

    def jwk(self) -> dict[str, str]:
        """The public key as a JWK, members in botocore's order."""
        numbers = self._key.public_key().public_numbers()
        return {
            "kty": "EC",
            "x": b64url(numbers.x.to_bytes(_COORDINATE_BYTES, "big")),
            "y": b64url(numbers.y.to_bytes(_COORDINATE_BYTES, "big")),
            "crv": "P-256",
        }

    def proof(self, *, method: str, url: str, now: datetime) -> str:
        """A new proof for one request: a fresh ``jti`` every time (RFC 9449 section 4.2)."""
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk()}
        payload = {
            "htm": method,
            "htu": target_uri(url),
            "iat": int(now.timestamp()),
            "jti": str(uuid.uuid4()),
        }
        signing_input = f"{b64url(_compact_json(header))}.{b64url(_compact_json(payload))}"
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        raw = r.to_bytes(_COORDINATE_BYTES, "big") + s.to_bytes(_COORDINATE_BYTES, "big")
        return f"{signing_input}.{b64url(raw)}"

    def __repr__(self) -> str:
        return "DpopKey([redacted])"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a DpopKey is not pickled")
