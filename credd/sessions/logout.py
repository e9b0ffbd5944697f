"""Logging out of a session: its tokens revoked upstream where AWS can, and forgotten here.

Identity Center has a call for it: the portal's ``Logout`` invalidates the
access token (protocols.md, the SSO portal), as ``aws sso logout`` calls it
before deleting the file. AWS Sign-In has no public logout, so credd deletes
the login cache entry as ``aws logout`` does; CreateTokenWithIAM has none
either. Whatever upstream answers, the cache file goes, under its
cross-process lock: a logout always ends the session on this machine.
"""

from __future__ import annotations

from typing import Any

from credd.aws import AwsClients
from credd.config.settings import SsoSessionSpec
from credd.errors import CreddError
from credd.files.store import CacheCorrupt, SsoCache, TokenCache


async def log_out_identity_center(
    spec: SsoSessionSpec, *, cache: SsoCache, clients: AwsClients
) -> CreddError | None:
    """The portal's Logout, then the token file deleted; the Logout's failure, if it failed.

    A failed Logout does not stop the logout: the local session is gone anyway,
    and the caller tells the user that the portal may still hold the token.
    """
    refused: CreddError | None = None
    try:
        token = cache.load_token(spec.cache_key)
    except CacheCorrupt:
        token = None  # nothing to revoke: the file is deleted all the same
    if token is not None:
        try:
            async with clients.client(
                "sso", region=spec.region, profile=spec.endpoint_profile
            ) as portal:
                await portal.logout(accessToken=token.access_token.reveal())
        except CreddError as exc:
            refused = exc
    await forget(cache, spec.cache_key)
    return refused


async def forget(cache: TokenCache[Any], key: str) -> None:
    """Delete ``key``'s token file under the cache's cross-process lock (no upstream call)."""
    async with cache.lock(key):
        cache.delete_token(key)
