"""The AWS config and credd's TOML, turned into frozen, typed settings.

This is the edge where untyped text becomes data: nothing past this module
sees a ``dict[str, Any]``. A malformed file raises :class:`ConfigError` naming
the file, the line and the key. A profile that is well-formed but that credd
cannot serve is not an error: it lands in ``Settings.unserved`` with the
reason, and ``credd status`` shows it while every other profile keeps working.
"""

from __future__ import annotations

import ipaddress
import math
import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Final

from credd.config.ini import IniFile, Section, read_config_text, read_ini
from credd.errors import ConfigError
from credd.files.paths import Paths, expand_path
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

# \Z, not $: $ also matches before a final newline, which a TOML string can hold
_ROLE_ARN = re.compile(r"^arn:aws[\w-]*:iam::\d{12}:role/[\w+=,.@/-]+\Z", re.ASCII)
_APPLICATION_ARN = re.compile(r"^arn:aws[\w-]*:sso::\d{12}:application/[\w-]+/[\w-]+\Z", re.ASCII)
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+\Z", re.ASCII)
_SESSION_NAME = re.compile(r"^[A-Za-z0-9_+=,.@-]{2,64}\Z", re.ASCII)
_ACCOUNT_ID = re.compile(r"^[0-9]{12}\Z", re.ASCII)
#: at most 18 digits: int() of a 5,000-digit string raises ValueError, not ours
_WHOLE_NUMBER = re.compile(r"^[0-9]{1,18}\Z")


# --------------------------------------------------------------------------- model


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


# --------------------------------------------------------------------------- credd TOML

_TOML_POSITION = re.compile(r"\(at line (?P<line>\d+), column \d+\)$")


def _toml_error(path: Path, text: str, exc: ValueError) -> ConfigError:
    """A ``tomllib`` error as ``PATH:LINE: not valid TOML: ...`` (3.11's carries no line)."""
    message = str(exc)
    found = _TOML_POSITION.search(message)
    line = int(found["line"]) if found else text.count("\n") + 1  # else "at end of document"
    return ConfigError(f"{path}:{line}: not valid TOML: {message}")


def _toml_line(text: str, table: tuple[str, ...], key: str | None) -> int | None:
    """Best-effort line of ``key`` in ``[table]`` (tomllib keeps no positions)."""
    header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(map(re.escape, table)) + r"\s*\]\s*$")
    in_table = not table
    for number, line in enumerate(text.split("\n"), start=1):  # as tomllib counts lines
        if line.lstrip().startswith("["):
            if in_table and key is None:
                return None
            in_table = bool(header.match(line))
            if in_table and key is None:
                return number
            continue
        if in_table and key and re.match(rf"^\s*{re.escape(key)}\s*=", line):
            return number
    return None


class _TomlReader:
    """Typed access to one TOML table, with errors that point at the line."""

    def __init__(self, path: Path, text: str, table: tuple[str, ...], data: Any) -> None:
        self.path, self.text, self.table = path, text, table
        if not isinstance(data, dict):
            raise self.error(None, "must be a table")
        self.data: dict[str, Any] = data
        self.seen: set[str] = set()

    def error(self, key: str | None, problem: str) -> ConfigError:
        line = _toml_line(self.text, self.table, key)
        if line is None and key is not None:  # a whole table: point at its header
            line = _toml_line(self.text, (*self.table, key), None)
        where = f"{self.path}:{line}" if line else str(self.path)
        dotted = ".".join((*self.table, key) if key else self.table)
        return ConfigError(f"{where}: {dotted}: {problem}")

    def get(self, key: str, kind: type[Any], default: Any = None) -> Any:
        self.seen.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"expected {kind.__name__}, found {type(value).__name__}")
        return value

    def seconds(self, key: str, default: float) -> float:
        value: float = self.get(key, float, default)
        if not math.isfinite(value) or value > MAX_SECONDS:
            # nan passes every comparison, and inf or 1e300 overflow a timedelta later on
            raise self.error(key, f"expected a number of seconds up to {MAX_SECONDS:.0e}")
        if value < 0:
            raise self.error(key, "must not be negative")
        return value

    def count(self, key: str, default: int) -> int:
        value: int = self.get(key, int, default)
        if value < 1:
            raise self.error(key, "must be at least 1")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.get(key, list, [])
        if not all(isinstance(item, str) for item in value):
            raise self.error(key, "expected a list of strings")
        return tuple(value)

    def reject_unknown(self) -> None:
        for key in self.data:
            if key not in self.seen:
                raise self.error(key, "unknown key")

    def missing(self, key: str) -> ConfigError:
        """``key`` is required: the error points at the table's header."""
        line = _toml_line(self.text, self.table, None)
        where = f"{self.path}:{line}" if line else str(self.path)
        return ConfigError(f"{where}: {'.'.join((*self.table, key))}: missing")


def _path(table: _TomlReader, key: str, value: str, home: Path) -> Path:
    if "\x00" in value:  # TOML allows "\u0000"; no file name does
        raise table.error(key, "a path cannot hold a NUL character")
    return expand_path(value, home)


def _parse_listen(reader: _TomlReader) -> tuple[str, int]:
    listen: str = reader.get("listen", str, DEFAULT_LISTEN)
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not _WHOLE_NUMBER.match(port_text) or not 0 <= int(port_text) <= 65535:
        raise reader.error("listen", f"expected HOST:PORT, found {listen!r}")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise reader.error(
            "listen",
            f"{host!r} is not a loopback address; credd serves credentials only on "
            "loopback (127.0.0.1 or ::1)",
        )
    return ("127.0.0.1" if host == "localhost" else host), int(port_text)


@dataclass(frozen=True)
class _TrustedIdentity:
    """One ``[profiles.NAME]`` table, before its references into the AWS config are checked."""

    spec: TrustedIdentitySpec
    #: what it is exchanged for; ``None``: it serves only its bearer token
    profile: IdentityEnhancedProfile | None
    table: _TomlReader


def _required(table: _TomlReader, key: str) -> str:
    value: str | None = table.get(key, str)
    if not value:
        raise table.missing(key)
    return value


def _assertion_command(table: _TomlReader) -> tuple[str, ...] | None:
    value = table.get("assertion_command", object)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            argv = tuple(shlex.split(value))
        except ValueError as exc:
            raise table.error("assertion_command", f"cannot be split into words: {exc}") from exc
    elif isinstance(value, list) and all(isinstance(word, str) for word in value):
        argv = tuple(value)
    else:
        raise table.error("assertion_command", "expected a list of strings (the command's argv)")
    if not argv or not argv[0]:
        raise table.error("assertion_command", "must name a command")
    return argv


def _trusted_identity(table: _TomlReader, name: str, home: Path) -> _TrustedIdentity:
    """A ``type = "create-token-with-iam"`` table; invalid combinations name their key."""
    client_id = _required(table, "client_id")
    if not _APPLICATION_ARN.match(client_id):
        raise table.error(
            "client_id",
            "expected an application ARN "
            f"(arn:aws:sso::ACCOUNT:application/ssoins-.../apl-...), found {client_id!r}",
        )
    region = _required(table, "sso_region")
    if not _REGION.match(region):
        raise table.error(
            "sso_region", f"expected a region name such as us-east-1, found {region!r}"
        )
    source: str | None = table.get("source_profile", str)
    if source is not None and not source:
        raise table.error("source_profile", "must name a profile (omit it for the default chain)")
    grant = _required(table, "grant_type")
    if grant == "refresh_token":
        raise table.error(
            "grant_type",
            "refresh_token is used by itself once another grant returned a refresh token; "
            "name the grant that starts the session: " + ", ".join(IAM_GRANTS),
        )
    if grant not in IAM_GRANTS:
        raise table.error(
            "grant_type", f"unknown grant {grant!r}; expected one of: " + ", ".join(IAM_GRANTS)
        )
    file_text: str | None = table.get("assertion_file", str)
    command = _assertion_command(table)
    if grant == JWT_BEARER_GRANT:
        if file_text is not None and command is not None:
            raise table.error(
                "assertion_command", "give assertion_file or assertion_command, not both"
            )
        if not file_text and command is None:
            raise table.error(
                "grant_type", "the jwt-bearer grant needs assertion_file or assertion_command"
            )
    else:
        for key, given in (("assertion_file", file_text), ("assertion_command", command)):
            if given is not None:
                raise table.error(key, f'only used with grant_type = "{JWT_BEARER_GRANT}"')
    subject: str | None = table.get("subject_session", str)
    if grant == TOKEN_EXCHANGE_GRANT and not subject:
        raise table.error(
            "grant_type",
            "the token-exchange grant needs subject_session: the credd session whose access "
            "token is exchanged",
        )
    if grant != TOKEN_EXCHANGE_GRANT and subject is not None:
        raise table.error(
            "subject_session", f'only used with grant_type = "{TOKEN_EXCHANGE_GRANT}"'
        )
    if subject == name:
        raise table.error("subject_session", "a session cannot be its own subject")
    scopes = table.strings("scopes")
    if "scopes" in table.data and not scopes:
        raise table.error("scopes", "must not be empty (omit it for all the application's scopes)")
    role_arn: str | None = table.get("role_arn", str)
    profile = None
    if role_arn is None:
        for key in ("role_session_name", "duration_seconds"):
            if key in table.data:
                raise table.error(key, "only used with role_arn")
    else:
        profile = _identity_enhanced(table, name, source, role_arn)
        if scopes and IDENTITY_CONTEXT_SCOPE not in scopes:
            raise table.error(
                "scopes",
                f"role_arn needs the {IDENTITY_CONTEXT_SCOPE} scope: AssumeRole is given the "
                "identity context it brings",
            )
    region_name: str | None = table.get("region", str)
    if profile is not None and region_name:
        profile = replace(profile, region=region_name)
    table.reject_unknown()
    spec = TrustedIdentitySpec(
        name=name,
        client_id=client_id,
        region=region,
        source_profile=source,
        grant_type=grant,
        assertion_file=_path(table, "assertion_file", file_text, home) if file_text else None,
        assertion_command=command,
        subject_session=subject,
        scopes=tuple(dict.fromkeys(scopes)),
        config_file=table.path,
    )
    return _TrustedIdentity(spec, profile, table)


def _identity_enhanced(
    table: _TomlReader, name: str, source: str | None, role_arn: str
) -> IdentityEnhancedProfile:
    if not _ROLE_ARN.match(role_arn):
        raise table.error("role_arn", f"not a role ARN: {role_arn!r}")
    session_name: str | None = table.get("role_session_name", str)
    if session_name is not None and not _SESSION_NAME.match(session_name):
        raise table.error("role_session_name", r"2 to 64 characters of [\w+=,.@-] expected")
    duration: int | None = table.get("duration_seconds", int)
    if duration is not None and not 900 <= duration <= 43200:
        raise table.error(
            "duration_seconds", f"expected a whole number from 900 to 43200, found {duration}"
        )
    return IdentityEnhancedProfile(
        name=name,
        session=name,
        source_profile=source,
        role_arn=role_arn,
        role_session_name=session_name,
        duration_seconds=duration,
        region=None,
    )


@dataclass(frozen=True)
class _CreddToml:
    server: ServerSettings
    refresh: RefreshSettings
    log: LogSettings
    #: the ``[profiles.NAME]`` tables, by name
    trusted: Mapping[str, _TrustedIdentity]
    #: for errors found after reading (a prefetch naming no served profile, a name clash)
    refresh_table: _TomlReader
    profiles_table: _TomlReader


def _read_credd_toml(paths: Paths) -> _CreddToml:
    path = paths.credd_config_file
    text = read_config_text(path) or ""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(path, text, exc) from exc

    top = _TomlReader(path, text, (), data)
    server = _TomlReader(path, text, ("server",), top.get("server", dict, {}))
    host, port = _parse_listen(server)
    token_file_text: str | None = server.get("token_file", str)
    token_file = (
        _path(server, "token_file", token_file_text, paths.home) if token_file_text else None
    )
    max_connections = server.count("max_connections", DEFAULT_MAX_CONNECTIONS)
    max_waiting = server.count("max_waiting_requests", DEFAULT_MAX_WAITING_REQUESTS)
    idle_connection = server.seconds("idle_connection_seconds", DEFAULT_IDLE_CONNECTION)
    if idle_connection <= 0:
        raise server.error("idle_connection_seconds", "must be more than 0")
    server.reject_unknown()

    refresh = _TomlReader(path, text, ("refresh",), top.get("refresh", dict, {}))
    refresh_settings = RefreshSettings(
        token_margin_seconds=refresh.seconds("token_margin_seconds", DEFAULT_TOKEN_MARGIN),
        credentials_margin_seconds=refresh.seconds(
            "credentials_margin_seconds", DEFAULT_CREDENTIALS_MARGIN
        ),
        idle_timeout_seconds=refresh.seconds("idle_timeout_seconds", DEFAULT_IDLE_TIMEOUT),
        prefetch=frozenset(refresh.strings("prefetch")),
    )
    refresh.reject_unknown()

    log = _TomlReader(path, text, ("log",), top.get("log", dict, {}))
    level: str = log.get("level", str, "info")
    if level not in {"debug", "info", "warning", "error"}:
        raise log.error("level", f"expected debug, info, warning or error, found {level!r}")
    fmt: str = log.get("format", str, "auto")
    if fmt not in {"auto", "console", "json"}:
        raise log.error("format", f"expected auto, console or json, found {fmt!r}")
    log.reject_unknown()

    profiles = _TomlReader(path, text, ("profiles",), top.get("profiles", dict, {}))
    trusted: dict[str, _TrustedIdentity] = {}
    for name in profiles.data:
        table = _TomlReader(path, text, ("profiles", name), profiles.get(name, dict))
        kind = table.get("type", str)
        if kind is None:
            raise table.error("type", "missing: every [profiles.NAME] table names its type")
        if kind != TrustedIdentitySpec.kind:
            raise table.error("type", f"unknown profile type {kind!r}")
        trusted[name] = _trusted_identity(table, name, paths.home)
    top.reject_unknown()

    return _CreddToml(
        server=ServerSettings(
            host,
            port,
            token_file or paths.default_token_file,
            max_connections=max_connections,
            max_waiting_requests=max_waiting,
            idle_connection_seconds=idle_connection,
        ),
        refresh=refresh_settings,
        log=LogSettings(level=level, format=fmt),
        trusted=trusted,
        refresh_table=refresh,
        profiles_table=profiles,
    )


# --------------------------------------------------------------------------- AWS config


class _AwsConfig:
    """The AWS config and credentials files, read as botocore reads them."""

    def __init__(self, config: IniFile | None, credentials: IniFile | None) -> None:
        self.config = config
        self.profiles: dict[str, Section] = {}
        self.sso_sessions: dict[str, Section] = {}
        self.credentials: dict[str, Section] = dict(credentials.sections) if credentials else {}
        self.credentials_file = credentials
        for name, section in (config.sections if config else {}).items():
            kind, _, rest = name.partition(" ")
            if name == "default":
                self.profiles["default"] = section
            elif kind == "profile" and rest.strip():
                self.profiles[rest.strip()] = section
            elif kind == "sso-session" and rest.strip():
                self.sso_sessions[rest.strip()] = section

    def where(self, section: Section, key: str | None = None) -> str:
        assert self.config is not None
        return self.config.where(section, key)

    def names(self) -> list[str]:
        return sorted(set(self.profiles) | set(self.credentials))


def _static_keys(name: str, section: Section) -> StaticKeysProfile | None:
    values = section.values
    if "aws_access_key_id" not in values or "aws_secret_access_key" not in values:
        return None
    token = values.get("aws_session_token")
    return StaticKeysProfile(
        name=name,
        access_key_id=values["aws_access_key_id"],
        secret_access_key=Secret(values["aws_secret_access_key"]),
        session_token=Secret(token) if token else None,
        region=values.get("region") or None,
    )


class _Builder:
    """Turns the parsed files into specs, collecting what cannot be served."""

    def __init__(self, aws: _AwsConfig) -> None:
        self.aws = aws
        self.sessions: dict[str, SsoSessionSpec] = {}
        #: Sign-In sessions, by ``login_session``
        self.signin: dict[str, SigninSessionSpec] = {}
        self.profiles: dict[str, ServedProfile] = {}
        self.sources: dict[str, SigningSource] = {}
        self.unserved: dict[str, str] = {}
        #: the credd config's CreateTokenWithIAM sessions
        self.trusted: dict[str, TrustedIdentitySpec] = {}

    def build(self) -> None:
        self.classify()
        self.drop_broken_chains()

    def classify(self) -> None:
        for name in self.aws.names():
            self._classify(name)

    def sso_session(self, name: str) -> SsoSessionSpec | None:
        """The ``[sso-session NAME]``, whether or not a profile uses it; ``None`` if undefined."""
        section = self.aws.sso_sessions.get(name)
        if name in self.sessions or section is None:
            return self.sessions.get(name)
        return self._named_session(name, section, None)

    def _session_for(self, name: str, section: Section) -> str:
        values = section.values
        session_name = values.get("sso_session")
        if session_name:
            spec = self._named_session(session_name, section, name)
            for key, value in (("sso_start_url", spec.start_url), ("sso_region", spec.region)):
                if key in values and values[key] != value:
                    raise ConfigError(
                        f"{self.aws.where(section, key)}: {key} in [profile {name}] differs "
                        f"from [sso-session {session_name}]"
                    )
            return spec.name
        start_url, region = values.get("sso_start_url"), values.get("sso_region")
        if not start_url or not region:
            missing = "sso_start_url" if not start_url else "sso_region"
            raise _Unservable(f"{missing} is missing (or name an sso_session)")
        if start_url not in self.sessions:
            self.sessions[start_url] = SsoSessionSpec(
                name=start_url,
                start_url=start_url,
                region=region,
                registration_scopes=(),
                legacy=True,
                endpoint_profile=name,
            )
        return start_url

    def _named_session(
        self, session_name: str, section: Section, profile: str | None
    ) -> SsoSessionSpec:
        if session_name in self.sessions:
            return self.sessions[session_name]
        session = self.aws.sso_sessions.get(session_name)
        if session is None:
            raise ConfigError(
                f"{self.aws.where(section, 'sso_session')}: sso_session: "
                f"[sso-session {session_name}] is not defined"
            )
        values = session.values
        for key in ("sso_start_url", "sso_region"):
            if not values.get(key):
                raise ConfigError(
                    f"{self.aws.where(session)}: {key}: missing in [sso-session {session_name}]"
                )
        scopes = tuple(
            s.strip() for s in values.get("sso_registration_scopes", "").split(",") if s.strip()
        )
        spec = SsoSessionSpec(
            name=session_name,
            start_url=values["sso_start_url"],
            region=values["sso_region"],
            registration_scopes=scopes or DEFAULT_SCOPES,
            legacy=False,
            endpoint_profile=profile,
        )
        self.sessions[session_name] = spec
        return spec

    def _classify(self, name: str) -> None:
        section = self.aws.profiles.get(name)
        creds_section = self.aws.credentials.get(name)
        try:
            if section is not None:
                served = self._served(name, section)
                if served is not None:
                    self.profiles[name] = served
                    return
            # botocore's order: the credentials file's keys, then login, then the rest (6.4)
            keys_first = creds_section is not None and _static_keys(name, creds_section)
            if section is not None and "login_session" in section.values and not keys_first:
                self.profiles[name] = self._signin(name, section)
                return
            for candidate in (creds_section, section):
                keys = _static_keys(name, candidate) if candidate else None
                if keys is not None:
                    self.sources[name] = keys
                    self.unserved[name] = "static keys serve themselves"
                    return
            values = section.values if section else {}
            if "credential_process" in values:
                self.sources[name] = ProcessProfile(
                    name, values["credential_process"], values.get("region") or None
                )
                self.unserved[name] = "credential_process profiles serve themselves"
            elif section is not None and name != "default":
                self.unserved[name] = "no credential source credd can serve"
        except _Unservable as exc:
            self.unserved[name] = str(exc)

    def _signin(self, name: str, section: Section) -> SigninProfile:
        """A ``login_session`` profile (``aws login``); profiles naming one share its session."""
        login_session = section.values["login_session"]
        if not login_session:
            raise _Unservable(f"login_session is empty (run: credd login {name} --signin)")
        region = section.values.get("region") or None
        if login_session not in self.signin:
            self.signin[login_session] = SigninSessionSpec(
                name=login_session, region=region or DEFAULT_SIGNIN_REGION, profile=name
            )
        return SigninProfile(name=name, session=login_session, region=region)

    def _served(self, name: str, section: Section) -> ServedProfile | None:
        values = section.values
        if "role_arn" in values:
            return self._assume_role(name, section)
        if "sso_account_id" in values or "sso_role_name" in values:
            for key in ("sso_account_id", "sso_role_name"):
                if not values.get(key):
                    raise _Unservable(f"{key} is missing")
            account = values["sso_account_id"]
            if not _ACCOUNT_ID.match(account):
                raise ConfigError(
                    f"{self.aws.where(section, 'sso_account_id')}: sso_account_id: "
                    f"expected 12 digits, found {account!r}"
                )
            return SsoRoleProfile(
                name=name,
                session=self._session_for(name, section),
                account_id=account,
                role_name=values["sso_role_name"],
                region=values.get("region") or None,
            )
        return None

    def _assume_role(self, name: str, section: Section) -> AssumeRoleProfile:
        values = section.values
        role_arn = values["role_arn"]
        if not _ROLE_ARN.match(role_arn):
            raise ConfigError(
                f"{self.aws.where(section, 'role_arn')}: role_arn: not a role ARN: {role_arn!r}"
            )
        if "credential_source" in values:
            raise _Unservable("credential_source is not supported; use source_profile")
        if "web_identity_token_file" in values:
            raise _Unservable("web identity profiles serve themselves")
        if "mfa_serial" in values:
            raise _Unservable("roles that need an MFA code cannot be renewed unattended")
        source = values.get("source_profile")
        if not source:
            raise _Unservable("role_arn without source_profile")
        session_name = values.get("role_session_name") or None
        if session_name is not None and not _SESSION_NAME.match(session_name):
            raise ConfigError(
                f"{self.aws.where(section, 'role_session_name')}: role_session_name: "
                r"2 to 64 characters of [\w+=,.@-] expected"
            )
        duration: int | None = None
        if "duration_seconds" in values:
            text = values["duration_seconds"]
            if not _WHOLE_NUMBER.match(text) or not 900 <= int(text) <= 43200:
                raise ConfigError(
                    f"{self.aws.where(section, 'duration_seconds')}: duration_seconds: "
                    f"expected a whole number from 900 to 43200, found {text!r}"
                )
            duration = int(text)
        return AssumeRoleProfile(
            name=name,
            source_profile=source,
            role_arn=role_arn,
            role_session_name=session_name,
            duration_seconds=duration,
            external_id=values.get("external_id") or None,
            region=values.get("region") or None,
        )

    def drop_broken_chains(self) -> None:
        """Unserve role profiles (and sessions) whose sources do not end in a usable source."""
        changed = True
        while changed:
            changed = False
            for name, spec in list(self.trusted.items()):
                reason = self._trusted_problem(spec, set())
                if reason:
                    del self.trusted[name]
                    self.profiles.pop(name, None)
                    self.unserved[name] = reason
                    changed = True
            for name, profile in list(self.profiles.items()):
                if not isinstance(profile, AssumeRoleProfile):
                    continue
                reason = self._chain_problem(profile)
                if reason:
                    del self.profiles[name]
                    self.unserved[name] = reason
                    changed = True

    def _chain_problem(self, profile: AssumeRoleProfile | IdentityEnhancedProfile) -> str | None:
        seen = {profile.name}
        current: str | None = profile.source_profile
        while current is not None:
            if current in seen:
                return f"source_profile chain loops back to {current!r}"
            seen.add(current)
            if current in self.sources:
                return None
            target = self.profiles.get(current)
            if target is None:
                why = self.unserved.get(current, "it is not defined")
                return f"source_profile {current!r} cannot be used: {why}"
            if isinstance(target, SsoRoleProfile | SigninProfile):
                return None
            current = target.source_profile
        return None  # the default chain

    def _trusted_problem(self, spec: TrustedIdentitySpec, seen: set[str]) -> str | None:
        """What keeps a CreateTokenWithIAM session from working: its signer or its subject."""
        seen.add(spec.name)
        source = spec.source_profile
        if source is not None and source not in self.sources:
            target = self.profiles.get(source)
            if target is None:
                why = self.unserved.get(source, "it is not defined")
                return f"source_profile {source!r} cannot be used: {why}"
            if not isinstance(target, SsoRoleProfile | SigninProfile):
                loop = self._chain_problem(target) if target.name != spec.name else "it is itself"
                if loop:
                    return f"source_profile {source!r} cannot be used: {loop}"
        subject = spec.subject_session
        if subject is None or subject in self.sessions:
            return None
        if subject in seen:
            return f"subject_session chain loops back to {subject!r}"
        inner = self.trusted.get(subject)
        if inner is None:
            why = self.unserved.get(subject, "it is not defined")
            return f"subject_session {subject!r} cannot be used: {why}"
        problem = self._trusted_problem(inner, seen)
        return f"subject_session {subject!r} cannot be used: {problem}" if problem else None


class _Unservable(Exception):
    """A well-formed profile credd cannot serve: reported, not fatal."""


def _link_trusted(
    trusted: _TrustedIdentity, builder: _Builder, credd: _CreddToml, paths: Paths
) -> None:
    """Check what a ``[profiles.NAME]`` names in the AWS config, and add it to the builder."""
    spec, table, aws = trusted.spec, trusted.table, builder.aws
    name = spec.name
    if name in aws.names() or name in aws.sso_sessions or name in builder.sessions:
        raise credd.profiles_table.error(
            name, f"{name!r} is also a name in {paths.aws_config_file}; pick another name"
        )
    subject = spec.subject_session
    known = subject is None or subject in credd.trusted or builder.sso_session(subject)
    if not known:
        raise table.error(
            "subject_session",
            f"{subject!r} is neither an [sso-session] of {paths.aws_config_file} "
            "nor a [profiles.NAME] of this file",
        )
    source = spec.source_profile
    endpoint_profile = None
    if source is not None:
        other = credd.trusted.get(source)
        if source not in aws.names() and other is None:
            raise table.error(
                "source_profile",
                f"{source!r} is not a profile of {paths.aws_config_file}, "
                f"{paths.aws_credentials_file} or this file",
            )
        if other is not None and other.profile is None:
            raise table.error(
                "source_profile",
                f"[profiles.{source}] has no role_arn: it serves a bearer token, not credentials",
            )
        if source in aws.profiles:
            endpoint_profile = source  # its [services] endpoint_url applies
    builder.trusted[name] = replace(spec, endpoint_profile=endpoint_profile)
    if trusted.profile is not None:
        builder.profiles[name] = replace(trusted.profile, endpoint_profile=endpoint_profile)


def load_settings(paths: Paths) -> Settings:
    """Read both configuration files; raises :class:`ConfigError` on malformed input."""
    credd = _read_credd_toml(paths)
    aws = _AwsConfig(read_ini(paths.aws_config_file), read_ini(paths.aws_credentials_file))
    builder = _Builder(aws)
    builder.classify()
    for trusted in credd.trusted.values():
        _link_trusted(trusted, builder, credd, paths)
    builder.drop_broken_chains()
    unserved = dict(builder.unserved)
    for name in sorted(credd.refresh.prefetch):
        if name not in builder.profiles:
            raise credd.refresh_table.error("prefetch", f"{name!r} is not a profile credd serves")
    return Settings(
        paths=paths,
        server=credd.server,
        refresh=credd.refresh,
        log=credd.log,
        sessions={**builder.sessions, **builder.signin, **builder.trusted},
        profiles=builder.profiles,
        sources=builder.sources,
        unserved=unserved,
    )
