"""Who IAM credentials belong to, named the way IAM and STS name them.

GetCallerIdentity answers from a :class:`Principal` (protocols.md §5):

* static IAM user keys: ``arn:aws:iam::ACCT:user/NAME``, user id ``AIDA…``;
* SSO role credentials (GetRoleCredentials): the permission set's reserved role,
  ``arn:aws:sts::ACCT:assumed-role/AWSReservedSSO_ROLENAME_<16 hex>/USERNAME``;
* AssumeRole results: ``arn:aws:sts::ACCT:assumed-role/ROLE/SESSIONNAME``;
* AWS Sign-In (``aws login``) credentials: whoever signed in to the console, an
  IAM user or an assumed-role session (:func:`console_principal`).

Role sessions' user ids are ``<role id>:<session name>``; ids are derived
deterministically so the same role always has the same ``AROA…`` id.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Final, Literal

#: the role name is the last path element; paths are ``/a/b/`` (IAM API reference)
ROLE_ARN_RE: Final = re.compile(
    r"arn:aws:iam::(?P<account>\d{12}):role/(?:[\w+=,.@-]+/)*(?P<name>[\w+=,.@-]{1,64})"
)

#: an IAM user's ARN without a path, as the Sign-In ``sub`` names it (protocols.md §4.2)
USER_ARN_RE: Final = re.compile(r"arn:aws:iam::(?P<account>\d{12}):user/(?P<name>[\w+=,.@-]{1,64})")
#: an assumed-role session: a console user who came in through federation
SESSION_ARN_RE: Final = re.compile(
    r"arn:aws:sts::(?P<account>\d{12}):assumed-role/(?P<role>[\w+=,.@-]{1,64})"
    r"/(?P<session>[\w+=,.@-]{2,64})"
)

PrincipalKind = Literal["iam-user", "sso-role", "assumed-role"]


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    arn: str
    user_id: str
    account_id: str

    @property
    def is_role_session(self) -> bool:
        """Whether assuming a role with these credentials is role chaining."""
        return self.kind != "iam-user"


def stable_id(prefix: str, *parts: str, length: int = 17) -> str:
    """A deterministic unique id (``AROA…``, ``AIDA…``) derived from ``parts``."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:length]


def iam_user(account_id: str, user_name: str) -> Principal:
    return Principal(
        kind="iam-user",
        arn=f"arn:aws:iam::{account_id}:user/{user_name}",
        user_id=stable_id("AIDA", account_id, user_name),
        account_id=account_id,
    )


def sso_role_session(account_id: str, permission_set: str, user_name: str) -> Principal:
    """The session of the role Identity Center provisions for a permission set."""
    suffix = hashlib.sha256(f"{account_id}/{permission_set}".encode()).hexdigest()[:16]
    role_name = f"AWSReservedSSO_{permission_set}_{suffix}"
    return Principal(
        kind="sso-role",
        arn=f"arn:aws:sts::{account_id}:assumed-role/{role_name}/{user_name}",
        user_id=f"{stable_id('AROA', account_id, role_name)}:{user_name}",
        account_id=account_id,
    )


def assumed_role_session(role_arn: str, session_name: str) -> Principal:
    """The session AssumeRole opens; ``role_arn`` must match :data:`ROLE_ARN_RE`."""
    match = ROLE_ARN_RE.fullmatch(role_arn)
    if match is None:
        raise ValueError(f"not a role ARN: {role_arn!r}")
    account_id, role_name = match["account"], match["name"]
    return Principal(
        kind="assumed-role",
        arn=f"arn:aws:sts::{account_id}:assumed-role/{role_name}/{session_name}",
        user_id=f"{stable_id('AROA', account_id, role_name)}:{session_name}",
        account_id=account_id,
    )


def console_principal(arn: str) -> Principal:
    """Who an ``aws login`` session belongs to: an IAM user or an assumed-role session ARN."""
    if user := USER_ARN_RE.fullmatch(arn):
        return iam_user(user["account"], user["name"])
    if session := SESSION_ARN_RE.fullmatch(arn):
        role_arn = f"arn:aws:iam::{session['account']}:role/{session['role']}"
        return assumed_role_session(role_arn, session["session"])
    raise ValueError(f"not an IAM user or assumed-role session ARN: {arn!r}")
