"""Link events: a NETLINK_ROUTE socket subscribed to RTNLGRP_LINK.

The kernel multicasts an RTM_NEWLINK for every link created or changed (up,
carrier, master, MTU, ...) and an RTM_DELLINK for every link deleted
(rtmsg_ifinfo() in net/core/rtnetlink.c; groups in
include/uapi/linux/rtnetlink.h).  Each is parsed with rtnl.link_fields.
"""

from __future__ import annotations

import _socket  # not `socket`: its enum classes cost ~2 ms to import
import errno
import select
import struct
import time

from vmnet.kernel import rtnl

_HDR = struct.Struct("=IHHII")  # nlmsghdr
_IFI_SIZE = 16  # struct ifinfomsg

OVERRUN = 0  # not a message type: the marker of a lost event, see LinkEvents.read


def parse(data: bytes) -> list[tuple[int, dict[str, object]]]:
    """The link events in one datagram: (RTM_NEWLINK or RTM_DELLINK, link_fields).

    Only AF_UNSPEC link messages count: a bridge also sends RTM_NEWLINK and
    RTM_DELLINK of family AF_BRIDGE to this group for its ports' state
    (br_ifinfo_notify() in net/bridge/br_netlink.c), and the RTM_DELLINK it
    sends when a port leaves the bridge does not mean the link is gone.
    """
    out: list[tuple[int, dict[str, object]]] = []
    off = 0
    while off + _HDR.size <= len(data):
        n, mtype, _flags, _seq, _pid = _HDR.unpack_from(data, off)
        if n < _HDR.size:
            break
        body = off + _HDR.size
        if (mtype in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK) and n >= _HDR.size + _IFI_SIZE
                and data[body] == 0):  # ifi_family
            out.append((mtype, rtnl.link_fields(data, body, off + n)))
        off += (n + 3) & ~3
    return out


class LinkEvents:
    """Link events as they happen, from a socket of our own.

    read() returns (RTM_NEWLINK or RTM_DELLINK, rtnl.link_fields(...)) per
    event.  If events came faster than they were read, the socket's receive
    buffer overflowed and the kernel dropped some (recv() fails with
    ENOBUFS): read() then discards what is queued and returns
    [(OVERRUN, {})].  The caller's picture is stale: it dumps the links again
    (RTM_GETLINK), then goes on reading: events queued meanwhile may predate
    the dump, but applied in order they end at the state the kernel has.
    """

    def __init__(self, rcvbuf: int = 1 << 20) -> None:
        self.sock = _socket.socket(_socket.AF_NETLINK,
                                   _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, rtnl.NETLINK_ROUTE)
        try:
            self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, rcvbuf)
            self.sock.bind((0, 1 << (rtnl.RTNLGRP_LINK - 1)))  # groups: a bitmask
        except OSError:
            self.sock.close()
            raise
        self._poll = select.poll()
        self._poll.register(self.sock.fileno(), select.POLLIN)

    def fileno(self) -> int:
        """The socket, for the caller's own poll/select loop."""
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> LinkEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, timeout: float | None) -> list[tuple[int, dict[str, object]]]:
        """The events queued now, waiting up to timeout seconds (None: for ever)
        for the first; [] if none came, [(OVERRUN, {})] after an overrun.

        Messages that are no link event (see parse()) do not end the wait.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                ms = -1
            else:
                ms = max(0, int((deadline - time.monotonic()) * 1000 + 0.999))
            if not self._poll.poll(ms):
                return []
            out = self._queued()
            if out or (deadline is not None and time.monotonic() >= deadline):
                return out

    def _queued(self) -> list[tuple[int, dict[str, object]]]:
        out: list[tuple[int, dict[str, object]]] = []
        while True:
            try:
                data = self.sock.recv(1 << 16, _socket.MSG_DONTWAIT)
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self._drain()
                return [(OVERRUN, {})]
            out += parse(data)

    def _drain(self) -> None:
        """Throw away what is queued: the caller's new dump supersedes it."""
        while True:
            try:
                self.sock.recv(1 << 16, _socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
