"""credd.config.ini: the AWS config reader that remembers where every key was written."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from credd.config.ini import IniFile, parse_ini, read_ini
from credd.errors import ConfigError

PATH = Path("/home/someone/.aws/config")


def parse(text: str) -> IniFile:
    return parse_ini(textwrap.dedent(text), PATH)


def test_sections_keys_and_lines() -> None:
    ini = parse(
        """\
        [default]
        region = us-east-1

        [profile dev]
        sso_session = my-sso
        sso_account_id = 123456789012
        """
    )
    assert list(ini.sections) == ["default", "profile dev"]
    default, dev = ini.sections["default"], ini.sections["profile dev"]
    assert default.values == {"region": "us-east-1"}
    assert default.line == 1
    assert default.lines == {"region": 2}
    assert dev.line == 4
    assert dev.values == {"sso_session": "my-sso", "sso_account_id": "123456789012"}
    assert dev.lines == {"sso_session": 5, "sso_account_id": 6}


def test_equals_and_colon_delimiters() -> None:
    ini = parse(
        """\
        [profile x]
        a = 1
        b: 2
        c=3
        d:4
        sso_start_url = https://d-1234567890.awsapps.com/start
        role_arn: arn:aws:iam::123456789012:role/R
        """
    )
    assert ini.sections["profile x"].values == {
        "a": "1",
        "b": "2",
        "c": "3",
        "d": "4",
        # the first delimiter splits; the rest belongs to the value
        "sso_start_url": "https://d-1234567890.awsapps.com/start",
        "role_arn": "arn:aws:iam::123456789012:role/R",
    }


def test_keys_are_lowercased_values_stripped_and_empty_values_kept() -> None:
    ini = parse(
        """\
        [default]
        AWS_Access_Key_ID =   AKIDEXAMPLE   \t
        empty =
        """
    )
    section = ini.sections["default"]
    assert section.values == {"aws_access_key_id": "AKIDEXAMPLE", "empty": ""}


def test_comments_and_blank_lines_are_skipped_and_inline_comments_kept() -> None:
    ini = parse(
        """\
        # a comment before any section
        ; another one

        [default]
        # region = eu-west-1
        ; output = json
        region = us-east-1 # not a comment: botocore has no inline comments
        """
    )
    assert ini.sections["default"].values == {
        "region": "us-east-1 # not a comment: botocore has no inline comments"
    }
    assert ini.sections["default"].lines == {"region": 7}


def test_nested_values_in_services_section() -> None:
    ini = parse(
        """\
        [services local]
        sts =
          endpoint_url = http://127.0.0.1:4566
          # comments inside a nested block are skipped
        sso_oidc =
          endpoint_url: http://127.0.0.1:4567
          Signature_Version = v4
        sso =
        """
    )
    section = ini.sections["services local"]
    assert section.nested("sts") == {"endpoint_url": "http://127.0.0.1:4566"}
    assert section.nested("sso_oidc") == {
        "endpoint_url": "http://127.0.0.1:4567",
        "signature_version": "v4",
    }
    assert section.nested("sso") == {}
    assert section.nested("absent") == {}
    assert section.lines == {"sts": 2, "sso_oidc": 5, "sso": 8}


def test_continuation_survives_a_blank_line() -> None:
    ini = parse("[services s]\nsts =\n\n  endpoint_url = http://localhost:1\nregion = x\n")
    section = ini.sections["services s"]
    assert section.nested("sts") == {"endpoint_url": "http://localhost:1"}
    assert section.values["region"] == "x"


def test_duplicate_section_names_file_and_both_lines() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(
            """\
            [profile dev]
            region = us-east-1

            [profile dev]
            region = eu-west-1
            """
        )
    message = str(caught.value)
    assert f"{PATH}:4:" in message
    assert "[profile dev]" in message
    assert "line 1" in message


def test_duplicate_key_names_file_line_and_key() -> None:
    with pytest.raises(ConfigError) as caught:
        parse(
            """\
            [profile dev]
            region = us-east-1
            output = json
            Region = eu-west-1
            """
        )
    message = str(caught.value)
    assert f"{PATH}:4:" in message
    assert "'region'" in message
    assert "line 2" in message


def test_same_key_in_two_sections_is_fine() -> None:
    ini = parse("[a]\nregion = 1\n[b]\nregion = 2\n")
    assert ini.sections["a"].values["region"] == "1"
    assert ini.sections["b"].values["region"] == "2"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # a line without a delimiter inside a section
        ("[default]\nregion = us-east-1\nwJalrXUtnFEMI/K7MDENG/SUPERSECRETKEY\n", 3),
        # a line starting with the delimiter
        ("[default]\n= wJalrXUtnFEMI/K7MDENG/SUPERSECRETKEY\n", 2),
        # a key line before any section
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/SUPERSECRETKEY\n[default]\n", 1),
        # an unclosed section header
        ("[default]\nregion = x\n[profile wJalrXUtnFEMI/K7MDENG/SUPERSECRETKEY\n", 3),
    ],
)
def test_malformed_line_names_file_and_line_without_echoing_it(text: str, line: int) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_ini(text, PATH)
    message = str(caught.value)
    assert message.startswith(f"{PATH}:{line}:")
    assert "SUPERSECRETKEY" not in message
    assert "wJalrXUtnFEMI" not in message


def test_where_names_key_line_or_section_line() -> None:
    ini = parse("[default]\n\nregion = x\n")
    section = ini.sections["default"]
    assert ini.where(section) == f"{PATH}:1"
    assert ini.where(section, "region") == f"{PATH}:3"
    assert ini.where(section, "absent") == f"{PATH}:1"


def test_section_name_is_trimmed() -> None:
    ini = parse("[ profile dev ]\nregion = x\n")
    assert list(ini.sections) == ["profile dev"]


def test_crlf_line_endings() -> None:
    ini = parse_ini("[default]\r\nregion = us-east-1\r\n", PATH)
    assert ini.sections["default"].values == {"region": "us-east-1"}


def test_read_ini_missing_file_is_none(tmp_path: Path) -> None:
    assert read_ini(tmp_path / "absent") is None


def test_read_ini_reads_and_keeps_path(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("[default]\nregion = us-east-1\n", encoding="utf-8")
    ini = read_ini(path)
    assert ini is not None
    assert ini.path == path
    assert ini.sections["default"].values == {"region": "us-east-1"}


def test_read_ini_undecodable_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_bytes(b"[default]\nregion = \xff\xfe\n")
    with pytest.raises(ConfigError) as caught:
        read_ini(path)
    assert str(path) in str(caught.value)
