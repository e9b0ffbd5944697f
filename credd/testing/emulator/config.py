"""What the emulator is told: lifetimes and switches, and the directory it serves.

:class:`EmulatorConfig` is the one mutable knob board. Tests change it at run
time, in process or through ``POST /_emulator/config``, and the command-line
flags of ``python -m credd.testing.emulator`` are generated from its fields, so
the three spellings cannot drift apart.

:class:`Directory` is the frozen world behind the services: who signs in, which
accounts and permission sets (roles) each user is assigned in IAM Identity
Center, which start URLs are accepted, which roles STS AssumeRole may enter,
and the Identity Center instance behind CreateTokenWithIAM
(:mod:`.identity_center`: applications, trusted token issuers).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, cast

from .identity_center import IdentityCenter

DEFAULT_START_URL: Final = "https://d-1234567890.awsapps.com/start"
DAY: Final = 86_400


def _knob(
    default: int | bool | None,
    help_text: str,
    *,
    minimum: int = 1,
    maximum: int | None = None,
    optional: bool = False,
    unit: str = "seconds",
) -> Any:
    """A setting; ``optional`` ones (and those off by default) may be set to ``None``: off."""
    return field(
        default=default,
        metadata={
            "help": help_text,
            "minimum": minimum,
            "maximum": maximum,
            "optional": optional or default is None,
            "unit": unit,
        },
    )


@dataclass
class EmulatorConfig:
    """Lifetimes (whole seconds, like every ``expiresIn`` on the wire) and switches."""

    access_token_ttl: int = _knob(3600, "sso-oidc access token lifetime")
    refresh_token_ttl: int = _knob(
        90 * DAY, "lifetime of a sign-in session; its refresh tokens die with it"
    )
    registration_ttl: int = _knob(90 * DAY, "client registration lifetime (RegisterClient)")
    device_code_ttl: int = _knob(600, "device code lifetime (StartDeviceAuthorization expiresIn)")
    poll_interval: int = _knob(
        5, "device flow poll interval; 0 disables the slow_down check", minimum=0
    )
    auth_code_ttl: int = _knob(300, "authorization code lifetime (/authorize)")
    role_ttl: int = _knob(3600, "GetRoleCredentials credential lifetime")
    portal_page_size: int | None = _knob(
        None,
        "most items in a ListAccounts/ListAccountRoles page, whatever max_result asks "
        "(AWS may send fewer); none: as asked",
        maximum=100,
        unit="items",
    )
    assume_role_cap: int | None = _knob(
        None, "cap on AssumeRole credential lifetime (none: DurationSeconds as asked)"
    )
    role_chaining_limit: int | None = _knob(
        3600,
        "longest DurationSeconds for role chaining (AWS: 1 h); none: unlimited",
        minimum=900,
        optional=True,
    )
    max_clock_skew: int | None = _knob(
        300, "SigV4 X-Amz-Date tolerance (AWS: 5 min); none: unchecked", minimum=0, optional=True
    )
    auto_approve: bool = _knob(True, "the browser user approves (/authorize, /device)")
    iam_token_ttl: int = _knob(
        3600, "CreateTokenWithIAM access token and identity context lifetime"
    )
    iam_refresh_token_ttl: int = _knob(
        90 * DAY, "lifetime of a CreateTokenWithIAM session; its refresh tokens die with it"
    )
    # AWS Sign-In (``aws login``, protocols.md §4)
    signin_credentials_ttl: int = _knob(
        900, "Sign-In credential lifetime (CreateOAuth2Token expiresIn, at most 900)", maximum=900
    )
    signin_session_ttl: int = _knob(
        43_200, "Sign-In session lifetime: refreshing fails with TOKEN_EXPIRED after it"
    )
    signin_code_ttl: int = _knob(300, "Sign-In authorization code lifetime (/v1/authorize)")
    signin_permission: bool = _knob(
        True, "the Sign-In user may use aws login; false: INSUFFICIENT_PERMISSIONS"
    )

    def __post_init__(self) -> None:
        for name, value in self.as_dict().items():
            _checked(name, value)

    def update(self, changes: Mapping[str, object]) -> None:
        """Apply ``changes`` after validating every one of them (all or nothing)."""
        checked = {name: _checked(name, value) for name, value in changes.items()}
        for name, value in checked.items():
            setattr(self, name, value)

    def as_dict(self) -> dict[str, int | bool | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_KNOBS: Final = {f.name: f for f in fields(EmulatorConfig)}


def _checked(name: str, value: object) -> int | bool | None:
    knob = _KNOBS.get(name)
    if knob is None:
        raise ValueError(f"unknown setting {name!r}; known: {', '.join(sorted(_KNOBS))}")
    if isinstance(knob.default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    if value is None and knob.metadata["optional"]:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer number of {knob.metadata['unit']}")
    if value < knob.metadata["minimum"]:
        raise ValueError(f"{name} must be at least {knob.metadata['minimum']}")
    if knob.metadata["maximum"] is not None and value > knob.metadata["maximum"]:
        raise ValueError(f"{name} must be at most {knob.metadata['maximum']}")
    return value


@dataclass(frozen=True)
class Knob:
    """One setting, described for the command line."""

    name: str
    default: int | bool | None
    help: str
    #: whether ``None`` ("off") is a valid value
    optional: bool
    #: what the number counts (``seconds`` for lifetimes)
    unit: str = "seconds"


def knobs() -> tuple[Knob, ...]:
    return tuple(
        Knob(
            f.name,
            cast("int | bool | None", f.default),
            f.metadata["help"],
            f.metadata["optional"],
            f.metadata["unit"],
        )
        for f in fields(EmulatorConfig)
    )


# -- the directory -------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    account_id: str
    name: str
    email: str


@dataclass(frozen=True)
class User:
    """An Identity Center user and the permission sets assigned to them per account."""

    name: str
    assignments: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: what a trusted token issuer's assertion may name the user by (``emails.value``)
    email: str | None = None

    def roles_in(self, account_id: str) -> tuple[str, ...]:
        return self.assignments.get(account_id, ())


@dataclass(frozen=True)
class AssumableRole:
    """An IAM role STS AssumeRole may enter, and what its trust policy demands."""

    arn: str
    external_id: str | None = None
    max_session_duration: int = 43_200
    #: whether the trust policy allows ``sts:SetContext`` (AssumeRole with ProvidedContexts, §5)
    allows_set_context: bool = True


@dataclass(frozen=True)
class Directory:
    accounts: tuple[Account, ...]
    users: tuple[User, ...]
    default_user: str
    #: accepted start URLs (``startUrl``, ``issuerUrl``); ``None`` accepts any https URL
    start_urls: tuple[str, ...] | None = None
    #: roles with a trust policy of their own
    roles: tuple[AssumableRole, ...] = ()
    #: whether any other ``arn:aws:iam::<12 digits>:role/<name>`` may be assumed too
    allow_any_role: bool = True
    #: the instance behind CreateTokenWithIAM: applications, trusted token issuers
    identity_center: IdentityCenter = field(default_factory=IdentityCenter)
    #: who signs in to the console for ``aws login`` (AWS Sign-In): the idToken ``sub``
    #: and the principal of the credentials; an IAM user or an assumed-role session ARN
    signin_principal: str = "arn:aws:iam::111111111111:user/alice"

    def user(self, name: str) -> User:
        for user in self.users:
            if user.name == name:
                return user
        raise LookupError(f"no user {name!r} in the emulator's directory")

    def assumable_role(self, arn: str) -> AssumableRole | None:
        declared = next((r for r in self.roles if r.arn == arn), None)
        if declared is None and self.allow_any_role:
            return AssumableRole(arn)
        return declared

    def accepts_start_url(self, url: str) -> bool:
        if self.start_urls is None:
            return url.startswith("https://") and len(url) > len("https://")
        return url in self.start_urls


def default_directory() -> Directory:
    """``alice`` (alice@example.com): ReadOnly and Admin in 111111111111, Admin in 222222222222."""
    return Directory(
        accounts=(
            Account("111111111111", "Development", "dev@example.com"),
            Account("222222222222", "Production", "prod@example.com"),
        ),
        users=(
            User(
                "alice",
                {"111111111111": ("ReadOnly", "Admin"), "222222222222": ("Admin",)},
                email="alice@example.com",
            ),
        ),
        default_user="alice",
    )


def organization_directory() -> Directory:
    """The default directory and three more accounts for ``alice``, as an organization has them.

    For ``credd populate``: account names with spaces and punctuation (``&``,
    parentheses, an apostrophe, a colon), which profile names cannot hold.
    """
    base = default_directory()
    more = {
        Account("333333333333", "Data & Analytics (EU)", "data@example.com"): (
            "ReadOnly",
            "DataScientist",
        ),
        Account("444444444444", "Shared Services", "shared@example.com"): (
            "ReadOnly",
            "NetworkAdmin",
        ),
        Account("555555555555", "Sandbox: Ana's team", "sandbox@example.com"): ("Admin",),
    }
    alice = base.user("alice")
    assignments = {**alice.assignments, **{a.account_id: roles for a, roles in more.items()}}
    return dataclasses.replace(
        base,
        accounts=(*base.accounts, *more),
        users=(dataclasses.replace(alice, assignments=assignments),),
    )
