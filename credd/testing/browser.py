"""A headless user at a browser: ``python -m credd.testing.browser URL``.

GETs ``URL`` and follows every redirect, including the last one to a login
client's ``http://127.0.0.1:PORT/oauth/callback?...`` listener, and exits 0 if
the final answer is 2xx; otherwise it prints the status to stderr and exits 1.
Only loopback hosts are ever contacted (a redirect elsewhere is a failure), and
proxies from the environment are ignored.

Python's :mod:`webbrowser` runs ``$BROWSER`` as a single executable path (a
value with arguments such as ``"python -m credd.testing.browser %s"`` is not
split on Python 3.11), so :func:`install_shim` writes a one-line executable to
point ``$BROWSER`` at. Note that ``webbrowser.open`` waits for the browser
process to exit, and that :mod:`webbrowser` reads ``$BROWSER`` once per process,
on first use.
"""

from __future__ import annotations

import ipaddress
import shlex
import stat
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, Final
from urllib.parse import urlsplit

TIMEOUT_SECONDS: Final = 30.0


class NotLoopbackError(urllib.error.URLError):
    """A URL (or a redirect) points away from this machine."""


def is_loopback_url(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def _described(url: str) -> str:
    """``scheme://host:port/path`` without the query, which may carry a code."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class _LoopbackRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not is_loopback_url(newurl):
            raise NotLoopbackError(f"refusing to follow a redirect to {_described(newurl)}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def visit(url: str) -> int:
    """GET ``url``, following redirects; the final HTTP status."""
    if not is_loopback_url(url):
        raise NotLoopbackError(f"refusing to visit {_described(url)}")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _LoopbackRedirects())
    try:
        with opener.open(url, timeout=TIMEOUT_SECONDS) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def install_shim(path: Path) -> Path:
    """Write an executable at ``path`` that runs this module; point ``$BROWSER`` at it."""
    command = shlex.join([sys.executable, "-m", "credd.testing.browser"])
    path.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IRUSR)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m credd.testing.browser URL", file=sys.stderr)
        return 2
    try:
        status = visit(args[0])
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        print(f"browser: {reason}", file=sys.stderr)
        return 1
    if 200 <= status < 300:
        return 0
    print(f"browser: HTTP {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
