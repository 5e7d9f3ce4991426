"""`vmnetd`: vmnet's resident daemon (runs as root).

    vmnetd [--foreground] [--state-dir DIR] [--config PATH] [-v]

It listens on STATE_DIR/vmnetd.sock (mode 0666: who may do what is decided per
request, vmnet.daemon.policy), or on the socket systemd passes (LISTEN_PID /
LISTEN_FDS, fd 3: vmnetd.socket), and serves every vmnet door from one warm
process (vmnet.daemon.server).  One vmnetd per state directory (a lock);
without --foreground it detaches once the socket listens and logs to
STATE_DIR/vmnetd.log.  SIGTERM stops it after the request at hand.  A client
gets --client-timeout seconds (default 10) to send its request and to take its
reply; the watcher sweeps each namespace every --sweep seconds (default 30); -v logs
one line per request.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import socket
import stat
import sys

from vmnet.consts import DEFAULT_STATE_DIR
from vmnet.daemon.client import SOCKET_NAME, connect
from vmnet.daemon.server import IDLE
from vmnet.daemon.watch import SWEEP
from vmnet.errors import ConflictError, InputError, PrivilegeError, StateError, VmnetError
from vmnet.model.validate import duration

PROG = "vmnetd"
USAGE = (f"usage: {PROG} [--foreground] [--state-dir DIR] [--config PATH] "
         "[--client-timeout SECONDS] [--sweep SECONDS] [-v]")
LISTEN_FDS_START = 3
BACKLOG = 512
# What a request needs, imported once at start: the daemon's requests run warm.
WARM = ("vmnet.cli.main", "vmnet.cli.commands", "vmnet.cli.status", "vmnet.cli.table",
        "vmnet.cli.args", "vmnet.config", "vmnet.config.cache", "vmnet.engine.ops",
        "vmnet.engine.desired", "vmnet.engine.status", "vmnet.engine.holders",
        "vmnet.integrations.qemu.run", "vmnet.integrations.qemu.ifup",
        "vmnet.integrations.qemu.helper", "vmnet.integrations.libvirt.hook",
        "vmnet.integrations.libvirt.domainxml", "vmnet.render.qemu", "vmnet.kernel.linux",
        "json", "tomllib")


class Options:
    __slots__ = ("client_timeout", "config", "foreground", "state_dir", "sweep", "verbose")

    def __init__(self) -> None:
        self.foreground = False
        self.state_dir = os.environ.get("VMNET_STATE_DIR") or DEFAULT_STATE_DIR
        self.config: str | None = os.environ.get("VMNET_CONFIG") or None
        self.verbose = False
        self.client_timeout = IDLE
        self.sweep = SWEEP


def parse(argv: list[str]) -> Options:
    o = Options()
    it = iter(argv)
    for a in it:
        key, eq, val = a.partition("=")
        if a == "--foreground":
            o.foreground = True
        elif a in ("-v", "--verbose"):
            o.verbose = True
        elif key in ("--state-dir", "--config", "--client-timeout", "--sweep"):
            if not eq:
                val = next(it, "")
            if not val:
                raise InputError(f"{key} needs a value ({USAGE})")
            if key == "--state-dir":
                o.state_dir = os.path.abspath(val)
            elif key == "--config":
                o.config = os.path.abspath(val)
            elif key == "--sweep":
                o.sweep = duration(val, key, 0.1, 3600.0)
            else:
                o.client_timeout = duration(val, key, 0.1, 3600.0)
        else:
            raise InputError(f"unknown argument {a!r} ({USAGE})")
    return o


def activated() -> socket.socket | None:
    """The listening socket systemd passed (socket activation), if it passed one to us."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    if count < 1:
        return None
    s = socket.socket(fileno=LISTEN_FDS_START)
    if s.family != socket.AF_UNIX or s.type != socket.SOCK_STREAM:
        raise InputError("the socket passed on fd 3 is not a unix stream socket",
                         hint="vmnetd.socket must say ListenStream=/run/vmnet/vmnetd.sock")
    for extra in range(LISTEN_FDS_START + 1, LISTEN_FDS_START + count):
        os.close(extra)
    os.set_inheritable(s.fileno(), False)
    return s


def prepare_dir(state_dir: str) -> None:
    """The state directory, root's, traversable by all (its socket is theirs to reach;
    what is below stays root's alone)."""
    try:
        os.mkdir(state_dir, 0o711)
    except FileExistsError:
        pass
    except OSError as e:
        raise StateError(f"cannot create state directory {state_dir}: {e.strerror}") from None
    st = os.lstat(state_dir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise StateError(f"state directory {state_dir} is not a directory root alone may "
                         "write", hint="remove it, or give another --state-dir")
    if st.st_mode & 0o111 != 0o111:
        os.chmod(state_dir, (st.st_mode & 0o7777) | 0o711)


def take_lock(state_dir: str) -> int:
    """One vmnetd per state directory: a flock on the directory itself, held for life
    (the CLI locks each namespace's own lock file, never this)."""
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise ConflictError(f"another vmnetd already serves {state_dir}",
                                hint="stop it first (`fuser` on the directory names it)") \
                from None
        raise
    return fd


def bind(state_dir: str) -> socket.socket:
    path = os.path.join(state_dir, SOCKET_NAME)
    live = connect(state_dir)  # (we hold the lock: a socket that answers is not ours)
    if live is not None:
        live.close()
        raise ConflictError(f"something already answers on {path}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a dead vmnetd's
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o111)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o666)
    s.listen(BACKLOG)
    return s


def detach(log_path: str) -> None:
    """Into the background: the parent exits 0 (the socket already listens)."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


def serve(o: Options) -> None:
    from vmnet.daemon.doors import Doors
    from vmnet.daemon.server import Server
    from vmnet.daemon.watch import Watcher

    if os.geteuid() != 0:
        raise PrivilegeError("vmnetd runs as root: it creates taps for its users",
                             hint="start it as root (or through its systemd units)")
    os.umask(0o022)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listener = activated()
    prepare_dir(o.state_dir)
    lock = take_lock(o.state_dir)
    bound = None
    if listener is None:
        listener = bind(o.state_dir)
        bound = os.stat(os.path.join(o.state_dir, SOCKET_NAME)).st_ino
    for module in WARM:
        __import__(module)
    if not o.foreground:
        detach(os.path.join(o.state_dir, "vmnetd.log"))
    sys.stderr.write(f"{PROG}: serving {o.state_dir} (pid {os.getpid()})\n")
    sys.stderr.flush()
    doors = Doors(o.state_dir, o.config, verbose=o.verbose)
    server = Server(listener, doors, idle=o.client_timeout)
    watcher = Watcher(o.state_dir, o.config, doors.home, server.register, server.unregister,
                      sweep=o.sweep)
    server.watch(watcher)
    doors.adopt = watcher.adopt
    watcher.discover()
    try:
        server.serve()
    finally:
        path = os.path.join(o.state_dir, SOCKET_NAME)
        try:
            if bound is not None and os.stat(path).st_ino == bound:
                os.unlink(path)
        except OSError:
            pass
        os.close(lock)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        sys.stdout.write(USAGE + "\n" + (__doc__ or "") + "\n")
        return 0
    try:
        serve(parse(args))
    except VmnetError as e:
        sys.stderr.write(f"{PROG}: error: {e.one_line()}\n")
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
