"""The on-disk caches credd shares with the AWS CLI and SDKs.

Files are written the way botocore's ``JSONFileCache`` writes them (protocols.md
6): a temporary file in the same directory with mode 0600, ``fsync``, then an
atomic ``os.replace``, so a concurrent reader never sees half a file. Writers
(credd's daemon and its CLI) take a cross-process ``flock`` on a lock file kept
*outside* the AWS directories (``aws sso logout`` parses every file in
``~/.aws/sso/cache``). Reads are lenient about the timestamp forms other tools
write, and a file that cannot be parsed is never silently overwritten: a copy
goes to credd's state directory first.

A refresh token is spent the moment it is used, so nothing here may lose one
(issue 10):

- A write has two phases. :meth:`JsonCacheDir.prepare` creates the temporary
  file and sets its space aside *before* the caller goes upstream, so a
  read-only or full filesystem fails while the old token is still good;
  :meth:`PendingWrite.commit` fills it in.
- Compare and swap: botocore writes without credd's lock, so ``commit`` is
  given the :class:`Fingerprint` of what the caller read and keeps the other
  program's file (:class:`CacheChanged`) if the file no longer holds it.
- A token that cannot be written is rescued: a 0600 copy in credd's state
  directory, which a restarted daemon reads back.

Every read is bounded (issue 11): ``O_NOFOLLOW | O_NONBLOCK``, ``fstat``, at
most :data:`MAX_CACHE_BYTES`, so a FIFO, a symlink or a huge file at a cache
path can neither hang nor bloat the daemon, and a symlink is never written
through (``os.replace`` replaces the link itself). All I/O here is blocking and
bounded; the daemon calls it from a worker thread.
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
import stat
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

import anyio

from credd.errors import CreddError
from credd.secret import Secret

_LOCK_POLL_SECONDS = 0.02

#: the largest cache file credd reads: token files are a few KiB (protocols.md 6)
MAX_CACHE_BYTES = 1024 * 1024


@dataclass(frozen=True, repr=False)
class Fingerprint:
    """What a cache file held when it was read: the sha256 of its bytes, ``None`` if absent.

    Equal fingerprints mean the same bytes, so a caller can tell "still the same
    torn file" from "another program wrote it". A path holding no bytes to read
    (a FIFO, a symlink, a directory, a read error) gets the digest of a marker
    naming what is there.
    """

    digest: bytes | None

    def __repr__(self) -> str:
        # a hash of a token file gives nothing away, but a prefix is all a log needs
        shown = "absent" if self.digest is None else self.digest.hex()[:12]
        return f"Fingerprint({shown})"


class CacheCorrupt(CreddError):
    """A cache file exists but is not something credd can read."""

    code = "CacheCorrupt"

    def __init__(self, path: Path, problem: str, *, fingerprint: Fingerprint | None = None) -> None:
        super().__init__(f"cache file {path} cannot be read: {problem}")
        self.path = path
        #: what was read, when it came from a file: the same torn file reads the same
        self.fingerprint = fingerprint


#: what to check, by errno, when a cache file cannot be written; {directory} is filled in
_WRITE_HINTS = {
    errno.EROFS: "the filesystem holding {directory} is mounted read-only: remount it read-write",
    errno.ENOSPC: "the filesystem holding {directory} is full: free some space",
    errno.EDQUOT: "your disk quota is used up: free some space",
    errno.EACCES: "check the owner and permissions of {directory}",
    errno.EPERM: "check the owner and permissions of {directory}",
    errno.EIO: "the disk reported an I/O error: check the device (dmesg)",
    errno.EISDIR: "something other than a file is in the way: move it aside",
}
_WRITE_HINT = "check free space, permissions, and whether {directory} is on a read-only mount"


class CacheWriteError(CreddError):
    """A cache file could not be written; ``errno`` and ``path`` say why and where."""

    code = "CacheWriteError"

    def __init__(self, path: Path, error: OSError) -> None:
        reason = error.strerror or type(error).__name__
        name = errno.errorcode.get(error.errno) if error.errno else None
        hint = _WRITE_HINTS.get(error.errno or 0, _WRITE_HINT)
        super().__init__(
            f"cannot write {path}: {reason}" + (f" ({name})" if name else ""),
            hint=hint.format(directory=path.parent),
        )
        self.path = path
        self.errno = error.errno


class CacheChanged(CreddError):
    """Another program replaced a cache file after credd read it: theirs is kept."""

    code = "CacheChanged"

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"cache file {path} was changed by another program while credd was writing it",
            hint="credd keeps what the other program wrote and reads it again",
        )
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


# --------------------------------------------------------------------------- reads

# O_NOFOLLOW: a symlink at a cache path is refused (ELOOP), never followed.
# O_NONBLOCK: opening a FIFO does not wait for a writer. O_NOCTTY: a terminal
# swapped in at the path never becomes the daemon's controlling terminal.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_READ_CHUNK = 64 * 1024

_FILE_KINDS = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


@dataclass(frozen=True)
class _Found:
    """What one bounded read of a cache path found."""

    #: the bytes read (at most MAX_CACHE_BYTES + 1); None when there were none to read
    data: bytes | None
    #: why the file cannot be used at all; None when ``data`` is worth parsing
    problem: str | None
    fingerprint: Fingerprint


def _marker(what: bytes) -> Fingerprint:
    # starts with NUL bytes, which no JSON document does: never the digest of a cache file
    return Fingerprint(hashlib.sha256(b"\0\0credd\0" + what).digest())


def _read_bounded(path: Path) -> _Found:
    """Read ``path`` without following a symlink, waiting on a FIFO or reading a huge file whole.

    Never raises: what cannot be read is described in the result.
    """
    try:
        # Not regular: never opened at all. Opening a FIFO releases a writer
        # blocked on its other end, and opening a device can act on it.
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            return _not_regular(path, mode)
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return _Found(None, None, Fingerprint(None))
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # swapped for a symlink since the lstat
            return _not_regular(path, stat.S_IFLNK)
        if exc.errno == errno.ENXIO:  # swapped for a socket, which open() refuses
            return _not_regular(path, stat.S_IFSOCK)
        return _failed(exc)
    try:
        # the open file itself, not the lstat above: the path may have been swapped since
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return _not_regular(path, mode)
        data = _read_at_most(fd, MAX_CACHE_BYTES + 1)
    except OSError as exc:
        return _failed(exc)
    finally:
        os.close(fd)
    fingerprint = Fingerprint(hashlib.sha256(data).digest())
    if len(data) > MAX_CACHE_BYTES:
        return _Found(data, f"it is larger than {MAX_CACHE_BYTES} bytes", fingerprint)
    return _Found(data, None, fingerprint)


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, _READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _not_regular(path: Path, mode: int) -> _Found:
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        # Where it points goes into the marker: a link re-pointed elsewhere is a change.
        with contextlib.suppress(OSError):
            return _Found(
                None, "it is a symbolic link", _marker(b"link " + os.readlink(bytes(path)))
            )
        return _Found(None, "it is a symbolic link", _marker(b"link"))
    name = _FILE_KINDS.get(kind, "of an unknown kind")
    return _Found(None, f"it is not a regular file ({name})", _marker(name.encode()))


def _failed(exc: OSError) -> _Found:
    code = errno.errorcode.get(exc.errno or 0, "unknown")
    return _Found(None, exc.strerror or code, _marker(b"error " + code.encode()))


def _decode(path: Path, found: _Found) -> dict[str, Any] | None:
    """The JSON object ``found`` holds, ``None`` if the file was absent; else CacheCorrupt."""
    if found.problem is not None:
        raise CacheCorrupt(path, found.problem, fingerprint=found.fingerprint)
    if found.data is None:
        return None
    try:
        data = json.loads(found.data)
    except (ValueError, RecursionError) as exc:  # RecursionError: [[[[... nested too deep
        raise CacheCorrupt(path, "not valid JSON", fingerprint=found.fingerprint) from exc
    if not isinstance(data, dict):
        raise CacheCorrupt(path, "not a JSON object", fingerprint=found.fingerprint)
    return data


#: reads a cache entry's JSON object into what it holds; :class:`CacheCorrupt` if it cannot
Parser = Callable[[Mapping[str, Any], Path], object]


def _quarantine_if_corrupt(
    path: Path, found: _Found, parse: Parser | None, quarantine_dir: Path
) -> None:
    """Keep a copy of what ``found`` read from ``path`` if it cannot be read (before a replace).

    The copy is of the bytes the bounded read took, so a symlink is never
    followed, a FIFO never opened, and a huge file kept only in part.
    """
    try:
        data = _decode(path, found)
        if data is not None and parse is not None:
            parse(data, path)
    except CacheCorrupt:
        if found.data is None:
            return  # a FIFO, a symlink, a directory: nothing of its own to keep
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        # A copy that cannot be made must not stop the write that carries a new token.
        with contextlib.suppress(CacheWriteError):
            atomic_write(quarantine_dir / f"{path.name}.{stamp}.unreadable", found.data)


# --------------------------------------------------------------------------- writes


TEMPORARY_SUFFIX = ".tmp"
#: ``.<target>.<writer pid>.<random>.tmp``, what :class:`PendingWrite` writes before the rename
_TEMPORARY = re.compile(r"\.(?P<target>.+)\.(?P<pid>[0-9]+)\.[A-Za-z0-9_]+\.tmp")
#: the space :meth:`JsonCacheDir.prepare` sets aside: more than any token file needs, so a
#: full filesystem fails before the refresh token is spent, not after
_RESERVE_BYTES = 16 * 1024


class PendingWrite:
    """One file's write, begun: its temporary file exists and its space is set aside.

    Made by :meth:`JsonCacheDir.prepare` before the caller spends anything it
    cannot get back. :meth:`commit` it once, or :meth:`discard` it; as a context
    manager it is discarded on exit unless committed.
    """

    def __init__(self, path: Path, *, quarantine_dir: Path | None = None) -> None:
        #: the file this write replaces
        self.path = path
        self._quarantine_dir = quarantine_dir
        self._fd: int | None = None
        self._tmp: Path | None = None
        directory = path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            # The writer's pid in the name: a file left by a writer killed half-way
            # (kill -9, power loss) is told apart from one being written (sweep_temporary).
            fd, tmp = tempfile.mkstemp(
                dir=directory, prefix=f".{path.name}.{os.getpid()}.", suffix=TEMPORARY_SUFFIX
            )
        except OSError as exc:
            raise CacheWriteError(path, exc) from exc
        self._fd, self._tmp = fd, Path(tmp)
        try:
            os.posix_fallocate(fd, 0, _RESERVE_BYTES)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self.discard()
                raise CacheWriteError(path, exc) from exc
            # a filesystem that cannot set space aside: the write itself will tell

    def commit(
        self, data: Mapping[str, Any], *, expected: Fingerprint | None, parse: Parser | None = None
    ) -> Fingerprint:
        """Replace :attr:`path` with ``data`` (0600, fsynced) and return its new fingerprint.

        ``expected``: what the caller read; if the file holds anything else now
        (another program wrote or deleted it), the write is dropped and
        :class:`CacheChanged` raised. ``None`` replaces whatever is there.
        ``parse``: what reads the entry; a file it (or JSON) refuses is copied to
        the quarantine directory before it is replaced. The caller holds the
        cross-process lock; botocore takes none, so a write of its landing between
        this check and the rename is still lost, but that window is one rename
        wide rather than one upstream call wide.

        :class:`CacheWriteError` for any failure of the filesystem, the temporary
        file removed. If it comes from the final directory fsync the new file is
        already in place, though not yet durable.
        """
        raw = json.dumps(data, indent=None).encode("utf-8")
        return self._commit(raw, expected=expected, parse=parse, mode=0o600)

    def discard(self) -> None:
        """Remove the temporary file; nothing is written. Safe to call more than once."""
        fd, self._fd = self._fd, None
        tmp, self._tmp = self._tmp, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _commit(
        self, raw: bytes, *, expected: Fingerprint | None, parse: Parser | None, mode: int
    ) -> Fingerprint:
        fd, tmp = self._fd, self._tmp
        if fd is None or tmp is None:
            raise RuntimeError(f"the write of {self.path} was already committed or discarded")
        try:
            self._fd = None  # closed below whatever happens
            try:
                _write_all(fd, raw)
                os.ftruncate(fd, len(raw))  # drop what prepare set aside beyond the data
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            # One bounded read gives both what the compare needs and what the
            # quarantine keeps; it never follows a symlink or opens a FIFO.
            current = _read_bounded(self.path)
            if expected is not None and current.fingerprint != expected:
                raise CacheChanged(self.path)
            if self._quarantine_dir is not None:
                _quarantine_if_corrupt(self.path, current, parse, self._quarantine_dir)
            # rename(2) replaces a symlink at the path itself, never the file it points to
            os.replace(tmp, self.path)
            self._tmp = None
        except OSError as exc:
            self.discard()
            raise CacheWriteError(self.path, exc) from exc
        except BaseException:
            self.discard()
            raise
        try:
            _fsync_directory(self.path.parent)
        except OSError as exc:
            raise CacheWriteError(self.path, exc) from exc
        return Fingerprint(hashlib.sha256(raw).digest())

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that no reader ever sees half a file.

    The same write as a cache entry's (:class:`PendingWrite`): a temporary file
    in the same directory (made 0600, then given ``mode``), fsync,
    ``os.replace``, then the directory fsynced; a missing directory is made
    0700. :class:`CacheWriteError` if it cannot be done, the temporary file
    removed.
    """
    with PendingWrite(path) as pending:
        pending._commit(data, expected=None, parse=None, mode=mode)


class JsonCacheDir:
    """One directory of ``<name>.json`` files, with atomic writes and cross-process locks.

    ``rescue_dir`` (in credd's state directory, never an AWS one: ``aws sso logout``
    would sweep it) holds copies of entries that could not be written here.
    """

    def __init__(
        self,
        directory: Path,
        lock_dir: Path,
        quarantine_dir: Path,
        rescue_dir: Path | None = None,
    ) -> None:
        self.directory = directory
        self._lock_dir = lock_dir
        self._quarantine_dir = quarantine_dir
        self._rescue_dir = rescue_dir
        self._local_locks: dict[str, anyio.Lock] = {}

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def read(self, name: str) -> dict[str, Any] | None:
        """The parsed object, ``None`` when absent; :class:`CacheCorrupt` when unreadable."""
        return self.read_entry(name)[0]

    def read_entry(self, name: str) -> tuple[dict[str, Any] | None, Fingerprint]:
        """The parsed object (``None`` when absent) and the fingerprint of what was read.

        :class:`CacheCorrupt` when unreadable, its ``fingerprint`` set.
        """
        path = self.path(name)
        found = _read_bounded(path)
        return _decode(path, found), found.fingerprint

    def fingerprint(self, name: str) -> Fingerprint:
        """What ``name`` holds now, as :meth:`read_entry` would fingerprint it; never raises."""
        return _read_bounded(self.path(name)).fingerprint

    def mtime(self, name: str) -> float | None:
        try:
            # lstat: the link's own time, and nothing at the far end of a link is ever read
            return os.lstat(self.path(name)).st_mtime
        except OSError:
            return None

    def prepare(self, name: str) -> PendingWrite:
        """Begin a write of ``name``: :class:`CacheWriteError` now if it cannot be done."""
        return PendingWrite(self.path(name), quarantine_dir=self._quarantine_dir)

    def write(
        self, name: str, data: Mapping[str, Any], *, parse: Parser | None = None
    ) -> Fingerprint:
        """Atomically replace ``name`` (mode 0600), keeping a copy of an unreadable original.

        ``parse``: what reads the entry (raising :class:`CacheCorrupt`); a JSON object
        it refuses is as unreadable as a file that is not JSON at all.
        """
        with self.prepare(name) as pending:
            return pending.commit(data, expected=None, parse=parse)

    def rescue(self, name: str, data: Mapping[str, Any]) -> Path | None:
        """Keep ``data`` as a 0600 copy in the rescue directory; its path, or ``None`` if not.

        For an entry that cannot be written to the cache: a restarted daemon
        finds it with :meth:`rescued`. Never raises: a rescue is the last resort.
        """
        if self._rescue_dir is None:
            return None
        target = self._rescue_dir / f"{name}.json"
        try:
            self._rescue_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # credd's own directory and it holds refresh tokens: 0700 even if made looser
            with contextlib.suppress(OSError):
                self._rescue_dir.chmod(0o700)
            atomic_write(target, json.dumps(data, indent=None).encode("utf-8"))
        except (OSError, CacheWriteError):
            return None
        return target

    def rescued(self, name: str) -> dict[str, Any] | None:
        """The rescue copy of ``name``, ``None`` if there is none or it cannot be read."""
        if self._rescue_dir is None:
            return None
        path = self._rescue_dir / f"{name}.json"
        try:
            return _decode(path, _read_bounded(path))
        except CacheCorrupt:
            return None  # a copy that cannot be read rescues nothing; left for a human

    def discard_rescue(self, name: str) -> bool:
        """Remove the rescue copy of ``name`` (once the cache holds it); whether there was one."""
        if self._rescue_dir is None:
            return False
        try:
            (self._rescue_dir / f"{name}.json").unlink()
        except FileNotFoundError:
            return False
        return True

    def sweep_temporary(self) -> list[str]:
        """Remove temporary files a killed writer left here (:func:`sweep_temporary`)."""
        removed = sweep_temporary(self.directory)
        if self._rescue_dir is not None:
            removed += sweep_temporary(self._rescue_dir)
        return removed

    def delete(self, name: str) -> bool:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            return False
        _fsync_directory(self.directory)
        return True

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
    """Remove what :class:`PendingWrite` left in ``directory`` when its writer was killed.

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
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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

    def parse(self, data: Mapping[str, Any], path: Path) -> TokenT:
        """The token in ``data``, read for ``path``; :class:`CacheCorrupt` if there is none."""
        return self._parse(data, path)

    def load_token(self, key: str) -> TokenT | None:
        return self.load_entry(key)[0]

    def load_entry(self, key: str) -> tuple[TokenT | None, Fingerprint]:
        """The token (``None`` when absent) and the fingerprint of the file it came from.

        :class:`CacheCorrupt` when unreadable, its ``fingerprint`` set, whether the
        bytes are not JSON or hold no token.
        """
        name = self.token_name(key)
        data, fingerprint = self.files.read_entry(name)
        if data is None:
            return None, fingerprint
        try:
            return self._parse(data, self.files.path(name)), fingerprint
        except CacheCorrupt as exc:
            exc.fingerprint = fingerprint
            raise

    def save_token(self, key: str, token: TokenT) -> Fingerprint:
        """Write ``token`` whatever the file holds now (a new login; :meth:`commit` otherwise)."""
        with self.prepare(key) as pending:
            return self.commit(pending, token, expected=None)

    def prepare(self, key: str) -> PendingWrite:
        """Begin the write of ``key``'s token before a refresh spends the old one."""
        return self.files.prepare(self.token_name(key))

    def commit(
        self, pending: PendingWrite, token: TokenT, *, expected: Fingerprint | None
    ) -> Fingerprint:
        """:meth:`PendingWrite.commit` of ``token``; an unreadable original is kept aside."""
        return pending.commit(token.to_json(), expected=expected, parse=self._parse)

    def rescue(self, key: str, token: TokenT) -> Path | None:
        """A 0600 copy of a token that could not be written (:meth:`JsonCacheDir.rescue`)."""
        return self.files.rescue(self.token_name(key), token.to_json())

    def load_rescue(self, key: str) -> TokenT | None:
        """The rescued token of ``key``, ``None`` if there is none that reads."""
        name = self.token_name(key)
        data = self.files.rescued(name)
        if data is None:
            return None
        try:
            return self._parse(data, self.files.path(name))
        except CacheCorrupt:
            return None

    def discard_rescue(self, key: str) -> bool:
        return self.files.discard_rescue(self.token_name(key))

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
