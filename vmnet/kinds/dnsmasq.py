"""One dnsmasq per nat/isolated network: started detached, found by its pid file,
stopped only once /proc shows it is the one vmnet started for that network.

dnsmasq daemonizes itself (its first process exits with the daemon's start
status once the daemon listens, or with the reason it could not), so the
command that starts it (the CLI, the libvirt hook, vmnetd) gets an answer
at once and leaves no child, no lock and no fd of its own in it.
"""

from __future__ import annotations

import os

from vmnet.errors import ConflictError, KernelError, NotFoundError, StateError
from vmnet.state.files import proc_start_time

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from vmnet.render.dnsmasq import Paths

DNSMASQ_PATHS = ("/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 3.0


def binary() -> str:
    found = next((p for p in DNSMASQ_PATHS if os.access(p, os.X_OK)), None)
    if found is None:
        raise NotFoundError("dnsmasq is not installed; nat and isolated networks need it "
                            "for DHCP and DNS", hint="apt-get install dnsmasq-base")
    return found


def user_group() -> tuple[str, str]:
    """The unprivileged user dnsmasq drops to: Debian's `dnsmasq` (dnsmasq-base makes it),
    else nobody; group nogroup where it exists."""
    from vmnet.config.users import lookup_group, lookup_user

    user = "dnsmasq" if lookup_user("dnsmasq") is not None else "nobody"
    group = "nogroup" if lookup_group("nogroup") is not None else "nobody"
    return user, group


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="surrogateescape") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def running(paths: Paths) -> int | None:
    """The PID of this network's dnsmasq, if it runs: the pid file's process, whose command
    line names that same pid file (a reused PID is someone else's)."""
    try:
        with open(paths.pid) as f:
            text = f.read().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    argv = _cmdline(pid)
    if not argv or os.path.basename(argv[0]) != "dnsmasq" or \
            f"--pid-file={paths.pid}" not in argv:
        return None
    return pid if _alive(pid) else None


def prepare(paths: Paths) -> None:
    """The directories dnsmasq reads after dropping its privileges: traversable (0711) down
    to them, the host files' directories listable (0755); the files name no secret."""
    try:
        for d in (paths.dir, paths.hosts, paths.names):
            os.makedirs(d, mode=0o755, exist_ok=True)
            os.chmod(d, 0o711 if d == paths.dir else 0o755)
        level = os.path.dirname(paths.dir)
        for _ in range(3):  # dnsmasq/, ns-<inode>/, the state directory
            mode = os.stat(level).st_mode & 0o777
            if not mode & 0o001:
                os.chmod(level, mode | 0o111)
            level = os.path.dirname(level)
    except OSError as e:
        raise StateError(f"cannot prepare dnsmasq's directory {paths.dir}: {e.strerror}",
                         errno=e.errno) from None
    while level != os.path.dirname(level):  # and above the state directory: only look
        try:
            mode = os.stat(level).st_mode
        except OSError:
            break
        if not mode & 0o001:
            raise StateError(f"dnsmasq (which drops root) cannot reach {paths.dir}: {level} "
                             f"is mode {mode & 0o7777:04o}, not searchable by others",
                             hint="keep --state-dir under a directory others may pass "
                                  "through (like the default /run/vmnet)")
        level = os.path.dirname(level)


def start(argv: list[str], paths: Paths, bridge: str, gateway: str) -> int:
    """Start dnsmasq; its PID, or an error naming why it did not start (and nothing of it
    left behind)."""
    prepare(paths)
    try:
        return _start(argv, paths, bridge, gateway)
    except BaseException:
        stop(paths)  # a daemon that did start (a timeout) goes too; so do its files
        raise


def _start(argv: list[str], paths: Paths, bridge: str, gateway: str) -> int:
    import subprocess

    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, close_fds=True, start_new_session=True,
                           timeout=START_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise KernelError(f"dnsmasq for bridge {bridge} did not start within "
                          f"{START_TIMEOUT:g} s") from None
    except OSError as e:
        raise NotFoundError(f"cannot run {argv[0]}: {e.strerror}",
                            hint="apt-get install dnsmasq-base") from None
    if r.returncode != 0:
        why = " ".join(r.stderr.decode(errors="replace").split())[:300]
        if "in use" in why:
            holders = port_holders(gateway)
            raise ConflictError(f"dnsmasq for bridge {bridge} cannot listen on {gateway}: "
                                f"{'; '.join(holders) or why}", ifname=bridge,
                                hint="stop the other DNS/DHCP server on this address, or "
                                     "give the network another subnet")
        raise KernelError(f"dnsmasq for bridge {bridge} did not start: {why}", ifname=bridge)
    pid = running(paths)
    if pid is None:
        raise KernelError(f"dnsmasq for bridge {bridge} exited right after starting "
                          f"(see {paths.log})", ifname=bridge)
    return pid


def _alive(pid: int) -> bool:
    """The process exists and is no zombie (a zombie has let go of its sockets)."""
    return proc_start_time(pid) is not None


def stop(paths: Paths, *, remove: bool = True) -> bool:
    """Stop this network's dnsmasq if it runs (TERM, then KILL), waiting until the process
    itself is gone (it removes its pid file before it lets go of its sockets); remove its
    files unless `remove` is false (a restart).  True if one was running."""
    import signal
    import time

    pid = running(paths)
    if pid is not None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + STOP_TIMEOUT
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if not _alive(pid):
                break
    if remove:
        remove_files(paths)
    return pid is not None


def remove_files(paths: Paths) -> None:
    for d in (paths.hosts, paths.names):
        for fn in _listdir(d):
            unlink_quietly(os.path.join(d, fn))
        _rmdir(d)
    for f in (paths.pid, paths.leases, paths.log):
        unlink_quietly(f)
    _rmdir(paths.dir)
    _rmdir(os.path.dirname(paths.dir))


def leases(paths: Paths) -> dict[str, str]:
    """MAC -> address of the leases dnsmasq has handed out (its lease file)."""
    out: dict[str, str] = {}
    try:
        with open(paths.leases) as f:
            for line in f:
                words = line.split()
                if len(words) >= 3:
                    out[words[1].lower()] = words[2]
    except OSError:
        pass
    return out


def reload(paths: Paths) -> None:
    """SIGHUP: dnsmasq re-reads its host directories (it reads new and changed files by
    itself, but keeps a deleted file's hosts until told)."""
    import signal

    pid = running(paths)
    if pid is not None:
        try:  # noqa: SIM105
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            pass


def release(paths: Paths, bridge: str, server: str, ip: str, mac: str) -> bool:
    """Make dnsmasq forget the lease of `mac` on `ip` (a NIC that is gone), as
    dnsmasq-utils' dhcp_release does: a DHCPRELEASE from the host, bound to the bridge.
    Without it the lease stays an hour, and a new NIC given that address gets none."""
    if leases(paths).get(mac.lower()) != ip:
        return False
    import socket
    import struct

    chaddr = bytes.fromhex(mac.replace(":", ""))
    opts = bytes([53, 1, 7, 54, 4]) + socket.inet_aton(server) + bytes([255])
    packet = struct.pack("!BBBBIHH4s4s4s4s16s64s128sI", 1, 1, 6, 0,
                         int.from_bytes(os.urandom(4), "big"), 0, 0, socket.inet_aton(ip),
                         bytes(4), bytes(4), bytes(4), chaddr, b"", b"", 0x63825363) + opts
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, bridge.encode())
            s.sendto(packet, (server, 67))
    except OSError:
        return False
    return True


def port_holders(address: str) -> list[str]:
    """Who holds UDP 53/67 or TCP 53 on `address` (or on every address): `pid N (comm)`."""
    import socket

    want = {53, 67}
    inodes: dict[str, str] = {}
    for proto, path in (("udp", "/proc/net/udp"), ("tcp", "/proc/net/tcp")):
        try:
            with open(path) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 10:
                continue
            hexip, _, hexport = cols[1].partition(":")
            port = int(hexport, 16)
            ip = socket.inet_ntoa(bytes.fromhex(hexip)[::-1])
            if port in want and ip in (address, "0.0.0.0") and (proto == "udp" or port == 53):
                inodes[cols[9]] = f"{proto} {ip}:{port}"
    found = []
    for pid in filter(str.isdigit, _listdir("/proc")):
        fds = f"/proc/{pid}/fd"
        for fd in _listdir(fds):
            try:
                target = os.readlink(f"{fds}/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                from vmnet.engine.holders import who

                found.append(f"{inodes[target[8:-1]]} is held by {who(pid)}")
                break
    return found


def _listdir(d: str) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []


def unlink_quietly(p: str) -> None:
    try:  # noqa: SIM105 - contextlib costs an import on this path
        os.unlink(p)
    except OSError:
        pass


def _rmdir(p: str) -> None:
    try:  # noqa: SIM105
        os.rmdir(p)
    except OSError:
        pass
