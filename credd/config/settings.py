"""The frozen settings model: what credd's configuration says, typed.

Every other module reads its configuration from these dataclasses and never
from a file: :mod:`credd.config.load` builds them from the AWS config
(:mod:`credd.config.aws_profiles`) and credd's TOML
(:mod:`credd.config.credd_toml`). The defaults and the few constants the
readers and the sessions share live here with the fields they fill.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final

from credd.files.paths import Paths
from credd.secret import Secret

DEFAULT_LISTEN: Final = "127.0.0.1:9911"
DEFAULT_SCOPES: Final = ("sso:account:access",)
# Identity Center tokens: stay more than 15 minutes from expiry so that no SDK
# reading the shared cache starts a refresh of its own (protocols.md 7.1, 7.4).
DEFAULT_TOKEN_MARGIN: Final = 1200.0
# Role credentials: botocore re-fetches on every call once fewer than 15
# minutes remain (protocols.md 7.2), so serve them with more than that.
DEFAULT_CREDENTIALS_MARGIN: Final = 1200.0
DEFAULT_IDLE_TIMEOUT: Final = 7200.0
#: the most any ``*_seconds`` key may say (31 years): anything past it is a typo
MAX_SECONDS: Final = 1e9
# The endpoint's bounds (credd/endpoint/limits.py). A laptop's SDKs hold a handful of
# connections; these leave room for a test runner starting hundreds of processes.
DEFAULT_MAX_CONNECTIONS: Final = 1024
DEFAULT_MAX_WAITING_REQUESTS: Final = 512
DEFAULT_IDLE_CONNECTION: Final = 10.0
#: the Sign-In region when a profile names none: what ``aws login`` offers (protocols.md 4.1)
DEFAULT_SIGNIN_REGION: Final = "us-east-1"

#: the grants a CreateTokenWithIAM session starts with (protocols.md 2.2); ``refresh_token``
#: is not one of them: credd uses it by itself whenever a grant returned a refresh token
JWT_BEARER_GRANT: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN_EXCHANGE_GRANT: Final = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
AUTH_CODE_GRANT: Final = "authorization_code"
IAM_GRANTS: Final = (JWT_BEARER_GRANT, TOKEN_EXCHANGE_GRANT, AUTH_CODE_GRANT)
#: the scope that brings the identity context AssumeRole needs (protocols.md 2.2, 5)
IDENTITY_CONTEXT_SCOPE: Final = "sts:identity_context"


@dataclass(frozen=True)
class SsoSessionSpec:
    """One Identity Center sign-in: an ``[sso-session]`` or a legacy start URL."""

    #: the name users type (``credd login NAME``): the sso-session name, or for
    #: a legacy profile the start URL
    name: str
    start_url: str
    region: str
    registration_scopes: tuple[str, ...]
    #: legacy sessions (start URL in the profile) log in with the device code
    #: and get no refresh token, as with the AWS CLI (protocols.md 2.4, 6.1)
    legacy: bool
    #: the AWS profile whose endpoint overrides the session's calls honour
    endpoint_profile: str | None

    @property
    def cache_key(self) -> str:
        """What the AWS CLI hashes for the token cache file name (protocols.md 6.1)."""
        return self.start_url if self.legacy else self.name


@dataclass(frozen=True)
class SsoRoleProfile:
    """Role credentials from ``sso:GetRoleCredentials``."""

    name: str
    session: str
    account_id: str
    role_name: str
    region: str | None

    kind: ClassVar[str] = "sso-role"

    @property
    def source(self) -> str:
        return self.session


@dataclass(frozen=True)
class AssumeRoleProfile:
    """Role credentials from STS AssumeRole, signed by another profile's credentials."""

    name: str
    source_profile: str
    role_arn: str
    role_session_name: str | None
    duration_seconds: int | None
    external_id: str | None
    region: str | None

    kind: ClassVar[str] = "assume-role"

    @property
    def source(self) -> str:
        return self.source_profile


@dataclass(frozen=True)
class SigninSessionSpec:
    """One AWS Sign-In (``aws login``) session: a ``login_session`` and its login cache entry.

    Named by the ``login_session`` value itself (the idToken ``sub`` ARN): that is
    what the AWS CLI keys the cache by, so profiles naming the same one share it.
    """

    #: the ``login_session`` ARN: the cache key (protocols.md 6.2) and the name in status
    name: str
    #: whose Sign-In endpoint renews it: the first such profile's region, else us-east-1
    region: str
    #: the first profile (by name) that names it: ``credd login PROFILE --signin`` and
    #: the profile whose endpoint overrides its calls honour
    profile: str

    kind: ClassVar[str] = "signin"

    @property
    def cache_key(self) -> str:
        return self.name

    @property
    def endpoint_profile(self) -> str:
        return self.profile

    @property
    def login_command(self) -> str:
        return f"credd login {self.profile} --signin"


@dataclass(frozen=True)
class SigninProfile:
    """A ``login_session`` profile: the Sign-In credentials themselves, served as they are."""

    name: str
    #: the ``login_session`` ARN: the session that holds the credentials
    session: str
    region: str | None

    kind: ClassVar[str] = "signin"

    @property
    def source(self) -> str:
        return self.session


@dataclass(frozen=True)
class TrustedIdentitySpec:
    """A CreateTokenWithIAM session: ``[profiles.NAME]`` with ``type = "create-token-with-iam"``."""

    name: str
    #: the application ARN (CreateTokenWithIAM's ``clientId``)
    client_id: str
    #: the Identity Center home region (``sso_region``)
    region: str
    #: whose IAM credentials sign the call; ``None``: botocore's default chain
    source_profile: str | None
    grant_type: str
    assertion_file: Path | None
    assertion_command: tuple[str, ...] | None
    #: token exchange: the credd session whose access token is the subject token
    subject_session: str | None
    #: asked for (downscoping); empty: all of the application's scopes
    scopes: tuple[str, ...]
    #: the credd config it comes from, so that errors can name the key to change
    config_file: Path
    #: the AWS profile whose endpoint overrides its calls honour
    endpoint_profile: str | None = None

    kind: ClassVar[str] = "create-token-with-iam"

    def key(self, key: str) -> str:
        """Where the user changes ``key``: for errors that blame the configuration."""
        return f"{key} in [profiles.{self.name}] of {self.config_file}"


@dataclass(frozen=True)
class IdentityEnhancedProfile:
    """Role credentials from STS AssumeRole with the session's identity context (protocols.md 5)."""

    name: str
    #: the trusted-identity session (of the same name) whose identity context is provided
    session: str
    #: whose IAM credentials sign AssumeRole (the session's); ``None``: the default chain
    source_profile: str | None
    role_arn: str
    role_session_name: str | None
    duration_seconds: int | None
    region: str | None
    endpoint_profile: str | None = None

    kind: ClassVar[str] = "identity-enhanced-role"

    @property
    def source(self) -> str:
        return self.session


@dataclass(frozen=True)
class StaticKeysProfile:
    """Keys written in the config or credentials file: a source, never served."""

    name: str
    access_key_id: str
    secret_access_key: Secret
    session_token: Secret | None
    region: str | None


@dataclass(frozen=True)
class ProcessProfile:
    """A ``credential_process`` profile: a source, never served."""

    name: str
    command: str
    region: str | None


#: every kind of sign-in a session can be made from
SessionSpec = SsoSessionSpec | TrustedIdentitySpec | SigninSessionSpec
ServedProfile = SsoRoleProfile | AssumeRoleProfile | IdentityEnhancedProfile | SigninProfile
#: what signs an AssumeRole without being served itself
SigningSource = StaticKeysProfile | ProcessProfile


@dataclass(frozen=True)
class ServerSettings:
    host: str
    port: int
    token_file: Path
    #: connections open at once; one more is answered 503 and closed
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: requests waiting for an upstream fetch at once; one more is answered 429
    max_waiting_requests: int = DEFAULT_MAX_WAITING_REQUESTS
    #: a connection that sends no whole request in this long is closed (slow clients)
    idle_connection_seconds: float = DEFAULT_IDLE_CONNECTION

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def address_file(self) -> Path:
        """Where the bound address is written when ``listen`` asks for port 0 (interface.md)."""
        return self.token_file.parent / "address"


@dataclass(frozen=True)
class ContainersSettings:
    """``[containers]``: the container listener (interface.md, "Containers").

    ``host`` is a link-local or loopback address (the reader refuses any other);
    ``None`` means no container listener at all.
    """

    host: str | None = None
    port: int = 0

    @property
    def listen(self) -> str | None:
        """``HOST:PORT`` as configured (IPv6 in brackets), or ``None`` when unset."""
        if self.host is None:
            return None
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RefreshSettings:
    token_margin_seconds: float = DEFAULT_TOKEN_MARGIN
    credentials_margin_seconds: float = DEFAULT_CREDENTIALS_MARGIN
    #: a profile nobody asked for in this long stops being renewed
    idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT
    #: profiles fetched at start and kept warm whether asked for or not
    prefetch: frozenset[str] = frozenset()


@dataclass(frozen=True)
class LogSettings:
    level: str = "info"
    #: "auto" (console on a terminal, JSON otherwise), "console" or "json"
    format: str = "auto"


@dataclass(frozen=True)
class Settings:
    paths: Paths
    server: ServerSettings
    refresh: RefreshSettings
    log: LogSettings
    sessions: Mapping[str, SessionSpec]
    #: every profile credd serves, by name
    profiles: Mapping[str, ServedProfile]
    #: profiles that may sign or source a call but are not served themselves
    sources: Mapping[str, SigningSource]
    #: profiles credd cannot serve, with the reason
    unserved: Mapping[str, str]
    containers: ContainersSettings = ContainersSettings()

    def region_of(self, profile: str) -> str | None:
        served = self.profiles.get(profile)
        return served.region if served else None

    def session_for(self, name: str) -> SessionSpec | None:
        """The session named ``name``, or the one at the root of profile ``name``'s chain."""
        if name in self.sessions:
            return self.sessions[name]
        seen: set[str] = set()
        profile = self.profiles.get(name)
        while isinstance(profile, AssumeRoleProfile) and profile.name not in seen:
            seen.add(profile.name)
            profile = self.profiles.get(profile.source_profile)
        if isinstance(profile, SsoRoleProfile | IdentityEnhancedProfile | SigninProfile):
            return self.sessions.get(profile.session)
        return None
