"""Fuzzing the AWS config reader and credd's TOML reader.

Both files get arbitrary text and bytes, and near-valid files: the documented
examples with one to three lines damaged (a value swapped for garbage, huge
numbers, NaN, wrong TOML types, duplicate keys and sections, a missing ``]``,
a BOM, NULs, CRLF, stray indentation, a 100,000-character line). Loading
either succeeds, with settings that hold together, or raises
:class:`ConfigError` whose message names the file and a line; never any other
exception.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from credd.config.load import load_settings
from credd.config.settings import Settings
from credd.errors import ConfigError
from credd.files.paths import Paths, resolve_paths
from tests.support.configs import AWS_CONFIG

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
EXAMPLE_TOML = Path(__file__).resolve().parents[2] / "config.example.toml"

#: every kind of section and key the AWS config reader knows, on top of conftest's
AWS_CONFIG_MORE = """\

[profile console]
login_session = arn:aws:iam::111111111111:user/alice
region = us-east-1

[profile keys]
aws_access_key_id = AKIAIOSFODNN7EXAMPLE
aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY

[profile proc]
credential_process = /bin/echo {}

[profile chained]
role_arn = arn:aws:iam::333333333333:role/Chained
source_profile = keys
duration_seconds = 3600
external_id = ext

[profile legacy]
sso_start_url = https://d-1234567890.awsapps.com/start
sso_region = us-east-1
sso_account_id = 111111111111
sso_role_name = ReadOnly
services = local

[services local]
sts =
  endpoint_url = http://127.0.0.1:1
"""
AWS_TEXT = AWS_CONFIG + AWS_CONFIG_MORE
#: the documented example, with a trusted-identity table like the one it describes
CREDD_TEXT = (
    EXAMPLE_TOML.read_text()
    + """
[profiles.analyst]
type = "create-token-with-iam"
client_id = "arn:aws:sso::111111111111:application/ssoins-1111111111111111/apl-2222222222222222"
sso_region = "us-east-1"
source_profile = "keys"
grant_type = "urn:ietf:params:oauth:grant-type:jwt-bearer"
assertion_file = "~/.config/idp/jwt"
scopes = ["openid", "sts:identity_context"]
role_arn = "arn:aws:iam::111111111111:role/Analyst"
role_session_name = "credd-analyst"
duration_seconds = 3600
region = "eu-west-1"

[profiles.exchange]
type = "create-token-with-iam"
client_id = "arn:aws:sso::111111111111:application/ssoins-1111111111111111/apl-3333333333333333"
sso_region = "us-east-1"
grant_type = "urn:ietf:params:oauth:grant-type:token-exchange"
subject_session = "my-sso"
"""
)


@dataclass(frozen=True)
class Files:
    paths: Paths

    def write(self, *, aws: bytes | None = None, credd: bytes | None = None) -> None:
        for path, data in (
            (self.paths.aws_config_file, aws),
            (self.paths.credd_config_file, credd),
        ):
            if data is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(data)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    env = {
        "HOME": str(tmp_path),
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials"),
        "CREDD_CONFIG": str(tmp_path / "credd.toml"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
    }
    return Files(resolve_paths(env))


def load_or_explain(files: Files) -> Settings | None:
    """Load; a refusal must be a ConfigError naming a file and a line. ``None``: refused."""
    paths = files.paths
    try:
        loaded = load_settings(paths)
    except ConfigError as exc:
        message = str(exc)
        files_named = "|".join(
            re.escape(str(p)) for p in (paths.aws_config_file, paths.credd_config_file)
        )
        # "PATH:LINE: ...": the file and the line to change come first
        assert re.match(rf"(?:{files_named}):\d+: ", message), (
            f"names no file and line: {message!r}"
        )
        assert "\n" not in message, f"not one line: {message!r}"
        return None
    holds_together(loaded)
    return loaded


def holds_together(loaded: Settings) -> None:
    """What a loaded configuration promises the rest of credd."""
    refresh = loaded.refresh
    for seconds in (
        refresh.token_margin_seconds,
        refresh.credentials_margin_seconds,
        refresh.idle_timeout_seconds,
    ):
        assert math.isfinite(seconds), refresh
        assert 0 <= seconds <= 10**9, refresh
    assert 0 <= loaded.server.port <= 65535
    assert "\x00" not in str(loaded.server.token_file)
    assert refresh.prefetch <= set(loaded.profiles)


# --------------------------------------------------------------------------- strategies

INI_CHARS = st.sampled_from(list("[]=:#; \t\n\r\x00\ufeff\x0c\x85\u2028abcxyz_-./0123456789"))
GARBAGE = [
    "", " ", "=", "[", "]", "[]", "\x00", "\ufeff", "\r", "\x0c", "\u2028", "é", "\U0001f511",
    "9" * 5000, "-1", "1e999", "nan", "0x10", "\uff10\uff11\uff12", "٣٦٠٠", "arn:aws:iam::1:role/x",
    "x" * 100_000, "a\tb", "= = =", "[profile dev]", "~/\x00", "$HOME", "\\",
]  # fmt: skip
TOML_VALUES = [
    "0", "-1", "5", "99999999999999999999999999", "1e400", "-1e400", "nan", "inf", "-inf",
    "0.5", "true", "[]", "[1, 2]", '["a", 1]', "{}", '{ a = "b" }', "1979-05-27T07:32:00Z",
    "07:32:00", '""', '"x"', '"127.0.0.1:0"', '"[::1]:9911"', '"localhost:65536"',
    '"10.0.0.1:9911"', '"127.0.0.1:' + "9" * 5000 + '"', '"~/token"', '"/tmp/\\u0000x"',
    '"debug"', '"json"', '"\\ud800"', "'''multi\nline'''", '"' + "y" * 100_000 + '"',
    '"arn:aws:sso::111111111111:application/ssoins-1/apl-2"', '"us-east-1"',
    '"urn:ietf:params:oauth:grant-type:jwt-bearer"', '"authorization_code"', '"dev"',
    '["dev"]', '["sts:identity_context"]', '"idp \\"unclosed"', "[[1]]",
]  # fmt: skip


@st.composite
def damaged(draw: st.DrawFn, text: str, values: list[str], separator: str) -> bytes:
    """``text`` with one to three lines damaged, then perhaps a BOM or CRLF line ends."""
    lines = text.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(lines) - 1))
        line = lines[at]
        action = draw(
            st.sampled_from(
                [
                    "value",
                    "value",
                    "value",
                    "duplicate",
                    "drop",
                    "unclose",
                    "indent",
                    "nul",
                    "insert",
                    "key",
                ]
            )
        )
        if action == "value" and separator in line:
            key = line.split(separator, 1)[0]
            value = draw(st.one_of(st.sampled_from(values), st.text(max_size=20)))
            lines[at] = f"{key}{separator} {value}"
        elif action == "duplicate":
            lines.insert(at + draw(st.integers(1, 4)), line)
        elif action == "drop":
            del lines[at]
        elif action == "unclose":
            lines[at] = line.replace("]", "", 1)
        elif action == "indent":
            lines[at] = draw(st.sampled_from([" ", "\t", "  "])) + line
        elif action == "nul":
            lines[at] = line[: len(line) // 2] + "\x00" + line[len(line) // 2 :]
        elif action == "insert":
            lines.insert(at, draw(st.one_of(st.sampled_from(GARBAGE), st.text(INI_CHARS))))
        elif action == "key" and separator in line:
            new_key = draw(st.sampled_from(["", "unknown_key", "x" * 1000, "é", "a b", "[x]"]))
            lines[at] = new_key + separator + line.split(separator, 1)[1]
        if not lines:
            lines = [""]
    joined = draw(st.sampled_from(["\n", "\n", "\r\n", "\r"])).join(lines) + "\n"
    data = joined.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 5)) == 0:
        data = b"\xef\xbb\xbf" + data
    if draw(st.integers(0, 5)) == 0:
        at = draw(st.integers(0, len(data)))
        data = (
            data[:at] + draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80"])) + data[at:]
        )
    return data


arbitrary = st.one_of(
    st.text(INI_CHARS, max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(max_size=200),
)


# --------------------------------------------------------------------------- tests


def test_the_valid_examples_load(files: Files) -> None:
    """The fuzz starts from files that load: damage, not the start, is what is tested."""
    files.write(aws=AWS_TEXT.encode(), credd=CREDD_TEXT.encode())
    loaded = load_or_explain(files)
    assert loaded is not None
    assert {"dev", "admin", "console", "chained", "legacy", "analyst"} <= set(loaded.profiles)


@FUZZ
@given(data=st.one_of(arbitrary, damaged(AWS_TEXT, GARBAGE, " =")))
def test_aws_config_loads_or_names_file_and_line(files: Files, data: bytes) -> None:
    files.write(aws=data, credd=None)
    load_or_explain(files)


@FUZZ
@given(data=st.one_of(arbitrary, damaged(CREDD_TEXT, TOML_VALUES, " =")))
def test_credd_toml_loads_or_names_file_and_line(files: Files, data: bytes) -> None:
    files.write(aws=AWS_TEXT.encode(), credd=data)
    load_or_explain(files)


@FUZZ
@given(
    key=st.sampled_from(
        ["token_margin_seconds", "credentials_margin_seconds", "idle_timeout_seconds"]
    ),
    value=st.sampled_from(["nan", "inf", "-inf", "1e400", "1e300", "-0.0", "1e10"]),
)
def test_refresh_seconds_are_finite_or_refused(files: Files, key: str, value: str) -> None:
    files.write(aws=AWS_TEXT.encode(), credd=f"[refresh]\n{key} = {value}\n".encode())
    if load_or_explain(files) is None:
        with pytest.raises(ConfigError, match=rf":2: refresh\.{key}: "):
            load_settings(files.paths)


def every_value_swapped(text: str, values: list[str]) -> list[tuple[str, str]]:
    """(``text`` with one key's value replaced, what replaced it), for every key and value."""
    lines = text.split("\n")
    out = []
    for at, line in enumerate(lines):
        if " = " not in line or line.lstrip().startswith("#"):
            continue
        key = line.split(" = ", 1)[0]
        for value in values:
            swapped = [*lines[:at], f"{key} = {value}", *lines[at + 1 :]]
            out.append(("\n".join(swapped), f"{key} = {value[:40]!r}"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("which", "cases"),
    [
        ("aws", every_value_swapped(AWS_TEXT, GARBAGE)),
        ("credd", every_value_swapped(CREDD_TEXT, TOML_VALUES)),
    ],
)
def test_every_key_with_every_bad_value(
    files: Files, which: str, cases: list[tuple[str, str]]
) -> None:
    """Not random: each key of both files with each bad value, one at a time."""
    refused = 0
    for text, what in cases:
        aws, credd = (text, None) if which == "aws" else (AWS_TEXT, text)
        files.write(
            aws=aws.encode("utf-8", "surrogatepass"),
            credd=None if credd is None else credd.encode("utf-8", "surrogatepass"),
        )
        try:
            refused += load_or_explain(files) is None
        except AssertionError as exc:
            raise AssertionError(f"{which}: {what}: {exc}") from None
    assert refused > len(cases) // 4  # the bad values are mostly refused, not all ignored
