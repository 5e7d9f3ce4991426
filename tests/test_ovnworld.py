"""tests/ovnworld.py itself: a central and two chassis come up, a logical switch
spans them over Geneve, ovn-controller restarts, and nothing is left behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import ovnworld
from tests.nsutil import Netns, netns, sh
from tests.ovnworld import Chassis, OvnWorld, OvnWorldError, ovn_missing, ovn_world

_MISSING = ovn_missing()
pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]

PORTS = {  # chassis: (logical port, MAC, IP)
    "a": ("lsp-a", "0a:00:00:00:00:0a", "10.77.0.10"),
    "b": ("lsp-b", "0a:00:00:00:00:0b", "10.77.0.11"),
}


def guest(stack: contextlib.ExitStack, ch: Chassis, lsp: str, mac: str, ip: str) -> Netns:
    """A small guest namespace whose eth0 is the peer of br-int port vif-CH (iface-id lsp)."""
    g = stack.enter_context(netns("ovng"))
    vif = f"vif-{ch.name}"
    ch.ns.ip("link", "add", vif, "type", "veth", "peer", "name", "eth0", "netns", g.name)
    ch.ns.ip("link", "set", vif, "up")
    ch.vsctl("add-port", "br-int", vif, "--", "set", "Interface", vif,
             f"external_ids:iface-id={lsp}")
    g.ip("link", "set", "eth0", "address", mac)
    g.ip("addr", "add", f"{ip}/24", "dev", "eth0")
    g.ip("link", "set", "eth0", "up")
    return g


def add_lsp(world: OvnWorld, lsp: str, mac: str, ip: str) -> None:
    world.nbctl("lsp-add", "ls0", lsp, "--", "lsp-set-addresses", lsp, f"{mac} {ip}")


def wait_up(world: OvnWorld, *lsps: str) -> None:
    for lsp in lsps:
        world.nbctl("--timeout=20", "wait-until", "Logical_Switch_Port", lsp, "up=true")


def ping(g: Netns, ip: str) -> subprocess.CompletedProcess[str]:
    """busybox ping (a test dependency: scripts/install-deps; iputils may be missing)."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    return g.run(busybox, "ping", "-c", "3", "-i", "0.2", "-W", "2", ip, check=False)


def alive(pid: int, marker: str) -> bool:
    """Is ``pid`` a live process whose command line mentions ``marker`` (our scratch dir)?"""
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False


def assert_gone(names: list[str], pids: list[int], scratch: Path) -> None:
    listed = sh("ip", "netns", "list").stdout
    assert not [n for n in names if n in listed], listed
    assert not [p for p in pids if alive(p, str(scratch))]
    assert not scratch.exists()


def test_two_chassis_geneve_and_controller_restart() -> None:
    with contextlib.ExitStack() as stack:
        world = stack.enter_context(ovn_world(("a", "b")))
        names = [ns.name for ns in world.namespaces]
        scratch = world.dir
        a, b = world.chassis["a"], world.chassis["b"]
        assert world.nb.startswith("unix:") and world.sb.startswith("unix:")
        assert (a.encap_ip, b.encap_ip) == ("192.168.77.1", "192.168.77.2")
        assert a.controller_pid() is not None
        pidfile = Path(a.ovn_rundir) / "ovn-controller.pid"
        assert int(pidfile.read_text()) == a.controller_pid()
        # Each chassis made its tunnel to the other.
        assert a.vsctl("get", "Interface", "ovn-b-0", "options:remote_ip").strip() == \
            '"192.168.77.2"'
        assert a.vsctl("get", "Interface", "br-phy", "mtu").strip() == "1600"

        world.nbctl("ls-add", "ls0")
        for port in PORTS.values():
            add_lsp(world, *port)
        guests = {name: guest(stack, world.chassis[name], *port)
                  for name, port in PORTS.items()}
        wait_up(world, "lsp-a", "lsp-b")
        assert world.bound("lsp-a") == "a"
        assert world.bound("lsp-b") == "b"
        r = ping(guests["a"], PORTS["b"][2])
        assert r.returncode == 0, r.stdout + r.stderr

        # (2) ovn-controller of a stops; while it is down, lsp-a is made anew
        # (an unbound Port_Binding), so only the restarted controller can bind it.
        old = a.controller_pid()
        a.stop_controller()
        assert a.controller_pid() is None
        assert old is not None and not alive(old, str(scratch))
        world.nbctl("lsp-del", "lsp-a")
        add_lsp(world, *PORTS["a"])
        world.nbctl("--timeout=10", "--wait=sb", "sync")
        assert world.bound("lsp-a") == ""
        a.start_controller()
        new = a.controller_pid()
        assert new is not None and new != old
        assert int(pidfile.read_text()) == new
        wait_up(world, "lsp-a")
        assert world.bound("lsp-a") == "a"
        world.nbctl("--timeout=10", "--wait=hv", "sync")
        r = ping(guests["a"], PORTS["b"][2])
        assert r.returncode == 0, r.stdout + r.stderr
        pids = world.pids()
        assert old in pids and new in pids
    # (3) the world is gone: namespaces, processes, scratch dir.
    assert_gone(names, pids, scratch)


def test_failed_setup_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon that dies during setup: an OvnWorldError with its log, nothing left."""
    started: list[tuple[int, str]] = []
    real_start = ovnworld._Daemon.start

    def start(self: ovnworld._Daemon) -> None:
        if self.name == "ovn-controller":
            self.argv.append("--no-such-option")
        real_start(self)
        assert self.proc is not None
        started.append((self.proc.pid, str(self.pidfile.parent.parent)))

    monkeypatch.setattr(ovnworld._Daemon, "start", start)
    before = set(sh("ip", "netns", "list").stdout.split())
    with pytest.raises(OvnWorldError, match=r"(?s)ovn-controller .*exited.*--no-such-option"), \
            ovn_world(("a", "b")):
        pytest.fail("the world came up")
    assert started
    scratch = Path(started[0][1])
    after = set(sh("ip", "netns", "list").stdout.split())
    new_ns = [n for n in after - before if n.startswith(("ovnc-", "ovn-a-", "ovn-b-"))]
    assert_gone(new_ns, [pid for pid, _ in started], scratch)
    assert os.path.basename(scratch).startswith("ovnworld-")
