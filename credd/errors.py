"""The errors credd raises, and what each one tells the user to do.

Core code raises these (``raise ... from exc``); only ``cli.py`` prints them
and picks exit codes, and ``server.py`` turns them into HTTP error bodies.
"""

from __future__ import annotations

import traceback
from pathlib import Path


class CreddError(Exception):
    """Anything credd can explain in one line."""

    #: the short machine-readable code used in HTTP error bodies
    code = "CreddError"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: what to run or change, if anything
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(CreddError):
    """A configuration file is malformed or names something impossible."""

    code = "ConfigError"


class LoginRequired(CreddError):
    """The session holds no usable token: only a new login brings it back."""

    code = "LoginRequired"

    def __init__(self, session: str, reason: str, *, action: str | None = None) -> None:
        #: the command that logs the session in again
        self.action = action or f"credd login {session}"
        super().__init__(
            f"session {session!r} needs a new login: {reason}", hint=f"run: {self.action}"
        )
        self.session = session
        self.reason = reason


class InternalFailure(CreddError):
    """A bug in credd, caught where it would have stopped the daemon: retried like an outage.

    It names the exception's type and where it was raised, never its message: a
    message may quote the data at hand, a token among them.
    """

    code = "InternalError"

    def __init__(self, error: Exception) -> None:
        frames = traceback.extract_tb(error.__traceback__)
        where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
        super().__init__(
            f"credd failed unexpectedly ({type(error).__name__}{where})",
            hint="see the daemon's log",
        )


class TooManyRequests(CreddError):
    """More requests wait for an upstream fetch than the endpoint admits (HTTP 429)."""

    code = "TooManyRequests"


class UpstreamError(CreddError):
    """AWS (or whatever stands in for it) failed or could not be reached."""

    code = "UpstreamError"

    def __init__(
        self,
        message: str,
        *,
        aws_code: str | None = None,
        transient: bool = True,
        hint: str | None = None,
        status: int | None = None,
        oauth_error: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        #: the AWS error code, verbatim, when AWS answered with one
        self.aws_code = aws_code
        #: whether trying again later may help
        self.transient = transient
        #: the HTTP status of AWS's answer, when there was one
        self.status = status
        #: the OAuth 2.0 ``error`` member of the answer (Sign-In's ``TOKEN_EXPIRED``, ...)
        self.oauth_error = oauth_error


class AssertionRequired(CreddError):
    """A jwt-bearer session has no assertion Identity Center accepts: the IdP must give one."""

    code = "AssertionRequired"

    def __init__(self, session: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"session {session!r} needs a new assertion: {reason}", hint=hint)
        self.session = session
        self.reason = reason


class LoginError(CreddError):
    """An interactive login failed (denied, expired, timed out)."""

    code = "LoginError"


class NotServed(CreddError):
    """The name is not a profile or session credd serves."""

    code = "NotFound"


class DaemonUnavailable(CreddError):
    """The client commands could not reach a running daemon."""

    code = "DaemonUnavailable"
