"""Who IAM credentials belong to, named the way IAM and STS name them.

GetCallerIdentity answers from a :class:`Principal` (protocols.md §5):

* static IAM user keys: ``arn:aws:iam::ACCT:user/NAME``, user id ``AIDA…``;
* SSO role credentials (GetRoleCredentials): the permission set's reserved role,
  ``arn:aws:sts::ACCT:assumed-role/AWSReservedSSO_ROLENAME_<16 hex>/USERNAME``;
* AssumeRole results: ``arn:aws:sts::ACCT:assumed-role/ROLE/SESSIONNAME``.

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
