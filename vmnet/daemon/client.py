"""The client side of vmnetd: every door (`vmnet`, the QEMU scripts, the libvirt
hook, `vmnet run`, vmnet-bridge-helper) asks the daemon first.

`connect` answers None only when no daemon takes the connection (no socket, or
nobody listening on it): the door then runs the operation in-process, as root
must.  Once a request is sent it is never sent again and never run in-process
too: a daemon that dies before replying gives one clear line (errors.DaemonLost), and
`vmnet status` tells what was done.

Import-light: _socket, posix and sys, all built in (socket.py would import enum and
selectors; os costs a millisecond, most of a client's budget, for os.environ).
"""

# No `from __future__ import annotations` here: importing __future__ costs a door that
# vmnetd serves ~0.2 ms; annotations naming TYPE_CHECKING-only types are strings.

import _socket
import posix
import sys

from vmnet.consts import DEFAULT_STATE_DIR, STATE_DIR_ENV
from vmnet.daemon import wire

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import NoReturn

    from vmnet.daemon.wire import Plain

SOCKET_NAME = "vmnetd.sock"
REPLY_TIMEOUT = 900.0  # seconds a client waits for a word from vmnetd (a bulk run is slow)
MAX_FDS = 253  # fds one message may carry (the kernel's SCM_MAX_FD): taps' and vhost queues
# Connect failures that mean "no daemon here": the door runs in-process.
_ABSENT = (FileNotFoundError, ConnectionRefusedError, NotADirectoryError)


def _lost(message: str, hint: str | None = None) -> Exception:
    """vmnet.errors.DaemonLost (imported only when it happens: the client path imports
    no more than it must)."""
    from vmnet.errors import DaemonLost

    return DaemonLost(message, hint=hint)


def environ() -> dict[str, str]:
    """The process environment, as os.environ has it, without importing os."""
    return {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
            for k, v in posix.environ.items()}


def socket_path(state_dir: str) -> str:
    return f"{state_dir.rstrip('/') or '/'}/{SOCKET_NAME}".replace("//", "/")


def connect(state_dir: str) -> _socket.socket | None:
    """A connection to the daemon serving `state_dir`, None if none serves it."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.connect(socket_path(state_dir))
    except _ABSENT:
        s.close()
        return None
    except PermissionError:
        # A socket we may not use (a directory closed to us): no daemon for us.
        s.close()
        return None
    except OSError:
        s.close()
        raise
    return s


def wait_listening(state_dir: str, timeout: float,
                   alive: "Callable[[], bool] | None" = None) -> bool:
    """True once a daemon takes connections on `state_dir`'s socket; False after
    `timeout` seconds, or as soon as `alive()` says the daemon being waited for died
    (for whoever starts one: scripts, the bench, the tests)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        try:
            s = connect(state_dir)
        except OSError:
            s = None
        if s is not None:
            s.close()
            return True
        time.sleep(0.02)
    return False


def send(s: _socket.socket, value: "Plain", fds: "Sequence[int]" = ()) -> None:
    data = wire.encode(value)
    sent = s.sendmsg([data], rights(fds))
    if sent < len(data):
        s.sendall(data[sent:])


def receive(s: _socket.socket, *, what: str = "request",
            timeout: float = REPLY_TIMEOUT) -> "tuple[dict[str, Plain], list[int]]":
    """One reply and the fds that came with it; DaemonLost on EOF before it is whole, or
    when a hung daemon says nothing for `timeout` seconds."""
    fds: list[int] = []
    buf = b""
    need = 4
    head = True
    space = _socket.CMSG_SPACE(MAX_FDS * 4)
    s.settimeout(timeout)
    while True:
        try:
            data, anc, _flags, _addr = s.recvmsg(65536, space)
        except ConnectionResetError:
            data, anc = b"", []
        except TimeoutError:
            for fd in fds:
                posix.close(fd)
            raise _lost(f"vmnetd took the {what} and said nothing for {timeout:g} s (is it "
                        "hung?); it may or may not have been carried out",
                        hint="`vmnet status` shows what is up; stop vmnetd to work "
                             "without it") from None
        fds += fds_from(anc)
        if not data:
            for fd in fds:
                posix.close(fd)
            raise _lost(
                f"vmnetd closed the connection before it answered this {what} (was it "
                "stopped or killed?); it may or may not have been carried out",
                hint="`vmnet status` shows what is up; run the command again once vmnetd "
                     "is back, or stop it to work without it")
        buf += data
        while len(buf) >= need:
            if head:
                need = 4 + wire.frame_length(buf[:4])
                head = False
                continue
            value = wire.decode(buf[4:need])
            if not isinstance(value, dict):
                raise _lost("vmnetd sent a reply that is not a table")
            return value, fds


def fds_from(anc: list[tuple[int, int, bytes]]) -> list[int]:
    """The fds that came with a message (SCM_RIGHTS ancillary data)."""
    out: list[int] = []
    for level, kind, raw in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            n = len(raw) - len(raw) % 4
            out += [int.from_bytes(raw[i:i + 4], sys.byteorder) for i in range(0, n, 4)]
    return out


def rights(fds: "Sequence[int]") -> list[tuple[int, int, bytes]]:
    """Ancillary data that sends `fds` (none: no ancillary data)."""
    if not fds:
        return []
    return [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
             b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds))]


def state_dir_of(argv: "Sequence[str]", env: "Mapping[str, str]") -> str:
    """The state directory a `vmnet` command line names (its socket is the daemon's)."""
    found = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            break
        if a == "--state-dir" and i + 1 < len(argv):
            found = argv[i + 1]
            i += 1
        elif a.startswith("--state-dir="):
            found = a[len("--state-dir="):]
        i += 1
    return found or env.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR


# What of root's environment a door reads (every VMNET_* too): the rest stays home, so a
# request is not a hundred strings to encode and decode.
_ENV_SENT = frozenset({"PATH", "SUDO_USER", "SUDO_UID", "SUDO_GID"})


def request(door: str, argv: "Sequence[str]", env: "Mapping[str, str]", *,
            stdin: bytes | None = None, extra: "dict[str, Plain] | None" = None) -> "Plain":
    """A request as the wire carries it.  What of root's environment the doors read goes
    along (the daemon acts for root as root would in-process); a user's stays home: the
    daemon ignores it."""
    try:
        cwd = posix.getcwd()
    except OSError:
        cwd = "/"
    sent_env: dict[str, Plain] = {k: v for k, v in env.items() if k in _ENV_SENT or
                                  k.startswith("VMNET_")} if as_root() else {}
    args: list[Plain] = list(argv)
    return {"v": wire.VERSION, "door": door, "argv": args, "env": sent_env, "cwd": cwd,
            "stdin": stdin, "extra": extra or {}}


_ROOT: bool | None = None
_CAP_NET_ADMIN = 12  # (vmnet.kernel.netns.CAP_NET_ADMIN; that module imports os)


def as_root() -> bool:
    """Whether the daemon will take us for root: uid 0 with CAP_NET_ADMIN (as
    vmnet.daemon.policy.Peer.root; read here without importing os)."""
    global _ROOT
    if _ROOT is None:
        _ROOT = False
        if posix.geteuid() == 0:
            try:
                fd = posix.open("/proc/self/status", posix.O_RDONLY | posix.O_CLOEXEC)
                try:
                    data = posix.read(fd, 8192)
                finally:
                    posix.close(fd)
                i = data.index(b"CapEff:")
                caps = int(data[i + 7:data.index(b"\n", i)].strip(), 16)
                _ROOT = bool(caps >> _CAP_NET_ADMIN & 1)
            except (OSError, ValueError):
                _ROOT = True  # cannot tell: the daemon decides
    return _ROOT


def own_netns() -> list[int]:
    """Root sends its network namespace: the daemon works there for the request."""
    if not as_root():
        return []
    try:
        return [posix.open("/proc/self/ns/net", posix.O_RDONLY | posix.O_CLOEXEC)]
    except OSError:
        return []


def call(state_dir: str, door: str, argv: "Sequence[str]", env: "Mapping[str, str]", *,
         stdin: bytes | None = None,
         extra: "dict[str, Plain] | None" = None) -> "tuple[dict[str, Plain], list[int]] | None":
    """Send one request; its reply and fds, or None when no daemon serves `state_dir`."""
    s = connect(state_dir)
    if s is None:
        return None
    try:
        fds = own_netns()
        try:
            send(s, request(door, argv, env, stdin=stdin, extra=extra), fds)
        except (BrokenPipeError, ConnectionResetError):
            # It may have refused us before reading (too many connections): say why.
            try:
                return receive(s)
            except Exception:
                pass
            raise _lost("vmnetd closed the connection while the request was sent (it "
                        "refused it, or went away)",
                        hint="see vmnetd's log; `vmnet status` shows what is up") from None
        finally:
            for fd in fds:
                posix.close(fd)
        return receive(s)
    finally:
        s.close()


def print_reply(reply: "Mapping[str, Plain]") -> int:
    """Write the reply's output as the door would have, and return its exit status."""
    for key, stream in (("out", sys.stdout), ("err", sys.stderr)):
        text = reply.get(key)
        if isinstance(text, str) and text:
            stream.write(text)
            stream.flush()
    rc = reply.get("rc")
    return rc if isinstance(rc, int) and not isinstance(rc, bool) else 1


def exit_served(rc: int) -> "NoReturn":
    """End a door's process once vmnetd has served it and its reply is printed: output
    flushed, then posix._exit, which skips the interpreter's teardown (freeing every
    object and module: over a millisecond, more than the rest of the client costs).
    Nothing here needs it: the connection and the fds are closed, nothing is registered
    with atexit, and no file of ours is open for writing.  (A door that ran in-process
    ends the usual way.)"""
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - contextlib costs an import on this path
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: the status still tells
            pass
    posix._exit(rc & 0xFF)


# -- `vmnet`: which command lines the daemon serves -----------------------------------
SERVED = frozenset({"up", "down", "status", "list", "gc", "qemu-args", "ip", "network"})
_VALUED = frozenset({"--netns", "--state-dir", "--config", "--lock-timeout"})


def command_word(argv: "Sequence[str]") -> str | None:
    """The command a `vmnet` command line runs (None for help, version or nothing)."""
    i = 0
    word = None
    while i < len(argv):
        a = argv[i]
        if a == "--":
            break
        if a in ("-h", "--help", "--version"):
            return None
        if a in _VALUED:
            i += 2
            continue
        if word is None and not a.startswith("-"):
            word = a
        i += 1
    return word


def vmnet_main(argv: list[str], env: "Mapping[str, str]") -> int | None:
    """`vmnet ARGV` through the daemon: its exit status, None to run it in-process."""
    word = command_word(argv)
    if word == "run":
        from vmnet.integrations.qemu.run import run_through_daemon

        return run_through_daemon(argv, env)
    if word not in SERVED:
        return None
    if word == "ip":
        return _ip_waiting(argv, env)
    reply = _ask(argv, argv, env)
    return None if reply is None else print_reply(reply)


def _ask(argv: list[str], request: list[str], env: "Mapping[str, str]"
         ) -> "Mapping[str, Plain] | None":
    """The daemon's reply to `vmnet REQUEST` (None: no daemon serves argv's state dir)."""
    got = call(state_dir_of(argv, env), "vmnet", request, env)
    if got is None:
        return None
    reply, fds = got
    for fd in fds:
        posix.close(fd)
    return reply


def _ip_waiting(argv: list[str], env: "Mapping[str, str]") -> int | None:
    """`vmnet ip VM --wait S` through vmnetd: the waiting is done here, asking the daemon
    `--wait 0` (one look at the lease) every 50 ms, so no request holds its one thread."""
    import time

    wait, rest = None, list(argv)
    for i, a in enumerate(argv):
        if a == "--":
            break
        if a == "--wait" and i + 1 < len(argv):
            wait, rest = argv[i + 1], [*argv[:i], "--wait", "0", *argv[i + 2:]]
            break
        if a.startswith("--wait="):
            wait, rest = a[len("--wait="):], [*argv[:i], "--wait=0", *argv[i + 1:]]
            break
    try:
        seconds = float(wait) if wait is not None and wait.replace(".", "", 1).isdigit() \
            else None
    except ValueError:
        seconds = None
    if seconds is None:  # no --wait (or one the daemon's parser will refuse): one request
        rest = argv
    deadline = time.monotonic() + (seconds or 0.0)
    while True:
        reply = _ask(argv, rest, env)
        if reply is None:
            return None
        if reply.get("rc") == 0 or seconds is None or time.monotonic() >= deadline:
            if reply.get("rc") != 0 and seconds is not None:
                text = str(reply.get("err") or "")
                reply = {**reply, "err": text.replace("within 0 s", f"within {wait} s")}
            return print_reply(reply)
        time.sleep(0.05)


def main() -> None:
    """Process entry point of `vmnet` (installed launcher, `python -m vmnet`): the command
    line goes to vmnetd if one serves its state directory, else vmnet.cli.main runs it
    here.  Only built-in modules and the wire are loaded on the way to the daemon."""
    argv = sys.argv[1:]
    try:
        rc = vmnet_main(argv, environ())
    except Exception as e:
        from vmnet.errors import VmnetError

        if not isinstance(e, VmnetError):
            raise
        sys.stderr.write(f"vmnet: error: {e.one_line()}\n")
        sys.exit(e.exit_code)
    if rc is None:
        from vmnet.cli.main import execute

        sys.exit(execute(argv, None))
    if command_word(argv) == "run":  # QEMU ran as this process's child: the usual end
        sys.exit(rc)
    exit_served(rc)
