"""What credd logs meanwhile, captured as ``credd serve`` renders it (JSON lines)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

import structlog

from credd.log import configure_logging


@contextlib.contextmanager
def captured_log(level: str = "debug") -> Iterator[io.StringIO]:
    """Everything credd (and botocore, aiohttp) logs meanwhile, as ``credd serve`` renders it.

    Logging is process-wide: the configuration before is put back afterwards.
    """
    stream = io.StringIO()
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    configure_logging(level, "json", stream)
    try:
        yield stream
    finally:
        structlog.configure(**saved)
        root.handlers[:] = handlers
        root.setLevel(root_level)
