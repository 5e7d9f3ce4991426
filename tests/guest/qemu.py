"""Boot the test guest under QEMU (TCG only) and talk to it over its console.

The guest's init (``init.sh``) prints a small line protocol on the serial
console, which QEMU sends to its stdout (``-serial stdio``):

    VMNET-NIC name=eth0 mac=52:54:00:12:34:56 rxq=1 txq=1 ip=10.77.0.2/24
    VMNET-READY
    VMNET-PING-OK 10.77.0.3          (only with ping=...)
    VMNET-NIC-GONE name=eth1         (hot-unplug)
    VMNET-LEASE ip=10.98.0.50/24 router=10.98.0.1 dns=10.98.0.1 mtu=1400 domain=vmnet
                                     (dhcp=True; before eth0's VMNET-NIC line)
    VMNET-RESOLVED db 10.98.0.60     (resolve=[...]; or VMNET-UNRESOLVED db)
    VMNET-FETCH-OK http://198.51.100.2/ 198.51.100.1
                                     (fetch=URL; the body's first line; and
                                     VMNET-FETCH-LOST URL when it stops working)
    VMNET-SPOOF-DONE garp:10.77.0.5  (spoof=[...]; one per item, in order)
    VMNET-SPOOF-PING 10.77.0.200 10.77.0.1 LOST
                                     (spoof item ip:A/P: the ping from A)

Two ways to use it:

* ``boot_guest(ns, netargs, ip=...)`` starts QEMU in a network namespace and
  returns a ready ``Guest`` (a context manager that always stops QEMU).
* ``guest_argv(netargs, ip=...)`` only builds the QEMU command line, for code
  under test that starts QEMU itself; wrap that process with
  ``Guest(proc)`` (or just its stdout with ``GuestConsole``) to read it.

KVM is never used: on this kind of host a KVM guest hangs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypedDict

from tests.guest.build import GuestImage, ensure_guest

__all__ = [
    "QEMU",
    "Guest",
    "GuestConsole",
    "GuestDied",
    "GuestError",
    "GuestTimeout",
    "Lease",
    "NicInfo",
    "Qmp",
    "QmpError",
    "boot_guest",
    "guest_argv",
    "http_get_from_ns",
    "ping_from_ns",
    "qemu_available",
    "qmp_args",
]

QEMU = "qemu-system-x86_64"
READY = r"VMNET-READY"
_NIC_RE = re.compile(r"VMNET-NIC name=(\S+)((?: \w+=\S*)*)")
_GONE_RE = re.compile(r"VMNET-NIC-GONE name=(\S+)")
_LEASE_RE = re.compile(r"VMNET-LEASE((?: \w+=\S*)+)")


class GuestError(RuntimeError):
    """Something went wrong with a test guest; the message ends with its console."""


class GuestTimeout(GuestError, TimeoutError):
    pass


class GuestDied(GuestError):
    pass


class NicInfo(TypedDict):
    name: str
    mac: str
    rxq: int
    txq: int
    ip: str | None


@dataclass(frozen=True)
class Lease:
    """eth0's DHCP lease, from the guest's ``VMNET-LEASE`` line (``none`` -> None / ())."""

    ip: str  # ADDR/PREFIX
    router: str | None
    dns: tuple[str, ...]
    mtu: int | None
    domain: str | None

    @classmethod
    def parse(cls, line: str) -> Lease:
        """Parse a line holding ``VMNET-LEASE ip=A/P router=R dns=D[,D] mtu=M domain=X``."""
        m = _LEASE_RE.search(line)
        if not m:
            raise ValueError(f"no VMNET-LEASE in {line!r}")
        fields = dict(kv.split("=", 1) for kv in m.group(1).split())

        def get(key: str) -> str | None:
            value = fields.get(key, "none")
            return None if value in ("", "none") else value

        ip = get("ip")
        if ip is None:
            raise ValueError(f"VMNET-LEASE without an address: {line!r}")
        dns = get("dns")
        mtu = get("mtu")
        return cls(
            ip=ip,
            router=get("router"),
            dns=tuple(dns.split(",")) if dns else (),
            mtu=int(mtu) if mtu else None,
            domain=get("domain"),
        )


def qemu_available() -> bool:
    return shutil.which(QEMU) is not None


def _kernel_word(name: str, value: str) -> str:
    if not value or any(c.isspace() or c in "\"'" for c in value):
        raise ValueError(f"{name}={value!r} cannot go on the kernel command line")
    return f"{name}={value}"


def guest_argv(
    netargs: Sequence[str] = (),
    *,
    ip: str = "",
    ping: str | None = None,
    smp: int = 1,
    memory: int = 128,
    extra: Sequence[str] = (),
    image: GuestImage | None = None,
    dhcp: bool = False,
    hostname: str | None = None,
    resolve: Sequence[str] = (),
    fetch: str | None = None,
    spoof: Sequence[str] = (),
) -> list[str]:
    """The full QEMU command line (starting with ``qemu-system-x86_64``).

    ``ip`` is ``ADDR/PREFIX[,ADDR/PREFIX...]`` for eth0, eth1, ...; ``ping``
    makes the guest ping that address (or each of ``IP,IP...``, one loop per
    address) and report each one's state changes.  ``dhcp`` gives eth0
    its address by DHCP instead (sending ``hostname`` as its name, when given;
    ``ip`` then lists the addresses of eth1, ...).  ``resolve`` names are
    looked up once the NICs are up (``Guest.resolved``); ``fetch`` is a URL
    the guest GETs until it works (``VMNET-FETCH-OK URL FIRST-LINE``).
    ``spoof`` items (``ra``, ``mac:MAC``, ``ip:A/P``, ``garp:A``, ``dhcpd:A``,
    ``sleep:N``; see init.sh) run in order once the guest is ready (and its
    first ping address answered), each followed by ``VMNET-SPOOF-DONE ITEM``.
    ``netargs`` and then ``extra`` are appended verbatim.
    """
    if hostname is not None and not dhcp:
        raise ValueError("hostname= is the DHCP host name: it needs dhcp=True")
    if isinstance(resolve, str):
        raise TypeError("resolve= takes a sequence of names, not one string")
    if isinstance(spoof, str):
        raise TypeError("spoof= takes a sequence of items, not one string")
    image = image or ensure_guest()
    append = ["console=ttyS0", "quiet", "panic=-1"]
    if ip:
        append.append(_kernel_word("vmnet.ip", ip))
    if ping:
        append.append(_kernel_word("vmnet.ping", ping))
    if dhcp:
        append.append("vmnet.dhcp=1")
    if hostname is not None:
        append.append(_kernel_word("vmnet.hostname", hostname))
    if resolve:
        if any(not name or "," in name for name in resolve):
            raise ValueError(f"resolve={list(resolve)!r}: names must be non-empty, without ','")
        append.append(_kernel_word("vmnet.resolve", ",".join(resolve)))
    if fetch is not None:
        append.append(_kernel_word("vmnet.fetch", fetch))
    if spoof:
        if any(not item or "," in item or (":" not in item and item != "ra")
               for item in spoof):
            raise ValueError(f"spoof={list(spoof)!r}: items are KIND:VALUE (or ra), "
                             "without ','")
        append.append(_kernel_word("vmnet.spoof", ",".join(spoof)))
    return [
        QEMU,
        "-accel", "tcg",
        "-m", str(memory),
        "-smp", str(smp),
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-serial", "stdio",
        "-no-reboot",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", " ".join(append),
        *netargs,
        *extra,
    ]  # fmt: skip


class GuestConsole:
    """Collects everything a stream (QEMU's stdout) says, in a background thread."""

    def __init__(self, stream: IO[bytes], *, name: str = "guest") -> None:
        self.name = name
        self._stream = stream
        self._chunks: list[str] = []
        self._text = ""
        self._eof = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, name=f"console-{name}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        fd = self._stream.fileno()
        try:
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break
                if not data:
                    break
                text = data.decode("utf-8", errors="replace").replace("\r", "")
                with self._cond:
                    self._chunks.append(text)
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    @property
    def output(self) -> str:
        """Everything read so far (carriage returns removed)."""
        with self._cond:
            if self._chunks:
                self._text += "".join(self._chunks)
                self._chunks.clear()
            return self._text

    @property
    def eof(self) -> bool:
        with self._cond:
            return self._eof

    def mark(self) -> int:
        """A position in ``output``; pass it as ``since`` to wait for what comes next."""
        return len(self.output)

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 60.0, *,
                 since: int = 0) -> re.Match[str]:
        """First match of ``pattern`` in ``output[since:]``, waiting up to ``timeout`` s.

        Only complete lines are searched (up to the last newline received, or
        everything once the stream has ended), so a match never sees half a
        line.  The match's positions are relative to ``output`` itself.
        Raises ``GuestTimeout``, or ``GuestDied`` as soon as the stream ends
        unmatched.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                text = self.output
                end = len(text) if self._eof else text.rfind("\n") + 1
                m = regex.search(text, since, max(end, since))
                if m:
                    return m
                if self._eof:
                    raise GuestDied(self._explain(f"console closed before {regex.pattern!r}"))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GuestTimeout(
                        self._explain(f"no {regex.pattern!r} within {timeout:g} s")
                    )
                self._cond.wait(min(left, 1.0))

    def _explain(self, what: str) -> str:
        tail = self.output[-4000:]
        return f"{self.name}: {what}; console output:\n{tail}"

    def nics(self) -> list[NicInfo]:
        """The guest's NICs now, from its VMNET-NIC / VMNET-NIC-GONE lines, by name order.

        Only complete lines count: a line still being received is ignored.
        """
        found: dict[str, NicInfo] = {}
        complete = self.output.rpartition("\n")[0]
        for line in complete.splitlines():
            gone = _GONE_RE.search(line)
            if gone:
                found.pop(gone.group(1), None)
                continue
            m = _NIC_RE.search(line)
            if not m:
                continue
            fields = dict(kv.split("=", 1) for kv in m.group(2).split())
            ip = fields.get("ip", "none")
            found[m.group(1)] = NicInfo(
                name=m.group(1),
                mac=fields.get("mac", ""),
                rxq=int(fields.get("rxq", "0")),
                txq=int(fields.get("txq", "0")),
                ip=None if ip == "none" else ip,
            )
        return sorted(found.values(), key=lambda n: _natural(n["name"]))

    def wait_nic(self, name: str, timeout: float = 60.0, *, since: int = 0) -> NicInfo:
        """Wait for a complete ``VMNET-NIC name=NAME ...`` line after ``since``; parse it."""
        self.wait_for(rf"VMNET-NIC name={re.escape(name)} ", timeout, since=since)
        return next(n for n in self.nics() if n["name"] == name)

    def lease(self, timeout: float = 60.0, *, since: int = 0) -> Lease:
        """Wait for a complete ``VMNET-LEASE`` line after ``since``; parse it."""
        m = self.wait_for(_LEASE_RE, timeout, since=since)
        return Lease.parse(m.group(0))

    def resolved(self, name: str, timeout: float = 60.0, *, since: int = 0) -> str | None:
        """The address the guest found for ``name`` (``VMNET-RESOLVED``), or None
        (``VMNET-UNRESOLVED``: the guest gave up).  Waits up to ``timeout`` s for either."""
        n = re.escape(name)
        m = self.wait_for(rf"(?m)VMNET-(?:RESOLVED {n} (\S+)|UNRESOLVED {n})[ \t]*$",
                          timeout, since=since)
        return m.group(1)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


def _natural(name: str) -> tuple[str, int]:
    m = re.fullmatch(r"(\D*)(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, -1)


class Guest:
    """A running QEMU process and its console.  Use as a context manager."""

    def __init__(self, proc: subprocess.Popen[bytes], console: GuestConsole | None = None,
                 *, name: str = "guest") -> None:
        if console is None:
            if proc.stdout is None:
                raise ValueError("Guest needs the process's stdout as a pipe (stdout=PIPE)")
            console = GuestConsole(proc.stdout, name=name)
        self.proc = proc
        self.console = console
        self.started = time.monotonic()
        #: Seconds from start to VMNET-READY (set by ``boot_guest``/``wait_ready``).
        self.ready_after: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return self.console.output

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def mark(self) -> int:
        return self.console.mark()

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float = 60.0, *,
                 since: int = 0) -> re.Match[str]:
        return self.console.wait_for(pattern, timeout, since=since)

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Wait for VMNET-READY; return (and remember) seconds since start."""
        self.wait_for(READY, timeout)
        if self.ready_after is None:
            self.ready_after = time.monotonic() - self.started
        return self.ready_after

    def nics(self) -> list[NicInfo]:
        return self.console.nics()

    def wait_nic(self, name: str, timeout: float = 60.0, *, since: int = 0) -> NicInfo:
        return self.console.wait_nic(name, timeout, since=since)

    def lease(self, timeout: float = 60.0, *, since: int = 0) -> Lease:
        """eth0's DHCP lease (the guest was booted with ``dhcp=True``)."""
        return self.console.lease(timeout, since=since)

    def resolved(self, name: str, timeout: float = 60.0, *, since: int = 0) -> str | None:
        """What the guest's ``resolve=`` lookup of ``name`` gave: an address or None."""
        return self.console.resolved(name, timeout, since=since)

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; wait.  Returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                return self.kill()
        return self._reap()

    def kill(self) -> int:
        """SIGKILL and wait.  Returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        return self._reap()

    def _reap(self) -> int:
        rc = self.proc.wait()
        self.console.join(5.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return rc

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def boot_guest(
    ns_name: str,
    netargs: list[str],
    *,
    ip: str = "",
    ping: str | None = None,
    smp: int = 1,
    extra: Sequence[str] = (),
    pass_fds: Sequence[int] = (),
    timeout: float = 90,
    argv_prefix: list[str] | None = None,
    name: str = "guest",
    dhcp: bool = False,
    hostname: str | None = None,
    resolve: Sequence[str] = (),
    fetch: str | None = None,
    spoof: Sequence[str] = (),
) -> Guest:
    """Start the guest in namespace ``ns_name`` and wait for VMNET-READY.

    Runs ``ip netns exec NS [*argv_prefix] qemu-system-x86_64 ...``; ``ip``
    execs, so without a prefix ``Guest.pid`` is QEMU's own pid (with a prefix
    it is the prefix's, and ``stop()`` signals that process only).  ``pass_fds``
    are inherited by QEMU (for ``-netdev tap,fd=N``).  On any failure QEMU is
    killed and the error (with the console output) propagates.  ``dhcp``,
    ``hostname``, ``resolve``, ``fetch`` and ``spoof``: see ``guest_argv``.  With
    ``dhcp`` the guest is ready after its lease (or after udhcpc gave up:
    ``VMNET-ERROR dhcp``, about 10 s).
    """
    argv = guest_argv(netargs, ip=ip, ping=ping, smp=smp, extra=extra, dhcp=dhcp,
                      hostname=hostname, resolve=resolve, fetch=fetch, spoof=spoof)
    cmd = ["ip", "netns", "exec", ns_name, *(argv_prefix or []), *argv]
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=tuple(pass_fds),
    )
    guest = Guest(proc, name=name)
    try:
        guest.wait_ready(timeout)
    except BaseException:
        guest.kill()
        raise
    return guest


# --- host-side probes, run inside the namespace --------------------------------

def _busybox() -> str:
    return shutil.which("busybox") or "/bin/busybox"


def ping_from_ns(ns_name: str, ip: str, count: int = 1, timeout: float = 10.0) -> bool:
    """True once ``count`` echo replies from ``ip`` arrived within ``timeout`` s.

    Pings once a second (busybox ping; iputils is not installed), so an
    address that starts answering late (ARP, a guest still booting) is fine.
    """
    deadline = time.monotonic() + timeout
    got = 0
    while got < count:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        started = time.monotonic()
        res = subprocess.run(
            ["ip", "netns", "exec", ns_name, _busybox(), "ping", "-c", "1", "-W", "1", ip],
            capture_output=True,
            check=False,
        )
        if res.returncode == 0:
            got += 1
        if got < count:
            time.sleep(max(0.0, min(1.0 - (time.monotonic() - started), left)))
    return True


def http_get_from_ns(ns_name: str, ip: str, timeout: float = 5.0) -> str:
    """Body of ``GET http://IP/`` fetched from inside the namespace (busybox wget).

    No ``wget -T``: busybox-static 1.35's wget segfaults with it once it
    connects, so the timeout is enforced here (the process is killed).
    """
    argv = ["ip", "netns", "exec", ns_name, _busybox(), "wget", "-qO-", f"http://{ip}/"]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise GuestError(f"wget http://{ip}/ in {ns_name}: no answer in {timeout:g} s") from exc
    if res.returncode != 0:
        raise GuestError(
            f"wget http://{ip}/ in {ns_name} failed (exit {res.returncode}): {res.stderr.strip()}"
        )
    return res.stdout


# --- QMP, for hot-plug -------------------------------------------------------

def qmp_args(path: str | Path) -> list[str]:
    """QEMU arguments for a QMP server on unix socket ``path`` (pass via ``extra``)."""
    return ["-qmp", f"unix:{path},server=on,wait=off"]


class QmpError(RuntimeError):
    pass


class Qmp:
    """A minimal synchronous QMP client (``Qmp(path).execute("device_del", id="n1")``)."""

    def __init__(self, path: str | Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        self.events: list[dict[str, Any]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        while True:
            try:
                self._sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    self._sock.close()
                    raise
                time.sleep(0.1)
        self._file = self._sock.makefile("rwb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpError(f"unexpected QMP greeting {greeting}")
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise QmpError("QMP connection closed")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run one command; return its ``return`` value (events are kept in ``events``)."""
        req: dict[str, Any] = {"execute": command}
        if arguments:
            req["arguments"] = arguments
        self._file.write(json.dumps(req).encode() + b"\n")
        self._file.flush()
        while True:
            msg = self._read()
            if "event" in msg:
                self.events.append(msg)
            elif "error" in msg:
                raise QmpError(f"{command}: {msg['error'].get('desc', msg['error'])}")
            elif "return" in msg:
                return msg["return"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
