"""vmnetd's loop: one process, one thread, every connection non-blocking.

Requests run one at a time, each to its end (they take the state lock anyway,
and an `up` is milliseconds), through vmnet.daemon.doors: the CLI's own code,
warm.  Between requests the loop only moves bytes, so a peer that sends half a
request, never reads its reply, or opens connections by the hundred holds up
nobody: reads and writes never block, a connection gets IDLE seconds to send a
request and to take its reply, a request is at most MAX_REQUEST bytes (root:
wire.MAX_FRAME), and a user without root has at most PER_USER connections at
once (MAX_CONNECTIONS in all).  Whatever is refused gets one line and its
connection closed; nothing was changed.

SIGKILL loses nothing: every operation is a transaction of the engine's
(journal, records), so a restarted vmnetd, or the CLI, works from the records
and the kernel; fds handed out stay QEMU's.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import socket
import sys
import time
import traceback

from vmnet.daemon import wire
from vmnet.daemon.client import fds_from, rights
from vmnet.daemon.policy import Peer
from vmnet.kernel.netns import has_net_admin

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from vmnet.daemon.doors import Doors, Session
    from vmnet.daemon.watch import Watched, Watcher
    from vmnet.daemon.wire import Plain

IDLE = 10.0  # seconds a connection may take to send its request or read its reply
MAX_REQUEST = 64 << 10  # bytes of one request from a user without root
MAX_CONNECTIONS = 512
PER_USER = 16
MAX_FDS_IN = 4  # a request carries one fd (root's namespace); more are refused
_UCRED = 12  # struct ucred: pid, uid, gid (3 x int32)


class Conn:
    """One client connection."""

    __slots__ = ("buf", "deadline", "fds", "need", "out", "peer", "session", "sock")

    def __init__(self, sock: socket.socket, peer: Peer, idle: float) -> None:
        self.sock = sock
        self.peer = peer
        self.buf = b""
        self.need: int | None = None  # head + body, once the frame's head is in
        self.fds: list[int] = []
        self.out = b""
        self.deadline = time.monotonic() + idle
        self.session: Session | None = None  # a `vmnet run` in progress


def close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED)
    pid = int.from_bytes(raw[0:4], sys.byteorder)
    return Peer(pid=pid, uid=int.from_bytes(raw[4:8], sys.byteorder),
                gid=int.from_bytes(raw[8:12], sys.byteorder),
                net_admin=has_net_admin(pid, unknown=False))


class Server:
    def __init__(self, listener: socket.socket, doors: Doors, idle: float = IDLE) -> None:
        self.watcher: Watcher | None = None
        self.idle = idle
        self.listener = listener
        self.doors = doors
        self.sel = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.stopping = False
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ, None)

    # -- the loop -----------------------------------------------------------------
    def serve(self) -> None:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        while not self.stopping:
            for key, events in self.sel.select(timeout=self._timeout()):
                if key.data is None:
                    self._accept()
                    continue
                if not isinstance(key.data, Conn):
                    self._guarded(self._watcher().on_events, key.data)
                    continue
                conn: Conn = key.data
                if events & selectors.EVENT_READ and conn.sock.fileno() >= 0:
                    self._read(conn)
                if events & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                    self._flush(conn)
            self._expire()
            if self.watcher is not None:
                self._guarded(self._watcher().tick)
        for conn in list(self.conns.values()):
            self._close(conn)
        if self.watcher is not None:
            self.watcher.close()

    def _watcher(self) -> Watcher:
        assert self.watcher is not None
        return self.watcher

    @staticmethod
    def _guarded(work: Callable[..., None], *args: object) -> None:
        """The watcher's work: a failure is logged, never the end of the daemon."""
        try:
            work(*args)
        except Exception:
            sys.stderr.write("vmnetd: watcher failed (carrying on):\n" + traceback.format_exc())

    def watch(self, watcher: Watcher) -> None:
        """Serve `watcher` too: its event sockets in this loop, its work between requests."""
        self.watcher = watcher

    def register(self, w: Watched) -> None:
        self.sel.register(w.events.fileno(), selectors.EVENT_READ, w)

    def unregister(self, w: Watched) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(w.events.fileno())

    def _timeout(self) -> float:
        due = self.watcher.next_due() if self.watcher is not None else None
        if due is None:
            return 1.0
        return min(1.0, max(0.0, due - time.monotonic()))

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in list(self.conns.values()):
            if conn.session is None and now > conn.deadline:
                self._close(conn)

    # -- connections --------------------------------------------------------------
    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return  # retried on the next wakeup, once a connection closes
                raise
            sock.setblocking(False)
            try:
                peer = peer_of(sock)
            except OSError:
                sock.close()
                continue
            conn = Conn(sock, peer, self.idle)
            # (a `vmnet run` keeps its connection while QEMU runs: user_max_nics bounds those)
            mine = sum(1 for c in self.conns.values()
                       if c.peer.uid == peer.uid and c.session is None)
            users = sum(1 for c in self.conns.values() if not c.peer.root)
            # (root is never shut out by users' connections: only by the fd limit)
            if not peer.root and (users >= MAX_CONNECTIONS or mine >= PER_USER):
                self._refuse(conn, f"too many connections (vmnetd serves {PER_USER} at once "
                                   f"per user, {MAX_CONNECTIONS} in all); try again")
                continue
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _refuse(self, conn: Conn, why: str) -> None:
        """One line to a connection that cannot be served, then close it (best effort)."""
        with contextlib.suppress(OSError):
            conn.sock.send(wire.encode({"rc": 2, "out": "", "err": f"vmnetd: error: {why}\n"}))
        self._close(conn)

    def _close(self, conn: Conn) -> None:
        if conn.session is not None:
            session, conn.session = conn.session, None
            self.doors.end_session(session, None)
        close_all(conn.fds)
        conn.fds = []
        fileno = conn.sock.fileno()
        if fileno >= 0:
            self.conns.pop(fileno, None)
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(conn.sock)
        conn.sock.close()

    # -- requests -----------------------------------------------------------------
    def _read(self, conn: Conn) -> None:
        limit = wire.MAX_FRAME if conn.peer.root else MAX_REQUEST
        try:
            data, anc, _flags, _addr = conn.sock.recvmsg(
                65536, socket.CMSG_SPACE(MAX_FDS_IN * 4))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.fds += fds_from(anc)
        if not data:
            self._close(conn)
            return
        if conn.out:  # a client that sends more before taking its reply: drop it
            self._close(conn)
            return
        conn.buf += data
        if conn.need is None and len(conn.buf) >= 4:
            try:
                conn.need = 4 + wire.frame_length(conn.buf[:4], limit)
            except wire.WireError as e:
                self._refuse(conn, f"bad request: {e}")
                return
        if conn.need is not None and len(conn.buf) >= conn.need:
            body, conn.buf = conn.buf[4:conn.need], conn.buf[conn.need:]
            conn.need = None
            fds, conn.fds = conn.fds, []
            self._handle(conn, body, fds)

    def _handle(self, conn: Conn, body: bytes, fds: list[int]) -> None:
        try:
            value = wire.decode(body)
            req = None if conn.session is not None else wire.request(value)
        except wire.WireError as e:
            close_all(fds)
            self._refuse(conn, f"bad request: {e}")
            return
        if conn.session is not None:
            close_all(fds)  # (a session's messages carry none)
            reply, out_fds, done = self.doors.session_event(conn.session, value)
            if done:
                conn.session = None
        else:
            assert req is not None
            reply, out_fds, conn.session = self.doors.serve(conn.peer, req, fds)
        self._reply(conn, reply, out_fds)

    def _reply(self, conn: Conn, reply: dict[str, Plain], fds: list[int]) -> None:
        try:
            data = wire.encode(reply)
        except wire.WireError as e:
            data = wire.encode({"rc": 1, "out": "", "err": f"vmnetd: error: {e}\n"})
        try:
            sent = conn.sock.sendmsg([data], rights(fds))
        except (BlockingIOError, InterruptedError):
            sent = 0  # the fds could not go: the client sees the reply without them
        except OSError:
            sent = -1
        finally:
            close_all(fds)
        if sent < 0:
            self._close(conn)
            return
        conn.out = data[sent:]
        conn.deadline = time.monotonic() + self.idle
        if conn.out:
            self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        elif conn.session is None:
            self._close(conn)  # one request per connection (a `run` keeps its own)

    def _flush(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            if conn.session is None:
                self._close(conn)
            else:
                self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
