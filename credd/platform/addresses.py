"""Local addresses: whether one exists now, and being told when they change.

The container listener (:mod:`credd.endpoint.containers`) binds an address that
may not exist yet (a bridge made later, Docker started after credd) and must let
it go when it does. The kernel announces every address added or removed on a
``NETLINK_ROUTE`` socket subscribed to ``RTMGRP_IPV4_IFADDR`` and
``RTMGRP_IPV6_IFADDR`` (rtnetlink(7)); Python's :mod:`socket` speaks
``AF_NETLINK`` itself, so no library is needed. A message is not parsed: it only
means "look again", and looking is binding (which the kernel refuses with
``EADDRNOTAVAIL`` for an address no interface holds). So an idle machine costs
nothing, and a burst of changes costs one look. (Where an administrator set
``net.ipv4.ip_nonlocal_bind=1``, any address binds: the listener is then bound
from the start and answers once the address appears, as with ``IP_FREEBIND``,
which credd itself never sets.)

Where netlink is refused (a sandbox's ``RestrictAddressFamilies=`` without
``AF_NETLINK``, a seccomp filter), :class:`AddressWatch` says so and the caller
looks again on a slow timer instead.
"""

from __future__ import annotations

import errno
import math
import socket
from dataclasses import dataclass
from types import TracebackType

import anyio

#: rtnetlink(7) multicast groups (``<linux/rtnetlink.h>``): addresses added or removed
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
#: messages drained per wake-up before yielding: a storm cannot hold the event loop
_DRAIN_LIMIT = 256
_RECV_BYTES = 65536


@dataclass(frozen=True)
class Address:
    """A numeric address and port resolved for ``bind`` (a zone resolved to its index)."""

    family: socket.AddressFamily
    sockaddr: tuple[str, int] | tuple[str, int, int, int]

    @classmethod
    def resolve(cls, host: str, port: int) -> Address | None:
        """``host`` (numeric; ``fe80::1%credd0`` with its zone) and ``port``; ``None``
        when the zone names no interface now."""
        try:
            found = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            )
        except socket.gaierror:
            return None  # an interface name (zone) that does not exist (yet)
        family, _, _, _, sockaddr = found[0]
        if not isinstance(sockaddr[0], str):
            return None
        return cls(family, sockaddr)

    def socket(self) -> socket.socket:
        """A TCP socket bound to this address, ready to listen; :class:`OSError` if not.

        ``SO_REUSEADDR`` so that a rebind after the address came back is not refused
        for the old connections' ``TIME_WAIT``. No ``IP_FREEBIND``: binding fails
        while no interface holds the address, which is how its absence is seen.
        """
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(self.sockaddr)
        except OSError:
            sock.close()
            raise
        return sock

    def exists(self) -> bool:
        """Does an interface hold this address now? (A bind to any free port on it.)"""
        sockaddr = self.sockaddr
        any_port: tuple[str, int] | tuple[str, int, int, int] = (
            (sockaddr[0], 0) if len(sockaddr) == 2 else (sockaddr[0], 0, sockaddr[2], sockaddr[3])
        )
        probe = Address(self.family, any_port)
        try:
            probe.socket().close()
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
        return True


def absent(exc: OSError) -> bool:
    """Is ``exc`` the kernel saying that no interface holds the address?"""
    return exc.errno == errno.EADDRNOTAVAIL


class AddressWatch:
    """Wakes its owner when local addresses may have changed.

    ``with AddressWatch() as watch: await watch.changed(timeout)``. Without
    netlink (:attr:`problem` says why), :meth:`changed` waits for the timeout only.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        #: why netlink could not be used, or ``None`` while it is
        self.problem: str | None = None

    def __enter__(self) -> AddressWatch:
        try:
            sock = socket.socket(
                socket.AF_NETLINK,
                socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                socket.NETLINK_ROUTE,
            )
        except (OSError, AttributeError) as exc:  # AttributeError: not Linux
            self.problem = f"netlink is not available: {getattr(exc, 'strerror', None) or exc}"
            return self
        try:
            sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        except OSError as exc:
            sock.close()
            self.problem = f"netlink is not available: {exc.strerror or exc}"
            return self
        self._sock = sock
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def watching(self) -> bool:
        return self._sock is not None

    async def changed(self, within: float | None) -> bool:
        """Wait until addresses may have changed (``True``) or ``within`` seconds passed
        (``False``; ``None``: no limit). Every message waiting is consumed: one wake-up
        per burst."""
        sock = self._sock
        with anyio.move_on_after(math.inf if within is None else within):
            if sock is None:
                await anyio.sleep_forever()
            else:
                await anyio.wait_readable(sock)
                self._drain(sock)
                return True
        return False

    def _drain(self, sock: socket.socket) -> None:
        for _ in range(_DRAIN_LIMIT):
            try:
                sock.recv(_RECV_BYTES)
            except BlockingIOError:
                return
            except OSError as exc:
                # ENOBUFS: the kernel dropped messages for us; looking again covers them
                if exc.errno == errno.ENOBUFS:
                    continue
                # anything else: the socket is no use any more; the timer takes over
                self.problem = f"netlink failed: {exc.strerror or exc}"
                sock.close()
                self._sock = None
                return
