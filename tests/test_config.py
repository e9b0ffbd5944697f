"""credd.config.settings: the AWS config and TOML into frozen settings; errors name file:line."""

from __future__ import annotations

import textwrap
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from credd.config.load import load_settings
from credd.config.settings import (
    DEFAULT_SCOPES,
    AssumeRoleProfile,
    LogSettings,
    RefreshSettings,
    Settings,
    SigninProfile,
    SigninSessionSpec,
    SsoRoleProfile,
    SsoSessionSpec,
    StaticKeysProfile,
    TrustedIdentitySpec,
)
from credd.errors import ConfigError
from credd.files.paths import Paths, resolve_paths
from credd.secret import Secret

START_URL = "https://d-1234567890.awsapps.com/start"

#: exactly what `aws configure sso` writes, plus an `aws login` profile (protocols.md 6.4)
CLI_CONFIG = f"""\
[profile dev]
sso_session = my-sso
sso_account_id = 123456789012
sso_role_name = ReadOnly
region = us-west-2

[sso-session my-sso]
sso_start_url = {START_URL}
sso_region = us-east-1
sso_registration_scopes = sso:account:access

; written by `aws login` (region only if it had to prompt)
[profile console]
login_session = arn:aws:iam::123456789012:user/alice
region = us-east-1
"""


class Home:
    """A private HOME with files written into it; the env is a plain dict, never os.environ."""

    def __init__(self, root: Path, runtime: Path) -> None:
        self.root = root
        self.env = {"HOME": str(root), "XDG_RUNTIME_DIR": str(runtime)}

    @property
    def aws_config(self) -> Path:
        return self.root / ".aws" / "config"

    @property
    def aws_credentials(self) -> Path:
        return self.root / ".aws" / "credentials"

    @property
    def credd_config(self) -> Path:
        return self.root / ".config" / "credd" / "config.toml"

    def write(self, path: Path, text: str) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = textwrap.dedent(text)
        path.write_text(text, encoding="utf-8")
        return text

    def config(self, text: str) -> str:
        return self.write(self.aws_config, text)

    def credentials(self, text: str) -> str:
        return self.write(self.aws_credentials, text)

    def toml(self, text: str) -> str:
        return self.write(self.credd_config, text)

    def paths(self, config_file: str | None = None) -> Paths:
        return resolve_paths(self.env, config_file=config_file)

    def settings(self, config_file: str | None = None) -> Settings:
        return load_settings(self.paths(config_file))

    def error(self) -> str:
        with pytest.raises(ConfigError) as caught:
            self.settings()
        return str(caught.value)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    root, runtime = tmp_path / "home", tmp_path / "run"
    root.mkdir()
    runtime.mkdir()
    # Nothing here should read the process environment; if it does, it finds
    # nothing of the real user's.
    monkeypatch.setenv("HOME", str(tmp_path / "process-home"))
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "CREDD_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return Home(root, runtime)


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """The 1-based number of the ``nth`` line of ``text`` containing ``needle``."""
    hits = [number for number, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth - 1]


# --------------------------------------------------------------------------- AWS config


def test_config_as_the_aws_cli_writes_it(home: Home) -> None:
    home.config(CLI_CONFIG)
    settings = home.settings()
    session = SsoSessionSpec(
        name="my-sso",
        start_url=START_URL,
        region="us-east-1",
        registration_scopes=("sso:account:access",),
        legacy=False,
        endpoint_profile="dev",
    )
    alice = "arn:aws:iam::123456789012:user/alice"
    signin = SigninSessionSpec(name=alice, region="us-east-1", profile="console")
    assert dict(settings.sessions) == {"my-sso": session, alice: signin}
    assert session.cache_key == "my-sso"
    assert dict(settings.profiles) == {
        "dev": SsoRoleProfile(
            name="dev",
            session="my-sso",
            account_id="123456789012",
            role_name="ReadOnly",
            region="us-west-2",
        ),
        "console": SigninProfile(name="console", session=alice, region="us-east-1"),
    }
    assert settings.region_of("dev") == "us-west-2"
    assert settings.region_of("nope") is None
    assert "console" not in settings.unserved
    assert settings.sources == {}


def test_settings_are_frozen(home: Home) -> None:
    home.config(CLI_CONFIG)
    settings = home.settings()
    with pytest.raises(FrozenInstanceError):
        settings.profiles["dev"].region = "x"  # type: ignore[misc]


def test_registration_scopes_default_and_list(home: Home) -> None:
    home.config(
        f"""\
        [sso-session plain]
        sso_start_url = {START_URL}
        sso_region = us-east-1

        [sso-session many]
        sso_start_url = https://other.awsapps.com/start
        sso_region = eu-west-1
        sso_registration_scopes = sso:account:access , codewhisperer:completions,,

        [profile a]
        sso_session = plain
        sso_account_id = 111111111111
        sso_role_name = R

        [profile b]
        sso_session = many
        sso_account_id = 111111111111
        sso_role_name = R
        """
    )
    sessions = home.settings().sessions
    plain, many = sessions["plain"], sessions["many"]
    assert isinstance(plain, SsoSessionSpec)
    assert isinstance(many, SsoSessionSpec)
    assert plain.registration_scopes == DEFAULT_SCOPES
    assert many.registration_scopes == (
        "sso:account:access",
        "codewhisperer:completions",
    )


def test_legacy_profile_session_is_named_by_start_url(home: Home) -> None:
    home.config(
        f"""\
        [profile old]
        sso_start_url = {START_URL}
        sso_region = us-east-1
        sso_account_id = 123456789012
        sso_role_name = Admin
        """
    )
    settings = home.settings()
    session = settings.sessions[START_URL]
    assert isinstance(session, SsoSessionSpec)
    assert session.legacy is True
    assert session.name == START_URL
    assert session.cache_key == START_URL
    assert session.region == "us-east-1"
    assert session.registration_scopes == ()
    profile = settings.profiles["old"]
    assert isinstance(profile, SsoRoleProfile)
    assert profile.session == START_URL
    assert profile.region is None
    assert settings.session_for("old") == session


def test_role_chaining(home: Home) -> None:
    home.config(
        CLI_CONFIG
        + """
[profile admin]
role_arn = arn:aws:iam::222222222222:role/Admin
source_profile = dev
role_session_name = credd-admin
duration_seconds = 3600
external_id = ext-123
region = eu-central-1

[profile deeper]
role_arn = arn:aws-us-gov:iam::333333333333:role/path/Deep+Role
source_profile = admin
"""
    )
    settings = home.settings()
    assert settings.profiles["admin"] == AssumeRoleProfile(
        name="admin",
        source_profile="dev",
        role_arn="arn:aws:iam::222222222222:role/Admin",
        role_session_name="credd-admin",
        duration_seconds=3600,
        external_id="ext-123",
        region="eu-central-1",
    )
    assert settings.profiles["deeper"] == AssumeRoleProfile(
        name="deeper",
        source_profile="admin",
        role_arn="arn:aws-us-gov:iam::333333333333:role/path/Deep+Role",
        role_session_name=None,
        duration_seconds=None,
        external_id=None,
        region=None,
    )
    assert "admin" not in settings.unserved
    assert "deeper" not in settings.unserved


STATIC = """\
[static]
aws_access_key_id = AKIAIOSFODNN7EXAMPLE
aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY
aws_session_token = FwoGZXIvYXdzEXAMPLESESSION
region = ap-south-1
"""


def test_static_keys_in_credentials_file_are_a_source_not_served(home: Home) -> None:
    home.credentials(STATIC)
    home.config(
        """\
        [profile via-static]
        role_arn = arn:aws:iam::222222222222:role/FromStatic
        source_profile = static
        """
    )
    settings = home.settings()
    assert "static" not in settings.profiles
    assert "static keys" in settings.unserved["static"]
    source = settings.sources["static"]
    assert isinstance(source, StaticKeysProfile)
    assert source.access_key_id == "AKIAIOSFODNN7EXAMPLE"
    assert source.secret_access_key == Secret("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    assert source.session_token == Secret("FwoGZXIvYXdzEXAMPLESESSION")
    assert source.region == "ap-south-1"
    assert "EXAMPLEKEY" not in repr(settings.sources)
    assert "EXAMPLESESSION" not in repr(settings.sources)
    # a role on top of static keys is served
    assert isinstance(settings.profiles["via-static"], AssumeRoleProfile)
    assert settings.session_for("via-static") is None


def test_static_keys_in_the_config_file_are_a_source_too(home: Home) -> None:
    home.config(
        """\
        [default]
        aws_access_key_id = AKIAIOSFODNN7EXAMPLE
        aws_secret_access_key = secret
        """
    )
    settings = home.settings()
    source = settings.sources["default"]
    assert isinstance(source, StaticKeysProfile)
    assert source.session_token is None
    assert "static keys" in settings.unserved["default"]


def test_credential_process_profile_is_unserved_with_reason(home: Home) -> None:
    home.config(
        CLI_CONFIG
        + """
[profile proc]
credential_process = /usr/bin/get-creds --profile x
"""
    )
    settings = home.settings()
    assert "proc" not in settings.profiles
    assert "credential_process" in settings.unserved["proc"]
    assert "dev" in settings.profiles


def test_credential_process_profile_may_be_a_source_profile(home: Home) -> None:
    home.config(
        """\
        [profile proc]
        credential_process = /usr/bin/get-creds

        [profile role-on-proc]
        role_arn = arn:aws:iam::222222222222:role/R
        source_profile = proc
        """
    )
    settings = home.settings()
    assert "role-on-proc" in settings.profiles


def test_broken_chains_are_unserved_while_others_work(home: Home) -> None:
    home.config(
        CLI_CONFIG
        + """
[profile orphan]
role_arn = arn:aws:iam::222222222222:role/R
source_profile = nowhere

[profile loop-a]
role_arn = arn:aws:iam::222222222222:role/A
source_profile = loop-b

[profile loop-b]
role_arn = arn:aws:iam::222222222222:role/B
source_profile = loop-a

[profile self]
role_arn = arn:aws:iam::222222222222:role/S
source_profile = self

[profile on-loop]
role_arn = arn:aws:iam::222222222222:role/C
source_profile = loop-a

[profile on-orphan]
role_arn = arn:aws:iam::222222222222:role/D
source_profile = orphan

[profile on-login]
role_arn = arn:aws:iam::222222222222:role/E
source_profile = console

[profile fine]
role_arn = arn:aws:iam::222222222222:role/F
source_profile = dev
"""
    )
    settings = home.settings()
    unserved = settings.unserved
    assert "'nowhere'" in unserved["orphan"]
    assert "not defined" in unserved["orphan"]
    assert "loops" in unserved["loop-a"]
    assert "loops" in unserved["loop-b"]
    assert "loops" in unserved["self"]
    # a chain through a broken profile names the break, wherever it lies
    assert "'loop-a'" in unserved["on-loop"] or "'loop-b'" in unserved["on-loop"]
    assert "'orphan'" in unserved["on-orphan"] or "'nowhere'" in unserved["on-orphan"]
    assert "on-login" not in unserved  # a Sign-In profile is a source like any other
    assert set(settings.profiles) == {"dev", "fine", "console", "on-login"}


def test_role_without_source_profile_is_unserved(home: Home) -> None:
    home.config(
        """\
        [profile r]
        role_arn = arn:aws:iam::222222222222:role/R
        """
    )
    assert "source_profile" in home.settings().unserved["r"]


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ("mfa_serial = arn:aws:iam::123456789012:mfa/me", "MFA"),
        ("credential_source = Ec2InstanceMetadata", "credential_source"),
        ("web_identity_token_file = /tmp/token", "web identity"),
    ],
)
def test_roles_credd_cannot_renew_are_unserved(home: Home, extra: str, reason: str) -> None:
    home.config(
        CLI_CONFIG
        + f"""
[profile r]
role_arn = arn:aws:iam::222222222222:role/R
source_profile = dev
{extra}
"""
    )
    settings = home.settings()
    assert "r" not in settings.profiles
    assert reason in settings.unserved["r"]
    assert "dev" in settings.profiles


def test_incomplete_sso_profile_is_unserved(home: Home) -> None:
    home.config(
        CLI_CONFIG
        + """
[profile half]
sso_session = my-sso
sso_account_id = 123456789012

[profile nostart]
sso_region = us-east-1
sso_account_id = 123456789012
sso_role_name = R

[profile region-only]
region = eu-west-1

[default]
region = eu-west-1
"""
    )
    settings = home.settings()
    assert "sso_role_name" in settings.unserved["half"]
    assert "sso_start_url" in settings.unserved["nostart"]
    assert "no credential source" in settings.unserved["region-only"]
    assert "default" not in settings.unserved
    assert set(settings.profiles) == {"dev", "console"}


@pytest.mark.parametrize(
    ("key", "value"), [("sso_start_url", START_URL + "/other"), ("sso_region", "eu-west-1")]
)
def test_profile_disagreeing_with_its_sso_session_names_file_and_line(
    home: Home, key: str, value: str
) -> None:
    text = home.config(
        f"""\
        [sso-session my-sso]
        sso_start_url = {START_URL}
        sso_region = us-east-1

        [profile dev]
        sso_session = my-sso
        sso_account_id = 123456789012
        sso_role_name = ReadOnly
        {key} = {value}
        """
    )
    message = home.error()
    assert f"{home.aws_config}:{line_of(text, key, nth=2)}:" in message
    assert key in message
    assert "my-sso" in message


def test_profile_repeating_its_sso_session_values_is_fine(home: Home) -> None:
    home.config(
        CLI_CONFIG.replace(
            "sso_session = my-sso\n",
            f"sso_session = my-sso\nsso_start_url = {START_URL}\nsso_region = us-east-1\n",
        )
    )
    assert "dev" in home.settings().profiles


def _role(extra: str) -> str:
    return (
        CLI_CONFIG
        + f"""
[profile r]
role_arn = arn:aws:iam::222222222222:role/R
source_profile = dev
{extra}
"""
    )


@pytest.mark.parametrize("value", ["abc", "100", "899", "43201", "-900", "3600.0", "1e3"])
def test_bad_duration_seconds_names_file_line_and_key(home: Home, value: str) -> None:
    text = home.config(_role(f"duration_seconds = {value}"))
    message = home.error()
    assert f"{home.aws_config}:{line_of(text, 'duration_seconds')}:" in message
    assert "duration_seconds" in message


@pytest.mark.parametrize("value", ["900", "43200"])
def test_duration_seconds_bounds_are_accepted(home: Home, value: str) -> None:
    home.config(_role(f"duration_seconds = {value}"))
    profile = home.settings().profiles["r"]
    assert isinstance(profile, AssumeRoleProfile)
    assert profile.duration_seconds == int(value)


def test_non_ascii_digits_in_duration_seconds_are_a_config_error(home: Home) -> None:
    home.config(_role("duration_seconds = 900\u00b2"))
    assert "duration_seconds" in home.error()


@pytest.mark.parametrize(
    "value",
    [
        "arn:aws:iam::12345:role/R",
        "arn:aws:iam::222222222222:user/R",
        "arn:aws:sts::222222222222:assumed-role/R/s",
        "Admin",
    ],
)
def test_bad_role_arn_names_file_line_and_key(home: Home, value: str) -> None:
    text = home.config(
        f"""\
        [profile r]
        source_profile = x
        role_arn = {value}
        """
    )
    message = home.error()
    assert f"{home.aws_config}:{line_of(text, 'role_arn')}:" in message
    assert "role_arn" in message


def test_bad_role_session_name_names_file_line_and_key(home: Home) -> None:
    text = home.config(_role("role_session_name = has spaces in it"))
    message = home.error()
    assert f"{home.aws_config}:{line_of(text, 'role_session_name')}:" in message
    assert "role_session_name" in message


@pytest.mark.parametrize("value", ["12345", "1234567890123", "12345678901a", "1234-5678-9012"])
def test_bad_sso_account_id_names_file_line_and_key(home: Home, value: str) -> None:
    text = home.config(CLI_CONFIG.replace("123456789012", value, 1))
    message = home.error()
    assert f"{home.aws_config}:{line_of(text, 'sso_account_id')}:" in message
    assert "sso_account_id" in message


def test_undefined_sso_session_names_file_line_and_session(home: Home) -> None:
    text = home.config(
        """\
        [profile dev]
        sso_session = nowhere
        sso_account_id = 123456789012
        sso_role_name = R
        """
    )
    message = home.error()
    assert f"{home.aws_config}:{line_of(text, 'sso_session')}:" in message
    assert "nowhere" in message


def test_sso_session_missing_start_url_names_the_section(home: Home) -> None:
    text = home.config(
        """\
        [sso-session s]
        sso_region = us-east-1

        [profile dev]
        sso_session = s
        sso_account_id = 123456789012
        sso_role_name = R
        """
    )
    message = home.error()
    assert f"{home.aws_config}:{line_of(text, '[sso-session s]')}:" in message
    assert "sso_start_url" in message


def test_malformed_aws_config_names_file_and_line(home: Home) -> None:
    home.config("[default]\nregion = us-east-1\nthis line is broken\n")
    assert f"{home.aws_config}:3:" in home.error()


def test_aws_config_file_variable_is_honoured(home: Home, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "config"
    home.write(other, CLI_CONFIG)
    home.env["AWS_CONFIG_FILE"] = str(other)
    assert "dev" in home.settings().profiles


def test_no_files_at_all_is_an_empty_working_config(home: Home) -> None:
    settings = home.settings()
    assert settings.profiles == {}
    assert settings.sessions == {}
    assert settings.unserved == {}


# --------------------------------------------------------------------------- session_for


def test_session_for(home: Home) -> None:
    home.config(
        CLI_CONFIG
        + """
[profile admin]
role_arn = arn:aws:iam::222222222222:role/Admin
source_profile = dev

[profile deeper]
role_arn = arn:aws:iam::222222222222:role/Deeper
source_profile = admin
"""
    )
    settings = home.settings()
    session = settings.sessions["my-sso"]
    assert settings.session_for("my-sso") is session
    assert settings.session_for("dev") is session
    assert settings.session_for("admin") is session
    assert settings.session_for("deeper") is session
    signin = settings.sessions["arn:aws:iam::123456789012:user/alice"]
    assert settings.session_for("console") is signin
    assert settings.session_for("unknown") is None


# --------------------------------------------------------------------------- credd TOML


def test_defaults_when_the_credd_config_is_missing(home: Home, tmp_path: Path) -> None:
    settings = home.settings()
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 9911
    assert settings.server.listen == "127.0.0.1:9911"
    assert settings.server.token_file == tmp_path / "run" / "credd" / "token"
    assert settings.refresh == RefreshSettings()
    assert settings.refresh.prefetch == frozenset()
    assert settings.log == LogSettings(level="info", format="auto")


def test_an_empty_credd_config_means_defaults(home: Home) -> None:
    home.toml("# nothing yet\n")
    assert home.settings().refresh == RefreshSettings()


def test_every_credd_key(home: Home, tmp_path: Path) -> None:
    home.config(CLI_CONFIG)
    home.toml(
        f"""\
        [server]
        listen = "127.0.0.1:12345"
        token_file = "{tmp_path}/tok"

        [refresh]
        token_margin_seconds = 600
        credentials_margin_seconds = 900.5
        idle_timeout_seconds = 60
        prefetch = ["dev"]

        [log]
        level = "debug"
        format = "json"
        """
    )
    settings = home.settings()
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 12345)
    assert settings.server.token_file == tmp_path / "tok"
    assert settings.refresh == RefreshSettings(
        token_margin_seconds=600.0,
        credentials_margin_seconds=900.5,
        idle_timeout_seconds=60.0,
        prefetch=frozenset({"dev"}),
    )
    assert isinstance(settings.refresh.token_margin_seconds, float)
    assert settings.log == LogSettings(level="debug", format="json")


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
@pytest.mark.parametrize("fmt", ["auto", "console", "json"])
def test_log_levels_and_formats(home: Home, level: str, fmt: str) -> None:
    home.toml(f'[log]\nlevel = "{level}"\nformat = "{fmt}"\n')
    assert home.settings().log == LogSettings(level=level, format=fmt)


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [("log", "level", '"verbose"'), ("log", "format", '"xml"')],
)
def test_bad_log_values(home: Home, table: str, key: str, value: str) -> None:
    text = home.toml(f"[{table}]\n{key} = {value}\n")
    message = home.error()
    assert f"{home.credd_config}:{line_of(text, key)}:" in message
    assert f"{table}.{key}" in message


@pytest.mark.parametrize("listen", ["0.0.0.0:9911", "192.168.1.2:1", "[::]:9911", "example.com:80"])
def test_non_loopback_listen_is_refused(home: Home, listen: str) -> None:
    text = home.toml(f'[server]\nlisten = "{listen}"\n')
    message = home.error()
    assert "loopback" in message
    assert f"{home.credd_config}:{line_of(text, 'listen')}:" in message
    assert "server.listen" in message


@pytest.mark.parametrize(
    ("listen", "host", "port", "shown"),
    [
        ("[::1]:0", "::1", 0, "[::1]:0"),
        ("localhost:0", "127.0.0.1", 0, "127.0.0.1:0"),
        ("127.0.0.1:65535", "127.0.0.1", 65535, "127.0.0.1:65535"),
        ("127.1.2.3:9911", "127.1.2.3", 9911, "127.1.2.3:9911"),
    ],
)
def test_loopback_listen_is_accepted(
    home: Home, listen: str, host: str, port: int, shown: str
) -> None:
    home.toml(f'[server]\nlisten = "{listen}"\n')
    server = home.settings().server
    assert (server.host, server.port) == (host, port)
    assert server.listen == shown


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:x"])
def test_malformed_listen(home: Home, listen: str) -> None:
    home.toml(f'[server]\nlisten = "{listen}"\n')
    message = home.error()
    assert "server.listen" in message
    assert "HOST:PORT" in message


@pytest.mark.parametrize(
    ("text", "dotted", "needle"),
    [
        ("[server]\nlisten = '127.0.0.1:1'\nport = 1\n", "server.port", "port ="),
        ("[refresh]\ntoken_margin_seconds = 5\nmargin = 5\n", "refresh.margin", "margin ="),
        ("[log]\nlevel = 'info'\n\n[server]\nlevle = 'x'\n", "server.levle", "levle"),
        ("colour = true\n[server]\n", "colour", "colour"),
        (
            "[profiles.x]\ntype = 'create-token-with-iam'\n[refresh]\nprefetsh = []\n",
            "refresh.prefetsh",
            "prefetsh",
        ),
    ],
)
def test_unknown_key_names_file_line_and_dotted_key(
    home: Home, text: str, dotted: str, needle: str
) -> None:
    home.toml(text)
    message = home.error()
    assert f"{home.credd_config}:{line_of(text, needle)}: {dotted}:" in message
    assert "unknown key" in message


def test_unknown_table_names_file_and_line(home: Home) -> None:
    text = home.toml('[log]\nlevel = "info"\n\n[sever]\nlisten = "127.0.0.1:1"\n')
    message = home.error()
    assert f"{home.credd_config}:{line_of(text, '[sever]')}:" in message


@pytest.mark.parametrize(
    ("text", "dotted", "needle"),
    [
        ("[server]\nlisten = 9911\n", "server.listen", "listen"),
        ("[server]\ntoken_file = 1\n", "server.token_file", "token_file"),
        ("[refresh]\ntoken_margin_seconds = 'ten'\n", "refresh.token_margin_seconds", "token"),
        (
            "[refresh]\ncredentials_margin_seconds = true\n",
            "refresh.credentials_margin_seconds",
            "cred",
        ),
        ("[refresh]\nidle_timeout_seconds = [1]\n", "refresh.idle_timeout_seconds", "idle"),
        ("[refresh]\nprefetch = 'dev'\n", "refresh.prefetch", "prefetch"),
        ("[refresh]\nprefetch = ['dev', 1]\n", "refresh.prefetch", "prefetch"),
        ("[refresh]\ntoken_margin_seconds = -1\n", "refresh.token_margin_seconds", "token"),
        ("[log]\nlevel = 3\n", "log.level", "level"),
        ("[profiles.x]\ntype = 3\n", "profiles.x.type", "type"),
        ("[profiles.x]\ntype = 'magic'\n", "profiles.x.type", "type"),
    ],
)
def test_wrong_type_or_value_names_file_line_and_dotted_key(
    home: Home, text: str, dotted: str, needle: str
) -> None:
    home.toml(text)
    message = home.error()
    assert f"{home.credd_config}:{line_of(text, needle)}: {dotted}:" in message


@pytest.mark.parametrize("text", ["server = 1\n", "log = 'debug'\n"])
def test_a_table_that_is_not_a_table(home: Home, text: str) -> None:
    home.toml(text)
    message = home.error()
    assert str(home.credd_config) in message
    assert "table" in message


def test_invalid_toml_names_file_and_line(home: Home) -> None:
    home.toml('[server]\nlisten = "127.0.0.1:1"\ntoken_file = \n')
    message = home.error()
    assert str(home.credd_config) in message
    assert "line 3" in message


def test_prefetch_of_an_unknown_profile_is_an_error(home: Home) -> None:
    home.config(CLI_CONFIG)
    text = home.toml('[refresh]\nprefetch = ["dev", "ghost"]\n')
    message = home.error()
    assert f"{home.credd_config}:{line_of(text, 'prefetch')}: refresh.prefetch:" in message
    assert "'ghost'" in message


def test_prefetch_of_an_unserved_profile_is_an_error(home: Home) -> None:
    home.config(CLI_CONFIG + "\n[profile bare]\nregion = eu-west-1\n")
    home.toml('[refresh]\nprefetch = ["bare"]\n')
    assert "'bare'" in home.error()


def test_create_token_with_iam_profile_without_role_is_a_bearer_only_session(home: Home) -> None:
    home.config(CLI_CONFIG)
    home.toml(
        """\
        [profiles.analyst]
        type = "create-token-with-iam"
        client_id = "arn:aws:sso::111111111111:application/ssoins-1111/apl-2222"
        sso_region = "us-east-1"
        grant_type = "urn:ietf:params:oauth:grant-type:jwt-bearer"
        assertion_file = "/path/to/jwt"
        """
    )
    settings = home.settings()
    assert "analyst" not in settings.profiles  # no role_arn: only its bearer token
    assert "analyst" not in settings.unserved
    assert isinstance(settings.sessions["analyst"], TrustedIdentitySpec)
    assert "dev" in settings.profiles


def test_profiles_table_without_type_is_an_error(home: Home) -> None:
    home.toml('[profiles.analyst]\nclient_id = "x"\n')
    message = home.error()
    assert "profiles.analyst.type" in message
    assert str(home.credd_config) in message


def test_a_name_is_never_both_served_and_unserved(home: Home) -> None:
    home.config(CLI_CONFIG)
    home.toml('[profiles.dev]\ntype = "create-token-with-iam"\n')
    try:
        settings = home.settings()
    except ConfigError:
        return  # refusing the clash outright is a fine answer too
    assert not set(settings.profiles) & set(settings.unserved)


def test_token_file_absolute_path(home: Home, tmp_path: Path) -> None:
    home.toml(f'[server]\ntoken_file = "{tmp_path}/x/token"\n')
    assert home.settings().server.token_file == tmp_path / "x" / "token"


def test_token_file_tilde_follows_the_resolved_home(home: Home) -> None:
    home.toml('[server]\ntoken_file = "~/credd-token"\n')
    assert home.settings().server.token_file == home.root / "credd-token"


def test_non_ascii_digit_port_is_a_config_error(home: Home) -> None:
    home.toml('[server]\nlisten = "127.0.0.1:\u00b9"\n')
    assert "server.listen" in home.error()


def test_credd_config_from_environment_and_flag(home: Home, tmp_path: Path) -> None:
    home.toml('[server]\nlisten = "127.0.0.1:1001"\n')
    env_file = tmp_path / "env.toml"
    flag_file = tmp_path / "flag.toml"
    home.write(env_file, '[server]\nlisten = "127.0.0.1:1002"\n')
    home.write(flag_file, '[server]\nlisten = "127.0.0.1:1003"\n')

    assert home.settings().server.port == 1001
    home.env["CREDD_CONFIG"] = str(env_file)
    assert home.settings().server.port == 1002
    assert home.settings(config_file=str(flag_file)).server.port == 1003
    # errors name the file actually read
    home.write(flag_file, "[server]\nbogus = 1\n")
    with pytest.raises(ConfigError, match=str(flag_file)):
        home.settings(config_file=str(flag_file))


def test_missing_config_named_by_flag_means_defaults(home: Home, tmp_path: Path) -> None:
    settings = home.settings(config_file=str(tmp_path / "absent.toml"))
    assert settings.server.port == 9911
    assert settings.paths.credd_config_file == tmp_path / "absent.toml"


def test_unreadable_credd_config_names_the_file(home: Home) -> None:
    home.credd_config.parent.mkdir(parents=True)
    home.credd_config.write_bytes(b'[log]\nlevel = "\xff"\n')
    assert str(home.credd_config) in home.error()
