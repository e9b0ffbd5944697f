"""Shared fixtures: a private HOME, the AWS config writer, the emulator, a headless browser."""

from __future__ import annotations

import os
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from credd.clock import ManualClock
from credd.config.load import load_settings
from credd.config.settings import Settings
from credd.files.paths import Paths, resolve_paths
from credd.testing.browser import install_shim
from credd.testing.emulator import Emulator
from credd.testing.emulator.config import EmulatorConfig

START_URL = "https://d-1234567890.awsapps.com/start"
ACCOUNT = "111111111111"

#: an AWS config as `aws configure sso` writes it, plus a role chained on top
AWS_CONFIG = f"""\
[sso-session my-sso]
sso_start_url = {START_URL}
sso_region = us-east-1
sso_registration_scopes = sso:account:access

[profile dev]
sso_session = my-sso
sso_account_id = {ACCOUNT}
sso_role_name = ReadOnly
region = eu-west-1

[profile admin]
role_arn = arn:aws:iam::222222222222:role/Admin
source_profile = dev
role_session_name = credd-test
"""

_CLEARED = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_SSO",
    "AWS_ENDPOINT_URL_SSO_OIDC",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL_SIGNIN",
    "AWS_LOGIN_CACHE_DIRECTORY",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "CREDD_CONFIG",
    "XDG_CONFIG_HOME",
    "XDG_STATE_HOME",
)


@dataclass
class Home:
    """A private HOME with the XDG and AWS variables pointing into it."""

    root: Path
    runtime: Path

    @property
    def aws_config(self) -> Path:
        return self.root / ".aws" / "config"

    @property
    def credd_config(self) -> Path:
        return self.root / ".config" / "credd" / "config.toml"

    def write_aws_config(self, text: str = AWS_CONFIG) -> None:
        self.aws_config.parent.mkdir(parents=True, exist_ok=True)
        self.aws_config.write_text(textwrap.dedent(text))

    def write_credd_config(self, text: str) -> None:
        self.credd_config.parent.mkdir(parents=True, exist_ok=True)
        self.credd_config.write_text(textwrap.dedent(text))

    def paths(self) -> Paths:
        return resolve_paths(os.environ)

    def settings(self) -> Settings:
        return load_settings(self.paths())


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, browser: Path) -> Home:
    root = tmp_path / "home"
    runtime = tmp_path / "run"
    root.mkdir()
    runtime.mkdir(mode=0o700)
    for name in _CLEARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(root))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("BROWSER", str(browser))
    # botocore must never find real credentials or a real region on this machine
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return Home(root=root, runtime=runtime)


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An executable for ``$BROWSER`` that plays the user approving in a browser.

    One path for the whole run: Python's ``webbrowser`` reads ``$BROWSER`` once.
    """
    return install_shim(tmp_path_factory.mktemp("browser") / "browser")


@pytest.fixture
async def emulator(home: Home, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[object]:
    """The strict local AWS emulator on a loopback port, with every AWS endpoint pointed at it."""
    async with Emulator().running() as emu:
        monkeypatch.setenv("AWS_ENDPOINT_URL", emu.url)
        yield emu


@pytest.fixture
async def clocked(
    home: Home, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Emulator, ManualClock]]:
    """The emulator and the daemon share one ManualClock: time moves only when a test says so."""
    clock = ManualClock(datetime.now(UTC))
    config = EmulatorConfig(poll_interval=0, max_clock_skew=None)
    async with Emulator(clock, config=config).running() as emu:
        monkeypatch.setenv("AWS_ENDPOINT_URL", emu.url)
        home.write_aws_config()
        home.write_credd_config('[server]\nlisten = "127.0.0.1:0"\n')
        yield emu, clock
