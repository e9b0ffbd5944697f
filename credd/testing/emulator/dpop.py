"""DPoP proofs (RFC 9449) as AWS Sign-In's CreateOAuth2Token receives them, and ES256 JWTs.

A proof is a compact JWS in the ``DPoP`` request header (protocols.md §4.4).
:func:`verify_proof` checks what RFC 9449 §4.3 asks of a server:

* exactly one ``DPoP`` header, three base64url segments without padding;
* header ``typ`` ``dpop+jwt``, ``alg`` ``ES256`` and a public ``jwk``: ``kty``
  ``EC``, ``crv`` ``P-256``, 32-byte ``x`` and ``y`` on the curve, no private ``d``;
* the signature, raw ``r‖s`` (64 bytes), over the first two segments as sent;
* payload ``htm`` equal to the request method, ``htu`` equal to the request
  URL (:func:`same_target`), ``iat`` within :data:`IAT_TOLERANCE` of the
  emulator's clock, ``jti`` a non-empty string.

Whether a ``jti`` was seen before is the caller's memory
(:meth:`~.state.SigninState.spend_proof_id`). JSON is parsed, never compared
as bytes: botocore and the JS SDK order the members differently (§4.4).
:func:`thumbprint` is the RFC 7638 JWK thumbprint a refresh token is bound to,
and :func:`es256_jwt` signs the emulator's own JWTs (the Sign-In ``idToken``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

HEADER: Final = "DPoP"
#: how far a proof's ``iat`` may stray from the emulator's clock, either way (seconds);
#: RFC 9449 §11.1 leaves it to the server, AWS does not publish its own
IAT_TOLERANCE: Final = 300
#: a proof is a few hundred bytes; anything far bigger is not one
MAX_PROOF_LENGTH: Final = 8192
MAX_JTI_LENGTH: Final = 256

_SEGMENT_RE: Final = re.compile(r"[A-Za-z0-9_-]*")
_COORDINATE_BYTES: Final = 32
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class ProofError(ValueError):
    """The DPoP proof is missing, malformed, wrongly signed or not for this request."""


@dataclass(frozen=True)
class Proof:
    """What a verified proof tells: whose key signed it, and its id and time."""

    #: RFC 7638 thumbprint of the proof's public key
    jkt: str
    jti: str
    iat: datetime


def verify_proof(
    values: Sequence[str],
    *,
    method: str,
    url: str,
    now: datetime,
    tolerance: int = IAT_TOLERANCE,
) -> Proof:
    """Verify the ``DPoP`` header ``values`` of a ``method`` request to ``url``."""
    if not values:
        raise ProofError("the DPoP header is missing")
    if len(values) > 1:
        raise ProofError("more than one DPoP header")
    token = values[0]
    if len(token) > MAX_PROOF_LENGTH:
        raise ProofError("the proof is too long")
    segments = token.split(".")
    if len(segments) != 3:
        raise ProofError("not a compact JWS (header.payload.signature)")
    header = _json_object(segments[0], "header")
    payload = _json_object(segments[1], "payload")
    key, jkt = _public_key(header)
    _check_signature(key, segments)
    if payload.get("htm") != method:
        raise ProofError(f"htm must be {method}")
    htu = payload.get("htu")
    if not isinstance(htu, str) or not same_target(htu, url):
        raise ProofError(f"htu must be {url}")
    iat = _issued_at(payload.get("iat"))
    if abs((iat - now).total_seconds()) > tolerance:
        raise ProofError(f"iat is more than {tolerance} seconds away from the server's clock")
    jti = payload.get("jti")
    if not isinstance(jti, str) or not 1 <= len(jti) <= MAX_JTI_LENGTH:
        raise ProofError("jti must be a non-empty string")
    return Proof(jkt=jkt, jti=jti, iat=iat)


def same_target(uri: str, url: str) -> bool:
    """Whether ``uri`` names the resource ``url`` names, query and fragment aside.

    RFC 9449 §4.3 (htu) with the normalization of RFC 3986 §6.2.2-6.2.3: scheme
    and host compare case-insensitively, a default port equals no port, an empty
    path is ``/``.
    """
    a, b = _target(uri), _target(url)
    return a is not None and a == b


def thumbprint(x: bytes, y: bytes) -> str:
    """RFC 7638: base64url(SHA-256) of the required members, sorted, without whitespace."""
    members = {"crv": "P-256", "kty": "EC", "x": b64url(x), "y": b64url(y)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def es256_jwt(
    key: ec.EllipticCurvePrivateKey, header: Mapping[str, object], payload: Mapping[str, object]
) -> str:
    """A compact JWS signed with ``key`` (ES256: raw ``r‖s`` signature, RFC 7518 §3.4)."""
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, payload)
    )
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    signature = r.to_bytes(_COORDINATE_BYTES, "big") + s.to_bytes(_COORDINATE_BYTES, "big")
    return f"{signing_input}.{b64url(signature)}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# -- the pieces of a proof -------------------------------------------------------


def _b64url_decode(segment: str, what: str) -> bytes:
    if not _SEGMENT_RE.fullmatch(segment) or len(segment) % 4 == 1:
        raise ProofError(f"{what} is not base64url without padding")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise ProofError(f"{what} is not base64url without padding") from None


def _json_object(segment: str, what: str) -> dict[str, object]:
    raw = _b64url_decode(segment, f"the {what}")
    try:
        decoded = json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        raise ProofError(f"the {what} is not JSON") from None
    if not isinstance(decoded, dict):
        raise ProofError(f"the {what} is not a JSON object")
    return decoded


def _public_key(header: Mapping[str, object]) -> tuple[ec.EllipticCurvePublicKey, str]:
    if header.get("typ") != "dpop+jwt":
        raise ProofError("typ must be dpop+jwt")
    if header.get("alg") != "ES256":
        raise ProofError("alg must be ES256")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise ProofError("jwk must be a JSON object")
    if "d" in jwk:
        raise ProofError("jwk must be a public key (it has a private d)")
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise ProofError("jwk must be an EC P-256 key")
    x, y = (_coordinate(jwk.get(name), name) for name in ("x", "y"))
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
    )
    try:
        key = numbers.public_key()
    except ValueError:
        raise ProofError("jwk is not a point on P-256") from None
    return key, thumbprint(x, y)


def _coordinate(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise ProofError(f"jwk.{name} must be a string")
    decoded = _b64url_decode(value, f"jwk.{name}")
    if len(decoded) != _COORDINATE_BYTES:
        raise ProofError(f"jwk.{name} must be {_COORDINATE_BYTES} bytes")
    return decoded


def _check_signature(key: ec.EllipticCurvePublicKey, segments: Sequence[str]) -> None:
    signature = _b64url_decode(segments[2], "the signature")
    if len(signature) != 2 * _COORDINATE_BYTES:
        raise ProofError("the signature must be 64 bytes (r‖s)")
    r = int.from_bytes(signature[:_COORDINATE_BYTES], "big")
    s = int.from_bytes(signature[_COORDINATE_BYTES:], "big")
    signing_input = f"{segments[0]}.{segments[1]}".encode("ascii")
    try:
        key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ProofError("the signature does not verify") from None


def _issued_at(value: object) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProofError("iat must be a number of seconds since the epoch")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise ProofError("iat is out of range") from None


def _target(uri: str) -> tuple[str, str, int | None, str] | None:
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or parts.username is not None:
        return None
    scheme = parts.scheme.lower()
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    return scheme, parts.hostname, port, parts.path or "/"
