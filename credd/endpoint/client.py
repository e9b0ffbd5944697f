"""Talking to a running daemon from the command line: where it listens, and asking it.

Plain blocking ``urllib`` on purpose: the client commands (``credential-process``
above all) start fast and make one request.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from credd.config.settings import Settings
from credd.errors import CreddError, DaemonUnavailable, NotServed

TIMEOUT_SECONDS = 5.0
_START_HINT = "start it with: credd serve (or install the service)"


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    token_file: Path

    def credentials_url(self, profile: str) -> str:
        return f"{self.base_url}/v1/credentials/{urllib.parse.quote(profile, safe='')}"


def endpoint(settings: Settings) -> Endpoint:
    """The daemon's URL; with ``listen`` port 0, read from the ``address`` file it wrote."""
    server = settings.server
    host, port = server.host, server.port
    if port == 0:
        address = server.address_file
        try:
            text = address.read_text(encoding="ascii").strip()
        except OSError as exc:
            raise DaemonUnavailable(
                f"credd is not running (no {address})", hint=_START_HINT
            ) from exc
        host, _, port_text = text.rpartition(":")
        port = int(port_text)
    if host == "localhost":
        host = "127.0.0.1"  # every SDK accepts the literal (protocols.md 8.3)
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    return Endpoint(base_url=f"http://{shown}:{port}", token_file=server.token_file)


def request(settings: Settings, path: str, *, method: str = "GET") -> Any:
    """One authenticated request; the parsed JSON answer, or a :class:`CreddError`."""
    where = endpoint(settings)
    try:
        token = where.token_file.read_text(encoding="ascii")
    except OSError as exc:
        raise DaemonUnavailable(
            f"cannot read the endpoint token {where.token_file}: {exc.strerror}",
            hint=_START_HINT,
        ) from exc
    req = urllib.request.Request(  # noqa: S310  # the URL is built from the loopback listen address
        where.base_url + path, method=method, headers={"Authorization": token}
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_SECONDS) as answer:  # noqa: S310
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise _error_from(exc) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DaemonUnavailable(
            f"credd is not answering on {where.base_url}", hint=_START_HINT
        ) from exc


def _error_from(exc: urllib.error.HTTPError) -> CreddError:
    try:
        body = json.loads(exc.read())
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        return CreddError(f"credd answered HTTP {exc.code}")
    if exc.code == 404:
        return NotServed(message)
    error = CreddError(message)
    error.code = code
    return error
