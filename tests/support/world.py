"""The one world a test runs in: a private HOME, the emulator, its clock, credd's environment.

Every module's ``world`` fixture builds this same :class:`World` (tests/conftest.py
has the standard one: the standard AWS config on the real clock); a fixture
that needs a ManualClock gives the emulator one, and :attr:`World.clock` is it.
What a world knows how to do is here once: where each cache file is, writing
an assertion or a trusted-identity profile, serving with the real ``credd``.
"""

from __future__ import annotations

import functools
import json
import os
import stat
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credd.clock import ManualClock
from credd.config.settings import Settings
from credd.files.store import sha1_name, sha256_name
from credd.testing.emulator import AccessKey, Emulator
from tests.support.configs import (
    AWS_CONFIG,
    LISTEN_ANY_PORT,
    USER_ARN,
    credd_profile,
    static_keys_profile,
)
from tests.support.home import Home
from tests.support.process import Daemon, serving


@dataclass
class World:
    """A private HOME, the emulator every AWS endpoint points at, and credd's environment."""

    home: Home
    emu: Emulator
    #: the environment for credd's processes: os.environ as the fixtures left it
    #: (HOME, XDG_RUNTIME_DIR, BROWSER, AWS_ENDPOINT_URL)
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def clock(self) -> ManualClock:
        """The emulator's clock, which the daemon shares: time moves when the test says so."""
        clock = self.emu.clock
        assert isinstance(clock, ManualClock), "this world runs on the real clock"
        return clock

    @functools.cached_property
    def keys(self) -> AccessKey:
        """Static keys of the emulator's IAM user ``app-server`` (the AWS profile ``app-iam``)."""
        return self.emu.create_access_key("app-server")

    @property
    def logs(self) -> Path:
        """Where credd's processes write their output (beside the HOME)."""
        return self.home.root.parent / "logs"

    @property
    def settings(self) -> Settings:
        """credd's settings, read afresh from the HOME's files."""
        return self.home.settings()

    # ------------------------------------------------------------------ the real credd

    def serving(
        self, *args: str, name: str = "serve", listen: str | None = None
    ) -> AbstractAsyncContextManager[Daemon]:
        """``credd ARGS... serve`` as a subprocess until the block ends (``listen``: the
        config's fixed ``HOST:PORT``, if it names one)."""
        return serving(self.env, self.logs, *args, name=name, listen=listen)

    async def login(self) -> None:
        """``credd login my-sso`` in this process; ``$BROWSER`` (the headless shim) approves."""
        # imported here, not above: conftest builds Worlds for every test, and a test of
        # the config or the store must not need the whole daemon to import
        from tests.support.inprocess import login

        await login(self.settings, self.emu.clock)

    def write_aws_config(self, text: str) -> None:
        """A new AWS config as an editor's atomic save writes it: a new inode."""
        tmp = self.home.aws_config.with_suffix(".new")
        tmp.write_text(text)
        tmp.replace(self.home.aws_config)

    # ------------------------------------------------------------------ the caches

    @property
    def cache_file(self) -> Path:
        """The Identity Center token cache of ``my-sso``."""
        return self.home.root / ".aws" / "sso" / "cache" / f"{sha1_name('my-sso')}.json"

    def sso_refresh_token(self) -> str:
        return str(json.loads(self.cache_file.read_text())["refreshToken"])

    @property
    def cache_dir(self) -> Path:
        """The AWS Sign-In (``aws login``) cache directory."""
        return self.home.root / ".aws" / "login" / "cache"

    def cache_path(self, session: str = USER_ARN) -> Path:
        """The AWS Sign-In cache file of ``session``."""
        return self.cache_dir / f"{sha256_name(session)}.json"

    def cached(self, session: str = USER_ARN) -> dict[str, Any]:
        """The AWS Sign-In cache file of ``session``, which must be the owner's alone."""
        path = self.cache_path(session)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    # ------------------------------------------------------------------ trusted identity

    @property
    def assertion_file(self) -> Path:
        return self.home.root / "idp" / "jwt"

    def write_assertion(self, lifetime: int = 300) -> str:
        """A fresh assertion from the test IdP, written the way a tool would: atomically."""
        assertion = self.emu.issuer.mint(sub="alice@example.com", lifetime=lifetime)
        self.assertion_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.assertion_file.with_suffix(".tmp")
        tmp.write_text(assertion + "\n")
        os.replace(tmp, self.assertion_file)
        return assertion

    def configure(self, profile: str, *, name: str = "analyst", **keys: str) -> Settings:
        """The AWS config (with static keys ``app-iam``) and one ``[profiles.NAME]``."""
        self.home.write_aws_config(AWS_CONFIG + static_keys_profile(self.keys))
        self.home.write_credd_config(
            LISTEN_ANY_PORT + "\n" + credd_profile(profile, name=name, **keys)
        )
        return self.home.settings()
