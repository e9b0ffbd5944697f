"""``credd status`` with no daemon running: each session as its cache file has it.

Nothing renews and nothing is fetched, so the document is the one the daemon
serves at ``/v1/status`` (:func:`credd.endpoint.status.status_document`) with
``running: false``, the sessions read from the shared caches, no profiles, and
what the configuration cannot serve, and the scoped tokens on file. It reads
files and calls no one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from credd.config.settings import (
    SessionSpec,
    SigninSessionSpec,
    SsoSessionSpec,
    TrustedIdentitySpec,
)
from credd.endpoint.grants import GrantsError, GrantStore, describe
from credd.endpoint.status import offline_sessions, status_document
from credd.files.store import LoginCache, SsoCache
from credd.sessions.iam_tokens import IamTokenCache
from credd.sessions.signin import offline_status as signin_status
from credd.sessions.trusted_identity import offline_status as trusted_identity_status


def offline_document(
    sessions: Iterable[SessionSpec],
    *,
    sso: SsoCache,
    logins: LoginCache,
    iam_tokens: IamTokenCache,
    unserved: Mapping[str, str],
    grants: GrantStore,
    now: datetime,
) -> dict[str, Any]:
    """The status document of a daemon that is not running, as of ``now``."""
    specs = list(sessions)
    trusted = [
        trusted_identity_status(s, iam_tokens, now)
        for s in specs
        if isinstance(s, TrustedIdentitySpec)
    ]
    identity_center = [s for s in specs if isinstance(s, SsoSessionSpec)]
    signin = [signin_status(s, logins, now) for s in specs if isinstance(s, SigninSessionSpec)]
    try:
        granted, problem = describe(grants.load(), now), None
    except GrantsError as exc:
        granted, problem = [], exc.message
    return status_document(
        daemon={"running": False},
        sessions=[*offline_sessions(identity_center, sso, now), *trusted, *signin],
        profiles=[],
        unserved=unserved,
        grants=granted,
        grants_problem=problem,
    )
