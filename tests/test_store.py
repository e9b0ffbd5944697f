"""credd.files.store: the caches shared with the AWS CLI: atomic writes, cross-process locks."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteReceiveStream

from credd.files.store import (
    CacheCorrupt,
    CacheWriteError,
    JsonCacheDir,
    Registration,
    SsoCache,
    SsoToken,
    format_timestamp,
    parse_timestamp,
    registration_cache_name,
    sha1_name,
)
from credd.secret import Secret

START_URL = "https://d-1234567890.awsapps.com/start"
EXPIRES = datetime(2026, 11, 21, 12, 15, 9, tzinfo=UTC)

#: a token file exactly as botocore's refresh writes it (protocols.md 6.1)
BOTOCORE_TOKEN = {
    "startUrl": START_URL,
    "region": "us-east-1",
    "accessToken": "AT-NEW",
    "expiresAt": "2026-11-21T12:15:09Z",
    "clientId": "CID",
    "clientSecret": "CSECRET",
    "registrationExpiresAt": "2027-02-09T04:15:09Z",
    "refreshToken": "RT-NEW",
}

#: the same as the JS SDK writes it: toISOString() and a 2-space pretty print
JS_TOKEN_TEXT = textwrap.dedent(
    """\
    {
      "startUrl": "https://d-1234567890.awsapps.com/start",
      "region": "us-east-1",
      "accessToken": "AT-JS",
      "expiresAt": "2026-11-21T12:15:09.000Z",
      "clientId": "CID",
      "clientSecret": "CSECRET",
      "registrationExpiresAt": "2027-02-09T04:15:09.000Z",
      "refreshToken": "RT-JS"
    }
    """
)


@pytest.fixture
def cache(tmp_path: Path) -> JsonCacheDir:
    return JsonCacheDir(tmp_path / "sso" / "cache", tmp_path / "locks", tmp_path / "quarantine")


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-21T12:15:09Z",  # botocore
        "2026-11-21T12:15:09.000Z",  # JS toISOString()
        "2026-11-21T12:15:09+00:00",  # Go RFC 3339, Python isoformat()
        "2026-11-21T12:15:09",  # naive: taken as UTC
        "2026-11-21T14:15:09+02:00",  # another offset, same instant
        " 2026-11-21T12:15:09Z\n",  # stray whitespace
    ],
)
def test_parse_timestamp_forms(text: str) -> None:
    parsed = parse_timestamp(text)
    assert parsed == EXPIRES
    assert parsed.utcoffset() == timedelta(0)


def test_parse_timestamp_keeps_fractions() -> None:
    assert parse_timestamp("2026-11-21T12:15:09.250Z") == EXPIRES + timedelta(milliseconds=250)


@pytest.mark.parametrize("value", [None, 1795263309, 1795263309.0, b"2026-11-21T12:15:09Z", [], {}])
def test_parse_timestamp_rejects_non_strings(value: object) -> None:
    with pytest.raises(ValueError, match="expected a timestamp string"):
        parse_timestamp(value)


@pytest.mark.parametrize("text", ["", "tomorrow", "2026-13-01T00:00:00Z", "21/11/2026 12:15"])
def test_parse_timestamp_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match=r"isoformat|month must be"):
        parse_timestamp(text)


def test_format_timestamp_is_botocore_form_in_utc() -> None:
    assert format_timestamp(EXPIRES) == "2026-11-21T12:15:09Z"
    # another zone, microseconds: converted to UTC, fractions dropped
    other = datetime(2026, 11, 21, 7, 15, 9, 999_999, tzinfo=timezone(timedelta(hours=-5)))
    assert format_timestamp(other) == "2026-11-21T12:15:09Z"
    assert datetime.strptime(format_timestamp(EXPIRES), "%Y-%m-%dT%H:%M:%SZ")


def test_format_then_parse_round_trips() -> None:
    assert parse_timestamp(format_timestamp(EXPIRES)) == EXPIRES


# --------------------------------------------------------------------------- cache names


def test_sha1_name_matches_protocols_example() -> None:
    # protocols.md 6.1: sha1("my-sso")
    assert sha1_name("my-sso") == "0ad374308c5a4e22f723adf10145eafad7c4031c"
    assert SsoCache.token_name("my-sso") == "0ad374308c5a4e22f723adf10145eafad7c4031c"


def test_sha1_name_of_a_start_url_is_plain_sha1() -> None:
    expected = hashlib.sha1(START_URL.encode(), usedforsecurity=False).hexdigest()
    assert sha1_name(START_URL) == expected


def _cli_registration_key(
    start_url: str, region: str, scopes: list[str] | None, session_name: str | None
) -> str:
    """The AWS CLI v2's formula, as protocols.md 6.1 writes it down."""
    args = {
        "tool": "botocore",
        "startUrl": start_url,
        "region": region,
        "scopes": scopes,
        "session_name": session_name,
    }
    text = json.dumps(args, sort_keys=True)
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


def test_registration_cache_name_matches_the_cli() -> None:
    name = registration_cache_name(START_URL, "us-east-1", ("sso:account:access",), "my-sso")
    assert name == _cli_registration_key(START_URL, "us-east-1", ["sso:account:access"], "my-sso")
    assert name == "a8343d65418848d0bc13a5f25cbb32508ceec5d1"


def test_registration_cache_name_legacy_has_null_scopes_and_session() -> None:
    name = registration_cache_name(START_URL, "us-east-1", None, None)
    assert name == _cli_registration_key(START_URL, "us-east-1", None, None)
    assert name == "365414a68be7c9bfc776c660981dbdbd942acea4"
    # an empty scope tuple is written as null, as the CLI does for no scopes
    assert registration_cache_name(START_URL, "us-east-1", (), None) == name


def test_registration_cache_name_depends_on_every_input() -> None:
    base = registration_cache_name(START_URL, "us-east-1", ("a",), "s")
    others = {
        registration_cache_name(START_URL + "/", "us-east-1", ("a",), "s"),
        registration_cache_name(START_URL, "eu-west-1", ("a",), "s"),
        registration_cache_name(START_URL, "us-east-1", ("a", "b"), "s"),
        registration_cache_name(START_URL, "us-east-1", ("a",), "t"),
    }
    assert base not in others
    assert len(others) == 4


# --------------------------------------------------------------------------- SsoToken


def test_sso_token_from_botocore_json() -> None:
    token = SsoToken.from_json(BOTOCORE_TOKEN, Path("t.json"))
    assert token.access_token == Secret("AT-NEW")
    assert token.expires_at == EXPIRES
    assert token.start_url == START_URL
    assert token.region == "us-east-1"
    assert token.client_id == "CID"
    assert token.client_secret == Secret("CSECRET")
    assert token.registration_expires_at == datetime(2027, 2, 9, 4, 15, 9, tzinfo=UTC)
    assert token.refresh_token == Secret("RT-NEW")
    assert token.to_json() == BOTOCORE_TOKEN


def test_sso_token_round_trip_keeps_unknown_fields() -> None:
    data: dict[str, Any] = {
        **BOTOCORE_TOKEN,
        "someToolsField": {"nested": [1, 2, 3]},
        "anotherOne": "kept",
    }
    token = SsoToken.from_json(data, Path("t.json"))
    assert token.extra == {"someToolsField": {"nested": [1, 2, 3]}, "anotherOne": "kept"}
    assert token.to_json() == data


def test_sso_token_minimal_legacy_form() -> None:
    data = {
        "startUrl": START_URL,
        "region": "us-east-1",
        "accessToken": "AT",
        "expiresAt": "2026-11-21T12:15:09Z",
    }
    token = SsoToken.from_json(data, Path("t.json"))
    assert token.refresh_token is None
    assert token.client_id is None
    assert not token.can_refresh(EXPIRES - timedelta(hours=1))
    assert token.to_json() == data


def test_sso_token_repr_hides_secrets() -> None:
    text = repr(SsoToken.from_json(BOTOCORE_TOKEN, Path("t.json")))
    for secret in ("AT-NEW", "CSECRET", "RT-NEW"):
        assert secret not in text


def test_sso_token_can_refresh() -> None:
    token = SsoToken.from_json(BOTOCORE_TOKEN, Path("t.json"))
    registration_expiry = datetime(2027, 2, 9, 4, 15, 9, tzinfo=UTC)
    assert token.can_refresh(registration_expiry - timedelta(seconds=1))
    assert not token.can_refresh(registration_expiry)
    no_refresh = {k: v for k, v in BOTOCORE_TOKEN.items() if k != "refreshToken"}
    assert not SsoToken.from_json(no_refresh, Path("t.json")).can_refresh(EXPIRES)


def test_with_access_token_keeps_refresh_token_unless_rotated() -> None:
    token = SsoToken.from_json(BOTOCORE_TOKEN, Path("t.json"))
    later = EXPIRES + timedelta(hours=1)
    kept = token.with_access_token(Secret("AT-2"), later, None)
    assert kept.access_token == Secret("AT-2")
    assert kept.expires_at == later
    assert kept.refresh_token == Secret("RT-NEW")
    rotated = token.with_access_token(Secret("AT-3"), later, Secret("RT-3"))
    assert rotated.refresh_token == Secret("RT-3")
    assert rotated.client_secret == token.client_secret


def test_js_pretty_printed_file_reads_fine(cache: JsonCacheDir) -> None:
    cache.directory.mkdir(parents=True)
    cache.path("js").write_text(JS_TOKEN_TEXT, encoding="utf-8")
    data = cache.read("js")
    assert data is not None
    token = SsoToken.from_json(data, cache.path("js"))
    assert token.access_token == Secret("AT-JS")
    assert token.expires_at == EXPIRES
    assert token.registration_expires_at == datetime(2027, 2, 9, 4, 15, 9, tzinfo=UTC)
    # written back in the form every reader accepts
    assert token.to_json()["expiresAt"] == "2026-11-21T12:15:09Z"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"accessToken": None}, "accessToken"),
        ({"expiresAt": None}, "expiresAt"),
        ({"accessToken": 42}, "accessToken"),
        ({"accessToken": ""}, "accessToken"),
        ({"expiresAt": 1795263309}, "timestamp"),
        ({"expiresAt": "not a time"}, ""),
        ({"startUrl": ["x"]}, "startUrl"),
        ({"region": 1}, "region"),
        ({"clientSecret": {"x": 1}}, "clientSecret"),
        ({"refreshToken": 7}, "refreshToken"),
        ({"registrationExpiresAt": "soon"}, ""),
    ],
)
def test_sso_token_bad_fields_are_cache_corrupt(change: dict[str, Any], problem: str) -> None:
    data: dict[str, Any] = dict(BOTOCORE_TOKEN)
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    path = Path("/cache/abc.json")
    with pytest.raises(CacheCorrupt) as caught:
        SsoToken.from_json(data, path)
    assert caught.value.path == path
    assert str(path) in str(caught.value)
    assert problem in str(caught.value)
    # the error never carries the secrets of the file
    for secret in ("AT-NEW", "CSECRET", "RT-NEW"):
        assert secret not in str(caught.value)


# --------------------------------------------------------------------------- Registration


def test_registration_round_trip() -> None:
    registration = Registration(
        client_id="CID",
        client_secret=Secret("CSECRET"),
        expires_at=EXPIRES,
        scopes=("sso:account:access",),
        grant_types=("authorization_code", "refresh_token"),
    )
    data = registration.to_json()
    assert data == {
        "clientId": "CID",
        "clientSecret": "CSECRET",
        "expiresAt": "2026-11-21T12:15:09Z",
        "scopes": ["sso:account:access"],
        "grantTypes": ["authorization_code", "refresh_token"],
    }
    again = Registration.from_json(data, Path("r.json"))
    assert again == registration
    assert again.for_auth_code


def test_registration_device_code_form() -> None:
    data = {"clientId": "CID", "clientSecret": "S", "expiresAt": "2026-11-21T12:15:09Z"}
    registration = Registration.from_json(data, Path("r.json"))
    assert registration.scopes is None
    assert registration.grant_types is None
    assert not registration.for_auth_code
    assert registration.to_json() == data


@pytest.mark.parametrize(
    "data",
    [
        {"clientSecret": "S", "expiresAt": "2026-11-21T12:15:09Z"},
        {"clientId": "CID", "expiresAt": "2026-11-21T12:15:09Z"},
        {"clientId": "CID", "clientSecret": "S"},
        {"clientId": 1, "clientSecret": "S", "expiresAt": "2026-11-21T12:15:09Z"},
        {"clientId": "CID", "clientSecret": "S", "expiresAt": 5},
    ],
)
def test_registration_bad_fields_are_cache_corrupt(data: dict[str, Any]) -> None:
    with pytest.raises(CacheCorrupt):
        Registration.from_json(data, Path("r.json"))


# --------------------------------------------------------------------------- JsonCacheDir


def test_read_absent_is_none(cache: JsonCacheDir) -> None:
    assert cache.read("nothing") is None
    assert cache.mtime("nothing") is None


@pytest.mark.parametrize(
    ("raw", "problem"),
    [(b"{not json", "not valid JSON"), (b"\xff\xfe", "not valid JSON"), (b"[1, 2]", "object")],
)
def test_read_unparsable_is_cache_corrupt(cache: JsonCacheDir, raw: bytes, problem: str) -> None:
    cache.directory.mkdir(parents=True)
    cache.path("bad").write_bytes(raw)
    with pytest.raises(CacheCorrupt, match=problem) as caught:
        cache.read("bad")
    assert caught.value.path == cache.path("bad")


def test_write_is_0600_and_leaves_no_temp_files(cache: JsonCacheDir) -> None:
    cache.write("tok", BOTOCORE_TOKEN)
    path = cache.path("tok")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.directory.stat().st_mode) & 0o077 == 0
    assert sorted(p.name for p in cache.directory.iterdir()) == ["tok.json"]
    assert json.loads(path.read_text(encoding="utf-8")) == BOTOCORE_TOKEN
    assert cache.read("tok") == BOTOCORE_TOKEN
    assert cache.mtime("tok") == path.stat().st_mtime


def test_write_replaces_atomically(cache: JsonCacheDir) -> None:
    cache.write("tok", {"accessToken": "old"})
    path = cache.path("tok")
    before = path.stat().st_ino
    with path.open("rb") as reader:
        cache.write("tok", {"accessToken": "new"})
        # a reader holding the old file still sees the whole old file: a rename, not a rewrite
        assert json.loads(reader.read()) == {"accessToken": "old"}
    assert path.stat().st_ino != before
    assert cache.read("tok") == {"accessToken": "new"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in cache.directory.iterdir()) == ["tok.json"]


def test_failed_write_keeps_the_original_and_cleans_up(
    cache: JsonCacheDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.write("tok", {"accessToken": "old"})

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(CacheWriteError, match="No space") as caught:
        cache.write("tok", {"accessToken": "new"})
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.path == cache.path("tok")
    assert cache.read("tok") == {"accessToken": "old"}
    assert sorted(p.name for p in cache.directory.iterdir()) == ["tok.json"]


def test_unparsable_file_is_quarantined_before_being_replaced(
    cache: JsonCacheDir, tmp_path: Path
) -> None:
    cache.directory.mkdir(parents=True)
    garbage = b'{"accessToken": "AT-HALF-WRITTEN", "exp'
    cache.path("tok").write_bytes(garbage)
    cache.write("tok", BOTOCORE_TOKEN)
    assert cache.read("tok") == BOTOCORE_TOKEN
    copies = list((tmp_path / "quarantine").iterdir())
    assert len(copies) == 1
    assert copies[0].name.startswith("tok.json.")
    assert copies[0].read_bytes() == garbage
    assert stat.S_IMODE(copies[0].stat().st_mode) == 0o600


def test_readable_file_is_not_quarantined(cache: JsonCacheDir, tmp_path: Path) -> None:
    cache.write("tok", {"accessToken": "one"})
    cache.write("tok", {"accessToken": "two"})
    assert not (tmp_path / "quarantine").exists()


def test_delete(cache: JsonCacheDir) -> None:
    cache.write("tok", {"a": 1})
    assert cache.delete("tok") is True
    assert not cache.path("tok").exists()
    assert cache.delete("tok") is False


def test_sso_cache_saves_under_the_cli_name(cache: JsonCacheDir) -> None:
    sso = SsoCache(cache)
    token = SsoToken.from_json(BOTOCORE_TOKEN, Path("t.json"))
    sso.save_token("my-sso", token)
    assert cache.path("0ad374308c5a4e22f723adf10145eafad7c4031c").exists()
    loaded = sso.load_token("my-sso")
    assert loaded == token
    assert sso.token_mtime("my-sso") is not None
    assert sso.load_token("other") is None
    assert sso.delete_token("my-sso") is True
    assert sso.load_token("my-sso") is None


def test_sso_cache_corrupt_token_raises_but_corrupt_registration_is_none(
    cache: JsonCacheDir,
) -> None:
    sso = SsoCache(cache)
    cache.directory.mkdir(parents=True)
    cache.path(sha1_name("my-sso")).write_text('{"expiresAt": "2026-11-21T12:15:09Z"}')
    with pytest.raises(CacheCorrupt, match="accessToken"):
        sso.load_token("my-sso")
    cache.path("reg").write_text("{")
    assert sso.load_registration("reg") is None
    registration = Registration("CID", Secret("S"), EXPIRES, None, None)
    sso.save_registration("reg", registration)
    assert sso.load_registration("reg") == registration


# --------------------------------------------------------------------------- locks

_HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
sys.stdout.write("locked\\n")
sys.stdout.flush()
sys.stdin.read()  # hold the lock until the test closes our stdin
"""

_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(3)
"""


async def _read_line(stream: ByteReceiveStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        data += await stream.receive()
    return data


async def test_lock_waits_for_another_process_and_calls_on_wait_once(
    cache: JsonCacheDir, tmp_path: Path
) -> None:
    lock_file = tmp_path / "locks" / "tok.lock"
    lock_file.parent.mkdir(parents=True)
    waits: list[None] = []
    waiting = anyio.Event()
    acquired = anyio.Event()

    def on_wait() -> None:
        waits.append(None)
        waiting.set()

    async def take() -> None:
        async with cache.lock("tok", on_wait=on_wait):
            acquired.set()

    with anyio.fail_after(10):
        async with await anyio.open_process(
            [sys.executable, "-c", _HOLDER, str(lock_file)]
        ) as proc:
            assert proc.stdout is not None
            assert proc.stdin is not None
            assert await _read_line(proc.stdout) == b"locked\n"
            async with anyio.create_task_group() as tg:
                tg.start_soon(take)
                await waiting.wait()
                await anyio.sleep(0.2)  # ten polls of the lock while the other process holds it
                assert not acquired.is_set()
                await proc.stdin.aclose()  # the holder exits and its flock goes with it
                await acquired.wait()
            assert await proc.wait() == 0
    assert len(waits) == 1


async def test_lock_excludes_another_process_while_held(
    cache: JsonCacheDir, tmp_path: Path
) -> None:
    lock_file = tmp_path / "locks" / "tok.lock"
    probe = [sys.executable, "-c", _PROBE, str(lock_file)]
    with anyio.fail_after(10):
        async with cache.lock("tok"):
            assert lock_file.exists()
            held = await anyio.run_process(probe, check=False)
            assert held.returncode == 3
        free = await anyio.run_process(probe, check=False)
        assert free.returncode == 0


async def test_lock_uncontended_does_not_call_on_wait(cache: JsonCacheDir) -> None:
    waits: list[None] = []
    with anyio.fail_after(5):
        async with cache.lock("tok", on_wait=lambda: waits.append(None)):
            pass
        async with cache.lock("tok", on_wait=lambda: waits.append(None)):
            pass
    assert waits == []
    # the lock file lives in the lock directory, never beside the AWS CLI's cache files
    assert not cache.directory.exists() or not any(cache.directory.iterdir())


async def test_lock_serialises_tasks_in_one_process(cache: JsonCacheDir) -> None:
    order: list[str] = []
    waits: list[None] = []
    first_in = anyio.Event()

    async def first() -> None:
        async with cache.lock("tok"):
            first_in.set()
            order.append("first-in")
            await anyio.sleep(0.05)
            order.append("first-out")

    async def second() -> None:
        await first_in.wait()
        async with cache.lock("tok", on_wait=lambda: waits.append(None)):
            order.append("second-in")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(second)
    assert order == ["first-in", "first-out", "second-in"]
    assert len(waits) == 1


async def test_locks_of_different_names_do_not_block(cache: JsonCacheDir) -> None:
    with anyio.fail_after(2):
        async with cache.lock("a"), cache.lock("b"):
            pass
