"""Scoped tokens: a token that fetches one profile's credentials and nothing else.

The admin token (``[server] token_file``) unlocks every route and is the
``credd`` command's own. A *grant* is a scoped token: ``GET
/v1/credentials/PROFILE`` for its one profile, until it expires or is revoked
(interface.md, "Tokens"). ``credd env`` and ``credd exec`` hand one to a
process, ``credd grant`` prints one, ``credd revoke`` ends them.

**Stored hashed.** ``$XDG_STATE_HOME/credd/grants.json`` (0600) keeps each
grant's profile, times and the SHA-256 of its token, never the token. A token
is ``credd_`` and 256 bits from :func:`secrets.token_urlsafe`: nobody can search that space,
so one SHA-256 is as one-way as a slow password hash, and cheap enough for the
request path (one hash and one dictionary lookup, under a microsecond). The
alternative, tokens derived (HMAC) from a secret kept 0600 beside the file,
would leave a key whose theft forges every token; a hash leaves nothing to
steal, and a copy of the file grants nothing. The file outlives the daemon, so
what ``credd env`` printed keeps working across restarts until revoked.

Writers (the CLI) change the file under a cross-process ``flock`` and replace
it atomically; the daemon only reads it: at start, when the shared watcher says
it changed, and when a ``credd`` command that just wrote it asks
(``POST /v1/grants/sync``), so that a revoke has taken effect when it returns.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from credd.errors import CreddError
from credd.files.store import (
    CacheCorrupt,
    Fingerprint,
    JsonCacheDir,
    format_timestamp,
    parse_timestamp,
)

log = structlog.get_logger(__name__)

#: 256 bits of randomness (interface.md: at least 256)
TOKEN_BYTES = 32
#: what every scoped token starts with: it never begins with ``-`` (which a command line
#: would take for an option: ``credd revoke TOKEN``), and secret scanners can tell it
TOKEN_PREFIX = "credd_"  # noqa: S105  # a public prefix, not a secret
#: the length of a scoped token: the prefix and 43 characters of URL-safe base64
TOKEN_LENGTH = len(TOKEN_PREFIX) + 43
#: what ``credd env`` and ``credd exec`` hand out, what ``credd grant`` prints, and
#: what ``credd container env`` gives a container
PURPOSES = ("env", "grant", "container")
#: the grants file is ``<state dir>/grants.json``
GRANTS_FILE = "grants"
FORMAT_VERSION = 1
#: hex characters of a grant's id: 48 bits of its token's hash, unique enough to name it
ID_LENGTH = 12
_START_OVER = "run: credd revoke --all (it starts the file anew; the bad one is kept aside)"


def digest(token: str | bytes) -> str:
    """The SHA-256 of a token, in hex: what the grants file keeps."""
    raw = token.encode("utf-8", "surrogateescape") if isinstance(token, str) else token
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class Grant:
    """One scoped token, as the grants file knows it: never the token itself."""

    profile: str
    #: SHA-256 of the token, hex
    digest: str
    created: datetime
    expires: datetime | None
    purpose: str

    @property
    def id(self) -> str:
        """A short name for the grant (status, revoke): the digest's first characters."""
        return self.digest[:ID_LENGTH]

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and now >= self.expires

    def to_json(self) -> dict[str, Any]:
        return {
            "profile": self.profile,
            "sha256": self.digest,
            "created": format_timestamp(self.created),
            "expires": format_timestamp(self.expires) if self.expires else None,
            "purpose": self.purpose,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Grant:
        profile, sha, purpose = data.get("profile"), data.get("sha256"), data.get("purpose")
        if not isinstance(profile, str) or not profile:
            raise ValueError("profile is not a string")
        if not isinstance(sha, str) or len(sha) != 64 or not _is_hex(sha):
            raise ValueError("sha256 is not a SHA-256 in hex")
        if purpose not in PURPOSES:
            raise ValueError(f"purpose is not one of {', '.join(PURPOSES)}")
        expires = data.get("expires")
        return cls(
            profile=profile,
            digest=sha,
            created=parse_timestamp(data.get("created")),
            expires=parse_timestamp(expires) if expires is not None else None,
            purpose=str(purpose),
        )


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def mint(
    profile: str, *, now: datetime, purpose: str, ttl_seconds: float | None = None
) -> tuple[Grant, str]:
    """A new grant for ``profile`` and its token (kept nowhere: the caller hands it out)."""
    if purpose not in PURPOSES:
        raise ValueError(purpose)
    if ttl_seconds is not None and not ttl_seconds > 0:
        raise ValueError("a grant's lifetime must be positive")
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    # whole seconds, as the file keeps them; an expiry rounded up, never cut short
    created = now.replace(microsecond=0)
    expires = None
    if ttl_seconds is not None:
        expires = now + timedelta(seconds=ttl_seconds)
        if expires.microsecond:
            expires = expires.replace(microsecond=0) + timedelta(seconds=1)
    return Grant(profile, digest(token), created, expires, purpose), token


class GrantsError(CreddError):
    """The grants file cannot be read."""

    code = "GrantsError"

    def __init__(
        self, message: str, *, hint: str | None = None, fingerprint: Fingerprint | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        #: what was read, when it came from a file: the same bad file reads the same
        self.fingerprint = fingerprint


def parse_grants(data: Mapping[str, Any], path: Path) -> list[Grant]:
    """The grants of the file's JSON object; :class:`CacheCorrupt` if it is not one credd wrote."""
    entries = data.get("grants")
    if not isinstance(entries, list):
        raise CacheCorrupt(path, "grants is not a list")
    grants = []
    for index, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise ValueError("not an object")
            grants.append(Grant.from_json(entry))
        except ValueError as exc:
            raise CacheCorrupt(path, f"grant {index + 1}: {exc}") from exc
    return grants


class GrantStore:
    """The grants file: read by anyone, changed only under the cross-process lock."""

    def __init__(self, files: JsonCacheDir, lock_file: Path) -> None:
        self.files = files
        self._lock_file = lock_file

    @property
    def path(self) -> Path:
        return self.files.path(GRANTS_FILE)

    def load(self) -> list[Grant]:
        """Every grant on file; :class:`GrantsError` if the file cannot be read."""
        return self.load_entry()[0]

    def load_entry(self) -> tuple[list[Grant], Fingerprint]:
        """Every grant on file and the fingerprint of the bytes read.

        :class:`GrantsError` if the file cannot be read (a symlink, a FIFO, not
        JSON, not what credd writes), with the fingerprint on ``fingerprint``.
        """
        try:
            data, fingerprint = self.files.read_entry(GRANTS_FILE)
        except CacheCorrupt as exc:
            raise GrantsError(exc.message, hint=_START_OVER, fingerprint=exc.fingerprint) from exc
        try:
            return ([] if data is None else parse_grants(data, self.path)), fingerprint
        except CacheCorrupt as exc:
            raise GrantsError(exc.message, hint=_START_OVER, fingerprint=fingerprint) from exc

    @contextlib.contextmanager
    def editing(self, now: datetime, *, start_over: bool = False) -> Iterator[list[Grant]]:
        """The grants, to change in place under the lock; written back (expired ones
        dropped) when the block ends without an error, if anything changed.

        An unreadable file raises :class:`GrantsError` rather than losing every
        grant in it, unless ``start_over``: then the edit begins with none, and the
        write keeps a copy of the unreadable file in credd's ``unreadable`` directory.
        """
        with _flocked(self._lock_file):
            unreadable = False
            try:
                grants = self.load()
            except GrantsError:
                if not start_over:
                    raise
                grants, unreadable = [], True
            before = list(grants)
            yield grants
            kept = [g for g in grants if not g.expired(now)]
            if kept == before and not unreadable:
                return  # nothing changed: no write, and no reload in the daemon
            document = {"version": FORMAT_VERSION, "grants": [g.to_json() for g in kept]}
            self.files.write(GRANTS_FILE, document, parse=parse_grants)

    def issue(
        self,
        profile: str,
        *,
        now: datetime,
        purpose: str,
        ttl_seconds: float | None = None,
    ) -> tuple[Grant, str]:
        """A new grant for ``profile``, on file, and its token."""
        grant, token = mint(profile, now=now, purpose=purpose, ttl_seconds=ttl_seconds)
        with self.editing(now) as grants:
            grants.append(grant)
        return grant, token

    def revoke(
        self,
        *,
        now: datetime,
        token: str | None = None,
        profile: str | None = None,
        everything: bool = False,
    ) -> list[Grant]:
        """End grants by token (or a grant id), by profile, or all; returns those ended
        (expired ones are dropped too, but not returned)."""
        ended: list[Grant] = []
        with self.editing(now, start_over=everything) as grants:
            kept = []
            for grant in grants:
                if (
                    everything
                    or (profile is not None and grant.profile == profile)
                    or (token is not None and names(grant, token))
                ):
                    ended.append(grant)
                else:
                    kept.append(grant)
            grants[:] = kept
        return [g for g in ended if not g.expired(now)]

    def find(self, token: str) -> Grant | None:
        """The grant on file whose token is ``token`` (for ``credd env``'s reuse)."""
        try:
            return find(self.load(), token)
        except GrantsError:
            return None


def find(grants: Iterable[Grant], token: str) -> Grant | None:
    """The grant among ``grants`` whose token is ``token``."""
    wanted = digest(token)
    return next((g for g in grants if hmac.compare_digest(g.digest, wanted)), None)


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (the CLI's short, blocking edits)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def names(grant: Grant, given: str) -> bool:
    """Whether ``given`` is the grant's token, or its id as ``credd status`` shows it."""
    if hmac.compare_digest(grant.digest, digest(given)):
        return True
    return len(given) == ID_LENGTH and hmac.compare_digest(grant.id, given)


def describe(
    grants: Iterable[Grant], now: datetime, last_used: Mapping[str, datetime] | None = None
) -> list[dict[str, Any]]:
    """What ``credd status`` lists of each live grant: never its token."""
    used = last_used or {}
    return [
        {
            "id": g.id,
            "profile": g.profile,
            "purpose": g.purpose,
            "created": format_timestamp(g.created),
            "expires": format_timestamp(g.expires) if g.expires else None,
            "last_used": format_timestamp(used[g.id]) if g.id in used else None,
        }
        for g in sorted(grants, key=lambda g: (g.profile, g.created, g.id))
        if not g.expired(now)
    ]


class Grants:
    """The daemon's index of live grants: what the request path checks a token against."""

    def __init__(self, grants: Iterable[Grant] = ()) -> None:
        self._by_digest: dict[bytes, Grant] = {}
        #: when each grant (by id) last fetched credentials, since the daemon started
        self.last_used: dict[str, datetime] = {}
        self.replace(grants)

    def __len__(self) -> int:
        return len(self._by_digest)

    def replace(self, grants: Iterable[Grant]) -> None:
        self._by_digest = {bytes.fromhex(g.digest): g for g in grants}
        ids = {g.id for g in self._by_digest.values()}
        self.last_used = {i: when for i, when in self.last_used.items() if i in ids}

    def check(self, token: bytes, now: datetime) -> Grant | None:
        """The live grant ``token`` belongs to, or ``None``.

        A dictionary lookup by the token's SHA-256: the time it takes depends on
        the hash, not on how much of a guess matches a real token.
        """
        grant = self._by_digest.get(hashlib.sha256(token).digest())
        if grant is None or (grant.expires is not None and now >= grant.expires):
            return None
        return grant

    def used(self, grant: Grant, now: datetime) -> None:
        self.last_used[grant.id] = now

    def describe(self, now: datetime) -> list[dict[str, Any]]:
        """What ``credd status`` lists: every live grant, without its token."""
        return describe(self._by_digest.values(), now, self.last_used)


class GrantsKeeper:
    """The daemon's side of the file: keeps :class:`Grants` in step with it.

    Re-reads happen in a worker thread (the file is small, but a read is still
    blocking I/O) and one at a time. An unreadable file is logged once per
    distinct content and changes nothing: the grants held stay in force, so a
    half-edited file never locks every SDK out.
    """

    def __init__(self, store: GrantStore, grants: Grants) -> None:
        self.store = store
        self.grants = grants
        #: why the file could not be read last time, or None
        self.problem: str | None = None
        self._seen: Fingerprint | None = None
        self._changed = anyio.Event()
        self._lock = anyio.Lock()

    def on_change(self, name: str | None) -> None:
        """The watcher's callback for the state directory."""
        if name is None or name == self.store.path.name:
            self._changed.set()

    async def reload(self) -> int:
        """Read the file again now (unless it is the same as last time); the grants held."""
        async with self._lock:
            try:
                grants, fingerprint = await anyio.to_thread.run_sync(self.store.load_entry)
            except GrantsError as exc:
                seen = exc.fingerprint
                if self.problem is None or seen is None or seen != self._seen:
                    # one clear line; the grants already held are kept
                    log.error(  # noqa: TRY400  # no traceback: the message says it all
                        "grants_unreadable", error=exc.message, kept=len(self.grants)
                    )
                self.problem, self._seen = exc.message, seen
                return len(self.grants)
            if fingerprint != self._seen or self.problem is not None:
                self.grants.replace(grants)
                self._seen, self.problem = fingerprint, None
                log.debug("grants_loaded", grants=len(grants))
            return len(self.grants)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Load the file, then re-read it each time the watcher says it changed."""
        await self.reload()
        task_status.started()
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()
            await self.reload()
