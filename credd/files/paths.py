"""Every file and directory credd reads or writes, resolved once from the environment.

Honours ``HOME``, ``XDG_CONFIG_HOME``, ``XDG_STATE_HOME``, ``XDG_RUNTIME_DIR``,
``AWS_CONFIG_FILE``, ``AWS_SHARED_CREDENTIALS_FILE`` and ``CREDD_CONFIG``
(interface.md, "Files"). :func:`resolve_paths` touches no disk itself; the
one look it needs, whether logind's ``/run/user/UID`` is there for a shell
without ``XDG_RUNTIME_DIR`` (issue 11, item 8), is :func:`login_runtime_dir`,
passed in so that callers (tests) can say what it finds.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

#: where logind makes each user's runtime directory, the service's XDG_RUNTIME_DIR
#: (pam_systemd(8); the XDG Base Directory spec's requirements: owned by the user, 0700)
LOGIN_RUNTIME_ROOT = Path("/run/user")


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


def login_runtime_dir(uid: int | None = None, *, root: Path = LOGIN_RUNTIME_ROOT) -> Path | None:
    """``/run/user/UID`` when logind made it for this user, else ``None``.

    Only a directory itself (not a symlink), owned by ``uid`` and mode 0700, as
    logind makes it: anything else at that path may be somebody else's doing,
    and the token and locks must not go where another user can reach them.
    """
    uid = os.getuid() if uid is None else uid
    path = root / str(uid)
    try:
        found = os.lstat(path)
    except OSError:
        return None
    if (
        not stat.S_ISDIR(found.st_mode)
        or found.st_uid != uid
        or stat.S_IMODE(found.st_mode) != 0o700
    ):
        return None
    return path


def resolve_paths(
    env: Mapping[str, str],
    *,
    config_file: str | None = None,
    login_runtime: Callable[[], Path | None] = login_runtime_dir,
) -> Paths:
    """Resolve every location from ``env`` (normally ``os.environ``).

    Without ``XDG_RUNTIME_DIR`` (su, cron, ssh without logind) the runtime
    directory is what ``login_runtime`` finds, the service's own
    ``/run/user/UID``, so that every shell finds the same lock directory,
    token file and daemon; only where there is none, the state directory.
    """
    home = Path(env.get("HOME") or Path.home())
    config_home = expand_path(env["XDG_CONFIG_HOME"], home) if env.get("XDG_CONFIG_HOME") else None
    state_home = expand_path(env["XDG_STATE_HOME"], home) if env.get("XDG_STATE_HOME") else None
    runtime_value = env.get("XDG_RUNTIME_DIR")
    runtime = expand_path(runtime_value, home) if runtime_value else login_runtime()

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
        runtime_dir=runtime / "credd" if runtime is not None else state_dir,
        state_dir=state_dir,
    )
