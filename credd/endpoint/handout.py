"""Handing a scoped token to a process: what ``credd env`` and ``credd exec`` give it.

A process gets its profile's scoped token twice (interface.md, "Tokens"): as
``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE``, a 0600 file holding only the token,
for SDKs since late 2023, and as ``AWS_CONTAINER_AUTHORIZATION_TOKEN``, its
value, for those before (issue 11: the AWS CLI v2 2.9, botocore 1.29, the Go
SDKs, rclone). The file is ``<runtime dir>/env/<profile, made safe>``, one per
profile, shared by every ``credd env`` and ``credd exec`` of that profile.

**Reuse.** ``credd env`` runs from shell start-up files, and a shell that
``eval``'d it holds the token in its environment: a second run must not end the
first one's access. So a token file that is intact (a regular file, the user's,
0600, one well-formed token) whose grant is on file and live is used again;
otherwise a new grant is issued, its token written, and the profile's earlier
``env`` grants revoked in the same write (nobody can be holding a token whose
file was lost or tampered with, except from the shell that read it, and that
token might have leaked with the file). Check and issue happen under the grants
file's lock, so two shells starting at once end up with one token.

The file is read with ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat``,
and written as a cache file is (a temporary file made 0600 with ``O_EXCL``,
fsync, then ``rename``, which replaces a symlink at the path instead of
following it).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from credd.endpoint.grants import TOKEN_LENGTH, Grant, GrantStore, find, mint
from credd.errors import CreddError
from credd.files.store import atomic_write

#: a token is TOKEN_LENGTH characters; anything much bigger is not a token file
_MAX_TOKEN_FILE_BYTES = 256
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
#: what a file name keeps of a profile name (the AWS config's and shells' safe set)
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=,-]+")
_MAX_NAME = 100


@dataclass(frozen=True, repr=False)
class Handout:
    """A scoped token for one profile, and the file that holds it."""

    profile: str
    token: str
    token_file: Path
    grant: Grant
    #: the token of an earlier ``credd env``, still live, rather than a new one
    reused: bool

    def __repr__(self) -> str:
        return f"Handout({self.profile!r}, grant={self.grant.id}, reused={self.reused})"


def token_file_name(profile: str) -> str:
    """``profile`` as a file name: safe characters only, never hidden, never two profiles
    on one name (an altered name gets a hash of the original)."""
    safe = _UNSAFE.sub("-", profile).lstrip(".")[:_MAX_NAME]
    if safe and safe == profile:
        return safe
    tag = hashlib.sha256(profile.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"{safe or 'profile'}.{tag}"


def read_token_file(path: Path) -> str | None:
    """The token in ``path`` if the file is intact: a regular file (not a link, FIFO or
    device), the user's own, mode 0600, holding one token and nothing else."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None  # absent, a symlink (ELOOP), a socket (ENXIO), unreadable
    try:
        info = os.fstat(fd)
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != os.getuid()
            or stat.S_IMODE(info.st_mode) != 0o600
            or info.st_size > _MAX_TOKEN_FILE_BYTES
        ):
            return None
        raw = os.read(fd, _MAX_TOKEN_FILE_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        token = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if len(token) != TOKEN_LENGTH or not token.isprintable() or token.strip() != token:
        return None
    return token


def write_token_file(path: Path, token: str) -> None:
    """Replace ``path`` with ``token`` (0600, no newline), never through a symlink."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = os.lstat(directory)
    except OSError as exc:
        raise CreddError(
            f"cannot make the token directory {directory}: {exc.strerror or exc}"
        ) from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise CreddError(
            f"{directory} is not a directory of your own: a token file is not written there",
            hint="remove it; credd makes it again",
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        try:
            os.chmod(directory, 0o700)
        except OSError as exc:
            raise CreddError(f"cannot make {directory} private: {exc.strerror}") from exc
    atomic_write(path, token.encode("ascii"))


def hand_out(store: GrantStore, directory: Path, profile: str, *, now: datetime) -> Handout:
    """The scoped ``env`` token for ``profile``: the one in its token file if that is
    intact and live, else a new one (written there, the profile's other ``env``
    grants revoked)."""
    path = directory / token_file_name(profile)
    with store.editing(now) as grants:
        held = read_token_file(path)
        if held is not None:
            grant = find(grants, held)
            if (
                grant is not None
                and grant.profile == profile
                and grant.purpose == "env"
                and not grant.expired(now)
            ):
                return Handout(profile, held, path, grant, reused=True)
        grant, token = mint(profile, now=now, purpose="env")
        grants[:] = [g for g in grants if not (g.purpose == "env" and g.profile == profile)]
        grants.append(grant)
        # before the grants file: a failure here leaves that file as it was
        write_token_file(path, token)
    return Handout(profile, token, path, grant, reused=False)
