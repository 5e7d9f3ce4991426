"""A "world" for tests that need something beyond the VMs' host: an upstream.

``world(ns_name)`` takes an existing namespace (the VMs' host, made with
``tests.nsutil.netns``) and gives it an uplink to a second, fresh namespace,
the world:

    ns_name                                  world namespace (vmw-...)
    wan0 198.51.100.1/24  <--- veth --->  world0 198.51.100.2/24
    default via 198.51.100.2                 HTTP on :80, answers every GET with
                                             the client's source address
                                             dnsmasq on :53 (dns=True):
                                             example.test -> 203.0.113.7

The world has no route to anything but its own subnet, so a VM behind the host
only gets an answer when the host masquerades its traffic to ``wan0``; the
HTTP server's answer (and ``World.clients()``) tells which address it saw.

``dnsmasq(ns_name, args, workdir)`` runs one confined dnsmasq in a namespace
(also used by tests for a VM bridge's DHCP and DNS).  Every process here is
started by PID and stopped by that PID; every link and namespace is removed on
exit, also when the body fails.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.nsutil import Netns, netns, sh

__all__ = [
    "EXAMPLE_IP",
    "EXAMPLE_NAME",
    "Dnsmasq",
    "World",
    "WorldError",
    "dnsmasq",
    "dnsmasq_path",
    "public_tmpdir",
    "stop_process",
    "world",
]

#: What the world's DNS (``dns=True``) answers, for this name and below it.
EXAMPLE_NAME = "example.test"
EXAMPLE_IP = "203.0.113.7"
WORLD_IF = "world0"
HTTP_PORT = 80
START_TIMEOUT = 10.0

# The world's HTTP server: argv[1] address to bind, argv[2] the clients file.
# Each GET's client address is appended to the file before the answer is
# sent, so a client that has its answer is already listed.
_HTTP_SERVER = r"""
import http.server, sys

log = open(sys.argv[2], "a", buffering=1)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        ip = self.client_address[0]
        log.write(ip + "\n")
        log.flush()
        body = (ip + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


server = http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[3])), Handler)
server.daemon_threads = True
print("ready", flush=True)
server.serve_forever()
"""


class WorldError(RuntimeError):
    """The world (or a dnsmasq) could not be set up."""


def dnsmasq_path() -> str | None:
    """dnsmasq's path (Debian: dnsmasq-base, in /usr/sbin), or None."""
    return shutil.which("dnsmasq") or next(
        (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.access(p, os.X_OK)), None
    )


@contextlib.contextmanager
def public_tmpdir(prefix: str = "vmnet-world-") -> Iterator[Path]:
    """A temporary directory others may read (0755; pytest's tmp_path is 0700).

    dnsmasq drops root for its own user and reads its hosts directories as
    that user, so they must not live under a private directory.  Removed on exit.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stop_process(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM the process (by its PID), SIGKILL after ``grace`` s; reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()


@dataclass
class Dnsmasq:
    proc: subprocess.Popen[bytes]
    log: Path  # its stderr (--log-facility=-)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@contextlib.contextmanager
def dnsmasq(ns_name: str, args: Sequence[str], workdir: Path, *,
            name: str = "dnsmasq") -> Iterator[Dnsmasq]:
    """Run ``dnsmasq ARGS`` in namespace ``ns_name``, confined; stop it (by PID) on exit.

    Always added: ``--keep-in-foreground --conf-file=/dev/null --no-resolv
    --no-hosts --bind-interfaces --except-interface=lo``, a pid file and the log
    (stderr) in ``workdir`` as ``NAME.pid`` / ``NAME.log``.  ``args`` name the
    interface, listen address and what to serve.  Waits until dnsmasq has its
    sockets (it writes the pid file after binding them); raises ``WorldError``
    with its log if it exits first.  dnsmasq runs as its own user after start:
    files it reads later (hosts directories) must be readable by others.
    """
    exe = dnsmasq_path()
    if exe is None:
        raise WorldError("dnsmasq not found (Debian package dnsmasq-base)")
    pid_file = workdir / f"{name}.pid"
    log = workdir / f"{name}.log"
    argv = [
        "ip", "netns", "exec", ns_name, exe,
        "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
        "--bind-interfaces", "--except-interface=lo", "--log-facility=-",
        f"--pid-file={pid_file}",
        *args,
    ]  # fmt: skip
    with log.open("wb") as fh:
        # ip netns exec execs dnsmasq: the PID is dnsmasq's own.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh)
    server = Dnsmasq(proc=proc, log=log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (pid_file.exists() and pid_file.read_text().strip()):
            if proc.poll() is not None:
                raise WorldError(f"{name} exited ({proc.returncode}): {server.output()}")
            if time.monotonic() > deadline:
                raise WorldError(f"{name} not up in {START_TIMEOUT:g} s: {server.output()}")
            time.sleep(0.02)
        yield server
    finally:
        stop_process(proc)


@dataclass
class World:
    """The world namespace and what runs in it (see the module docstring)."""

    ns: Netns  # the world's own namespace
    host_ns: str  # the namespace it is the uplink of
    host_if: str  # the uplink's name in host_ns
    host_ip: str  # ADDR/PREFIX on host_if
    world_ip: str  # ADDR/PREFIX on the world's end
    http_pid: int
    dns: Dnsmasq | None
    clients_file: Path

    @property
    def address(self) -> str:
        """The world's address (no prefix): HTTP server, DNS server, default gateway."""
        return str(ipaddress.ip_interface(self.world_ip).ip)

    @property
    def url(self) -> str:
        return f"http://{self.address}/"

    def clients(self) -> list[str]:
        """Source address of every GET the HTTP server has had, in order."""
        try:
            return self.clients_file.read_text().split()
        except FileNotFoundError:
            return []


def _start_http(ns: Netns, address: str, clients_file: Path,
                log: Path) -> subprocess.Popen[bytes]:
    """Start the HTTP server in ``ns`` (its PID is Python's: ip netns exec execs)."""
    argv = ["ip", "netns", "exec", ns.name, sys.executable, "-I", "-c", _HTTP_SERVER,
            address, str(clients_file), str(HTTP_PORT)]
    with log.open("wb") as err:  # a file, not a pipe: nobody reads its tracebacks
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err)
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
        line = proc.stdout.readline() if ready else b""
    finally:
        proc.stdout.close()  # it prints nothing after "ready"
    if line.strip() != b"ready":
        stop_process(proc)
        raise WorldError(f"world HTTP server did not start: {line!r} "
                         f"{log.read_text(errors='replace')}")
    return proc


@contextlib.contextmanager
def world(ns_name: str, *, host_ip: str = "198.51.100.1/24",
          world_ip: str = "198.51.100.2/24", dns: bool = False,
          host_if: str = "wan0") -> Iterator[World]:
    """Give namespace ``ns_name`` an uplink ``host_if`` to a new world namespace.

    ``host_ip`` goes on ``host_if``, ``world_ip`` on the world's end, and
    ``ns_name`` gets a default route via the world's address (it must not
    have one yet).  The world runs an HTTP server on port 80 (every GET is
    answered with one line, the client's source address) and, with ``dns``, a
    dnsmasq answering ``example.test`` (and names under it) with
    ``203.0.113.7``.  All of it is removed on exit.
    """
    host = Netns(ns_name)
    world_addr = str(ipaddress.ip_interface(world_ip).ip)
    if host.link(host_if) is not None:
        raise WorldError(f"{ns_name} already has a link named {host_if}")
    with contextlib.ExitStack() as stack:
        wns = stack.enter_context(netns("vmw"))
        scratch = stack.enter_context(public_tmpdir())
        wns.ip("link", "add", WORLD_IF, "type", "veth", "peer", "name", host_if,
               "netns", ns_name)
        # Deleting the world namespace destroys the pair too, but asynchronously;
        # deleting the host's end is synchronous (and takes the route with it).
        stack.callback(sh, "ip", "-n", ns_name, "link", "del", host_if, check=False)
        wns.ip("addr", "add", world_ip, "dev", WORLD_IF)
        wns.ip("link", "set", WORLD_IF, "up")
        host.ip("addr", "add", host_ip, "dev", host_if)
        host.ip("link", "set", host_if, "up")
        host.ip("route", "add", "default", "via", world_addr, "dev", host_if)

        clients_file = scratch / "clients"
        clients_file.touch()
        http = _start_http(wns, world_addr, clients_file, scratch / "http.log")
        stack.callback(stop_process, http)

        server: Dnsmasq | None = None
        if dns:
            server = stack.enter_context(dnsmasq(wns.name, [
                f"--interface={WORLD_IF}",
                f"--listen-address={world_addr}",
                f"--address=/{EXAMPLE_NAME}/{EXAMPLE_IP}",
            ], scratch, name="world-dns"))
        yield World(ns=wns, host_ns=ns_name, host_if=host_if, host_ip=host_ip,
                    world_ip=world_ip, http_pid=http.pid, dns=server,
                    clients_file=clients_file)
