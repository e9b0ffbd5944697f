"""Every file and directory credd reads or writes, resolved once from the environment.

Honours ``HOME``, ``XDG_CONFIG_HOME``, ``XDG_STATE_HOME``, ``XDG_RUNTIME_DIR``,
``AWS_CONFIG_FILE``, ``AWS_SHARED_CREDENTIALS_FILE`` and ``CREDD_CONFIG``
(interface.md, "Files"). Nothing here touches the disk.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    home: Path
    aws_config_file: Path
    aws_credentials_file: Path
    #: the AWS CLI's Identity Center token cache, shared with it (protocols.md 6.1)
    sso_cache_dir: Path
    #: the AWS CLI's ``aws login`` cache, shared with it (protocols.md 6.2)
    login_cache_dir: Path
    credd_config_file: Path
    #: where the endpoint token, the bound address and the lock files live
    runtime_dir: Path
    #: what outlives a reboot: copies of cache files credd could not parse
    state_dir: Path

    @property
    def default_token_file(self) -> Path:
        return self.runtime_dir / "token"

    @property
    def trusted_identity_cache_dir(self) -> Path:
        """credd's own cache of CreateTokenWithIAM tokens (no AWS tool has one to share)."""
        return self.state_dir / "tokens"

    @property
    def lock_dir(self) -> Path:
        # Locks stay out of ~/.aws/sso/cache: `aws sso logout` parses every file there.
        return self.runtime_dir / "locks"


def expand_path(value: str, home: Path) -> Path:
    """``~`` against ``home`` (the resolved one, not the process's), then ``$VARS``."""
    if value == "~" or value.startswith("~/"):
        value = str(home) + value[1:]
    return Path(os.path.expandvars(value))


def resolve_paths(env: Mapping[str, str], *, config_file: str | None = None) -> Paths:
    """Resolve every location from ``env`` (normally ``os.environ``)."""
    home = Path(env.get("HOME") or Path.home())
    config_home = expand_path(env["XDG_CONFIG_HOME"], home) if env.get("XDG_CONFIG_HOME") else None
    state_home = expand_path(env["XDG_STATE_HOME"], home) if env.get("XDG_STATE_HOME") else None
    runtime = env.get("XDG_RUNTIME_DIR")

    state_dir = (state_home or home / ".local" / "state") / "credd"
    credd_config = config_file or env.get("CREDD_CONFIG")
    return Paths(
        home=home,
        aws_config_file=expand_path(env.get("AWS_CONFIG_FILE") or "~/.aws/config", home),
        aws_credentials_file=expand_path(
            env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials", home
        ),
        sso_cache_dir=home / ".aws" / "sso" / "cache",
        login_cache_dir=expand_path(
            env.get("AWS_LOGIN_CACHE_DIRECTORY") or "~/.aws/login/cache", home
        ),
        credd_config_file=(
            expand_path(credd_config, home)
            if credd_config
            else (config_home or home / ".config") / "credd" / "config.toml"
        ),
        runtime_dir=expand_path(runtime, home) / "credd" if runtime else state_dir,
        state_dir=state_dir,
    )
