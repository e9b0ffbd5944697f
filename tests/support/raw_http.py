"""One HTTP exchange over a raw loopback socket, and a strict reader of what comes back.

The fuzz tests need to send bytes no HTTP client would (broken request lines,
NULs, duplicate and malformed headers, lying ``Content-Length``), so they
speak through a plain blocking socket and read the answer with a parser that
accepts only well-formed HTTP/1.x responses: a status line, header lines
without control characters, and a body framed by ``Content-Length``.
"""

from __future__ import annotations

import contextlib
import re
import socket
from dataclasses import dataclass

#: how long one exchange may take before the test fails (never reached when all is well)
EXCHANGE_DEADLINE = 10.0
_STATUS_LINE = re.compile(rb"^HTTP/(\d)\.(\d) (\d{3})(?: [\x20-\x7e]*)?$")
_HEADER_LINE = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x20-\x7e]*?)[ \t]*$")


class NotHttp(AssertionError):
    """What came back is not a well-formed HTTP response."""


@dataclass(frozen=True)
class Reply:
    version: str
    status: int
    #: header names lower-cased, in the order sent
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: the bytes as received, for failure messages
    raw: bytes

    def header(self, name: str) -> str | None:
        found = [value for key, value in self.headers if key == name.lower()]
        if len(found) > 1:
            raise NotHttp(f"header {name} sent {len(found)} times: {self.raw[:500]!r}")
        return found[0] if found else None


def exchange(port: int, request: bytes, *, head: bool = False) -> Reply | None:
    """Send ``request`` on a new connection and read one final response.

    ``head``: the request was a ``HEAD`` (the response has no body).
    ``None`` when the server closed the connection without a byte.
    Interim ``1xx`` responses (``100 Continue``) are skipped.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=EXCHANGE_DEADLINE) as sock:
        # the server may answer (and close) before reading it all: then read that answer
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        reader = _Reader(sock)
        while True:
            reply = reader.response(head=head)
            if reply is None or not 100 <= reply.status < 200:
                return reply


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""
        self._closed = False
        self._received = b""

    def _fill(self) -> bool:
        if self._closed:
            return False
        try:
            chunk = self._sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        except TimeoutError:
            raise NotHttp(
                f"no complete answer within {EXCHANGE_DEADLINE} s; got {self._received[:500]!r}"
            ) from None
        if not chunk:
            self._closed = True
            return False
        self._buffer += chunk
        self._received += chunk
        return True

    def response(self, *, head: bool) -> Reply | None:
        while b"\r\n\r\n" not in self._buffer:
            if not self._fill():
                if self._received:
                    raise NotHttp(f"the answer ends inside its head: {self._received[:500]!r}")
                return None
        start = len(self._received) - len(self._buffer)
        head_bytes, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head_bytes.split(b"\r\n")
        status = _STATUS_LINE.match(lines[0])
        if status is None:
            raise NotHttp(f"not an HTTP status line: {lines[0][:200]!r}")
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            match = _HEADER_LINE.match(line)
            if match is None:
                raise NotHttp(f"not a header line: {line[:200]!r} in {head_bytes[:500]!r}")
            headers.append((match[1].decode().lower(), match[2].decode()))
        code = int(status[3])
        length_values = [value for key, value in headers if key == "content-length"]
        if len(length_values) > 1 or any(k == "transfer-encoding" for k, _ in headers):
            raise NotHttp(f"ambiguous framing: {head_bytes[:500]!r}")
        if head or 100 <= code < 200 or code in (204, 304):
            body = b""
        elif length_values:
            if not length_values[0].isdigit():
                raise NotHttp(f"bad Content-Length: {head_bytes[:500]!r}")
            length = int(length_values[0])
            while len(self._buffer) < length and self._fill():
                pass
            if len(self._buffer) < length:
                raise NotHttp(f"body shorter than its Content-Length: {self._received[:500]!r}")
            body, self._buffer = self._buffer[:length], self._buffer[length:]
        else:  # no framing: the body runs to the end of the connection
            while self._fill():
                pass
            body, self._buffer = self._buffer, b""
        version = f"{status[1].decode()}.{status[2].decode()}"
        raw = self._received[start:]
        return Reply(version, code, tuple(headers), body, raw)
