"""credd's own TOML config: ``[server]``, ``[containers]``, ``[refresh]``, ``[log]`` and
``[profiles.NAME]``.

Named so as not to shadow the standard library's ``tomllib``. Every value is
type-checked here; a malformed file raises :class:`ConfigError` naming the
file, the line and the key (``tomllib`` keeps no positions, so the line is
found again in the text). A ``[profiles.NAME]`` table is read on its own here;
what it names in the AWS config is checked by :mod:`credd.config.load`.
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
from typing import Any

from credd.config.formats import APPLICATION_ARN, REGION, ROLE_ARN, SESSION_NAME, WHOLE_NUMBER
from credd.config.ini import read_config_text
from credd.config.settings import (
    DEFAULT_CREDENTIALS_MARGIN,
    DEFAULT_IDLE_CONNECTION,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LISTEN,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_WAITING_REQUESTS,
    DEFAULT_TOKEN_MARGIN,
    IAM_GRANTS,
    IDENTITY_CONTEXT_SCOPE,
    JWT_BEARER_GRANT,
    MAX_SECONDS,
    TOKEN_EXCHANGE_GRANT,
    ContainersSettings,
    IdentityEnhancedProfile,
    LogSettings,
    RefreshSettings,
    ServerSettings,
    TrustedIdentitySpec,
)
from credd.errors import ConfigError
from credd.files.paths import Paths, expand_path

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


class TomlReader:
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


def _path(table: TomlReader, key: str, value: str, home: Path) -> Path:
    if "\x00" in value:  # TOML allows "\u0000"; no file name does
        raise table.error(key, "a path cannot hold a NUL character")
    return expand_path(value, home)


def _parse_listen(reader: TomlReader) -> tuple[str, int]:
    listen: str = reader.get("listen", str, DEFAULT_LISTEN)
    host, sep, port_text = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not WHOLE_NUMBER.match(port_text) or not 0 <= int(port_text) <= 65535:
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


def _parse_container_listen(reader: TomlReader, server: tuple[str, int]) -> ContainersSettings:
    """``[containers] listen``: a link-local or loopback ``HOST:PORT``, or unset.

    Containers reach it over a bridge, and SDKs take plain HTTP only from loopback and
    the link-local agent addresses (protocols.md 8.2); any other address would put
    credentials on a network that more than this machine's containers can reach.
    """
    listen: str | None = reader.get("listen", str)
    if listen is None:
        return ContainersSettings()
    host, sep, port_text = listen.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if (
        not sep
        or not host
        or (":" in host and not bracketed)
        or not WHOLE_NUMBER.match(port_text)
        or not 1 <= int(port_text) <= 65535
    ):
        raise reader.error(
            "listen",
            f'expected HOST:PORT with a port from 1 to 65535, such as "169.254.170.2:9912", '
            f"found {listen!r}",
        )
    port = int(port_text)
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise reader.error(
            "listen", f"{host!r} is not an IP address (a name is not accepted here)"
        ) from None
    if not (address.is_link_local or address.is_loopback):
        raise reader.error(
            "listen",
            f"{host} is neither link-local (169.254.0.0/16, fe80::/10) nor loopback; credd "
            "serves containers only there (169.254.170.2 is the address SDKs expect)",
        )
    zoneless = isinstance(address, ipaddress.IPv6Address) and not address.scope_id
    if zoneless and address.is_link_local:
        raise reader.error(
            "listen", f"a fe80::/10 address needs its interface, such as [{host}%credd0]:{port}"
        )
    if (str(address), port) == server:
        raise reader.error("listen", "is the same address and port as [server] listen")
    return ContainersSettings(str(address), port)


@dataclass(frozen=True)
class TrustedIdentityTable:
    """One ``[profiles.NAME]`` table, before its references into the AWS config are checked."""

    spec: TrustedIdentitySpec
    #: what it is exchanged for; ``None``: it serves only its bearer token
    profile: IdentityEnhancedProfile | None
    table: TomlReader


def _required(table: TomlReader, key: str) -> str:
    value: str | None = table.get(key, str)
    if not value:
        raise table.missing(key)
    return value


def _assertion_command(table: TomlReader) -> tuple[str, ...] | None:
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


def _trusted_identity(table: TomlReader, name: str, home: Path) -> TrustedIdentityTable:
    """A ``type = "create-token-with-iam"`` table; invalid combinations name their key."""
    client_id = _required(table, "client_id")
    if not APPLICATION_ARN.match(client_id):
        raise table.error(
            "client_id",
            "expected an application ARN "
            f"(arn:aws:sso::ACCOUNT:application/ssoins-.../apl-...), found {client_id!r}",
        )
    region = _required(table, "sso_region")
    if not REGION.match(region):
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
    return TrustedIdentityTable(spec, profile, table)


def _identity_enhanced(
    table: TomlReader, name: str, source: str | None, role_arn: str
) -> IdentityEnhancedProfile:
    if not ROLE_ARN.match(role_arn):
        raise table.error("role_arn", f"not a role ARN: {role_arn!r}")
    session_name: str | None = table.get("role_session_name", str)
    if session_name is not None and not SESSION_NAME.match(session_name):
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
class CreddToml:
    server: ServerSettings
    containers: ContainersSettings
    refresh: RefreshSettings
    log: LogSettings
    #: the ``[profiles.NAME]`` tables, by name
    trusted: Mapping[str, TrustedIdentityTable]
    #: for errors found after reading (a prefetch naming no served profile, a name clash)
    refresh_table: TomlReader
    profiles_table: TomlReader


def read_credd_toml(paths: Paths) -> CreddToml:
    path = paths.credd_config_file
    text = read_config_text(path) or ""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _toml_error(path, text, exc) from exc

    top = TomlReader(path, text, (), data)
    server = TomlReader(path, text, ("server",), top.get("server", dict, {}))
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

    containers = TomlReader(path, text, ("containers",), top.get("containers", dict, {}))
    containers_settings = _parse_container_listen(containers, (host, port))
    containers.reject_unknown()

    refresh = TomlReader(path, text, ("refresh",), top.get("refresh", dict, {}))
    refresh_settings = RefreshSettings(
        token_margin_seconds=refresh.seconds("token_margin_seconds", DEFAULT_TOKEN_MARGIN),
        credentials_margin_seconds=refresh.seconds(
            "credentials_margin_seconds", DEFAULT_CREDENTIALS_MARGIN
        ),
        idle_timeout_seconds=refresh.seconds("idle_timeout_seconds", DEFAULT_IDLE_TIMEOUT),
        prefetch=frozenset(refresh.strings("prefetch")),
    )
    refresh.reject_unknown()

    log = TomlReader(path, text, ("log",), top.get("log", dict, {}))
    level: str = log.get("level", str, "info")
    if level not in {"debug", "info", "warning", "error"}:
        raise log.error("level", f"expected debug, info, warning or error, found {level!r}")
    fmt: str = log.get("format", str, "auto")
    if fmt not in {"auto", "console", "json"}:
        raise log.error("format", f"expected auto, console or json, found {fmt!r}")
    log.reject_unknown()

    profiles = TomlReader(path, text, ("profiles",), top.get("profiles", dict, {}))
    trusted: dict[str, TrustedIdentityTable] = {}
    for name in profiles.data:
        table = TomlReader(path, text, ("profiles", name), profiles.get(name, dict))
        kind = table.get("type", str)
        if kind is None:
            raise table.error("type", "missing: every [profiles.NAME] table names its type")
        if kind != TrustedIdentitySpec.kind:
            raise table.error("type", f"unknown profile type {kind!r}")
        trusted[name] = _trusted_identity(table, name, paths.home)
    top.reject_unknown()

    return CreddToml(
        server=ServerSettings(
            host,
            port,
            token_file or paths.default_token_file,
            max_connections=max_connections,
            max_waiting_requests=max_waiting,
            idle_connection_seconds=idle_connection,
        ),
        containers=containers_settings,
        refresh=refresh_settings,
        log=LogSettings(level=level, format=fmt),
        trusted=trusted,
        refresh_table=refresh,
        profiles_table=profiles,
    )
