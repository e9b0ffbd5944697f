"""The on-disk caches credd shares with the AWS CLI and SDKs.

Files are written the way botocore's ``JSONFileCache`` writes them (protocols.md
6): a temporary file in the same directory with mode 0600, ``fsync``, then an
atomic ``os.replace``, so a concurrent reader never sees half a file. Writers
(credd's daemon and its CLI) take a cross-process ``flock`` on a lock file kept
*outside* the AWS directories (``aws sso logout`` parses every file in
``~/.aws/sso/cache``). Reads are lenient about the timestamp forms other tools
write, and a file that cannot be parsed is never silently overwritten: a copy
goes to credd's state directory first.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import anyio

from credd.errors import CreddError
from credd.secret import Secret

_LOCK_POLL_SECONDS = 0.02


class CacheCorrupt(CreddError):
    """A cache file exists but is not something credd can read."""

    code = "CacheCorrupt"

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"cache file {path} cannot be read: {problem}")
        self.path = path


# --------------------------------------------------------------------------- timestamps


def parse_timestamp(value: object) -> datetime:
    """Read the UTC timestamps botocore (``Z``), JS (``.000Z``) and Go (``+00:00``) write."""
    if not isinstance(value, str):
        raise ValueError(f"expected a timestamp string, found {type(value).__name__}")
    parsed = datetime.fromisoformat(value.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:  # year 1 or 9999 shifted past the calendar's ends
        raise ValueError(f"timestamp out of range: {value[:40]!r}") from exc


def format_timestamp(when: datetime) -> str:
    """The one form every reader accepts: ``YYYY-MM-DDTHH:MM:SSZ`` (protocols.md 6.1, 8.3)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha1_name(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8"), usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------- files


TEMPORARY_SUFFIX = ".tmp"
#: ``.<target>.<writer pid>.<random>.tmp``, what :func:`atomic_write` writes before the rename
_TEMPORARY = re.compile(r"\.(?P<target>.+)\.(?P<pid>[0-9]+)\.[A-Za-z0-9_]+\.tmp")


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that no reader ever sees half a file.

    A temporary file in the same directory (made 0600, then given ``mode``),
    fsync, ``os.replace``, then the directory fsynced; a missing directory is
    made 0700. The temporary file is removed if anything fails.
    """
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The writer's pid in the name: a file left by a writer killed half-way
    # (kill -9, power loss) is told apart from one being written (sweep_temporary).
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMPORARY_SUFFIX
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


#: reads a cache entry's JSON object into what it holds; :class:`CacheCorrupt` if it cannot
Parser = Callable[[Mapping[str, Any], Path], object]


class JsonCacheDir:
    """One directory of ``<name>.json`` files, with atomic writes and cross-process locks."""

    def __init__(self, directory: Path, lock_dir: Path, quarantine_dir: Path) -> None:
        self.directory = directory
        self._lock_dir = lock_dir
        self._quarantine_dir = quarantine_dir
        self._local_locks: dict[str, anyio.Lock] = {}

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def read(self, name: str) -> dict[str, Any] | None:
        """The parsed object, ``None`` when absent; :class:`CacheCorrupt` when unreadable."""
        path = self.path(name)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheCorrupt(path, exc.strerror or str(exc)) from exc
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: [[[[... nested too deep
            raise CacheCorrupt(path, "not valid JSON") from exc
        if not isinstance(data, dict):
            raise CacheCorrupt(path, "not a JSON object")
        return data

    def mtime(self, name: str) -> float | None:
        try:
            return self.path(name).stat().st_mtime
        except OSError:
            return None

    def write(self, name: str, data: Mapping[str, Any], *, parse: Parser | None = None) -> None:
        """Atomically replace ``name`` (mode 0600), keeping a copy of an unreadable original.

        ``parse``: what reads the entry (raising :class:`CacheCorrupt`); a JSON object
        it refuses is as unreadable as a file that is not JSON at all.
        """
        self._quarantine_if_corrupt(name, parse)
        atomic_write(self.path(name), json.dumps(data, indent=None).encode("utf-8"))

    def sweep_temporary(self) -> list[str]:
        """Remove temporary files a killed writer left here (:func:`sweep_temporary`)."""
        return sweep_temporary(self.directory)

    def delete(self, name: str) -> bool:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            return False
        _fsync_directory(self.directory)
        return True

    def _quarantine_if_corrupt(self, name: str, parse: Parser | None) -> None:
        try:
            data = self.read(name)
            if data is not None and parse is not None:
                parse(data, self.path(name))
        except CacheCorrupt:
            path = self.path(name)
            self._quarantine_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
            with contextlib.suppress(OSError):
                target = self._quarantine_dir / f"{path.name}.{stamp}.unreadable"
                target.write_bytes(path.read_bytes())
                target.chmod(0o600)

    @contextlib.asynccontextmanager
    async def lock(
        self, name: str, *, on_wait: Callable[[], None] | None = None
    ) -> AsyncIterator[None]:
        """Hold the cross-process lock for ``name`` (polls ``flock``, so it stays cancellable).

        ``on_wait`` is called once if somebody else holds it.
        """
        local = self._local_locks.setdefault(name, anyio.Lock())
        if local.locked() and on_wait is not None:
            on_wait()
            on_wait = None
        async with local:
            self._lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self._lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                # flock has no async form; polling keeps the wait cancellable.
                while not _try_flock(fd):
                    if on_wait is not None:
                        on_wait()
                        on_wait = None
                    await anyio.sleep(_LOCK_POLL_SECONDS)
                yield
            finally:
                os.close(fd)  # closing the descriptor releases the flock


def sweep_temporary(directory: Path) -> list[str]:
    """Remove what :func:`atomic_write` left in ``directory`` when its writer was killed.

    A temporary file holds a whole or half token, and tools that read every
    file of a cache directory (``aws sso logout``) would find it; the target
    file itself is always whole, old or new. Only files whose writer process
    is gone are removed: one being written now is left alone. Returns the
    names removed.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in names:
        match = _TEMPORARY.fullmatch(name)
        if match is None or _process_alive(int(match["pid"])):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / name)
            removed.append(name)
    if removed:
        _fsync_directory(directory)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # somebody else's process: not ours to judge
    return True


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    return True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Token(Protocol):
    def to_json(self) -> dict[str, Any]: ...


TokenT = TypeVar("TokenT", bound=_Token)


class TokenCache(abc.ABC, Generic[TokenT]):
    """Typed access to a directory of token files: one per key, named by a hash of the key."""

    def __init__(self, files: JsonCacheDir) -> None:
        self.files = files

    @staticmethod
    @abc.abstractmethod
    def token_name(key: str) -> str:
        """The file's name (without ``.json``) for ``key``."""

    @abc.abstractmethod
    def _parse(self, data: Mapping[str, Any], path: Path) -> TokenT:
        """The token in ``data``; :class:`CacheCorrupt` (naming ``path``) if there is none."""

    def load_token(self, key: str) -> TokenT | None:
        name = self.token_name(key)
        data = self.files.read(name)
        return None if data is None else self._parse(data, self.files.path(name))

    def save_token(self, key: str, token: TokenT) -> None:
        self.files.write(self.token_name(key), token.to_json(), parse=self._parse)

    def delete_token(self, key: str) -> bool:
        return self.files.delete(self.token_name(key))

    def token_mtime(self, key: str) -> float | None:
        return self.files.mtime(self.token_name(key))

    def lock(self, key: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self.files.lock(self.token_name(key))


# --------------------------------------------------------------------------- SSO tokens


_TOKEN_FIELDS = frozenset(
    {
        "startUrl",
        "region",
        "accessToken",
        "expiresAt",
        "clientId",
        "clientSecret",
        "registrationExpiresAt",
        "refreshToken",
    }
)


@dataclass(frozen=True)
class SsoToken:
    """One ``~/.aws/sso/cache/<sha1>.json`` entry (protocols.md 6.1)."""

    access_token: Secret
    expires_at: datetime
    start_url: str | None = None
    region: str | None = None
    client_id: str | None = None
    client_secret: Secret | None = None
    registration_expires_at: datetime | None = None
    refresh_token: Secret | None = None
    #: fields other tools wrote that credd does not know; written back untouched
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def can_refresh(self, now: datetime) -> bool:
        return bool(
            self.refresh_token
            and self.client_id
            and self.client_secret
            and (self.registration_expires_at is None or self.registration_expires_at > now)
        )

    def with_access_token(
        self, access_token: Secret, expires_at: datetime, refresh_token: Secret | None
    ) -> SsoToken:
        return replace(
            self,
            access_token=access_token,
            expires_at=expires_at,
            refresh_token=refresh_token or self.refresh_token,
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path) -> SsoToken:
        try:
            access_token = data["accessToken"]
            if not isinstance(access_token, str) or not access_token:
                raise ValueError("accessToken is not a string")
            return cls(
                access_token=Secret(access_token),
                expires_at=parse_timestamp(data["expiresAt"]),
                start_url=_opt_str(data, "startUrl"),
                region=_opt_str(data, "region"),
                client_id=_opt_str(data, "clientId"),
                client_secret=_opt_secret(data, "clientSecret"),
                registration_expires_at=(
                    parse_timestamp(data["registrationExpiresAt"])
                    if data.get("registrationExpiresAt")
                    else None
                ),
                refresh_token=_opt_secret(data, "refreshToken"),
                extra={k: v for k, v in data.items() if k not in _TOKEN_FIELDS},
            )
        except KeyError as exc:
            raise CacheCorrupt(path, f"{exc.args[0]} is missing") from exc
        except (ValueError, TypeError) as exc:
            raise CacheCorrupt(path, str(exc)) from exc

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        if self.start_url is not None:
            out["startUrl"] = self.start_url
        if self.region is not None:
            out["region"] = self.region
        out["accessToken"] = self.access_token.reveal()
        out["expiresAt"] = format_timestamp(self.expires_at)
        if self.client_id is not None:
            out["clientId"] = self.client_id
        if self.client_secret is not None:
            out["clientSecret"] = self.client_secret.reveal()
        if self.registration_expires_at is not None:
            out["registrationExpiresAt"] = format_timestamp(self.registration_expires_at)
        if self.refresh_token is not None:
            out["refreshToken"] = self.refresh_token.reveal()
        return out


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} is not a string")
    return value


def _opt_secret(data: Mapping[str, Any], key: str) -> Secret | None:
    value = _opt_str(data, key)
    return Secret(value) if value else None


@dataclass(frozen=True)
class Registration:
    """An OIDC client registration, cached as the AWS CLI caches it (protocols.md 6.1)."""

    client_id: str
    client_secret: Secret
    expires_at: datetime
    scopes: tuple[str, ...] | None
    grant_types: tuple[str, ...] | None

    @property
    def for_auth_code(self) -> bool:
        return bool(self.grant_types and "authorization_code" in self.grant_types)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "clientId": self.client_id,
            "clientSecret": self.client_secret.reveal(),
            "expiresAt": format_timestamp(self.expires_at),
        }
        if self.scopes is not None:
            out["scopes"] = list(self.scopes)
        if self.grant_types is not None:
            out["grantTypes"] = list(self.grant_types)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path) -> Registration:
        try:
            secret = data["clientSecret"]
            client_id = data["clientId"]
            if not isinstance(secret, str) or not isinstance(client_id, str):
                raise ValueError("clientId and clientSecret must be strings")
            scopes, grants = data.get("scopes"), data.get("grantTypes")
            return cls(
                client_id=client_id,
                client_secret=Secret(secret),
                expires_at=parse_timestamp(data["expiresAt"]),
                scopes=tuple(map(str, scopes)) if isinstance(scopes, list) else None,
                grant_types=tuple(map(str, grants)) if isinstance(grants, list) else None,
            )
        except KeyError as exc:
            raise CacheCorrupt(path, f"{exc.args[0]} is missing") from exc
        except (ValueError, TypeError) as exc:
            raise CacheCorrupt(path, str(exc)) from exc


def registration_cache_name(
    start_url: str, region: str, scopes: tuple[str, ...] | None, session_name: str | None
) -> str:
    """The AWS CLI v2's registration cache key (``BaseSSOTokenFetcher._registration_cache_key``)."""
    args = {
        "tool": "botocore",
        "startUrl": start_url,
        "region": region,
        "scopes": list(scopes) if scopes else None,
        "session_name": session_name,
    }
    return sha1_name(json.dumps(args, sort_keys=True))


class SsoCache(TokenCache[SsoToken]):
    """Typed access to ``~/.aws/sso/cache``: tokens by session, registrations by key."""

    @staticmethod
    def token_name(key: str) -> str:
        """``sha1(cache_key)``: the session name, or a legacy session's start URL (6.1)."""
        return sha1_name(key)

    def _parse(self, data: Mapping[str, Any], path: Path) -> SsoToken:
        return SsoToken.from_json(data, path)

    def load_registration(self, name: str) -> Registration | None:
        try:
            data = self.files.read(name)
            return None if data is None else Registration.from_json(data, self.files.path(name))
        except CacheCorrupt:
            return None  # a registration is cheap to make again

    def save_registration(self, name: str, registration: Registration) -> None:
        self.files.write(name, registration.to_json(), parse=Registration.from_json)


# --------------------------------------------------------------------------- Sign-In logins


def sha256_name(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


_LOGIN_FIELDS = frozenset(
    {"accessToken", "tokenType", "clientId", "refreshToken", "idToken", "dpopKey"}
)
_LOGIN_CREDENTIAL_FIELDS = frozenset(
    {"accessKeyId", "secretAccessKey", "sessionToken", "accountId", "expiresAt"}
)


@dataclass(frozen=True)
class LoginToken:
    """One ``~/.aws/login/cache/<sha256>.json`` entry, written by ``aws login`` or credd (6.2).

    Its "access token" is a set of SigV4 credentials (at most 15 minutes), renewed
    with the DPoP-bound ``refresh_token`` and the ``dpop_key`` (a PEM string).
    """

    access_key_id: str
    secret_access_key: Secret
    session_token: Secret
    account_id: str | None
    expires_at: datetime
    client_id: str
    dpop_key: Secret
    refresh_token: Secret | None = None
    token_type: str | None = None
    id_token: Secret | None = None
    #: fields other tools wrote that credd does not know; written back untouched
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    credential_extra: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def with_credentials(
        self,
        *,
        access_key_id: str,
        secret_access_key: Secret,
        session_token: Secret,
        expires_at: datetime,
        refresh_token: Secret,
    ) -> LoginToken:
        """A refresh's result: new credentials and refresh token, everything else kept (6.2)."""
        return replace(
            self,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            session_token=session_token,
            expires_at=expires_at,
            refresh_token=refresh_token,
        )

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: Path) -> LoginToken:
        try:
            creds = data["accessToken"]
            if not isinstance(creds, dict):
                raise ValueError("accessToken is not an object")
            keys = [creds[k] for k in ("accessKeyId", "secretAccessKey", "sessionToken")]
            if not all(isinstance(k, str) and k for k in keys):
                raise ValueError("accessToken lacks accessKeyId, secretAccessKey or sessionToken")
            client_id, dpop_key = data["clientId"], data["dpopKey"]
            if not isinstance(client_id, str) or not isinstance(dpop_key, str) or not dpop_key:
                raise ValueError("clientId and dpopKey must be strings")
            account = creds.get("accountId")
            return cls(
                access_key_id=keys[0],
                secret_access_key=Secret(keys[1]),
                session_token=Secret(keys[2]),
                account_id=str(account) if account else None,
                expires_at=parse_timestamp(creds["expiresAt"]),
                client_id=client_id,
                dpop_key=Secret(dpop_key),
                refresh_token=_opt_secret(data, "refreshToken"),
                token_type=_opt_str(data, "tokenType"),
                id_token=_opt_secret(data, "idToken"),
                extra={k: v for k, v in data.items() if k not in _LOGIN_FIELDS},
                credential_extra={
                    k: v for k, v in creds.items() if k not in _LOGIN_CREDENTIAL_FIELDS
                },
            )
        except KeyError as exc:
            raise CacheCorrupt(path, f"{exc.args[0]} is missing") from exc
        except (ValueError, TypeError) as exc:
            raise CacheCorrupt(path, str(exc)) from exc

    def to_json(self) -> dict[str, Any]:
        """The AWS CLI's layout and key order (``_exchange_auth_code_for_access_token``)."""
        creds: dict[str, Any] = {
            "accessKeyId": self.access_key_id,
            "secretAccessKey": self.secret_access_key.reveal(),
            "sessionToken": self.session_token.reveal(),
        }
        if self.account_id is not None:
            creds["accountId"] = self.account_id
        creds["expiresAt"] = format_timestamp(self.expires_at)
        creds.update(self.credential_extra)
        out: dict[str, Any] = {"accessToken": creds}
        if self.token_type is not None:
            out["tokenType"] = self.token_type
        out["clientId"] = self.client_id
        if self.refresh_token is not None:
            out["refreshToken"] = self.refresh_token.reveal()
        if self.id_token is not None:
            out["idToken"] = self.id_token.reveal()
        out["dpopKey"] = self.dpop_key.reveal()
        out.update(self.extra)
        return out


class LoginCache(TokenCache[LoginToken]):
    """Typed access to ``~/.aws/login/cache``: one file per ``login_session`` (protocols.md 6.2)."""

    @staticmethod
    def token_name(key: str) -> str:
        """``sha256(login_session)``, the AWS CLI's ``generate_login_cache_key``."""
        return sha256_name(key)

    def _parse(self, data: Mapping[str, Any], path: Path) -> LoginToken:
        return LoginToken.from_json(data, path)
