"""OAuth 2.0 rules shared by the sso-oidc API and its browser pages.

Grant type and token type strings (protocols.md §2.2), loopback redirect URIs (RFC 8252 §7.3:
a redirect to ``127.0.0.1`` on any port matches a registration without port,
because the client picks its port at login time), and PKCE S256 (RFC 7636
§4.2; protocols.md §2.5).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Final
from urllib.parse import urlencode, urlsplit

DEVICE_CODE_GRANT: Final = "urn:ietf:params:oauth:grant-type:device_code"
AUTH_CODE_GRANT: Final = "authorization_code"
REFRESH_GRANT: Final = "refresh_token"
GRANT_TYPES: Final = frozenset({DEVICE_CODE_GRANT, AUTH_CODE_GRANT, REFRESH_GRANT})
#: what a client registered without ``grantTypes`` may do: the CLI's device flow
#: registration sends none and still refreshes (protocols.md §2.2, §7.1)
DEFAULT_GRANT_TYPES: Final = frozenset({DEVICE_CODE_GRANT, REFRESH_GRANT})

#: CreateTokenWithIAM's own grants (protocols.md §2.2; RFC 7523, RFC 8693)
JWT_BEARER_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE_GRANT: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
IAM_GRANT_TYPES: Final = frozenset(
    {AUTH_CODE_GRANT, REFRESH_GRANT, JWT_BEARER_GRANT, TOKEN_EXCHANGE_GRANT}
)
#: RFC 8693 §3 token type URIs, as ``subjectTokenType``/``requestedTokenType``/``issuedTokenType``
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"
REFRESH_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:refresh_token"

#: RFC 7636 §4.2: base64url(SHA-256) without padding is always 43 characters
CODE_CHALLENGE_RE: Final = re.compile(r"[A-Za-z0-9_-]{43}")
#: RFC 7636 §4.1
CODE_VERIFIER_RE: Final = re.compile(r"[A-Za-z0-9._~-]{43,128}")

_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1"})


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def is_loopback_redirect(uri: str) -> bool:
    """``http://127.0.0.1[:port]/path`` (or ``[::1]``), no fragment (RFC 8252 §7.3)."""
    try:
        parts = urlsplit(uri)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return False
    return parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS and not parts.fragment


def redirect_matches(requested: str, registered: str) -> bool:
    """Equal in everything but the port, which the client chooses per login (RFC 8252 §7.3)."""
    if not (is_loopback_redirect(requested) and is_loopback_redirect(registered)):
        return False
    a, b = urlsplit(requested), urlsplit(registered)
    return (a.scheme, a.hostname, a.path or "/", a.query) == (
        b.scheme,
        b.hostname,
        b.path or "/",
        b.query,
    )


def with_query(uri: str, params: dict[str, str]) -> str:
    """``uri`` with ``params`` appended to whatever query it already has."""
    separator = "&" if urlsplit(uri).query else "?"
    return f"{uri}{separator}{urlencode(params)}"
