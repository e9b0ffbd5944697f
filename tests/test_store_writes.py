"""credd.files.store: two-phase writes, compare and swap against botocore, rescue copies.

The writes a refresh relies on (issue 10): the temporary file exists before
the refresh token is spent, a file another program wrote since it was read is
kept, and a token that cannot be written is kept in a rescue copy.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from botocore.utils import JSONFileCache

from credd.errors import CreddError
from credd.files.store import (
    CacheChanged,
    CacheCorrupt,
    CacheWriteError,
    Fingerprint,
    JsonCacheDir,
    SsoCache,
    SsoToken,
    atomic_write,
    sha1_name,
    sweep_temporary,
)
from credd.secret import Secret

SESSION = "my-sso"
NAME = sha1_name(SESSION)

#: a token file as botocore's refresh writes it (protocols.md 6.1)
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
#: what a concurrent `aws sso login` writes: another refresh token, the one that counts
THEIRS = {**OURS, "accessToken": "AT-THEIRS", "refreshToken": "RT-THEIRS"}
OLD = {**OURS, "accessToken": "AT-OLD", "refreshToken": "RT-OLD"}


@pytest.fixture
def cache(tmp_path: Path) -> JsonCacheDir:
    return JsonCacheDir(
        tmp_path / "sso" / "cache",
        tmp_path / "locks",
        tmp_path / "quarantine",
        rescue_dir=tmp_path / "state" / "rescue",
    )


@pytest.fixture
def sso(cache: JsonCacheDir) -> SsoCache:
    return SsoCache(cache)


def token(data: dict[str, Any]) -> SsoToken:
    return SsoToken.from_json(data, Path("t.json"))


def names_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def botocore_writes(cache: JsonCacheDir, name: str, data: dict[str, Any]) -> None:
    """botocore's own ``JSONFileCache``: mkstemp, fsync, os.replace, and no lock of credd's."""
    JSONFileCache(str(cache.directory))[name] = data


# --------------------------------------------------------------------------- fingerprints


def test_fingerprint_is_the_sha256_of_the_bytes_read(cache: JsonCacheDir) -> None:
    assert cache.fingerprint(NAME) == Fingerprint(None)
    assert cache.read_entry(NAME) == (None, Fingerprint(None))
    written = cache.write(NAME, OURS)
    data, read = cache.read_entry(NAME)
    assert data == OURS
    assert read == written == cache.fingerprint(NAME)
    assert read.digest == hashlib.sha256(cache.path(NAME).read_bytes()).digest()
    # a fingerprint in a log shows a prefix of the digest, nothing of the file
    assert "AT-OURS" not in repr(read)
    assert repr(Fingerprint(None)) == "Fingerprint(absent)"


def test_a_torn_file_keeps_its_fingerprint_until_it_changes(cache: JsonCacheDir) -> None:
    cache.directory.mkdir(parents=True)
    torn = json.dumps(OURS).encode()[:40]
    cache.path(NAME).write_bytes(torn)
    with pytest.raises(CacheCorrupt, match="not valid JSON") as first:
        cache.read_entry(NAME)
    with pytest.raises(CacheCorrupt) as second:
        cache.read_entry(NAME)
    assert first.value.fingerprint is not None
    assert first.value.fingerprint == second.value.fingerprint == cache.fingerprint(NAME)
    cache.path(NAME).write_bytes(json.dumps(OURS).encode())  # the writer finishes
    _, restored = cache.read_entry(NAME)
    assert restored != first.value.fingerprint


def test_load_entry_gives_the_fingerprint_of_a_file_that_holds_no_token(
    cache: JsonCacheDir, sso: SsoCache
) -> None:
    cache.directory.mkdir(parents=True)
    cache.path(NAME).write_text('{"expiresAt": "2026-11-21T12:15:09Z"}')
    with pytest.raises(CacheCorrupt, match="accessToken") as caught:
        sso.load_entry(SESSION)
    assert caught.value.fingerprint == cache.fingerprint(NAME)
    cache.write(NAME, OURS)
    loaded, fingerprint = sso.load_entry(SESSION)
    assert loaded == token(OURS)
    assert fingerprint == cache.fingerprint(NAME)
    assert sso.load_entry("another session") == (None, Fingerprint(None))


# --------------------------------------------------------------------------- two phases


def test_prepare_makes_the_temporary_file_at_once(cache: JsonCacheDir) -> None:
    with cache.prepare(NAME) as pending:
        assert pending.path == cache.path(NAME)
        # made 0700, and the temporary file is there before anything is spent
        assert stat.S_IMODE(cache.directory.stat().st_mode) == 0o700
        (temporary,) = cache.directory.iterdir()
        assert temporary.name.startswith(f".{NAME}.json.{os.getpid()}.")
        assert temporary.name.endswith(".tmp")
        assert stat.S_IMODE(temporary.stat().st_mode) == 0o600
        # a writer that is alive keeps its file through a sweep
        assert sweep_temporary(cache.directory) == []
        fingerprint = pending.commit(OURS, expected=Fingerprint(None))
    assert names_in(cache.directory) == [f"{NAME}.json"]
    assert cache.read_entry(NAME) == (OURS, fingerprint)
    assert stat.S_IMODE(cache.path(NAME).stat().st_mode) == 0o600


def test_a_pending_write_left_uncommitted_leaves_nothing(cache: JsonCacheDir) -> None:
    cache.write(NAME, OLD)
    with cache.prepare(NAME):
        pass
    with pytest.raises(RuntimeError, match="upstream"), cache.prepare(NAME):
        raise RuntimeError("upstream refused the refresh")
    pending = cache.prepare(NAME)
    pending.discard()
    pending.discard()
    assert names_in(cache.directory) == [f"{NAME}.json"]
    assert cache.read(NAME) == OLD
    with pytest.raises(RuntimeError, match="already committed or discarded"):
        pending.commit(OURS, expected=None)


def test_a_pending_write_commits_once(cache: JsonCacheDir) -> None:
    with cache.prepare(NAME) as pending:
        pending.commit(OLD, expected=None)
        with pytest.raises(RuntimeError, match="already committed"):
            pending.commit(OURS, expected=None)
    assert cache.read(NAME) == OLD


def test_commits_chain_on_the_fingerprint_each_returns(cache: JsonCacheDir, sso: SsoCache) -> None:
    expected = sso.save_token(SESSION, token(OLD))
    for access in ("AT-1", "AT-2", "AT-3"):
        with sso.prepare(SESSION) as pending:
            expected = sso.commit(
                pending, token({**OURS, "accessToken": access}), expected=expected
            )
        assert expected == cache.fingerprint(NAME)
    assert sso.load_token(SESSION) == token({**OURS, "accessToken": "AT-3"})


# --------------------------------------------------------------------------- compare and swap


def test_a_botocore_write_landing_during_a_refresh_is_kept(
    cache: JsonCacheDir, sso: SsoCache
) -> None:
    sso.save_token(SESSION, token(OLD))
    held, fingerprint = sso.load_entry(SESSION)
    assert held is not None
    with sso.prepare(SESSION) as pending:
        # credd spends RT-OLD upstream; meanwhile `aws sso login` writes, without credd's lock
        botocore_writes(cache, NAME, THEIRS)
        theirs = cache.path(NAME).read_bytes()
        with pytest.raises(CacheChanged) as caught:
            sso.commit(pending, token(OURS), expected=fingerprint)
    assert caught.value.path == cache.path(NAME)
    assert caught.value.code == "CacheChanged"
    assert isinstance(caught.value, CreddError)
    assert cache.path(NAME).read_bytes() == theirs
    assert sso.load_token(SESSION) == token(THEIRS)
    assert names_in(cache.directory) == [f"{NAME}.json"]


def test_a_logout_during_a_refresh_is_not_undone(cache: JsonCacheDir, sso: SsoCache) -> None:
    fingerprint = sso.save_token(SESSION, token(OLD))
    with sso.prepare(SESSION) as pending:
        os.unlink(cache.path(NAME))  # `aws sso logout` deletes every file with an accessToken
        with pytest.raises(CacheChanged):
            sso.commit(pending, token(OURS), expected=fingerprint)
    assert names_in(cache.directory) == []


def test_a_login_landing_where_there_was_no_file_is_kept(cache: JsonCacheDir) -> None:
    _, fingerprint = cache.read_entry(NAME)
    assert fingerprint == Fingerprint(None)
    with cache.prepare(NAME) as pending:
        botocore_writes(cache, NAME, THEIRS)
        with pytest.raises(CacheChanged):
            pending.commit(OURS, expected=fingerprint)
    assert cache.read(NAME) == THEIRS


def test_a_torn_file_still_torn_is_replaced_and_kept_aside(
    cache: JsonCacheDir, sso: SsoCache, tmp_path: Path
) -> None:
    cache.directory.mkdir(parents=True)
    torn = json.dumps(OLD).encode()[:50]
    cache.path(NAME).write_bytes(torn)
    with pytest.raises(CacheCorrupt) as caught:
        sso.load_entry(SESSION)
    with sso.prepare(SESSION) as pending:
        sso.commit(pending, token(OURS), expected=caught.value.fingerprint)
    assert sso.load_token(SESSION) == token(OURS)
    (copy,) = (tmp_path / "quarantine").iterdir()
    assert copy.read_bytes() == torn
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


def test_a_torn_file_repaired_by_its_writer_is_kept(cache: JsonCacheDir, sso: SsoCache) -> None:
    cache.directory.mkdir(parents=True)
    cache.path(NAME).write_bytes(json.dumps(THEIRS).encode()[:50])
    with pytest.raises(CacheCorrupt) as caught:
        sso.load_entry(SESSION)
    with sso.prepare(SESSION) as pending:
        # the JS SDK writes in place: the rest of its file lands now
        cache.path(NAME).write_bytes(json.dumps(THEIRS).encode())
        with pytest.raises(CacheChanged):
            sso.commit(pending, token(OURS), expected=caught.value.fingerprint)
    assert sso.load_token(SESSION) == token(THEIRS)


# --------------------------------------------------------------------------- errors


def test_cache_write_error_names_the_path_and_errno() -> None:
    path = Path("/x/y.json")
    error = CacheWriteError(path, OSError(errno.EROFS, os.strerror(errno.EROFS)))
    assert error.message == "cannot write /x/y.json: Read-only file system (EROFS)"
    assert error.code == "CacheWriteError"
    assert error.path == path
    assert error.errno == errno.EROFS
    assert error.hint is not None
    assert "read-only" in error.hint
    assert "/x" in error.hint
    full = CacheWriteError(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert full.message.endswith("No space left on device (ENOSPC)")
    assert full.hint is not None
    assert "free some space" in full.hint
    odd = CacheWriteError(path, OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG)))
    assert odd.hint is not None
    assert "free space, permissions" in odd.hint


def test_atomic_write_is_the_same_write_and_raises_cache_write_error(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "config"
    atomic_write(target, b"[default]\n", mode=0o644)
    assert target.read_bytes() == b"[default]\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    in_the_way = tmp_path / "in-the-way"
    in_the_way.mkdir()
    with pytest.raises(CacheWriteError) as caught:
        atomic_write(in_the_way, b"x")
    assert caught.value.errno == errno.EISDIR
    assert names_in(tmp_path) == ["deep", "in-the-way"]
    assert names_in(in_the_way) == []


# --------------------------------------------------------------------------- rescue copies


def test_a_rescued_token_reads_back_after_a_restart(
    cache: JsonCacheDir, sso: SsoCache, tmp_path: Path
) -> None:
    rescued_at = sso.rescue(SESSION, token(OURS))
    assert rescued_at == tmp_path / "state" / "rescue" / f"{NAME}.json"
    assert stat.S_IMODE(rescued_at.stat().st_mode) == 0o600
    assert stat.S_IMODE(rescued_at.parent.stat().st_mode) == 0o700
    # never beside the AWS CLI's files, where `aws sso logout` would find it
    assert not cache.directory.exists()
    again = SsoCache(
        JsonCacheDir(
            cache.directory,
            tmp_path / "locks",
            tmp_path / "quarantine",
            rescue_dir=tmp_path / "state" / "rescue",
        )
    )
    restored = again.load_rescue(SESSION)
    assert restored == token(OURS)
    assert restored is not None
    assert restored.refresh_token == Secret("RT-OURS")
    assert again.load_rescue("another session") is None
    assert again.discard_rescue(SESSION) is True
    assert again.discard_rescue(SESSION) is False
    assert again.load_rescue(SESSION) is None


def test_a_rescue_tightens_a_loose_rescue_directory(sso: SsoCache, tmp_path: Path) -> None:
    rescue = tmp_path / "state" / "rescue"
    rescue.mkdir(parents=True, mode=0o755)
    rescue.chmod(0o755)
    assert sso.rescue(SESSION, token(OURS)) is not None
    assert stat.S_IMODE(rescue.stat().st_mode) == 0o700


def test_a_rescue_that_cannot_be_written_is_none(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the state directory should be")
    blocked = JsonCacheDir(
        tmp_path / "cache", tmp_path / "locks", tmp_path / "q", rescue_dir=tmp_path / "state" / "r"
    )
    assert blocked.rescue(NAME, OURS) is None
    assert blocked.rescued(NAME) is None
    nowhere = JsonCacheDir(tmp_path / "cache", tmp_path / "locks", tmp_path / "q")
    assert nowhere.rescue(NAME, OURS) is None
    assert nowhere.rescued(NAME) is None
    assert nowhere.discard_rescue(NAME) is False


def test_an_unreadable_rescue_copy_rescues_nothing(sso: SsoCache, tmp_path: Path) -> None:
    rescue = tmp_path / "state" / "rescue"
    rescue.mkdir(parents=True)
    (rescue / f"{NAME}.json").write_bytes(b'{"accessToken": "AT-HA')
    assert sso.files.rescued(NAME) is None
    assert sso.load_rescue(SESSION) is None
    (rescue / f"{NAME}.json").write_text('{"accessToken": "no expiry"}')
    assert sso.files.rescued(NAME) == {"accessToken": "no expiry"}
    assert sso.load_rescue(SESSION) is None


def test_sweep_covers_the_rescue_directory(cache: JsonCacheDir, tmp_path: Path) -> None:
    rescue = tmp_path / "state" / "rescue"
    rescue.mkdir(parents=True)
    cache.directory.mkdir(parents=True)
    dead = 2**22 + 1  # above the largest pid Linux hands out (pid_max is at most 2**22)
    left = [f".{NAME}.json.{dead}.abc123.tmp"]
    (rescue / left[0]).write_text("half a token")
    (cache.directory / left[0]).write_text("half a token")
    assert cache.sweep_temporary() == left + left
    assert names_in(rescue) == []


def test_parse_reads_a_token_kept_anywhere(sso: SsoCache, tmp_path: Path) -> None:
    assert sso.parse(OURS, tmp_path / "kept.json") == token(OURS)
    with pytest.raises(CacheCorrupt, match="accessToken") as caught:
        sso.parse({"expiresAt": "2026-11-21T12:15:09Z"}, tmp_path / "kept.json")
    assert caught.value.path == tmp_path / "kept.json"
    assert caught.value.fingerprint is None  # no file was read
