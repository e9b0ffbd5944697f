"""credd.files.store under faults made from the outside, on real files and filesystems.

What sits at a cache path (a FIFO, a symlink, a huge file, a directory, a
socket: issue 11) can neither hang nor bloat a read nor be written through;
a filesystem that turns read-only or full (issue 10) fails a write before the
refresh token is spent, leaves the old file whole and no temporary file, and
the token then survives in a rescue copy. The filesystem tests mount a real
tmpfs, so they need root (as CI runs); elsewhere they skip and say so.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from credd.files.store import (
    MAX_CACHE_BYTES,
    CacheCorrupt,
    CacheWriteError,
    Fingerprint,
    JsonCacheDir,
    SsoCache,
    SsoToken,
    sha1_name,
)
from tests.support.mounts import Tmpfs
from tests.support.mounts import tmpfs as mounted_tmpfs

SESSION = "my-sso"
NAME = sha1_name(SESSION)

OURS: dict[str, Any] = {
    "startUrl": "https://d-1234567890.awsapps.com/start",
    "region": "us-east-1",
    "accessToken": "AT-OURS",
    "expiresAt": "2026-11-21T12:15:09Z",
    "clientId": "CID",
    "clientSecret": "CSECRET",
    "registrationExpiresAt": "2027-02-09T04:15:09Z",
    "refreshToken": "RT-OURS",
}
OLD = {**OURS, "accessToken": "AT-OLD", "refreshToken": "RT-OLD"}

#: how long a call may take before it counts as hung: a guard, not a measurement
HANG_SECONDS = 10

T = TypeVar("T")


def token(data: dict[str, Any]) -> SsoToken:
    return SsoToken.from_json(data, Path("t.json"))


def names_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def cache_in(directory: Path, state: Path) -> JsonCacheDir:
    """An SSO cache in ``directory``; locks, quarantine and rescue copies in ``state``."""
    return JsonCacheDir(
        directory / "sso" / "cache",
        state / "locks",
        state / "quarantine",
        rescue_dir=state / "rescue",
    )


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[JsonCacheDir]:
    # A short directory of its own: a socket's path must fit AF_UNIX's 108 bytes.
    with tempfile.TemporaryDirectory(prefix="credd-") as short:
        cache = cache_in(Path(short), tmp_path / "state")
        cache.directory.mkdir(parents=True)
        yield cache


def promptly(call: Callable[[], T], *, release: Callable[[], None]) -> T:
    """``call()``'s result or exception, in a thread: if it hangs, ``release`` it and fail.

    A hung read fails the test instead of hanging the suite.
    """
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(call())
        except BaseException as exc:  # handed to the test's thread below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_SECONDS)
    if thread.is_alive():
        release()
        thread.join(HANG_SECONDS)
        pytest.fail(f"blocked for more than {HANG_SECONDS} s")
    if errors:
        raise errors[0]
    return results[0]


def fifo_release(path: Path) -> Callable[[], None]:
    """Opens and closes the FIFO's write end: a reader blocked on it gets EOF."""

    def release() -> None:
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    return release


def nothing_to_release() -> None:
    pass


def refresh(sso: SsoCache, new: SsoToken, expected: Fingerprint, spent: list[str]) -> None:
    """What a renewal does: begin the write, spend the refresh token, commit."""
    with sso.prepare(SESSION) as pending:
        spent.append("RT-OLD")  # the upstream call, which must not happen if the write cannot
        sso.commit(pending, new, expected=expected)


# --------------------------------------------------------------------------- at the path


@contextlib.contextmanager
def made(kind: str, path: Path) -> Iterator[Callable[[], None]]:
    """Something other than a regular file at ``path``; yields what releases a hung reader."""
    if kind == "fifo":
        os.mkfifo(path, 0o600)
        yield fifo_release(path)
    elif kind == "directory":
        path.mkdir()
        yield nothing_to_release
    else:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(str(path))
            listener.listen()
            yield nothing_to_release


@pytest.mark.parametrize(
    ("kind", "shown"), [("fifo", "a FIFO"), ("directory", "a directory"), ("socket", "a socket")]
)
def test_what_is_not_a_regular_file_is_refused_at_once(
    cache: JsonCacheDir, kind: str, shown: str
) -> None:
    sso = SsoCache(cache)
    path = cache.path(NAME)
    with made(kind, path) as release:
        with pytest.raises(CacheCorrupt, match=f"is not a regular file \\({shown}\\)") as caught:
            promptly(lambda: cache.read_entry(NAME), release=release)
        assert caught.value.path == path
        with pytest.raises(CacheCorrupt):
            promptly(lambda: sso.load_token(SESSION), release=release)
        # the same thing at the path fingerprints the same, and not as absent
        fingerprint = promptly(lambda: cache.fingerprint(NAME), release=release)
        assert fingerprint == caught.value.fingerprint
        assert fingerprint != Fingerprint(None)


def test_a_fifo_at_the_path_is_replaced_by_a_write(cache: JsonCacheDir, tmp_path: Path) -> None:
    sso = SsoCache(cache)
    path = cache.path(NAME)
    os.mkfifo(path, 0o600)
    with pytest.raises(CacheCorrupt) as caught:
        promptly(lambda: sso.load_entry(SESSION), release=fifo_release(path))

    def write() -> Fingerprint:
        with sso.prepare(SESSION) as pending:
            return sso.commit(pending, token(OURS), expected=caught.value.fingerprint)

    written = promptly(write, release=fifo_release(path))
    assert stat.S_ISREG(path.lstat().st_mode)
    assert sso.load_entry(SESSION) == (token(OURS), written)
    assert not (tmp_path / "state" / "quarantine").exists()  # a FIFO holds nothing to keep


def test_a_directory_at_the_path_is_never_removed(cache: JsonCacheDir) -> None:
    path = cache.path(NAME)
    path.mkdir()
    (path / "someone's").write_text("files")
    with pytest.raises(CacheCorrupt) as caught:
        cache.read_entry(NAME)
    with pytest.raises(CacheWriteError) as failed, cache.prepare(NAME) as pending:
        pending.commit(OURS, expected=caught.value.fingerprint)
    assert failed.value.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST)
    assert failed.value.path == path
    assert names_in(cache.directory) == [path.name]
    assert names_in(path) == ["someone's"]


# --------------------------------------------------------------------------- symlinks


def test_a_symlink_at_the_path_is_read_as_nothing_it_points_to(
    cache: JsonCacheDir, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(OLD))
    path = cache.path(NAME)
    path.symlink_to(elsewhere)
    with pytest.raises(CacheCorrupt, match="is a symbolic link") as caught:
        cache.read_entry(NAME)
    assert caught.value.fingerprint == cache.fingerprint(NAME)
    with pytest.raises(CacheCorrupt, match="is a symbolic link"):
        SsoCache(cache).load_token(SESSION)
    # pointed elsewhere: a change, though neither target is ever read
    path.unlink()
    path.symlink_to(tmp_path / "another.json")
    assert cache.fingerprint(NAME) != caught.value.fingerprint
    # a link to nowhere is no more "absent" than a link to a file
    assert cache.fingerprint(NAME) != Fingerprint(None)
    with pytest.raises(CacheCorrupt, match="is a symbolic link"):
        cache.read(NAME)


def test_a_write_replaces_a_symlink_and_never_writes_through_it(
    cache: JsonCacheDir, tmp_path: Path
) -> None:
    sso = SsoCache(cache)
    planted = b"not JSON: somebody else's file"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(planted)
    elsewhere.chmod(0o644)
    path = cache.path(NAME)
    path.symlink_to(elsewhere)
    with pytest.raises(CacheCorrupt) as caught:
        sso.load_entry(SESSION)
    with sso.prepare(SESSION) as pending:
        sso.commit(pending, token(OURS), expected=caught.value.fingerprint)
    assert not path.is_symlink()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sso.load_token(SESSION) == token(OURS)
    assert elsewhere.read_bytes() == planted
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o644
    # nor is it copied: the quarantine keeps what was at the path, and a link holds nothing
    quarantine = tmp_path / "state" / "quarantine"
    assert not quarantine.exists() or names_in(quarantine) == []
    # save_token, the write without a compare, too
    path.unlink()
    path.symlink_to(elsewhere)
    sso.save_token(SESSION, token(OLD))
    assert not path.is_symlink()
    assert elsewhere.read_bytes() == planted


# --------------------------------------------------------------------------- size


def test_a_file_at_the_size_cap_reads_and_one_byte_more_does_not(cache: JsonCacheDir) -> None:
    text = json.dumps(OURS).encode()
    padded = text[:-1] + b" " * (MAX_CACHE_BYTES - len(text)) + b"}"
    assert len(padded) == MAX_CACHE_BYTES
    cache.path(NAME).write_bytes(padded)
    assert cache.read(NAME) == OURS
    cache.path(NAME).write_bytes(padded[:-1] + b" }")
    with pytest.raises(CacheCorrupt, match=f"larger than {MAX_CACHE_BYTES} bytes"):
        cache.read(NAME)


def test_a_2_mib_file_is_refused_and_kept_aside_only_in_part(
    cache: JsonCacheDir, tmp_path: Path
) -> None:
    huge = os.urandom(2 * 1024 * 1024)
    cache.path(NAME).write_bytes(huge)
    with pytest.raises(CacheCorrupt, match="larger than") as caught:
        cache.read_entry(NAME)
    assert caught.value.fingerprint == cache.fingerprint(NAME)
    with cache.prepare(NAME) as pending:
        pending.commit(OURS, expected=caught.value.fingerprint)
    assert cache.read(NAME) == OURS
    (copy,) = (tmp_path / "state" / "quarantine").iterdir()
    assert copy.read_bytes() == huge[: MAX_CACHE_BYTES + 1]


def test_a_huge_sparse_file_is_never_read_whole(cache: JsonCacheDir) -> None:
    path = cache.path(NAME)
    try:
        with path.open("wb") as handle:
            handle.truncate(1 << 40)  # 1 TiB of nothing: a whole read cannot even be allocated
    except OSError as exc:
        pytest.skip(f"this filesystem refuses a 1 TiB sparse file: {exc.strerror}")
    with pytest.raises(CacheCorrupt, match="larger than"):
        promptly(lambda: cache.read(NAME), release=nothing_to_release)
    assert cache.fingerprint(NAME) != Fingerprint(None)


# --------------------------------------------------------------------------- real filesystems


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Tmpfs]:
    """A real 64 KiB tmpfs under ``tmp_path``, lazily unmounted whatever the test did."""
    with mounted_tmpfs(tmp_path / "tmpfs", size="64k") as mounted:
        yield mounted


@pytest.fixture
def on_tmpfs(tmpfs: Tmpfs, tmp_path: Path) -> SsoCache:
    """An SSO cache on the tmpfs holding RT-OLD; credd's state directory is not on it."""
    sso = SsoCache(cache_in(tmpfs.path, tmp_path / "state"))
    sso.save_token(SESSION, token(OLD))
    return sso


def test_a_read_only_filesystem_fails_before_the_token_is_spent(
    on_tmpfs: SsoCache, tmpfs: Tmpfs
) -> None:
    sso = on_tmpfs
    path = sso.files.path(NAME)
    held, fingerprint = sso.load_entry(SESSION)
    before = path.read_bytes()
    tmpfs.read_only()
    spent: list[str] = []
    with pytest.raises(CacheWriteError) as caught:
        refresh(sso, token(OURS), fingerprint, spent)
    assert spent == []
    error = caught.value
    assert error.errno == errno.EROFS
    assert error.path == path
    assert error.message == f"cannot write {path}: Read-only file system (EROFS)"
    assert error.hint is not None
    assert "read-only" in error.hint
    assert path.read_bytes() == before
    assert sso.load_token(SESSION) == held


def test_a_read_only_filesystem_without_the_cache_directory_fails_alike(
    tmpfs: Tmpfs, tmp_path: Path
) -> None:
    cache = cache_in(tmpfs.path, tmp_path / "state")
    tmpfs.read_only()
    with pytest.raises(CacheWriteError) as caught:
        cache.prepare(NAME)
    assert caught.value.errno == errno.EROFS
    assert caught.value.path == cache.path(NAME)


def test_a_token_that_cannot_be_written_is_rescued_and_written_later(
    on_tmpfs: SsoCache, tmpfs: Tmpfs, tmp_path: Path
) -> None:
    sso = on_tmpfs
    fingerprint = sso.files.fingerprint(NAME)
    # more than prepare sets aside: another tool's fields made the token file grow
    grown = token({**OURS, "someToolsField": "x" * (24 * 1024)})
    with sso.prepare(SESSION) as pending:
        tmpfs.fill()  # while the refresh is upstream, the disk fills up
        with pytest.raises(CacheWriteError) as caught:
            sso.commit(pending, grown, expected=fingerprint)
    assert caught.value.errno == errno.ENOSPC
    rescued_at = sso.rescue(SESSION, grown)
    assert rescued_at is not None
    assert rescued_at.is_relative_to(tmp_path / "state")
    assert stat.S_IMODE(rescued_at.stat().st_mode) == 0o600
    # a restarted daemon: the cache still holds the spent token, the rescue the new one
    restarted = SsoCache(cache_in(tmpfs.path, tmp_path / "state"))
    assert restarted.load_token(SESSION) == token(OLD)
    assert restarted.load_rescue(SESSION) == grown
    tmpfs.free()
    with restarted.prepare(SESSION) as pending:
        restarted.commit(pending, grown, expected=fingerprint)
    assert restarted.discard_rescue(SESSION) is True
    assert restarted.load_token(SESSION) == grown
    assert restarted.load_rescue(SESSION) is None
    assert names_in(restarted.files.directory) == [f"{NAME}.json"]


def test_a_rescue_directory_on_a_read_only_filesystem_is_none(tmpfs: Tmpfs) -> None:
    cache = cache_in(tmpfs.path, tmpfs.path / "state")
    tmpfs.read_only()
    assert cache.rescue(NAME, OURS) is None
    assert cache.rescued(NAME) is None


def test_a_full_filesystem_fails_before_the_token_is_spent(
    on_tmpfs: SsoCache, tmpfs: Tmpfs
) -> None:
    sso = on_tmpfs
    path = sso.files.path(NAME)
    before = path.read_bytes()
    fingerprint = sso.files.fingerprint(NAME)
    tmpfs.fill()
    spent: list[str] = []
    with pytest.raises(CacheWriteError) as caught:
        refresh(sso, token(OURS), fingerprint, spent)
    assert spent == []
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.path == path
    assert "(ENOSPC)" in caught.value.message
    assert path.read_bytes() == before
    assert names_in(path.parent) == [path.name]


def test_the_space_set_aside_by_prepare_is_there_at_commit(
    on_tmpfs: SsoCache, tmpfs: Tmpfs
) -> None:
    sso = on_tmpfs
    fingerprint = sso.files.fingerprint(NAME)
    with sso.prepare(SESSION) as pending:
        tmpfs.fill()  # another program takes every byte left while credd refreshes
        written = sso.commit(pending, token(OURS), expected=fingerprint)
    assert sso.load_entry(SESSION) == (token(OURS), written)
    assert names_in(sso.files.directory) == [f"{NAME}.json"]


def test_a_write_larger_than_the_space_left_fails_whole(on_tmpfs: SsoCache, tmpfs: Tmpfs) -> None:
    sso = on_tmpfs
    path = sso.files.path(NAME)
    before = path.read_bytes()
    fingerprint = sso.files.fingerprint(NAME)
    bloated = {**OURS, "someToolsField": "x" * (128 * 1024)}  # twice the whole filesystem
    with sso.prepare(SESSION) as pending:
        with pytest.raises(CacheWriteError) as caught:
            sso.commit(pending, token(bloated), expected=fingerprint)
        assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert names_in(path.parent) == [path.name]
    # and once there is room the same refresh's token is written
    with sso.prepare(SESSION) as pending:
        sso.commit(pending, token(OURS), expected=fingerprint)
    assert sso.load_token(SESSION) == token(OURS)


# --------------------------------------------------------------------------- permissions


def test_a_directory_credd_may_not_write_fails_before_the_token_is_spent(
    cache: JsonCacheDir,
) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes whatever the mode says; the read-only tmpfs tests cover this")
    cache.write(NAME, OLD)
    cache.directory.chmod(0o500)
    try:
        spent: list[str] = []
        with pytest.raises(CacheWriteError) as caught:
            refresh(SsoCache(cache), token(OURS), cache.fingerprint(NAME), spent)
        assert spent == []
        assert caught.value.errno == errno.EACCES
        assert caught.value.hint is not None
        assert "permissions" in caught.value.hint
        assert cache.read(NAME) == OLD
    finally:
        cache.directory.chmod(0o700)
