"""A strict local AWS emulator: IAM Identity Center OIDC, the SSO portal and STS.

It speaks the wire protocols of /work/shared/docs/protocols.md (sections 1-3, 5, 10)
closely enough for real botocore clients, and validates every request the way
AWS would, so credd's tests fail where AWS would fail::

    async with Emulator(ManualClock()).running() as emu:
        ...  # point clients at emu.url

Module map: :mod:`.config` (settings, directory), :mod:`.state` (what was
issued), :mod:`.identities` (ARNs), :mod:`.oauth` (OAuth rules),
:mod:`.oidc`, :mod:`.consent`, :mod:`.portal`, :mod:`.sts`, :mod:`.signin`,
:mod:`.federation` (the services; the last, the console's sign-in tokens),
:mod:`.iam_token` (CreateTokenWithIAM), :mod:`.identity_center` (its applications
and trusted token issuers), :mod:`.issuer` (the hosted test token issuer, JWTs),
:mod:`.sigv4` (signature verification), :mod:`.errors` (error responses),
:mod:`.faults` (fault injection), :mod:`.operations` (per-request plumbing),
:mod:`.control` (``/_emulator`` HTTP controls), :mod:`.app` (:class:`Emulator`),
``python -m credd.testing.emulator`` (standalone).
"""

from .app import AccessKey, Emulator
from .config import (
    DEFAULT_START_URL,
    Account,
    AssumableRole,
    Directory,
    EmulatorConfig,
    User,
    default_directory,
    organization_directory,
)
from .faults import Fault, FaultPlan
from .identity_center import Application, IdentityCenter, TrustedTokenIssuer
from .issuer import TokenIssuer

__all__ = [
    "DEFAULT_START_URL",
    "AccessKey",
    "Account",
    "Application",
    "AssumableRole",
    "Directory",
    "Emulator",
    "EmulatorConfig",
    "Fault",
    "FaultPlan",
    "IdentityCenter",
    "TokenIssuer",
    "TrustedTokenIssuer",
    "User",
    "default_directory",
    "organization_directory",
]
