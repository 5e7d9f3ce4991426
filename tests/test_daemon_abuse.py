"""vmnetd under abuse: a real daemon in a throwaway namespace, peers that are numeric
uids nobody has (setpriv, never added to the host) speaking raw sockets.

Each abuse gets a clear one-line refusal or is dropped, changes nothing (the
namespace's links and addresses and the state directory are compared before and
after) and stalls nobody: after each one (and while the slow ones are still
pending) root's `vmnet up` through the daemon still succeeds at once, and so does
its `down`.  The daemon stays up, logs no traceback, and holds no fd more than
before once the abusers are gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests.daemon import Vmnetd
from tests.nsutil import Netns, netns
from tests.vmnetcli import host_snapshot, vmnet
from vmnet.daemon import server, wire

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a namespace, a root daemon"),
]

UID_A, UID_B = 24101, 24102  # numeric uids nobody has: never added to the host
TIMEOUT = 1.0  # vmnetd --client-timeout in these tests
PROBE_LIMIT = 3.0  # seconds root's `up` may take after an abuse (it takes ~50 ms)
CONFIG = f"""
[networks.lab]
bridge = "vmlab0"
allow_users = [{UID_A}, {UID_B}]
"""
TOO_MANY = (f"vmnetd: error: too many connections (vmnetd serves {server.PER_USER} at once "
            f"per user, {server.MAX_CONNECTIONS} in all); try again\n")

# What the peers run (python -I -c PEER COMMAND SOCKET ARGS...): raw sockets only, each
# step reported as one JSON line on stdout.  The bytes to send come as a line of hex on
# stdin (an argument holds 128 KiB at most).
PEER = r'''
import json, os, random, socket, sys, time

def say(**kw):
    print(json.dumps(kw), flush=True)

def conn(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s

def drain(s, wait):
    """All the daemon sends until it closes ("eof"), or until `wait` s pass ("open")."""
    s.settimeout(wait)
    buf, how = b"", "eof"
    try:
        while True:
            got = s.recv(1 << 20)
            if not got:
                break
            buf += got
    except TimeoutError:
        how = "open"
    except ConnectionResetError:
        how = "reset"
    return buf, how

def send(s, data, nfds=0):
    """`data`, with NFDS fds: our namespace's, then pipes."""
    fds = [os.open("/proc/self/ns/net", os.O_RDONLY)] if nfds else []
    while len(fds) < nfds:
        r, w = os.pipe()
        os.close(w)
        fds.append(r)
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
            b"".join(f.to_bytes(4, sys.byteorder) for f in fds))] if fds else []
    try:
        sent = s.sendmsg([data], anc)
        s.sendall(data[sent:])
    except (BrokenPipeError, ConnectionResetError):
        pass
    for f in fds:
        os.close(f)

cmd, path, args = sys.argv[1], sys.argv[2], sys.argv[3:]
data = bytes.fromhex(sys.stdin.readline())
if cmd == "send":  # NFDS WAIT: one message (NFDS fds with it), then read to the end
    nfds, wait = int(args[0]), float(args[1])
    s = conn(path)
    t = time.monotonic()
    send(s, data, nfds)
    say(sent=True)
    buf, how = drain(s, wait)
    say(reply=buf.hex(), how=how, took=time.monotonic() - t)
elif cmd == "dribble":  # INTERVAL WAIT: a byte every INTERVAL s
    interval, wait = float(args[0]), float(args[1])
    s = conn(path)
    t = time.monotonic()
    say(sent=True)
    n = 0
    try:
        while n < len(data) and time.monotonic() - t < wait:
            s.send(data[n:n + 1])
            n += 1
            time.sleep(interval)
    except (BrokenPipeError, ConnectionResetError):
        pass
    buf, how = drain(s, max(0.1, wait - (time.monotonic() - t)))
    say(reply=buf.hex(), how=how, took=time.monotonic() - t, bytes=n, of=len(data))
elif cmd == "noread":  # SLEEP: send, read nothing for SLEEP s, then read to the end
    nap = float(args[0])
    s = conn(path)
    send(s, data)
    say(sent=True)
    time.sleep(nap)
    buf, how = drain(s, 3.0)
    say(reply=buf.hex(), how=how)
elif cmd == "hold":  # N: hold N silent connections, one more; on a line of stdin close
    n = int(args[0])  # them, then send the bytes
    held = [conn(path) for _ in range(n)]
    t = time.monotonic()
    buf, how = drain(conn(path), 3.0)
    say(extra=buf.hex(), how=how, took=time.monotonic() - t)
    sys.stdin.readline()
    t = time.monotonic()
    late = [drain(h, 0.01)[1] for h in held]
    for h in held:
        h.close()
    tries = 0
    while True:  # the daemon sees the closes at its next wakeup
        tries += 1
        s = conn(path)
        send(s, data)
        buf, how = drain(s, 3.0)
        if b"too many connections" not in buf or time.monotonic() - t > 3:
            break
        time.sleep(0.05)
    say(late=late, after=buf.hex(), how=how, tries=tries)
elif cmd == "flood":  # SECONDS SEED: connect in a loop, send garbage, hold some
    seconds, rnd = float(args[0]), random.Random(int(args[1]))
    stats = dict(connects=0, refused=0, bad=0, silent=0, dropped=0, other=0, failed=0)

    def count(got):
        if got is None:
            stats["silent"] += 1  # not answered (yet): held, or not accepted yet
        elif b"too many connections" in got:
            stats["refused"] += 1
        elif b"bad request" in got:
            stats["bad"] += 1
        elif not got:
            stats["dropped"] += 1  # closed without a word: a half frame, timed out
        else:
            stats["other"] += 1

    def evict(s):
        s.setblocking(False)
        try:
            got = s.recv(65536)
        except BlockingIOError:
            got = None
        except OSError:
            got = b""
        count(got)
        s.close()

    held = []
    say(flooding=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
        except OSError:
            stats["failed"] += 1
            s.close()
            continue
        stats["connects"] += 1
        kind = rnd.randrange(6)
        junk = rnd.randbytes(rnd.randrange(1, 64))
        try:
            if kind == 0:    # a frame of garbage, and wait for the answer
                s.send(len(junk).to_bytes(4, "big") + b"\xff" + junk)
                got, _how = drain(s, 5.0)
                count(got)
                s.close()
                continue
            if kind == 1:    # half a frame: held until the daemon drops it
                s.send((1000).to_bytes(4, "big") + junk)
            elif kind == 2:  # a huge length
                s.send(rnd.randrange(1 << 17, 1 << 32).to_bytes(4, "big"))
            elif kind == 3:  # bytes without a frame
                s.send(junk)
            elif kind == 4:  # connect and go
                s.close()
                continue
            # kind 5: nothing at all
        except OSError:
            pass
        held.append(s)
        if len(held) > 40:
            evict(held.pop(0))
    for s in held:
        evict(s)
    say(**stats)
'''


def setpriv(uid: int) -> list[str]:
    return ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups"]


def frame(value: Any) -> bytes:
    return wire.encode(value)


def head(n: int) -> bytes:
    return n.to_bytes(4, "big")


def request(argv: list[str], **fields: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"v": wire.VERSION, "door": "vmnet", "argv": argv, "env": {},
                             "cwd": "/", "stdin": None, "extra": {}}
    value.update(fields)
    return value


def reply_of(data: bytes) -> dict[str, Any] | None:
    """The one reply frame `data` is (None for no bytes at all); fails on anything else."""
    if not data:
        return None
    n = wire.frame_length(data[:4])
    assert len(data) == 4 + n, f"reply of {len(data)} bytes, its head says {4 + n}"
    value = wire.decode(data[4:])
    assert isinstance(value, dict)
    return value


class Lab:
    """A namespace, vmnetd in it (--client-timeout `timeout`), a state directory every uid
    can reach, the config; the peers started, to be killed (by pid) at the end."""

    def __init__(self, ns: Netns, sd: str, cfg: str, daemon: Vmnetd, timeout: float) -> None:
        self.ns = ns
        self.sd = sd
        self.cfg = cfg
        self.daemon = daemon
        self.timeout = timeout
        self.sock = os.path.join(sd, "vmnetd.sock")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.evil = ["--state-dir", sd, "up", "evil", "--bridge", "vmlab0"]
        self.baseline: Counter[str] = Counter()

    # -- what the kernel and the state directory show ---------------------------
    def snapshot(self) -> dict[str, Any]:
        return host_snapshot(self.ns, self.sd)

    def held(self) -> Counter[str]:
        """What the daemon's fds are: "socket" (its listening socket, its connections),
        "net" (a namespace), else the fd's link ("pipe:[INODE]", a path...); less the
        namespace fd and netlink socket its watcher holds while the namespace has records
        (they come and go with the VMs)."""
        pid = self.daemon.pid
        with open(f"/proc/{pid}/net/netlink") as f:
            netlink = {line.split()[-1] for line in list(f)[1:]}
        out: Counter[str] = Counter()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                what = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue
            if what.startswith("socket:["):
                what = "netlink" if what[8:-1] in netlink else "socket"
            elif what.startswith("net:["):
                what = "net"
            out[what] += 1
        watched = min(out["netlink"], max(out["net"] - 1, 0))  # (its home namespace: 1)
        out["netlink"] -= watched
        out["net"] -= watched
        return +out

    def connections(self) -> int:
        """Client connections the daemon holds (its listening socket aside)."""
        return self.held()["socket"] - 1

    def settled(self, within: float | None = None) -> None:
        """The daemon is up and holds what it held at the start: every connection, and
        every fd a peer sent, closed."""
        deadline = time.monotonic() + (within if within is not None else self.timeout + 3)
        while self.held() != self.baseline and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.daemon.proc.poll() is None, "vmnetd died"
        assert self.held() == self.baseline

    # -- clients ----------------------------------------------------------------
    def cli(self, *args: str, uid: int | None = None,
            cwd: str | bytes | None = None) -> subprocess.CompletedProcess[str]:
        """`vmnet ARGS` in the namespace: root's with the lab's config (root sends its
        namespace: the daemon works there), a uid's as the brief's user would type it."""
        inside = ["ip", "netns", "exec", self.ns.name]
        if uid is None:
            return vmnet(None, self.sd, *args, config=self.cfg, prefix=inside, timeout=60)
        return subprocess.run([*inside, *setpriv(uid), sys.executable, "-m", "vmnet",
                               "--state-dir", self.sd, *args], text=True,
                              capture_output=True, timeout=60, cwd=cwd)

    def probe(self) -> float:
        """Root's `up vmX` through the daemon, at once; then its `down`.  The time up took."""
        bridge_was = "vmlab0" in self.ns.links()  # a user's VM may hold it
        t = time.monotonic()
        up = self.cli("up", "vmX", "--bridge", "vmlab0")
        took = time.monotonic() - t
        assert up.returncode == 0, up.stdout + up.stderr
        assert up.stdout.startswith("vmX: tap vmX-0 on bridge vmlab0"), up.stdout
        link = self.ns.link("vmX-0")
        assert link is not None and link.get("master") == "vmlab0", link
        down = self.cli("down", "vmX")
        assert down.returncode == 0, down.stdout + down.stderr
        links = self.ns.links()
        assert "vmX-0" not in links and ("vmlab0" in links) == bridge_was, list(links)
        assert took < PROBE_LIMIT, f"root's up took {took:.2f} s"
        return took

    def peer(self, uid: int, *args: object, data: bytes = b"") -> subprocess.Popen[bytes]:
        """PEER as `uid` (0: root, no setpriv) in the namespace, `data` its bytes to send;
        unbuffered pipes."""
        who = setpriv(uid) if uid else []
        p = subprocess.Popen(["ip", "netns", "exec", self.ns.name, *who, sys.executable,
                              "-I", "-c", PEER, str(args[0]), self.sock,
                              *map(str, args[1:])],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, bufsize=0)
        self.procs.append(p)
        assert p.stdin is not None
        p.stdin.write(data.hex().encode() + b"\n")
        return p

    def peer_run(self, uid: int, *args: object, data: bytes = b"",
                 timeout: float = 30) -> list[dict[str, Any]]:
        p = self.peer(uid, *args, data=data)
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err.decode()
        return [json.loads(line) for line in out.decode().splitlines()]

    def reap(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.communicate(timeout=10)


def said(p: subprocess.Popen[bytes], timeout: float = 10) -> dict[str, Any]:
    """The next JSON line a peer prints."""
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], timeout)
    assert ready, f"peer {p.pid} said nothing within {timeout} s"
    line = p.stdout.readline()
    err = p.stderr.read().decode() if p.stderr and not line else ""
    assert line, f"peer {p.pid} exited ({p.wait()}): {err}"
    return dict(json.loads(line))


def finish(p: subprocess.Popen[bytes], timeout: float = 15) -> dict[str, Any]:
    """A peer's last line, once it exits (0)."""
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err.decode()
    return dict(json.loads(out.decode().splitlines()[-1]))


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    timeout = float(getattr(request, "param", TIMEOUT))
    sd = tempfile.mkdtemp(dir="/tmp", prefix="vmnetd-abuse-")
    fd, cfg = tempfile.mkstemp(dir="/tmp", prefix="vmnetd-abuse-", suffix=".toml")
    try:
        os.chmod(sd, 0o711)  # the socket must be reachable by the uids
        with os.fdopen(fd, "w") as f:
            f.write(CONFIG)
        os.chmod(cfg, 0o644)
        argv = [sys.executable, "-m", "vmnet.daemon.main", "--foreground", "--state-dir", sd,
                "--config", cfg, "--client-timeout", str(timeout)]
        with netns("vmab") as ns:
            d = Vmnetd(sd, ns=ns, argv=argv)
            lab = Lab(ns, sd, cfg, d, timeout)
            try:
                lab.probe()  # the lab works, and whatever a first request opens is open
                lab.baseline = lab.held()
                yield lab
            finally:
                lab.reap()
                log = stop(d)
            assert "Traceback" not in log, log
            assert not os.path.exists(lab.sock), "vmnetd did not stop cleanly"
    finally:
        shutil.rmtree(sd, ignore_errors=True)
        os.unlink(cfg)


def stop(d: Vmnetd) -> str:
    """SIGTERM, and a connection to wake its loop at once (it selects with a 1 s
    timeout); then the harness' own stop, which kills it if need be.  Its log."""
    if d.proc.poll() is None:
        os.kill(d.pid, signal.SIGTERM)
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(d.socket)
    return d.stop()


def unchanged_and_serving(lab: Lab, before: dict[str, Any]) -> None:
    """Nothing changed; root is served at once; the daemon holds nothing more."""
    assert lab.snapshot() == before
    lab.probe()
    assert lab.snapshot() == before
    lab.settled()


def refused(lab: Lab, uid: int, data: bytes, nfds: int = 0,
            closed: tuple[str, ...] = ("eof",)) -> dict[str, Any]:
    """Send `data` as `uid`; the daemon's reply, which must come at once and close (a
    close with bytes of ours still unread there is a reset, after the reply)."""
    sent, got = lab.peer_run(uid, "send", nfds, 5.0, data=data)
    assert sent == {"sent": True}
    assert got["how"] in closed, got  # the daemon closed the connection...
    assert got["took"] < lab.timeout * 0.8, got  # ...at once, not at its timeout
    reply = reply_of(bytes.fromhex(got["reply"]))
    assert reply is not None, "dropped without a word"
    return reply


# -- the control: the request the abuses carry works when well-formed --------------
def test_control_the_evil_request_is_served_when_well_formed(lab: Lab) -> None:
    """The abuses below wrap `up evil --bridge vmlab0` from uid A, which the config
    allows: refused, it is for the abuse; served, it makes evil-0 (so `unchanged` is a
    real check)."""
    _sent, got = lab.peer_run(UID_A, "send", 0, 5.0, data=frame(request(lab.evil)))
    reply = reply_of(bytes.fromhex(got["reply"]))
    assert reply is not None and reply["rc"] == 0, reply
    link = lab.ns.link("evil-0")
    assert link is not None and link["linkinfo"]["info_data"]["user"] == UID_A
    down = lab.cli("down", "evil", uid=UID_A)
    assert down.returncode == 0, down.stderr
    assert "evil-0" not in lab.ns.links()


# -- malformed frames --------------------------------------------------------------
def _body(value: Any) -> bytes:
    return frame(value)[4:]


@pytest.mark.parametrize("make, message", [
    pytest.param(lambda ok: b"\xff", "bad request: unknown tag b'\\xff'", id="unknown-tag"),
    pytest.param(lambda ok: ok + b"n", "bad request: 1 stray bytes after the message",
                 id="stray-byte"),
    pytest.param(lambda ok: ok[:-4] + b"\xff\xff\xff\xff",  # extra: 4G pairs
                 "bad request: a length runs past the message", id="length-past-end"),
    pytest.param(lambda ok: b"d" + (2).to_bytes(4, "big") + 2 * (_body("v") + _body(1)),
                 "bad request: key 'v' given twice", id="duplicate-key"),
    pytest.param(lambda ok: b"l\x00\x00\x00\x01" * 7 + b"n",
                 "bad request: message nested too deeply", id="too-deep"),
    pytest.param(lambda ok: _body(["up", "evil"]), "bad request: a request is a table",
                 id="not-a-table"),
    pytest.param(lambda ok: b"", "bad request: message cut short", id="empty-body"),
])
def test_malformed_frame_is_refused(lab: Lab, make: Any, message: str) -> None:
    before = lab.snapshot()
    body = make(_body(request(lab.evil)))
    reply = refused(lab, UID_A, head(len(body)) + body)
    assert reply == {"rc": 2, "out": "", "err": f"vmnetd: error: {message}\n"}
    unchanged_and_serving(lab, before)


def test_a_name_that_is_not_utf8_is_refused_by_name(lab: Lab) -> None:
    """Bytes that are not UTF-8 travel (as Python's surrogate escapes): the VM name is
    then refused for what it is, in the CLI's own words."""
    before = lab.snapshot()
    body = _body(request(lab.evil)).replace(b"evil", b"ev\xffl")
    reply = refused(lab, UID_A, head(len(body)) + body)
    assert reply["rc"] == 2 and str(reply["err"]).startswith(
        "vmnet: error: VM name: 'ev\\udcffl' contains"), reply
    unchanged_and_serving(lab, before)


# -- sizes -------------------------------------------------------------------------
@pytest.mark.parametrize("announced", [server.MAX_REQUEST + 1, wire.MAX_FRAME, 0xFFFFFFFF],
                         ids=["64KiB+1", "8MiB", "4GiB-1"])
def test_oversized_request_from_a_user_is_refused(lab: Lab, announced: int) -> None:
    """Refused on its head alone, whatever follows (here: 64 KiB + 1 of a real request)."""
    before = lab.snapshot()
    body = _padded(request(lab.evil), server.MAX_REQUEST + 1)
    reply = refused(lab, UID_A, head(announced) + body, closed=("eof", "reset"))
    assert reply == {"rc": 2, "out": "", "err": f"vmnetd: error: bad request: message of "
                     f"{announced} bytes is over the {server.MAX_REQUEST} limit\n"}
    unchanged_and_serving(lab, before)


def _padded(value: dict[str, Any], size: int) -> bytes:
    """The body of `value` with stdin padding it to exactly `size` bytes."""
    base = len(_body({**value, "stdin": b""}))
    out = _body({**value, "stdin": b"x" * (size - base)})
    assert len(out) == size
    return out


def test_the_size_limit_is_a_users_and_exact(lab: Lab) -> None:
    """A user's request of exactly 64 KiB is served; root's of 64 KiB + 1 too."""
    status = request(["--state-dir", lab.sd, "--config", lab.cfg, "status"])
    at_limit = _padded(status, server.MAX_REQUEST)
    _sent, got = lab.peer_run(UID_A, "send", 0, 5.0, data=head(len(at_limit)) + at_limit)
    reply = reply_of(bytes.fromhex(got["reply"]))
    assert reply is not None and reply["rc"] == 0 and reply["err"] == "", reply
    over = _padded(status, server.MAX_REQUEST + 1)
    _sent, got = lab.peer_run(0, "send", 0, 5.0, data=head(len(over)) + over)
    reply = reply_of(bytes.fromhex(got["reply"]))
    assert reply is not None and reply["rc"] == 0 and reply["err"] == "", reply


# -- what a request names ----------------------------------------------------------
@pytest.mark.parametrize("door", ["shell", "VMNET", "", None, ["vmnet"]],
                         ids=["shell", "upper-case", "empty", "none", "list"])
def test_unknown_door_is_refused(lab: Lab, door: Any) -> None:
    before = lab.snapshot()
    reply = refused(lab, UID_A, frame(request(lab.evil, door=door)))
    assert reply == {"rc": 2, "out": "", "err": (
        f"vmnetd: error: bad request: unknown operation {door!r} (one of vmnet, ifup, "
        "ifdown, hook, run, helper)\n")}
    unchanged_and_serving(lab, before)


@pytest.mark.parametrize("version", [2, 0, -1, "1", None, 2**63 - 1],
                         ids=["2", "0", "-1", "str-1", "none", "int64-max"])
def test_wrong_protocol_version_is_refused(lab: Lab, version: Any) -> None:
    before = lab.snapshot()
    reply = refused(lab, UID_A, frame(request(lab.evil, v=version)))
    assert reply == {"rc": 2, "out": "", "err": (
        f"vmnetd: error: bad request: request version {version!r}; this vmnetd speaks 1 "
        "(client and daemon from different vmnet installs?)\n")}
    unchanged_and_serving(lab, before)


# -- fds ---------------------------------------------------------------------------
@pytest.mark.parametrize("nfds", [1, 3, 8], ids=["one-fd", "three-fds", "eight-fds"])
def test_fd_from_a_user_is_refused_and_closed(lab: Lab, nfds: int) -> None:
    """A user's request with its namespace fd, and pipes (SCM_RIGHTS): refused before
    anything runs, every fd closed (eight: more than the daemon takes, the rest cut
    off)."""
    before = lab.snapshot()
    reply = refused(lab, UID_A, frame(request(lab.evil)), nfds=nfds)
    assert reply["rc"] == 4, reply
    assert reply["err"] == ("vmnet: error: vmnetd takes a network namespace (one fd) from "
                            "root only (hint: send no fds)\n"), reply
    assert "evil-0" not in lab.ns.links()
    unchanged_and_serving(lab, before)


def test_fds_with_a_malformed_frame_are_closed(lab: Lab) -> None:
    before = lab.snapshot()
    body = b"\x00garbage"
    reply = refused(lab, UID_B, head(len(body)) + body, nfds=2)
    assert reply == {"rc": 2, "out": "", "err": "vmnetd: error: bad request: unknown tag "
                     "b'\\x00'\n"}
    unchanged_and_serving(lab, before)


# -- slow peers --------------------------------------------------------------------
@pytest.mark.parametrize("how", ["half-head", "head-and-half-body", "dribble"])
def test_half_request_is_dropped_after_the_client_timeout(lab: Lab, how: str) -> None:
    """A request that never completes (two bytes of the head; the head and half the body;
    a byte every 0.15 s: the timeout runs from the connection, not the last byte) is
    dropped without a reply after --client-timeout; root is served meanwhile."""
    before = lab.snapshot()
    whole = frame(request(lab.evil))
    if how == "dribble":
        p = lab.peer(UID_A, "dribble", 0.15, lab.timeout + 5, data=whole)
    else:
        part = whole[:2] if how == "half-head" else whole[:4 + (len(whole) - 4) // 2]
        p = lab.peer(UID_A, "send", 0, lab.timeout + 5, data=part)
    assert said(p) == {"sent": True}
    lab.probe()
    assert p.poll() is None, "the half request was over before root was served"
    got = finish(p)
    assert got["reply"] == "" and got["how"] == "eof", got  # dropped, not a word
    assert lab.timeout * 0.9 <= got["took"] <= lab.timeout + 2.5, got
    if how == "dribble":
        assert got["bytes"] < got["of"], got
    unchanged_and_serving(lab, before)


def test_user_that_never_reads_its_reply_holds_nothing(lab: Lab) -> None:
    """A user's reply fits in the socket's buffer: the daemon writes it, closes, and keeps
    nothing of the peer's, though the peer has not read a byte."""
    before = lab.snapshot()
    p = lab.peer(UID_A, "noread", lab.timeout + 0.5,
                 data=frame(request(["--state-dir", lab.sd, "status"])))
    assert said(p) == {"sent": True}
    lab.probe()
    lab.settled(within=0.3)  # it let go long before its timeout
    assert p.poll() is None
    got = finish(p)
    reply = reply_of(bytes.fromhex(got["reply"]))
    assert got["how"] == "eof" and reply is not None and reply["rc"] == 0, got
    unchanged_and_serving(lab, before)


@pytest.mark.parametrize("lab", [4.0], indirect=True, ids=["client-timeout-4s"])
def test_root_that_never_reads_a_large_reply_is_dropped(lab: Lab) -> None:
    """Root may send 8 MiB, so a reply can outgrow the socket's buffer (an unknown option
    of 3 MiB is echoed back): the daemon keeps the rest for IDLE seconds, serves others
    meanwhile, then drops the peer, whose reply stays cut short."""
    before = lab.snapshot()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(lab.sock)
        s.sendall(frame(request(["--state-dir", lab.sd, "--config", lab.cfg, "up",
                                 "--" + "x" * (3 << 20)])))
        t = time.monotonic()
        lab.probe()
        assert lab.connections() == 1  # it still holds the connection
        lab.settled()  # and then drops it
        assert time.monotonic() - t >= lab.timeout * 0.9
        s.settimeout(5)
        got = b""
        while chunk := s.recv(1 << 20):
            got += chunk
    finally:
        s.close()
    announced = wire.frame_length(got[:4])
    assert announced > 3 << 20 and 0 < len(got) - 4 < announced, (announced, len(got))
    unchanged_and_serving(lab, before)


# -- many connections --------------------------------------------------------------
@pytest.mark.parametrize("lab", [5.0], indirect=True, ids=["client-timeout-5s"])
def test_connections_over_per_user_are_refused(lab: Lab) -> None:
    """Uid A holds PER_USER silent connections; its next one gets "too many connections"
    at once.  Meanwhile root, uid B, are served (uid A's own CLI is refused clearly);
    once A lets go, A is served again."""
    before = lab.snapshot()
    status = frame(request(["--state-dir", lab.sd, "status"]))
    p = lab.peer(UID_A, "hold", server.PER_USER, data=status)
    extra = said(p)
    assert extra["how"] == "eof" and extra["took"] < 1.0, extra
    assert reply_of(bytes.fromhex(extra["extra"])) == {"rc": 2, "out": "", "err": TOO_MANY}
    assert lab.connections() == server.PER_USER
    lab.probe()
    b = lab.cli("status", uid=UID_B)
    assert b.returncode == 0, b.stderr
    a = lab.cli("status", uid=UID_A)  # refused, if not always in these words (see below)
    assert a.returncode != 0 and a.stdout == "", a
    assert a.stderr in (TOO_MANY, LOST), a
    assert lab.connections() == server.PER_USER  # all held throughout
    assert p.stdin is not None
    p.stdin.write(b"go\n")
    got = finish(p)
    assert got["late"] == ["open"] * server.PER_USER  # none was dropped early
    again = reply_of(bytes.fromhex(got["after"]))
    assert again is not None and again["rc"] == 0 and again["err"] == "", got
    unchanged_and_serving(lab, before)


LOST = ("vmnet: error: vmnetd closed the connection while the request was sent (it "
        "refused it, or went away) (hint: see vmnetd's log; `vmnet status` shows what is "
        "up)\n")
# `vmnet status` as a user whose client is slow to send (as a loaded machine makes it):
# the daemon has refused the connection by the time the request goes out.
LATE_CLIENT = r'''
import sys, time
from vmnet.daemon import client
connect = client.connect
def late(state_dir):
    s = connect(state_dir)
    time.sleep(0.3)  # the daemon accepts, refuses and closes meanwhile
    return s
client.connect = late
sys.argv = ["vmnet", "--state-dir", sys.argv[1], "status"]
client.main()
'''


@pytest.mark.parametrize("lab", [5.0], indirect=True, ids=["client-timeout-5s"])
def test_a_refused_user_reads_why_even_when_its_request_went_out_late(lab: Lab) -> None:
    p = lab.peer(UID_A, "hold", server.PER_USER,
                 data=frame(request(["--state-dir", lab.sd, "status"])))
    assert said(p)["how"] == "eof"
    try:
        r = subprocess.run(["ip", "netns", "exec", lab.ns.name, *setpriv(UID_A),
                            sys.executable, "-c", LATE_CLIENT, lab.sd],
                           text=True, capture_output=True, timeout=30)
        assert (r.returncode, r.stdout, r.stderr) == (2, "", TOO_MANY)
    finally:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        finish(p)


FLOOD_SECONDS = 3.0
FLOODERS = 2


def test_flood_from_one_user_does_not_starve_another(lab: Lab) -> None:
    """Uid B connects in a loop from two processes (garbage, half frames, huge lengths,
    silence; holding up to 40 each); uid A's `vmnet up avm` is served within a few
    seconds all the same, and root's probe too.  B's flood really hit the daemon: its
    garbage got "bad request", its excess "too many connections"."""
    before = lab.snapshot()
    floods = [lab.peer(UID_B, "flood", FLOOD_SECONDS, seed) for seed in range(FLOODERS)]
    for f in floods:
        assert said(f) == {"flooding": True}
    time.sleep(0.3)  # in full swing
    t = time.monotonic()
    up = lab.cli("up", "avm", "--bridge", "vmlab0", uid=UID_A)
    took = time.monotonic() - t
    assert up.returncode == 0, up.stdout + up.stderr
    assert took < 3.0, f"uid A's up took {took:.2f} s under the flood"
    link = lab.ns.link("avm-0")
    assert link is not None and link.get("master") == "vmlab0"
    assert link["linkinfo"]["info_data"]["user"] == UID_A
    lab.probe()
    assert all(f.poll() is None for f in floods), "the flood was over too soon"
    down = lab.cli("down", "avm", uid=UID_A)
    assert down.returncode == 0, down.stdout + down.stderr
    stats = [finish(f) for f in floods]
    total = {k: sum(s[k] for s in stats) for k in stats[0]}
    assert total["connects"] >= 200, total
    assert total["refused"] > 0 and total["bad"] > 0, total
    assert total["other"] == 0, total  # nothing but those two lines
    unchanged_and_serving(lab, before)


# -- a working directory whose name is not UTF-8 ----------------------------------------
def test_user_in_a_non_utf8_directory_is_served(lab: Lab) -> None:
    top = tempfile.mkdtemp(dir="/tmp", prefix="vmnetd-abuse-cwd-")
    try:
        os.chmod(top, 0o755)
        odd = os.path.join(os.fsencode(top), b"caf\xe9")
        os.mkdir(odd, 0o755)
        up = lab.cli("up", "avm", "--bridge", "vmlab0", uid=UID_A, cwd=odd)
        assert up.returncode == 0, up.stdout + up.stderr
    finally:
        lab.cli("down", "avm", uid=UID_A)
        shutil.rmtree(top, ignore_errors=True)
