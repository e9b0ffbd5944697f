"""A real tmpfs for a test: mounted, turned read-only or filled up, and always unmounted.

The fault tests (``tests/faults``) put ``~/.aws/sso/cache`` on a filesystem of
its own, so that it fails the way a user's disk does: remounted read-only
(EROFS) or full (ENOSPC), with the errors coming from the kernel rather than
from a mock. Mounting needs root (CI runs as root) and a kernel that lets this
process mount; elsewhere the test is skipped, saying why. However the test
ends, the mount is taken away (``umount -l``), so no tmpfs outlives it.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

#: what fills the tmpfs up; not a ``.json`` name, so no reader of the cache opens it
FILLER = ".filler"
_CHUNK = b"\0" * 4096  # one page: written until not even one more fits


@dataclass(frozen=True)
class Tmpfs:
    """A mounted tmpfs and the ways it can fail."""

    path: Path

    def read_only(self) -> None:
        """``mount -o remount,ro``: every write beneath it now fails with EROFS."""
        _mount("-o", "remount,ro", str(self.path))

    def read_write(self) -> None:
        _mount("-o", "remount,rw", str(self.path))

    def fill(self) -> None:
        """Write until the filesystem is full: every new block now fails with ENOSPC."""
        fd = os.open(self.path / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, _CHUNK)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)

    def free(self) -> None:
        """Take back what :meth:`fill` wrote."""
        (self.path / FILLER).unlink()


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``tool ARGS...`` (mount or umount, found on $PATH), its output captured."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool}(8) is not installed")
    return subprocess.run([path, *args], capture_output=True, text=True, check=False)


def _mount(*args: str) -> None:
    done = _run("mount", *args)
    assert done.returncode == 0, f"mount {' '.join(args)}: {done.stderr.strip()}"


@contextmanager
def tmpfs(path: Path, *, size: str = "1m") -> Iterator[Tmpfs]:
    """A tmpfs of ``size`` mounted at ``path`` (made if missing, mode 0700) for the block.

    Skips the test when this process cannot mount; unmounts lazily on the way
    out whatever happened, so a daemon or a file still open in it cannot keep it.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    if shutil.which("umount") is None:
        pytest.skip("umount(8) is not installed")
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    done = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield Tmpfs(path)
    finally:
        _run("umount", "-l", str(path))
