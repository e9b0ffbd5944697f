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
import secrets
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


def ensure_endpoint_token(path: Path) -> str:
    """The endpoint token: kept if present and sound, else made and written (0600, no newline)."""
    try:
        existing = path.read_text(encoding="ascii")
        if len(existing) >= 43 and existing.isprintable() and existing.strip() == existing:
            return existing
    except (OSError, UnicodeDecodeError):
        pass
    token = secrets.token_urlsafe(TOKEN_BYTES)  # 43 characters, 256 bits
    atomic_write(path, token.encode("ascii"))  # 0600
    return token


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
        now=now,
    )
