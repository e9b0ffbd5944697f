"""The IAM Identity Center instance behind trusted identity propagation, as configured.

CreateTokenWithIAM (protocols.md §2.2) serves *applications* (customer managed
OAuth applications, named by ARN, used as ``clientId``) of one Identity Center
instance, and trusts assertions from the instance's *trusted token issuers*
(external IdPs such as Okta or Entra ID). This module is the frozen
configuration of both; :class:`~.config.Directory` carries one
:class:`IdentityCenter`. The default has one application that allows every
grant and one trusted token issuer, the test issuer the emulator hosts
(:mod:`.issuer`), whose ``sub`` claim is matched against users' email addresses.

AWS references: application grants and authorized token issuers/audiences,
https://docs.aws.amazon.com/singlesignon/latest/userguide/customermanagedapps-trusted-identity-propagation-set-up-your-own-app-OAuth2.html;
trusted token issuers and attribute mappings,
https://docs.aws.amazon.com/singlesignon/latest/userguide/using-apps-with-trusted-token-issuer.html.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from . import oauth

INSTANCE_ID: Final = "ssoins-1111111111111111"
IDENTITY_STORE_ID: Final = "d-1234567890"  # the id in DEFAULT_START_URL
INSTANCE_ACCOUNT: Final = "111111111111"
DEFAULT_APPLICATION_ARN: Final = (
    f"arn:aws:sso::{INSTANCE_ACCOUNT}:application/{INSTANCE_ID}/apl-2222222222222222"
)
DEFAULT_ISSUER_ARN: Final = (
    f"arn:aws:sso::{INSTANCE_ACCOUNT}:trustedTokenIssuer/{INSTANCE_ID}/tti-3333333333333333"
)
#: the ``iss`` of the test issuer the emulator hosts (:class:`~.issuer.TokenIssuer`)
DEFAULT_ISSUER_URL: Final = "https://issuer.credd.test"
#: the ``aud`` the default application accepts from it
DEFAULT_AUDIENCE: Final = "credd-test"
#: what every application grants unless downscoped (CreateTokenWithIAM ``scope`` documentation)
DEFAULT_SCOPES: Final = ("openid", "aws", "sts:identity_context")

#: Identity Store attributes a trusted token issuer's claim may be matched against
UserAttribute = Literal["emails.value", "userName"]


@dataclass(frozen=True)
class TrustedTokenIssuer:
    """An external OIDC IdP whose JWTs the instance accepts (jwt-bearer grant)."""

    arn: str = DEFAULT_ISSUER_ARN
    #: the JWT ``iss`` it signs with
    issuer_url: str = DEFAULT_ISSUER_URL
    #: which claim names the user, and which user attribute it must equal
    claim: str = "sub"
    attribute: UserAttribute = "emails.value"


def _default_token_issuers() -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({DEFAULT_ISSUER_ARN: (DEFAULT_AUDIENCE,)})


@dataclass(frozen=True)
class Application:
    """A customer managed application: CreateTokenWithIAM's ``clientId``."""

    arn: str = DEFAULT_APPLICATION_ARN
    #: grants it is configured for (``UnauthorizedClientException`` for the others)
    grants: frozenset[str] = oauth.IAM_GRANT_TYPES
    #: its own scopes, granted on top of :data:`DEFAULT_SCOPES`
    scopes: tuple[str, ...] = ("s3:access_grants:read_write",)
    #: authorization code grant: where ``/authorize`` may send the code (any loopback port)
    redirect_uris: tuple[str, ...] = ("http://127.0.0.1/oauth/callback",)
    #: jwt-bearer grant: trusted token issuer ARN -> the ``aud`` values accepted from it
    token_issuers: Mapping[str, tuple[str, ...]] = field(default_factory=_default_token_issuers)
    #: IAM principal ARNs allowed to call CreateTokenWithIAM for it (a role ARN covers
    #: its sessions); ``None``: any principal with credentials the emulator issued
    callers: tuple[str, ...] | None = None

    @property
    def all_scopes(self) -> tuple[str, ...]:
        """What it grants when ``scope`` is absent."""
        return DEFAULT_SCOPES + tuple(s for s in self.scopes if s not in DEFAULT_SCOPES)

    def allows_caller(self, principal_arn: str) -> bool:
        if self.callers is None:
            return True
        return any(_covers(allowed, principal_arn) for allowed in self.callers)


def _covers(allowed: str, principal_arn: str) -> bool:
    """``arn:aws:iam::A:role/R`` covers ``arn:aws:sts::A:assumed-role/R/<session>``."""
    if allowed == principal_arn:
        return True
    prefix, sep, role_name = allowed.partition(":role/")
    if not sep or not prefix.startswith("arn:aws:iam::"):
        return False
    account = prefix.removeprefix("arn:aws:iam::")
    session_prefix = f"arn:aws:sts::{account}:assumed-role/{role_name.rsplit('/', 1)[-1]}/"
    return principal_arn.startswith(session_prefix)


@dataclass(frozen=True)
class IdentityCenter:
    """One Identity Center instance: home region, identity store, applications, issuers."""

    #: the home region: CreateTokenWithIAM must be signed for it
    region: str = "us-east-1"
    instance_id: str = INSTANCE_ID
    identity_store_id: str = IDENTITY_STORE_ID
    account_id: str = INSTANCE_ACCOUNT
    applications: tuple[Application, ...] = (Application(),)
    token_issuers: tuple[TrustedTokenIssuer, ...] = (TrustedTokenIssuer(),)

    @property
    def instance_arn(self) -> str:
        return f"arn:aws:sso:::instance/{self.instance_id}"

    @property
    def identity_store_arn(self) -> str:
        return f"arn:aws:identitystore::{self.account_id}:identitystore/{self.identity_store_id}"

    @property
    def issuer_url(self) -> str:
        """The ``iss`` of the idTokens it signs (protocols.md §2.2)."""
        return f"https://identitycenter.amazonaws.com/{self.instance_id}"

    @property
    def endpoint(self) -> str:
        """Its sso-oidc endpoint, as ``InvalidRequestRegionException`` names it (§2.1)."""
        return f"https://oidc.{self.region}.amazonaws.com"

    def application(self, arn: str) -> Application | None:
        return next((a for a in self.applications if a.arn == arn), None)

    def token_issuer(self, issuer_url: str) -> TrustedTokenIssuer | None:
        return next((t for t in self.token_issuers if t.issuer_url == issuer_url), None)
