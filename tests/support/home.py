"""A private HOME for a test: where credd and the AWS tools find their files in it.

The ``home`` fixture (tests/conftest.py) points ``$HOME``, ``$XDG_RUNTIME_DIR`` and
``$BROWSER`` into a temporary directory and clears :data:`CLEARED`, so that nothing
of the machine's own AWS setup can reach a test.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

from credd.config.load import load_settings
from credd.config.settings import Settings
from credd.files.paths import Paths, resolve_paths
from tests.support.configs import AWS_CONFIG

#: the variables of the machine's own environment that would change what credd reads
CLEARED = (
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
