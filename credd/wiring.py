"""Building credd's parts from settings: the caches, the AWS clients, the endpoint token.

The one place that knows which directory each cache lives in and which
clients each part takes (uvicorn's ``Config``), shared by the daemon
(:mod:`credd.daemon`) and the command line (:mod:`credd.cli`): the daemon
builds its sessions from these parts, the CLI its logins, its logout and its
offline status. Past this module nothing takes the whole settings object;
the parts are passed as arguments.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import stat
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from credd.aws import AwsClients, SigningKeys
from credd.clock import Clock
from credd.config.settings import (
    SessionSpec,
    Settings,
    SigninSessionSpec,
    SsoSessionSpec,
    TrustedIdentitySpec,
)
from credd.endpoint.grants import GrantStore
from credd.errors import CreddError
from credd.files.paths import Paths
from credd.files.store import JsonCacheDir, LoginCache, SsoCache, atomic_write
from credd.secret import Secret
from credd.sessions.iam_login import login_trusted_identity
from credd.sessions.iam_tokens import IamToken, IamTokenCache
from credd.sessions.logout import forget, log_out_identity_center
from credd.sessions.loopback import LoginOptions, LoginUI
from credd.sessions.sso_login import SsoLogin

if TYPE_CHECKING:
    from credd.sessions.signin_login import (
        ReadCode,
        SigninLogin,
        SigninLoginOptions,
        SigninTarget,
    )

#: the endpoint token's entropy: 43 characters of URL-safe base64, 256 bits
TOKEN_BYTES = 32
#: what a kept token file may hold: one RFC 7235 token68, at least 256 bits' worth
_TOKEN_MAX_BYTES = 512
_TOKEN_SHAPE = re.compile(rf"[A-Za-z0-9._~+/=-]{{43,{_TOKEN_MAX_BYTES}}}")
#: never follow a symlink (ELOOP), never wait on a FIFO, never take a terminal
_TOKEN_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def ensure_endpoint_token(path: Path, *, uid: int | None = None) -> str:
    """The admin token: the one in ``path`` if that file is sound, else a new one written there.

    Sound is a regular file, not a symlink (opened with ``O_NOFOLLOW``), owned
    by ``uid`` (this process's user), mode 0600 and holding one token of the
    right shape. Anything else of ours at the path (a symlink, whatever it
    points to; a 0644 file; garbage; a FIFO) is replaced by a new token,
    atomically and 0600, and the old content is never used: a token another
    process could read, or chose, is no secret. Anything at the path owned by
    another user is refused with a :class:`CreddError`: whoever could put it
    there can write the directory, and would be handed every new token too.
    """
    uid = os.getuid() if uid is None else uid
    kept = _sound_token(path, uid)
    if kept is not None:
        return kept
    token = secrets.token_urlsafe(TOKEN_BYTES)  # 43 characters, 256 bits
    atomic_write(path, token.encode("ascii"))  # 0600; os.replace replaces a symlink itself
    return token


def _sound_token(path: Path, uid: int) -> str | None:
    """The token in ``path`` if the file is sound; ``None`` if it must be replaced."""
    try:
        # Not regular: never opened. Opening a FIFO releases a writer blocked on it.
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _refused(path, exc.strerror or str(exc)) from exc
    _check_owner(path, found, uid)
    if not stat.S_ISREG(found.st_mode):
        return None
    try:
        file = os.fdopen(os.open(path, _TOKEN_READ_FLAGS), "rb")
    except OSError:
        return None  # swapped since the lstat (a symlink now: ELOOP), or gone: replaced
    with file:
        # the open file itself, not the lstat above: the path may have been swapped since
        opened = os.fstat(file.fileno())
        _check_owner(path, opened, uid)
        if not stat.S_ISREG(opened.st_mode) or stat.S_IMODE(opened.st_mode) != 0o600:
            return None
        data = file.read(_TOKEN_MAX_BYTES + 1)
    text = data.decode("ascii", "replace")
    return text if _TOKEN_SHAPE.fullmatch(text) else None


def _check_owner(path: Path, found: os.stat_result, uid: int) -> None:
    if found.st_uid != uid:
        raise _refused(path, f"it is owned by uid {found.st_uid}, not by uid {uid} (you)")


def _refused(path: Path, problem: str) -> CreddError:
    return CreddError(
        f"will not use the endpoint token file {path}: {problem}",
        hint="remove it, or set [server] token_file to a path in a directory only you can write",
    )


# --------------------------------------------------------------------------- caches, clients


def _cache_dir(paths: Paths, directory: Path, kind: str) -> JsonCacheDir:
    """``directory`` with credd's locks, its copies of unreadable files and its rescue
    copies of tokens it could not write there (in the state directory, one per ``kind``)."""
    return JsonCacheDir(
        directory,
        paths.lock_dir,
        paths.state_dir / "unreadable",
        rescue_dir=paths.state_dir / "rescue" / kind,
    )


def sso_cache(settings: Settings) -> SsoCache:
    """``~/.aws/sso/cache``, shared with the AWS CLI and the SDKs."""
    return SsoCache(_cache_dir(settings.paths, settings.paths.sso_cache_dir, "sso"))


def login_cache(settings: Settings) -> LoginCache:
    """``~/.aws/login/cache`` (``$AWS_LOGIN_CACHE_DIRECTORY``), shared with ``aws login``."""
    return LoginCache(_cache_dir(settings.paths, settings.paths.login_cache_dir, "login"))


def trusted_identity_cache(settings: Settings) -> IamTokenCache:
    """credd's own store of CreateTokenWithIAM tokens, in its state directory."""
    return IamTokenCache(
        _cache_dir(settings.paths, settings.paths.trusted_identity_cache_dir, "tokens")
    )


def grant_store(settings: Settings) -> GrantStore:
    """The scoped tokens' file, ``$XDG_STATE_HOME/credd/grants.json``: it outlives a reboot,
    as what ``credd env`` printed must; changed under ``grants.lock`` in the lock directory."""
    paths = settings.paths
    files = JsonCacheDir(paths.state_dir, paths.lock_dir, paths.state_dir / "unreadable")
    return GrantStore(files, paths.lock_dir / "grants.lock")


def env_token_dir(settings: Settings) -> Path:
    """Where ``credd env`` and ``credd exec`` keep each profile's scoped token file."""
    return settings.paths.runtime_dir / "env"


def aws_clients(settings: Settings, *, keep_open: bool = False) -> AwsClients:
    """Clients that honour the AWS config's endpoint overrides (``keep_open``: the daemon's)."""
    return AwsClients(
        settings.paths.aws_config_file, settings.paths.aws_credentials_file, keep_open=keep_open
    )


# --------------------------------------------------------------------------- the CLI's logins


def sso_login(
    settings: Settings, spec: SsoSessionSpec, *, clock: Clock, ui: LoginUI, options: LoginOptions
) -> SsoLogin:
    """An Identity Center login that writes the AWS CLI's token cache."""
    return SsoLogin(
        spec,
        cache=sso_cache(settings),
        clients=aws_clients(settings),
        clock=clock,
        ui=ui,
        options=options,
    )


def trusted_identity_login(
    settings: Settings,
    spec: TrustedIdentitySpec,
    *,
    clock: Clock,
    ui: LoginUI,
    options: LoginOptions,
) -> Callable[[], Awaitable[IamToken]]:
    """An authorization-code CreateTokenWithIAM login, signed as its ``source_profile``."""
    return functools.partial(
        login_trusted_identity,
        spec,
        cache=trusted_identity_cache(settings),
        clients=aws_clients(settings),
        signer=_signer(settings, spec.source_profile),
        clock=clock,
        ui=ui,
        options=options,
    )


def _signer(settings: Settings, source: str | None) -> Callable[[], Awaitable[SigningKeys]]:
    """The keys of ``source`` outside the daemon: a served profile's are asked of the daemon."""
    from credd.endpoint import client
    from credd.profiles import source_keys

    async def served(name: str) -> SigningKeys:
        path = f"/v1/credentials/{urllib.parse.quote(name, safe='')}"
        creds = await anyio.to_thread.run_sync(client.request, settings, path)
        token = creds.get("Token")
        return SigningKeys(
            creds["AccessKeyId"], Secret(creds["SecretAccessKey"]), Secret(token) if token else None
        )

    return functools.partial(
        source_keys,
        source,
        sources=settings.sources,
        served=served,
        clients=aws_clients(settings),
    )


def signin_login(
    settings: Settings,
    target: SigninTarget,
    *,
    clock: Clock,
    ui: LoginUI,
    options: SigninLoginOptions,
    read_code: ReadCode,
) -> SigninLogin:
    """An AWS Sign-In login (``aws login``) that writes the login cache."""
    # imported only when used: with it comes cryptography, some 7 MB the daemon may never need
    from credd.sessions.signin_login import SigninLogin

    return SigninLogin(
        target,
        cache=login_cache(settings),
        clients=aws_clients(settings),
        clock=clock,
        ui=ui,
        options=options,
        read_code=read_code,
    )


# --------------------------------------------------------------------------- logout, status


async def log_out(settings: Settings, spec: SessionSpec) -> CreddError | None:
    """Forget ``spec``'s session in the cache it lives in; an Identity Center Logout's failure."""
    if isinstance(spec, TrustedIdentitySpec):
        await forget(trusted_identity_cache(settings), spec.name)
        return None
    if isinstance(spec, SigninSessionSpec):
        await forget(login_cache(settings), spec.cache_key)
        return None
    return await log_out_identity_center(
        spec, cache=sso_cache(settings), clients=aws_clients(settings)
    )


def offline_status(settings: Settings, now: datetime) -> dict[str, Any]:
    """The status document from the caches alone, for when no daemon answers."""
    # the CLI's alone: it reads Sign-In sessions, and so brings cryptography along
    from credd.offline import offline_document

    return offline_document(
        settings.sessions.values(),
        sso=sso_cache(settings),
        logins=login_cache(settings),
        iam_tokens=trusted_identity_cache(settings),
        unserved=settings.unserved,
        grants=grant_store(settings),
        now=now,
    )
