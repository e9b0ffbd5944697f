"""``credd console PROFILE``: the real command, the real daemon (or none), the emulator, a browser.

The browser is a recording ``$BROWSER``: it writes down the URL it was given
and opens nothing. The test then plays the browser's step itself, a GET of
that URL against the emulator's federation endpoint, which must answer 302 to
the Destination (the console itself is not emulated). Identity Center, a role
chained on it, a role assumed with static IAM user keys and a Sign-In profile
are signed in; an unserved profile, a bearer-only one and a profile waiting
for a login each get one clear line and a non-zero exit, and no error shows a
secret.
"""

from __future__ import annotations

import dataclasses
import functools
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from credd.config.settings import Settings
from credd.console import (
    console_home,
    federation_url,
    session_duration,
    takes_session_duration,
)
from credd.daemon import needed_by
from credd.testing.emulator import Emulator
from credd.testing.emulator.clients import visit
from credd.testing.emulator.state import SigninTokenGrant, TemporaryCredentials
from tests.support.configs import (
    AWS_CONFIG,
    LISTEN_ANY_PORT,
    SIGNIN_CONFIG,
    USER_ARN,
    credd_profile,
    static_keys_profile,
)
from tests.support.process import Result, credd, issued_secrets, login, serving
from tests.support.world import World

#: the profiles of AWS_CONFIG and SIGNIN_CONFIG, and a role assumed with IAM user keys
DEPLOY = """
[profile deploy]
role_arn = arn:aws:iam::333333333333:role/Deploy
source_profile = app-iam
region = us-west-2
"""
DEV_HOME = "https://console.aws.amazon.com/console/home?region=eu-west-1"
#: admin names no region: the console's own home
ADMIN_HOME = "https://console.aws.amazon.com/console/home"

RECORDING_BROWSER = """\
#!/bin/sh
printf '%s\\n' "$*" >> {opened}
"""


@pytest.fixture
def world(world: World) -> World:
    """The standard world, plus a Sign-In profile, a role on static keys and a bearer-only one."""
    world.home.write_aws_config(
        AWS_CONFIG + "\n" + SIGNIN_CONFIG + static_keys_profile(world.keys) + DEPLOY
    )
    world.home.write_credd_config(
        LISTEN_ANY_PORT
        + "\n"
        + credd_profile("authorization_code", role_arn="", role_session_name="")
    )
    return world


@dataclass
class Browser:
    """A recording ``$BROWSER``: it writes down every URL it is given, and opens nothing."""

    record: Path
    #: the world's environment with this browser as ``$BROWSER`` (logins keep the shim)
    env: dict[str, str]

    def urls(self) -> list[str]:
        return self.record.read_text().splitlines() if self.record.exists() else []


@pytest.fixture
def recorder(world: World, tmp_path: Path) -> Browser:
    record = tmp_path / "opened"
    path = tmp_path / "recording-browser"
    path.write_text(RECORDING_BROWSER.format(opened=shlex.quote(str(record))))
    path.chmod(0o700)
    return Browser(record, {**world.env, "BROWSER": str(path)})


def query(url: str) -> dict[str, str]:
    values = parse_qs(urlsplit(url).query, keep_blank_values=True)
    assert all(len(v) == 1 for v in values.values()), url
    return {k: v[0] for k, v in values.items()}


def grant_of(emu: Emulator, url: str) -> SigninTokenGrant:
    """What the emulator's federation endpoint issued the URL's sign-in token for."""
    return emu.state.federation.grants[query(url)["SigninToken"]]


async def signs_in(emu: Emulator, url: str, destination: str) -> SigninTokenGrant:
    """The browser's step: the URL redirects to ``destination``, signed in; its grant."""
    assert url.startswith(f"{emu.url}/federation?"), url
    fields = query(url)
    assert fields["Action"] == "login"
    assert fields["Issuer"] == "credd"
    assert fields["Destination"] == destination
    assert await visit(url) == (302, destination)
    grant = grant_of(emu, url)
    assert grant.used
    return grant


async def printed(world: World, profile: str, *args: str, browser: Browser | None = None) -> str:
    """``credd console PROFILE --print``: the URL, alone on stdout."""
    env = browser.env if browser else world.env
    result = await credd(env, "console", profile, "--print", *args)
    assert result.returncode == 0, str(result)
    assert result.stderr == ""
    [url] = result.stdout.splitlines()
    return url


def one_line_refusal(world: World, result: Result, *expected: str) -> str:
    """A failed command: non-zero, nothing on stdout, one line on stderr, no secret in it."""
    assert result.returncode != 0, str(result)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, str(result)
    for text in expected:
        assert text in lines[0], str(result)
    for kind, values in issued_secrets(world.emu).items():
        for value in values:
            assert value not in result.stderr, kind
    return lines[0]


# --------------------------------------------------------------------------- signed in


async def test_sso_profile_opens_the_browser_with_the_daemons_credentials(
    world: World, recorder: Browser
) -> None:
    emu = world.emu
    await login(world.env)
    async with serving(world.env, world.logs) as daemon:
        served = (await daemon.get("/v1/credentials/dev")).json()
        logins = emu.calls["CreateToken"]

        result = await credd(recorder.env, "console", "dev")
        assert result.returncode == 0, str(result)
        assert result.stdout == ""
        assert result.stderr.startswith("Opened the AWS console for dev; the console session ends")

        [url] = recorder.urls()
        grant = await signs_in(emu, url, DEV_HOME)
        # the credentials the daemon holds: no second login, no second fetch
        assert grant.access_key_id == served["AccessKeyId"]
        assert emu.calls["GetRoleCredentials"] == 1
        assert emu.calls["CreateToken"] == logins
        # Identity Center role credentials take SessionDuration: what they have left
        assert grant.session_duration is not None
        assert 900 <= grant.session_duration <= 3600
        [session] = emu.state.federation.console_sessions
        assert session.principal.kind == "sso-role"
        assert session.issuer == "credd"


async def test_chained_role_prints_the_url_and_opens_nothing(
    world: World, recorder: Browser
) -> None:
    await login(world.env)
    async with serving(world.env, world.logs):
        url = await printed(world, "admin", browser=recorder)
    assert not recorder.urls()
    grant = await signs_in(world.emu, url, ADMIN_HOME)
    # role chaining: no SessionDuration, the console session ends with the credentials
    assert grant.session_duration is None
    assert grant.principal.arn == "arn:aws:sts::222222222222:assumed-role/Admin/credd-test"
    issued = world.emu.state.credentials[grant.access_key_id]
    assert isinstance(issued, TemporaryCredentials)
    assert grant.session_ends_at == issued.expires_at


async def test_no_daemon_running_fetches_as_the_daemon_would(
    world: World, recorder: Browser
) -> None:
    emu = world.emu
    await login(world.env)
    url = await printed(world, "dev", browser=recorder)
    grant = await signs_in(emu, url, DEV_HOME)
    assert grant.principal.kind == "sso-role"
    assert grant.session_duration is not None
    assert emu.calls["GetRoleCredentials"] == 1
    # and a role chained on it, fetched the same way
    chained = await signs_in(emu, await printed(world, "admin", browser=recorder), ADMIN_HOME)
    assert chained.session_duration is None
    assert not recorder.urls()


async def test_signin_profile(world: World) -> None:
    emu = world.emu
    signed = await credd(world.env, "login", "console", "--signin")  # the standard browser
    assert signed.returncode == 0, str(signed)
    url = await printed(world, "console")
    grant = await signs_in(emu, url, "https://console.aws.amazon.com/console/home?region=us-east-1")
    assert grant.principal.arn == USER_ARN
    # Sign-In's credentials come from no AssumeRole*: AWS's rule gives them no SessionDuration
    assert grant.session_duration is None


async def test_role_on_iam_user_keys_asks_for_its_remaining_lifetime(world: World) -> None:
    url = await printed(world, "deploy")
    grant = await signs_in(
        world.emu, url, "https://console.aws.amazon.com/console/home?region=us-west-2"
    )
    assert grant.session_duration is not None
    assert 900 <= grant.session_duration <= 3600
    assert grant.principal.arn.startswith("arn:aws:sts::333333333333:assumed-role/Deploy/")


async def test_destination(world: World) -> None:
    await login(world.env)
    s3 = "https://console.aws.amazon.com/s3/home?region=eu-west-1#/buckets"
    url = await printed(world, "dev", "--destination", s3)
    await signs_in(world.emu, url, s3)

    refused = await credd(world.env, "console", "dev", "--destination", "http://example.com/")
    assert refused.returncode == 2
    assert "https://" in refused.stderr


async def test_the_federation_url_follows_aws_endpoint_url_signin(world: World) -> None:
    await login(world.env)
    env = {**world.env, "AWS_ENDPOINT_URL_SIGNIN": world.emu.url.replace("127.0.0.1", "localhost")}
    result = await credd(env, "console", "dev", "--print")
    assert result.returncode == 0, str(result)
    assert result.stdout.startswith(env["AWS_ENDPOINT_URL_SIGNIN"] + "/federation?Action=login&")


# --------------------------------------------------------------------------- refused


async def test_not_logged_in_says_what_to_run(world: World, recorder: Browser) -> None:
    line = one_line_refusal(
        world, await credd(recorder.env, "console", "dev"), "credd login my-sso"
    )
    assert "Traceback" not in line
    async with serving(world.env, world.logs):
        one_line_refusal(world, await credd(recorder.env, "console", "admin"), "credd login my-sso")
    assert not recorder.urls()


async def test_unserved_and_bearer_only_profiles(world: World, recorder: Browser) -> None:
    await login(world.env)
    one_line_refusal(
        world,
        await credd(recorder.env, "console", "nosuch"),
        "'nosuch' is not served",
        "credd status",
    )
    one_line_refusal(world, await credd(recorder.env, "console", "other"), "credd status")
    one_line_refusal(
        world,
        await credd(recorder.env, "console", "analyst"),
        "serves only a bearer token",
        "role_arn",
        "IAM role credentials",
    )
    assert not recorder.urls()
    assert world.emu.calls["GetSigninToken"] == 0


async def test_a_refusal_of_the_federation_endpoint_shows_no_secret(
    world: World, recorder: Browser
) -> None:
    await login(world.env)
    world.emu.faults.add("GetSigninToken", status=400)
    line = one_line_refusal(
        world, await credd(recorder.env, "console", "dev"), "refused the credentials", "HTTP 400"
    )
    assert "federation?" not in line  # never the URL, which carries the keys
    assert not recorder.urls()


# --------------------------------------------------------------------------- the rules, in process

#: every kind of profile: Identity Center, chained on it, on IAM user keys, on temporary
#: keys, on a credential_process, and Sign-In
KINDS = """
[profile keys-temporary]
aws_access_key_id = ASIAEXAMPLEEXAMPLE00
aws_secret_access_key = secret
aws_session_token = token

[profile proc]
credential_process = /bin/false

[profile on-temporary]
role_arn = arn:aws:iam::333333333333:role/Deploy
source_profile = keys-temporary

[profile on-proc]
role_arn = arn:aws:iam::333333333333:role/Deploy
source_profile = proc

[profile chained-twice]
role_arn = arn:aws:iam::444444444444:role/Deeper
source_profile = admin
"""


@pytest.fixture
def settings(world: World) -> Settings:
    world.home.write_aws_config(world.home.aws_config.read_text() + KINDS)
    console = world.home.aws_config.read_text().replace(
        "[profile console]\n", f"[profile console]\nlogin_session = {USER_ARN}\n"
    )
    world.home.write_aws_config(console)
    return world.settings


@pytest.mark.parametrize(
    ("profile", "takes"),
    [
        ("dev", True),  # Identity Center: the role session AWS itself starts
        ("deploy", True),  # AssumeRole with an IAM user's long-term keys
        ("admin", False),  # role chaining
        ("chained-twice", False),
        ("on-temporary", False),  # temporary keys sign it: chaining as far as AWS knows
        ("on-proc", False),  # a credential_process may hand out temporary keys
        ("console", False),  # Sign-In's credentials: no AssumeRole* issued them
        ("console-admin", False),
    ],
)
def test_which_profiles_take_a_session_duration(
    settings: Settings, profile: str, takes: bool
) -> None:
    assert takes_session_duration(settings.profiles[profile], settings.sources) is takes


def test_the_session_duration_is_what_the_credentials_have_left(settings: Settings) -> None:
    dev, now = settings.profiles["dev"], datetime(2030, 1, 1, tzinfo=UTC)
    left = functools.partial(session_duration, dev, settings.sources, now=now)
    assert left(now + timedelta(seconds=3599.9)) == 3599
    assert left(now + timedelta(hours=13)) == 43200  # AWS's most
    assert left(now + timedelta(seconds=900)) == 900
    assert left(now + timedelta(seconds=899)) is None  # AWS's least: the credentials' end
    admin = settings.profiles["admin"]
    assert session_duration(admin, settings.sources, now + timedelta(hours=1), now) is None


@pytest.mark.parametrize(
    ("region", "home"),
    [
        ("eu-west-1", "https://console.aws.amazon.com/console/home?region=eu-west-1"),
        ("ap-east-1", "https://console.aws.amazon.com/console/home?region=ap-east-1"),
        ("cn-north-1", "https://console.amazonaws.cn/console/home?region=cn-north-1"),
        ("us-gov-west-1", "https://console.amazonaws-us-gov.com/console/home?region=us-gov-west-1"),
        (None, "https://console.aws.amazon.com/console/home"),
    ],
)
def test_the_default_destination_is_the_regions_console_home(region: str | None, home: str) -> None:
    assert console_home(region) == home


@pytest.mark.parametrize(
    ("region", "federation"),
    [
        ("eu-west-1", "https://eu-west-1.signin.aws.amazon.com/federation"),
        ("ap-east-1", "https://ap-east-1.signin.aws.amazon.com/federation"),  # opt-in
        ("us-east-1", "https://signin.aws.amazon.com/federation"),
        (None, "https://signin.aws.amazon.com/federation"),
        ("cn-north-1", "https://cn-north-1.signin.amazonaws.cn/federation"),
        ("us-gov-west-1", "https://us-gov-west-1.signin.amazonaws-us-gov.com/federation"),
    ],
)
async def test_the_federation_endpoint_is_the_regions_sign_in_endpoint(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, region: str | None, federation: str
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # the emulator's: AWS's own endpoints here
    spec = dataclasses.replace(settings.profiles["dev"], region=region)
    assert await federation_url(settings, spec) == federation


def test_a_one_shot_fetch_needs_only_the_profiles_chain(settings: Settings) -> None:
    sessions, profiles = needed_by(settings, "chained-twice")
    assert set(profiles) == {"chained-twice", "admin", "dev"}
    assert set(sessions) == {"my-sso"}
    sessions, profiles = needed_by(settings, "console-admin")
    assert set(profiles) == {"console-admin", "console"}
    assert set(sessions) == {USER_ARN}
    assert needed_by(settings, "deploy") == ({}, {"deploy": settings.profiles["deploy"]})
