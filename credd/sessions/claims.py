"""Reading the claims of a JWT without verifying it: who a token is about, and until when.

credd never decides trust from these: the assertion it passes on is verified
by Identity Center, and the idToken comes to it over TLS straight from
Identity Center. It reads them only to know when an assertion lapses (its
``exp``, RFC 7519 section 4.1.4) and whom a session belongs to (the idToken's
``sub`` and ``aws:identity_store_id``, protocols.md 2.2). That is a base64url
JSON decode (RFC 7515 section 7.1); a JWT library would add a dependency for
the one function that does not need it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

#: idToken claims that are credentials in their own right: never shown, never logged
SECRET_CLAIMS = frozenset({"sts:identity_context", "sts:audit_context", "aws:credential_id"})


class NotAJwt(ValueError):
    """Text that is not a compact JWT with a JSON object as its payload."""


def claims(token: str) -> dict[str, Any]:
    """The payload of a compact JWS (``header.payload.signature``), unverified."""
    parts = token.strip().split(".")
    if len(parts) != 3 or not parts[1]:
        raise NotAJwt("a JWT has three dot-separated parts")
    segment = parts[1]
    try:
        payload = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise NotAJwt("the payload is not base64url-encoded JSON") from exc
    if not isinstance(payload, dict):
        raise NotAJwt("the payload is not a JSON object")
    return payload


def expiry(payload: Mapping[str, Any]) -> datetime | None:
    """``exp`` as an aware UTC instant; ``None`` when absent or not a number."""
    value = payload.get("exp")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def shown(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The claims fit to show a person: everything but the ones that are credentials."""
    return {key: value for key, value in payload.items() if key not in SECRET_CLAIMS}
