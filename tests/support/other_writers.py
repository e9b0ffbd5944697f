"""What other programs do to the token caches credd reads, done the way they do it.

credd shares ``~/.aws/sso/cache`` with the AWS CLI and the SDKs, which take no
lock of credd's: botocore writes a temporary file and renames it over the
cache file, the JS SDK (and older botocore) truncates and rewrites the file in
place, ``aws sso logout`` deletes it. Tests of adoption, compare-and-swap and
torn files make these writes from outside, with real files, and a real login
by "another program" gives them a token the emulator knows.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from credd.config.settings import SsoSessionSpec
from credd.files.store import JsonCacheDir, SsoCache
from credd.sessions.loopback import LoginOptions
from credd.sessions.sso_login import SsoLogin
from credd.wiring import aws_clients
from tests.support.inprocess import RecordingUI
from tests.support.world import World


def write_like_botocore(path: Path, data: bytes) -> None:
    """botocore's ``JSONFileCache``: a ``mkstemp`` file beside the target, fsync,
    ``os.replace``; no lock (botocore takes none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def write_in_place(path: Path, data: bytes, *, mtime_ns: int) -> None:
    """The JS SDK's write: the same inode truncated and rewritten; then the mtime put back to
    ``mtime_ns``, as ``touch -d`` would, so that only the content says anything changed."""
    with path.open("r+b") as out:
        out.truncate(0)
        out.write(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


async def login_elsewhere(world: World, where: Path, session: str = "my-sso") -> bytes:
    """``session`` logged in anew by another program, into a cache of its own under ``where``:
    the bytes of the token file it wrote, for a test to put in place when it chooses."""
    settings = world.settings
    spec = settings.session_for(session)
    assert isinstance(spec, SsoSessionSpec)
    cache = SsoCache(JsonCacheDir(where / "cache", where / "locks", where / "unreadable"))
    await SsoLogin(
        spec,
        cache=cache,
        clients=aws_clients(settings),
        clock=world.clock,
        ui=RecordingUI(),
        options=LoginOptions(),
    ).run()
    return cache.files.path(cache.token_name(spec.cache_key)).read_bytes()
