"""Assertions for the jwt-bearer grant: JWTs an external identity provider issued.

CreateTokenWithIAM's jwt-bearer grant (protocols.md 2.2, RFC 7523) trades a
JWT from a trusted token issuer for Identity Center tokens. Such assertions
live minutes to an hour, and something outside credd mints them: a tool that
keeps a file fresh (``assertion_file``), or an identity provider's CLI that
prints one (``assertion_command``). An :class:`AssertionSource` holds the last
one it got and fetches another only when that one nears its ``exp`` (or the
file changed, or Identity Center refused it): a file is cheap to re-read, but
a command may be slow, rate-limited or even prompt.

When no usable assertion can be had, :class:`~credd.errors.AssertionRequired`
says why and what to do. Neither an assertion, nor a command's output, nor its
arguments (they may hold a client secret) is ever put in a message or a log line.
"""

from __future__ import annotations

import os
import shlex
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from subprocess import DEVNULL

import anyio
import structlog

from credd.clock import Clock
from credd.errors import AssertionRequired
from credd.files.store import format_timestamp
from credd.platform.process import child_environment
from credd.secret import Secret
from credd.sessions import claims

log = structlog.get_logger(__name__)

#: an assertion with less left than this is replaced before it is used
ASSERTION_MARGIN_SECONDS = 60.0
#: how long ``assertion_command`` may take
COMMAND_TIMEOUT_SECONDS = 60.0
#: the largest assertion read: a JWT is a few kilobytes, even with many group claims
MAX_ASSERTION_BYTES = 64 * 1024
#: never wait on a FIFO, never take a terminal
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


@dataclass(frozen=True)
class Assertion:
    value: Secret
    #: its ``exp``; ``None`` if it names none (Identity Center will refuse it)
    expires_at: datetime | None
    #: its ``sub``: whom the identity provider vouches for
    subject: str | None


class AssertionSource:
    """Where one session's assertions come from: a file or a command, never both."""

    def __init__(
        self,
        session: str,
        *,
        file: Path | None = None,
        command: tuple[str, ...] | None = None,
        clock: Clock,
    ) -> None:
        if (file is None) == (command is None):
            raise ValueError("an assertion comes from a file or from a command")
        self._session = session
        self._file = file
        self._command = command
        self._clock = clock
        self._held: Assertion | None = None
        self._file_stamp: tuple[int, int] | None = None

    @property
    def where(self) -> str:
        if self._file is not None:
            return f"assertion_file {self._file}"
        assert self._command is not None
        return f"assertion_command {_shown(self._command)}"

    @property
    def hint(self) -> str:
        """What to do when no usable assertion can be had."""
        if self._file is not None:
            return f"have your identity provider write a fresh JWT to {self._file}"
        assert self._command is not None
        return f"check that assertion_command ({_shown(self._command)}) prints a fresh JWT"

    def refused(self) -> None:
        """Identity Center refused the assertion held: the next :meth:`get` fetches another."""
        self._held = None

    async def get(self) -> Assertion:
        """A current assertion; raises :class:`AssertionRequired` when none can be had."""
        now = self._clock.now()
        held = self._held
        if held is not None and not self._stale(held, now) and not self.changed():
            return held
        fresh = self._parse(await self._fetch(), now)
        self._held = fresh
        log.info("assertion_read", session=self._session, source=self.where, exp=fresh.expires_at)
        return fresh

    @staticmethod
    def _stale(assertion: Assertion, now: datetime) -> bool:
        expires_at = assertion.expires_at
        margin = timedelta(seconds=ASSERTION_MARGIN_SECONDS)
        return expires_at is None or expires_at - now <= margin

    def _stamp(self) -> tuple[int, int] | None:
        assert self._file is not None
        try:
            found = self._file.stat()
        except OSError:
            return None
        return found.st_mtime_ns, found.st_ino

    def changed(self) -> bool:
        """Whether the file changed since it was last read (a command cannot say)."""
        return self._file is not None and self._stamp() != self._file_stamp

    async def _fetch(self) -> str:
        if self._file is not None:
            # a file on a slow or stuck disk holds up a worker thread, not the event loop
            return await anyio.to_thread.run_sync(self._read_file, self._file)
        assert self._command is not None
        return await self._run(self._command)

    def _read_file(self, path: Path) -> str:
        """The file's text (blocking: run it in a thread), bounded like a cache read.

        A FIFO or a device at the path is refused without waiting on it, and no
        more than :data:`MAX_ASSERTION_BYTES` is read. Symlinks are followed: a
        Kubernetes projected token is one.
        """
        self._file_stamp = self._stamp()
        try:
            with os.fdopen(os.open(path, _READ_FLAGS), "rb") as file:
                if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                    raise self._required(f"{path} is not a regular file")
                data = file.read(MAX_ASSERTION_BYTES + 1)
        except FileNotFoundError as exc:
            raise self._required(f"{path} does not exist") from exc
        except OSError as exc:
            raise self._required(f"{path} cannot be read: {exc.strerror or exc}") from exc
        if len(data) > MAX_ASSERTION_BYTES:
            raise self._required(f"{path} is larger than {MAX_ASSERTION_BYTES} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._required(f"{path} cannot be read: not UTF-8 text") from exc

    async def _run(self, command: tuple[str, ...]) -> str:
        shown = _shown(command)
        try:
            with anyio.fail_after(COMMAND_TIMEOUT_SECONDS):
                # no stdin: a command that prompts fails instead of hanging the daemon;
                # and none of credd's tokens or the service's channels in its environment
                done = await anyio.run_process(
                    list(command), check=False, stdin=DEVNULL, env=child_environment()
                )
        except TimeoutError as exc:
            raise self._required(
                f"`{shown}` did not finish within {COMMAND_TIMEOUT_SECONDS:.0f} s"
            ) from exc
        except OSError as exc:
            raise self._required(f"`{shown}` cannot be run: {exc.strerror or exc}") from exc
        if done.returncode != 0:
            # its output is not repeated: it may carry a token
            raise self._required(f"`{shown}` exited with status {done.returncode}")
        try:
            return bytes(done.stdout).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._required(f"`{shown}` printed something that is not UTF-8 text") from exc

    def _parse(self, text: str, now: datetime) -> Assertion:
        value = text.strip()
        if not value:
            raise self._required(f"{self.where} gave an empty assertion")
        try:
            payload = claims.claims(value)
        except claims.NotAJwt as exc:
            raise self._required(f"{self.where} gave something that is not a JWT ({exc})") from exc
        expires_at = claims.expiry(payload)
        if expires_at is not None and expires_at <= now:
            raise self._required(
                f"the assertion from {self.where} expired at {format_timestamp(expires_at)}"
            )
        subject = payload.get("sub")
        return Assertion(Secret(value), expires_at, subject if isinstance(subject, str) else None)

    def _required(self, reason: str) -> AssertionRequired:
        return AssertionRequired(self._session, reason, hint=self.hint)


def _shown(command: tuple[str, ...]) -> str:
    """The program only: its arguments may carry a client secret."""
    return shlex.quote(command[0]) + (" ..." if len(command) > 1 else "")
