"""A throwaway OVN deployment for tests: a central node and chassis in namespaces.

``ovn_world(("a", "b"))`` starts, each in a fresh network namespace of its own
(``tests.nsutil.netns``):

    central (ovnc-...)         NB ovsdb-server  punix:DIR/central/ovnnb_db.sock
                               SB ovsdb-server  punix:DIR/central/ovnsb_db.sock
                               ovn-northd
    chassis a (ovn-a-...)      ovsdb-server (unix:DIR/a/db.sock), ovs-vswitchd,
                               ovn-controller (system-id "a"),
                               br-int (netdev, fail_mode=secure),
                               br-phy (netdev) 192.168.77.1/24 <- Geneve underlay
    chassis b (ovn-b-...)      the same, br-phy 192.168.77.2/24

There is no OVS kernel module here: every bridge is ``datapath_type=netdev``
(the userspace datapath) and each chassis's ovs-vswitchd runs inside the
chassis namespace.  The underlay is a veth pair ``ul0``--``ul0`` between the two
chassis namespaces (with another chassis count: a Linux bridge in an underlay
namespace ``ovnu-...``, one veth to each chassis), MTU 1600 so that 1500-byte
guest frames fit in Geneve.  Each ``ul0`` is a port of ``br-phy`` and the
underlay address lives on ``br-phy``'s internal interface in the kernel: the
userspace datapath routes tunnel packets by OVS's own route table, learned
from the kernel routes of the namespace ovs-vswitchd runs in, and sends them
out of the bridge that route points at.

The central's sockets are filesystem paths, so the chassis (and tests, from the
root namespace) reach them directly; the central's daemons still run in a
namespace of their own.  Every daemon is a child process started here (in the
foreground, with ``--pidfile``) and stopped by its PID: SIGTERM, SIGKILL after
a grace period, reaped.  Namespaces and the scratch directory (all databases,
sockets and logs: ``OvnWorld.dir``) are removed on exit, also when setup fails
halfway; a setup failure's ``OvnWorldError`` carries the tail of the log of the
daemon concerned.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from tests.nsutil import Netns, netns
from tests.world import stop_process

__all__ = [
    "Chassis",
    "OvnWorld",
    "OvnWorldError",
    "ovn_missing",
    "ovn_world",
    "ovsdbapp_missing",
    "wait_until",
]

START_TIMEOUT = 10.0  # per daemon / per readiness wait
STOP_GRACE = 5.0  # SIGTERM, then SIGKILL
UNDERLAY_NET = "192.168.77"  # chassis i gets .(i+1)/24 on its br-phy
UNDERLAY_PREFIX = 24
UNDERLAY_MTU = 1600
UNDERLAY_IF = "ul0"  # each chassis's end of the underlay

NB_SCHEMA = "/usr/share/ovn/ovn-nb.ovsschema"
SB_SCHEMA = "/usr/share/ovn/ovn-sb.ovsschema"
VSWITCH_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
_BINARIES = ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl",
             "ovn-northd", "ovn-controller", "ovn-nbctl", "ovn-sbctl")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,15}")

_T = TypeVar("_T")


class OvnWorldError(RuntimeError):
    """The OVN world could not be set up (the message has the relevant log's tail)."""


def _which(name: str) -> str | None:
    """A binary's path; OVS keeps its daemons in /usr/sbin, which may not be on PATH."""
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )


def ovsdbapp_missing() -> str | None:
    """Why vmnet's ovn networks cannot run in this interpreter (no ovsdbapp), or None."""
    import importlib.util

    if importlib.util.find_spec("ovsdbapp") is None:
        return "ovsdbapp is not installed (pip install '.[ovn]'; scripts/test installs it)"
    return None


def ovn_missing() -> str | None:
    """Why an OVN world cannot run here (to skip with), or None."""
    if os.geteuid() != 0:
        return "an OVN world needs root (network namespaces, OVS daemons)"
    for name in _BINARIES:
        if _which(name) is None:
            return f"{name} not found (Debian packages openvswitch-switch, ovn-central, ovn-host)"
    for schema in (NB_SCHEMA, SB_SCHEMA, VSWITCH_SCHEMA):
        if not os.path.exists(schema):
            return f"{schema} not found"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun missing (the userspace datapath's internal ports are taps)"
    return None


def wait_until(pred: Callable[[], _T], timeout: float, what: str,
               interval: float = 0.01) -> _T:
    """Poll ``pred`` until it returns something true; return that.

    Raises ``OvnWorldError("timed out after T s waiting for WHAT")``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise OvnWorldError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _socket_up(path: Path) -> bool:
    """Does a unix socket at ``path`` accept connections?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _ctl(argv: Sequence[str], env: dict[str, str]) -> str:
    """Run an OVS/OVN client; its stdout, or OvnWorldError with its stderr."""
    r = subprocess.run(list(argv), text=True, capture_output=True, env=env, check=False)
    if r.returncode != 0:
        raise OvnWorldError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r.stdout


class _Daemon:
    """One OVS/OVN daemon, a child process in namespace ``ns``, stopped by its PID."""

    def __init__(self, name: str, ns: Netns, argv: Sequence[str], env: dict[str, str],
                 workdir: Path, *, unixctl: bool = True) -> None:
        self.name = name
        self.ns = ns
        self.env = env
        self.pidfile = workdir / f"{name}.pid"
        self.log = workdir / f"{name}.log"  # --log-file
        self.stderr = workdir / f"{name}.stderr"
        # Its control socket (ovs-appctl -t PATH).  ovn-controller has no
        # --unixctl: its socket is OVN_RUNDIR/ovn-controller.PID.ctl.
        self.ctl = workdir / f"{name}.ctl"
        self.argv = [*argv, f"--pidfile={self.pidfile}", f"--log-file={self.log}",
                     *([f"--unixctl={self.ctl}"] if unixctl else []), "-vconsole:off"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.started: list[int] = []  # every PID this daemon ever had

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} running"
        with self.stderr.open("ab") as err:
            # ip netns exec execs the daemon: the PID is the daemon's own.
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns.name, *self.argv],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=self.env,
            )
        self.started.append(self.proc.pid)

    @property
    def pid(self) -> int | None:
        """The PID while it runs, else None."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        return self.proc.pid

    def output(self) -> str:
        parts = [f"--- {p.name} ---\n{t}" for p in (self.log, self.stderr) if (t := _tail(p))]
        return "\n".join(parts) or "(no log output)"

    def wait_ready(self, ready: Callable[[], bool], what: str) -> None:
        """Wait for ``ready()``; OvnWorldError with the log if it exits or times out."""
        deadline = time.monotonic() + START_TIMEOUT
        assert self.proc is not None
        while not ready():
            if self.proc.poll() is not None:
                raise OvnWorldError(f"{self.name} in {self.ns.name} exited "
                                    f"({self.proc.returncode}) before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise OvnWorldError(f"{self.name} in {self.ns.name}: no {what} after "
                                    f"{START_TIMEOUT:g} s:\n{self.output()}")
            time.sleep(0.005)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM by PID, SIGKILL after ``grace`` s; reap.  Idempotent."""
        if self.proc is not None:
            stop_process(self.proc, grace)


def _env(rundir: Path) -> dict[str, str]:
    """The environment of a daemon or client whose scratch directory is ``rundir``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OVS_", "OVN_"))}
    for var in ("OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR",
                "OVN_RUNDIR", "OVN_LOGDIR", "OVN_DBDIR", "OVN_SYSCONFDIR"):
        env[var] = str(rundir)
    return env


class Chassis:
    """One OVN chassis: its namespace, OVS (ovsdb-server, ovs-vswitchd), ovn-controller."""

    def __init__(self, name: str, ns: Netns, workdir: Path, encap_ip: str) -> None:
        self.name = name  # also its system-id, the SB Chassis name
        self.ns = ns
        self.dir = workdir  # its databases, sockets, pid files and logs
        self.ovs_db = f"unix:{workdir / 'db.sock'}"
        self.ovn_rundir = str(workdir)  # holds ovn-controller.pid
        self.encap_ip = encap_ip  # no prefix; br-phy has it as /24
        self._env = _env(workdir)
        self._controller: _Daemon | None = None

    def vsctl(self, *args: str) -> str:
        """``ovs-vsctl --db=OVS_DB --timeout=10 ARGS``; stdout (OvnWorldError on failure)."""
        return _ctl([_exe("ovs-vsctl"), f"--db={self.ovs_db}", "--timeout=10", *args],
                    self._env)

    def controller_pid(self) -> int | None:
        """The PID of its running ovn-controller, or None when stopped."""
        return self._controller.pid if self._controller else None

    def stop_controller(self) -> None:
        """SIGTERM its ovn-controller (by PID) and wait until it has exited.

        SIGTERM leaves the SB Chassis and Port_Binding rows and br-int's flows
        as they are (``ovn-appctl exit`` would clean up); a restart takes them over.
        """
        if self._controller is not None:
            self._controller.stop()

    def start_controller(self) -> None:
        """Start its ovn-controller (again: same rundir, pid file and log)."""
        assert self._controller is not None, "chassis not set up"
        if self._controller.pid is not None:
            return
        self._controller.start()
        pidfile = self._controller.pidfile
        self._controller.wait_ready(lambda: _pidfile_is(pidfile, self._controller),
                                    "pid file")


def _pidfile_is(path: Path, daemon: _Daemon | None) -> bool:
    try:
        return daemon is not None and int(path.read_text().strip()) == daemon.pid
    except (FileNotFoundError, ValueError):
        return False


class OvnWorld:
    """The central (NB, SB, northd) and the chassis; see the module docstring."""

    def __init__(self, workdir: Path, central_ns: Netns) -> None:
        self.dir = workdir  # the scratch directory (removed on exit)
        self.central_ns = central_ns
        self.underlay_ns: Netns | None = None  # only with other than two chassis
        central = workdir / "central"
        self.nb = f"unix:{central / 'ovnnb_db.sock'}"
        self.sb = f"unix:{central / 'ovnsb_db.sock'}"
        self.chassis: dict[str, Chassis] = {}
        self._env = _env(central)
        self._daemons: list[_Daemon] = []

    def nbctl(self, *args: str) -> str:
        """``ovn-nbctl --db=NB ARGS``; stdout (OvnWorldError on failure)."""
        return _ctl([_exe("ovn-nbctl"), f"--db={self.nb}", *args], self._env)

    def bound(self, lsp: str) -> str:
        """The name of the chassis the SB binds ``lsp`` to ("" when unbound)."""
        uuid = self.sbctl("--bare", "--columns=chassis", "find", "Port_Binding",
                          f"logical_port={lsp}").strip()
        if not uuid:
            return ""
        return self.sbctl("--bare", "--columns=name", "list", "Chassis", uuid).strip()

    def sbctl(self, *args: str) -> str:
        """``ovn-sbctl --db=SB ARGS``; stdout (OvnWorldError on failure)."""
        return _ctl([_exe("ovn-sbctl"), f"--db={self.sb}", *args], self._env)

    @property
    def namespaces(self) -> list[Netns]:
        """Every namespace of the world."""
        extra = [self.underlay_ns] if self.underlay_ns else []
        return [self.central_ns, *extra, *(c.ns for c in self.chassis.values())]

    def pids(self) -> list[int]:
        """Every PID this world ever started (daemons, restarted controllers too)."""
        return [pid for d in self._daemons for pid in d.started]


def _exe(name: str) -> str:
    path = _which(name)
    if path is None:
        raise OvnWorldError(f"{name} not found")
    return path


def _start(stack: contextlib.ExitStack, world: OvnWorld, daemon: _Daemon, *,
           start: bool = True) -> _Daemon:
    """Register ``daemon`` with the world and its stop on ``stack``, then start it."""
    world._daemons.append(daemon)
    stack.callback(daemon.stop)  # registered first: stopped even if the start fails
    if start:
        daemon.start()
    return daemon


def _ovsdb(stack: contextlib.ExitStack, world: OvnWorld, name: str, ns: Netns, schema: str,
           workdir: Path, sock: Path, env: dict[str, str]) -> _Daemon:
    """Create a database from ``schema`` and serve it on punix:``sock``."""
    db = workdir / f"{name}.db"
    _ctl([_exe("ovsdb-tool"), "create", str(db), schema], env)
    daemon = _start(stack, world, _Daemon(name, ns, [
        _exe("ovsdb-server"), str(db), f"--remote=punix:{sock}",
    ], env, workdir))
    daemon.wait_ready(lambda: _socket_up(sock), f"socket {sock}")
    return daemon


def _underlay(stack: contextlib.ExitStack, names: Sequence[str],
              nss: dict[str, Netns]) -> Netns | None:
    """Link the chassis namespaces: ``ul0`` in each, MTU 1600, up (no address)."""
    mtu = str(UNDERLAY_MTU)
    hub: Netns | None = None
    if len(names) == 2:
        a, b = nss[names[0]], nss[names[1]]
        a.ip("link", "add", UNDERLAY_IF, "mtu", mtu, "type", "veth",
             "peer", "name", UNDERLAY_IF, "mtu", mtu, "netns", b.name)
    else:
        hub = stack.enter_context(netns("ovnu"))
        hub.ip("link", "add", "br0", "mtu", mtu, "type", "bridge")
        for i, name in enumerate(names):
            hub.ip("link", "add", f"p{i}", "mtu", mtu, "master", "br0", "type", "veth",
                   "peer", "name", UNDERLAY_IF, "mtu", mtu, "netns", nss[name].name)
            hub.ip("link", "set", f"p{i}", "up")
        hub.ip("link", "set", "br0", "up")
    for name in names:
        nss[name].ip("link", "set", UNDERLAY_IF, "up")
    return hub


def _chassis(stack: contextlib.ExitStack, world: OvnWorld, ch: Chassis) -> None:
    workdir, ns, env = ch.dir, ch.ns, ch._env
    sock = workdir / "db.sock"
    _ovsdb(stack, world, "ovsdb-server", ns, VSWITCH_SCHEMA, workdir, sock, env)
    ch.vsctl("--no-wait", "init")
    vswitchd = _start(stack, world, _Daemon("ovs-vswitchd", ns, [
        _exe("ovs-vswitchd"), ch.ovs_db,
    ], env, workdir))
    vswitchd.wait_ready(lambda: _socket_up(vswitchd.ctl), "control socket")
    try:
        # Without --no-wait, ovs-vsctl waits until ovs-vswitchd has applied it.
        ch.vsctl(
            "--", "add-br", "br-phy",
            "--", "set", "Bridge", "br-phy", "datapath_type=netdev",
            "--", "set", "Interface", "br-phy", f"mtu_request={UNDERLAY_MTU}",
            "--", "add-port", "br-phy", UNDERLAY_IF,
            "--", "add-br", "br-int",
            "--", "set", "Bridge", "br-int", "datapath_type=netdev", "fail_mode=secure",
            "other_config:disable-in-band=true",
            "--", "set", "Open_vSwitch", ".",
            f"external_ids:system-id={ch.name}",
            f"external_ids:ovn-remote={world.sb}",
            "external_ids:ovn-encap-type=geneve",
            f"external_ids:ovn-encap-ip={ch.encap_ip}",
            "external_ids:ovn-bridge=br-int",
            "external_ids:ovn-bridge-datapath-type=netdev",
        )
    except OvnWorldError as e:
        raise OvnWorldError(f"{e}\n{vswitchd.output()}") from None
    # br-phy is a tap in the kernel now: the underlay address goes there, and
    # ovs-vswitchd learns the connected route (its tunnel route) from it.
    ns.ip("addr", "add", f"{ch.encap_ip}/{UNDERLAY_PREFIX}", "dev", "br-phy")
    ns.ip("link", "set", "br-phy", "up")
    ch._controller = _start(stack, world, _Daemon(
        "ovn-controller", ns, [_exe("ovn-controller"), ch.ovs_db], env, workdir,
        unixctl=False,
    ), start=False)  # its stop stops whichever run is current
    ch.start_controller()


def _registered(world: OvnWorld, name: str) -> bool:
    return bool(world.sbctl("--bare", "--columns=name", "find", "Chassis",
                            f"name={name}").strip())


@contextlib.contextmanager
def ovn_world(chassis: Sequence[str] = ("a", "b")) -> Iterator[OvnWorld]:
    """Start a central and one chassis per name (its system-id); remove it all on exit.

    Ready on entry: every chassis is registered in the SB and has caught up
    with the NB (``ovn-nbctl --wait=hv sync``).  Raises ``OvnWorldError`` (with
    the concerned log's tail) when something does not come up.
    """
    names = list(chassis)
    if not names or len(set(names)) != len(names) or any(
            not _NAME.fullmatch(n) for n in names):
        raise ValueError(f"chassis names must be distinct, [A-Za-z0-9_-], <= 16: {names}")
    if len(names) > 200:
        raise ValueError("at most 200 chassis (one /24 underlay)")
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="ovnworld-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        central_ns = stack.enter_context(netns("ovnc"))
        world = OvnWorld(workdir, central_ns)
        nss = {name: stack.enter_context(netns(f"ovn-{name}")) for name in names}
        for i, name in enumerate(names):
            (workdir / name).mkdir()
            world.chassis[name] = Chassis(name, nss[name], workdir / name,
                                          f"{UNDERLAY_NET}.{i + 1}")
        world.underlay_ns = _underlay(stack, names, nss)

        central = workdir / "central"
        central.mkdir()
        nb_sock, sb_sock = central / "ovnnb_db.sock", central / "ovnsb_db.sock"
        _ovsdb(stack, world, "ovsdb-server-nb", central_ns, NB_SCHEMA, central, nb_sock,
               world._env)
        _ovsdb(stack, world, "ovsdb-server-sb", central_ns, SB_SCHEMA, central, sb_sock,
               world._env)
        northd = _start(stack, world, _Daemon("ovn-northd", central_ns, [
            _exe("ovn-northd"), f"--ovnnb-db={world.nb}", f"--ovnsb-db={world.sb}",
        ], world._env, central))
        northd.wait_ready(lambda: _pidfile_is(northd.pidfile, northd), "pid file")

        for name in names:
            _chassis(stack, world, world.chassis[name])
        for name in names:
            controller = world.chassis[name]._controller
            assert controller is not None
            controller.wait_ready(functools.partial(_registered, world, name),
                                  "its SB Chassis row")
        try:
            world.nbctl("--timeout=10", "--wait=hv", "sync")
        except OvnWorldError as e:
            raise OvnWorldError(f"{e}\n{northd.output()}") from None
        yield world
