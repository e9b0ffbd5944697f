"""Fuzzing the cache readers: what the AWS CLI, ``aws login`` and credd itself left on disk.

Each reader (the Identity Center token cache, its client registrations, the
Sign-In login cache, credd's trusted-identity token store) gets its valid
document damaged: truncated, a field of the wrong type (numbers for strings,
objects, lists, null, huge strings), a field missing, timestamps that are not
timestamps or fall off the calendar, bytes that are not UTF-8, JSON nested too
deep, numbers too long to convert. Reading gives the token or reports the
file unreadable (:class:`CacheCorrupt`; a registration is then just absent),
never anything else, and leaves the file's bytes alone. Writing a new entry
over an unreadable one first copies it, byte for byte, to
``$XDG_STATE_HOME/credd/unreadable/``; over a readable one it copies nothing.

At the daemon level: ``credd serve`` started over a corrupt Identity Center
cache stays up, reports the session in ``/v1/status``, answers 503, and leaves
the file alone until ``credd login`` replaces it (keeping the copy).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credd.files.store import (
    CacheCorrupt,
    JsonCacheDir,
    LoginCache,
    LoginToken,
    Registration,
    SsoCache,
    SsoToken,
    parse_timestamp,
    sha1_name,
)
from credd.sessions.iam_tokens import IamToken, IamTokenCache
from credd.testing.emulator import Emulator
from tests.support.home import Home
from tests.support.process import login, serving

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)
LOGIN_SESSION = "arn:aws:iam::111111111111:user/alice"

SSO_TOKEN = {
    "startUrl": "https://d-1234567890.awsapps.com/start",
    "region": "us-east-1",
    "accessToken": "AT",
    "expiresAt": "2026-11-21T12:15:09Z",
    "clientId": "CID",
    "clientSecret": "CSECRET",
    "registrationExpiresAt": "2027-02-09T04:15:09Z",
    "refreshToken": "RT",
}
REGISTRATION = {
    "clientId": "CID",
    "clientSecret": "CSECRET",
    "expiresAt": "2027-02-09T04:15:09Z",
    "scopes": ["sso:account:access"],
    "grantTypes": ["authorization_code", "refresh_token"],
}
LOGIN_TOKEN = {
    "accessToken": {
        "accessKeyId": "ASIAEXAMPLE",
        "secretAccessKey": "SECRET",
        "sessionToken": "SESSION",
        "accountId": "111111111111",
        "expiresAt": "2026-11-21T12:15:09Z",
    },
    "tokenType": "aws_sigv4",
    "clientId": "arn:aws:signin:::devtools/same-device",
    "refreshToken": "RT",
    "idToken": "a.b.c",
    "dpopKey": "-----BEGIN EC PRIVATE KEY-----\nMHc=\n-----END EC PRIVATE KEY-----\n",
}
IAM_TOKEN = {
    "clientId": "arn:aws:sso::111111111111:application/ssoins-1/apl-2",
    "region": "us-east-1",
    "grantType": "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "accessToken": "AT",
    "tokenType": "Bearer",
    "expiresAt": "2026-11-21T12:15:09Z",
    "receivedAt": "2026-11-21T11:15:09Z",
    "scope": ["openid"],
    "requestedScope": [],
    "refreshToken": "RT",
    "idToken": "a.b.c",
    "identityContext": "IC",
    "issuedTokenType": "urn:ietf:params:oauth:token-type:refresh_token",
    "assertionSubject": "alice@example.com",
}


@dataclass(frozen=True)
class Kind:
    """One cache reader: its valid document, how to read an entry and how to write one."""

    name: str
    document: dict[str, Any]
    #: the entry's file name (without ``.json``)
    entry: str
    #: the entry read: the parsed value, ``None``, or :class:`CacheCorrupt`
    read: Callable[[JsonCacheDir], object]
    #: what the write returns (the fingerprint of the file written) is not looked at here
    write: Callable[[JsonCacheDir], object]


def _sso(files: JsonCacheDir) -> SsoCache:
    return SsoCache(files)


KINDS = [
    Kind(
        "identity center token",
        SSO_TOKEN,
        sha1_name("my-sso"),
        lambda files: _sso(files).load_token("my-sso"),
        lambda files: _sso(files).save_token(
            "my-sso", SsoToken.from_json(SSO_TOKEN, Path("valid"))
        ),
    ),
    Kind(
        "client registration",
        REGISTRATION,
        "registration",
        lambda files: _sso(files).load_registration("registration"),
        lambda files: _sso(files).save_registration(
            "registration", Registration.from_json(REGISTRATION, Path("valid"))
        ),
    ),
    Kind(
        "sign-in login",
        LOGIN_TOKEN,
        LoginCache.token_name(LOGIN_SESSION),
        lambda files: LoginCache(files).load_token(LOGIN_SESSION),
        lambda files: LoginCache(files).save_token(
            LOGIN_SESSION, LoginToken.from_json(LOGIN_TOKEN, Path("valid"))
        ),
    ),
    Kind(
        "trusted identity token",
        IAM_TOKEN,
        IamTokenCache.token_name("analyst"),
        lambda files: IamTokenCache(files).load_token("analyst"),
        lambda files: IamTokenCache(files).save_token(
            "analyst", IamToken.from_json(IAM_TOKEN, Path("valid"))
        ),
    ),
]

BAD_VALUES: list[object] = [
    None, 0, -1, 1.5, 1e308, True, [], {}, {"a": 1}, [1, "x"], "", " ", "x" * 100_000,
    "not a date", "2026-13-45T25:61:61Z", "0001-01-01T00:00:00+05:00",
    "9999-12-31T23:59:59-05:00", "2026-11-21T12:15:09+24:00", "\ud800", "\x00", "Z",
    "2026-11-21", "2026-11-21T12:15:09.123456789Z", "  2026-11-21T12:15:09Z  ",
]  # fmt: skip


@st.composite
def damaged(draw: st.DrawFn, document: dict[str, Any]) -> bytes:
    doc = json.loads(json.dumps(document))
    action = draw(
        st.sampled_from(["field", "field", "field", "drop", "truncate", "bytes", "raw", "top"])
    )
    if action in ("field", "drop"):
        holder = doc
        if "accessToken" in doc and isinstance(doc["accessToken"], dict) and draw(st.booleans()):
            holder = doc["accessToken"]
        key = draw(st.sampled_from(sorted(holder)))
        if action == "drop":
            del holder[key]
        else:
            holder[key] = draw(
                st.one_of(
                    st.sampled_from(BAD_VALUES),
                    st.text(max_size=30),
                    st.integers(),
                    st.floats(allow_nan=False),
                )
            )
    elif action == "top":
        doc = draw(st.sampled_from([[], "x", 1, None, [doc]]))
    data = json.dumps(doc).encode()
    if action == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif action == "bytes":
        at = draw(st.integers(0, len(data)))
        junk = draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x00", b"\xfe\xff"]))
        data = data[:at] + junk + data[at:]
    elif action == "raw":
        data = draw(
            st.sampled_from(
                [
                    b"",
                    b"[" * 100_000,
                    b"{" * 100_000,
                    b'{"expiresAt": ' + b"9" * 5000 + b"}",
                    b"\xef\xbb\xbf" + data,
                    data.decode().encode("utf-16"),
                    b"null",
                    b"NaN",
                    data + b"garbage",
                    data + data,
                ]
            )
        )
    return data


def quarantined(root: Path, entry: str) -> list[bytes]:
    directory = root / "unreadable"
    if not directory.exists():
        return []
    return [p.read_bytes() for p in sorted(directory.iterdir()) if p.name.startswith(entry)]


def check_reader(kind: Kind, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = JsonCacheDir(root / "cache", root / "locks", root / "unreadable")
        files.directory.mkdir()
        path = files.path(kind.entry)
        path.write_bytes(data)
        problem = None
        try:
            value = kind.read(files)
        except CacheCorrupt as exc:
            value, problem = None, exc.message
        unreadable = value is None  # a registration reads as absent, the others raise
        if problem is not None:
            assert str(path) in problem
        assert path.read_bytes() == data, "reading changed the file"
        assert os.listdir(files.directory) == [path.name], "reading left files beside it"
        assert quarantined(root, path.name) == [], "reading alone copied the file"

        kind.write(files)  # a login or a renewal writes a new entry
        assert kind.read(files) is not None
        assert quarantined(root, path.name) == ([data] if unreadable else [])


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_the_valid_documents_read(kind: Kind) -> None:
    """The fuzz starts from documents that read: damage, not the start, is what is tested."""
    check_reader(kind, json.dumps(kind.document).encode())


@pytest.mark.slow  # every example writes a file with fsync
@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: kind.name)
def test_damaged_cache_is_reported_left_alone_and_copied_before_replacing(kind: Kind) -> None:
    @settings(FUZZ)
    @given(data=damaged(kind.document))
    def case(data: bytes) -> None:
        check_reader(kind, data)

    case()


@given(value=st.one_of(st.sampled_from(BAD_VALUES), st.text(max_size=40)))
@settings(FUZZ)
def test_parse_timestamp_raises_only_value_error(value: object) -> None:
    try:
        parsed = parse_timestamp(value)
    except ValueError:
        return
    offset = parsed.utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0


# --------------------------------------------------------------------------- the daemon


@pytest.mark.slow
async def test_daemon_over_a_corrupt_cache_stays_up_reports_it_and_leaves_it(
    home: Home, emulator: object, tmp_path: Path
) -> None:
    assert isinstance(emulator, Emulator)
    home.write_aws_config()
    home.write_credd_config('[server]\nlisten = "127.0.0.1:0"\n')
    env = dict(os.environ)  # as the fixtures left it: HOME, XDG_RUNTIME_DIR, AWS_ENDPOINT_URL
    cache_file = home.root / ".aws" / "sso" / "cache" / f"{sha1_name('my-sso')}.json"
    cache_file.parent.mkdir(parents=True)
    corrupt = json.dumps({**SSO_TOKEN, "accessToken": 12345, "expiresAt": None}).encode()
    cache_file.write_bytes(corrupt)
    quarantine = home.root / ".local" / "state" / "credd" / "unreadable"

    async with serving(env, tmp_path / "logs") as daemon:
        status = (await daemon.get("/v1/status")).json()
        session = {s["name"]: s for s in status["sessions"]}["my-sso"]
        assert session["state"] == "login-required", session
        assert "cannot be read" in session["last_error"], session
        answer = await daemon.get("/v1/credentials/dev")
        assert answer.status == 503, answer.text
        assert answer.json()["code"] == "LoginRequired"
        assert (await daemon.get("/healthz")).status == 200
        assert cache_file.read_bytes() == corrupt, "the daemon rewrote the corrupt file"
        assert not quarantine.exists()

        await login(env)  # replaces the file, keeping a copy first
        answer = await daemon.get("/v1/credentials/dev")
        assert answer.status == 200, answer.text
        assert [p.read_bytes() for p in quarantine.iterdir()] == [corrupt]
        assert SsoToken.from_json(json.loads(cache_file.read_bytes()), cache_file).access_token
        assert daemon.process.returncode is None
