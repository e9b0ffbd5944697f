"""Token sources: one module per kind of sign-in, one shared shape.

A session holds what a sign-in left behind (a refresh token, a registration),
renews its access token ahead of expiry, and hands a valid access token to
whoever asks, or raises :class:`credd.errors.LoginRequired`. The machinery
every kind shares (cache adoption, the lock and the compare-and-swap write,
failure bookkeeping, the planner) is :mod:`credd.engine`'s; each module here
is one kind's strategy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class SessionState(StrEnum):
    #: a valid access token is held and will be renewed
    OK = "ok"
    #: valid for now, but it cannot be renewed: a login will be needed at expiry
    EXPIRING = "expiring"
    #: renewal is failing for a reason that may pass (an outage); retrying
    RETRYING = "retrying"
    #: only a new login brings it back
    LOGIN_REQUIRED = "login-required"
    #: a jwt-bearer session with no assertion Identity Center accepts: the IdP must give one
    ASSERTION_REQUIRED = "assertion-required"
    #: refused for a reason retrying will not fix (the configuration, a permission)
    ERROR = "error"


@dataclass(frozen=True)
class SessionStatus:
    name: str
    kind: str
    state: SessionState
    expires_at: datetime | None
    next_renewal: datetime | None
    last_error: str | None
    action: str | None
    #: whom the session belongs to, in one line, where the sign-in says
    who: str | None = None
    #: further facts of its kind (application, scopes asked and granted...); no secrets
    details: Mapping[str, object] | None = None
