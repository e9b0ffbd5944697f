"""structlog setup and the processor that keeps secrets out of every log line.

A console renderer on a terminal, JSON otherwise (journald, files, pipes).
Secrets travel as :class:`credd.secret.Secret`, which never renders itself;
the redaction processor is the second line: any key that names a secret is
replaced whatever its value. botocore's and aiohttp's own loggers stay at
WARNING even under ``--debug``: at DEBUG botocore logs request bodies, tokens
included.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

from credd.secret import REDACTED, Secret

#: a key is secret-bearing when, lower-cased without ``_`` and ``-``, it ends so
SECRET_KEY_ENDINGS = (
    "token",
    "secret",
    "secretaccesskey",
    "password",
    "verifier",
    "devicecode",
    "authorization",
    "dpopkey",
    "privatekey",
    "assertion",
)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_LEVELS["error"] = logging.ERROR


def redact_secrets(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event.items():
        folded = key.lower().replace("_", "").replace("-", "")
        if folded.endswith(SECRET_KEY_ENDINGS) or isinstance(value, Secret):
            event[key] = REDACTED
    return event


def readable_times(
    _logger: object, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event.items():
        if isinstance(value, datetime):
            event[key] = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return event


#: syslog priorities journald reads from a "<N>" line prefix (sd-daemon(3))
_PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def logging_to_journal(stream: TextIO) -> bool:
    """Is ``stream`` the journal stream systemd gave us (``$JOURNAL_STREAM``)?"""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return f"{stat.st_dev}" == device and f"{stat.st_ino}" == inode


class JournalPriority:
    """Prefix each rendered line with its priority, so ``journalctl -p warning`` filters."""

    def __init__(self, renderer: Any) -> None:
        self._renderer = renderer

    def __call__(self, logger: object, method: str, event: MutableMapping[str, Any]) -> str:
        priority = _PRIORITIES.get(str(event.get("level", "info")), 6)
        return f"<{priority}>{self._renderer(logger, method, event)}"


_STDLIB_FORMAT = "%(levelname)s %(name)s: %(message)s"


class _JournalFormatter(logging.Formatter):
    """aiohttp's, botocore's and asyncio's own lines, with their priority, on one line."""

    def __init__(self) -> None:
        super().__init__(_STDLIB_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelname.lower(), 6)
        return f"<{priority}>" + super().format(record).replace("\n", " | ")


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        # plain tracebacks: with rich installed, structlog's default shows every frame's
        # local variables, tokens included
        structlog.dev.ConsoleRenderer(
            colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        if console
        else structlog.processors.JSONRenderer()
    )
    if logging_to_journal(out):
        renderer = JournalPriority(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            readable_times,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        _JournalFormatter() if logging_to_journal(out) else logging.Formatter(_STDLIB_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
