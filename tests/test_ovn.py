"""Kind "ovn": VM NICs on an OVN logical switch, against a real OVN deployment.

Each test starts its own central node and two chassis in throwaway namespaces
(tests/ovnworld.py: Debian's ovn-central, ovn-host and openvswitch-switch, the
userspace datapath) and runs vmnet inside a chassis namespace (`--netns`), as a
whole process.  What vmnet did is read back from the databases themselves
(ovn-nbctl, ovn-sbctl, ovs-vsctl) and from the kernel.  The guests that talk
across chassis are tests/test_ovn_guest.py's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Vmnetd
from tests.ovnworld import Chassis, OvnWorld, ovn_missing, ovn_world, ovsdbapp_missing, wait_until
from tests.tapholder import hold_tap
from tests.vmnetcli import vmnet

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(ovn_missing() is not None, reason=str(ovn_missing())),
              pytest.mark.skipif(ovsdbapp_missing() is not None,
                                 reason=str(ovsdbapp_missing()))]

SWITCH = "ls0"
MAC1 = "52:54:00:0a:00:01"


class Host:
    """One chassis as vmnet sees it: its config file and state directory."""

    def __init__(self, world: OvnWorld, ch: Chassis, root: Path, extra: str = "") -> None:
        self.world = world
        self.ch = ch
        self.state = str(root / f"state-{ch.name}")
        self.config = str(root / f"vmnet-{ch.name}.toml")
        self.write(extra)

    def write(self, extra: str = "", *, nb: str | None = None, network: str = "") -> None:
        Path(self.config).write_text(f"""
[networks.o]
kind = "ovn"
switch = "{SWITCH}"
northbound = "{nb or self.world.nb}"
ovs_db = "{self.ch.ovs_db}"
ovn_rundir = "{self.ch.ovn_rundir}"
bind_timeout = 10
{network}

[defaults]
network = "o"

[vms.vm1]
[[vms.vm1.nics]]
mac = "{MAC1}"
ip = "10.9.0.11"
{extra}
""")
        os.chmod(self.config, 0o644)

    def vmnet(self, *args: str, check: bool = True,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return vmnet(self.ch.ns, self.state, *args, config=self.config, check=check, env=env)

    def ports(self) -> list[str]:
        """Ports of br-int but br-int itself and the tunnels."""
        return [p for p in self.ch.vsctl("list-ports", "br-int").split()
                if not p.startswith("ovn-")]

    def iface_ids(self, name: str) -> dict[str, str]:
        return _map(self.ch.vsctl("--format=json", "--columns=external_ids", "list",
                                  "Interface", name))

    def tap_mtu(self, tap: str) -> int:
        out = self.ch.ns.ip("-j", "link", "show", tap).stdout
        return int(json.loads(out)[0]["mtu"])


def _map(listing: str) -> dict[str, str]:
    """The one map column of `ovs-vsctl --format=json --columns=X list ...`."""
    data = json.loads(listing)["data"]
    return {} if not data else {k: v for k, v in data[0][0][1]}


def lsp(world: OvnWorld, name: str) -> dict[str, object] | None:
    """A logical switch port's columns (ovn-nbctl --format=json list), None if missing."""
    out = world.nbctl("--format=json", "find", "Logical_Switch_Port", f"name={name}")
    table = json.loads(out)
    if not table["data"]:
        return None
    row = dict(zip(table["headings"], table["data"][0], strict=True))
    return {k: _value(v) for k, v in row.items()}


def _value(v: object) -> object:
    if isinstance(v, list) and v and v[0] == "map":
        return {a: b for a, b in v[1]}
    if isinstance(v, list) and v and v[0] == "set":
        return [_value(x) for x in v[1]]
    return v


@pytest.fixture
def world() -> Iterator[OvnWorld]:
    with ovn_world() as w:
        w.nbctl("ls-add", SWITCH)
        yield w


@pytest.fixture
def hosts(world: OvnWorld) -> Iterator[dict[str, Host]]:
    root = Path(tempfile.mkdtemp(prefix="vmnet-ovn-"))
    root.chmod(0o755)
    try:
        yield {name: Host(world, ch, root) for name, ch in world.chassis.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def nb_snapshot(world: OvnWorld) -> str:
    return world.nbctl("show")


# -- up and down ------------------------------------------------------------------------
def test_up_plugs_a_system_port_bound_here_and_down_removes_only_it(
        world: OvnWorld, hosts: dict[str, Host]) -> None:
    a = hosts["a"]
    world.nbctl("lsp-add", SWITCH, "not-vmnets")  # someone else's: never touched
    r = a.vmnet("up", "vm1")
    assert "logical switch ls0 (port vmnet-vm1-0 on br-int" in r.stdout, r.stdout

    p = lsp(world, "vmnet-vm1-0")
    assert p is not None
    assert p["addresses"] == f"{MAC1} 10.9.0.11"
    assert p["port_security"] == MAC1  # on OVN, a NIC's MAC is always enforced
    ext = p["external_ids"]
    assert isinstance(ext, dict) and ext["vmnet:vm"] == "vm1" and ext["vmnet:chassis"] == "a"
    assert p["options"] == {"requested-chassis": "a"}
    assert p["up"] is True
    assert world.bound("vmnet-vm1-0") == "a"

    # a system port (type ""), never type=tap: OVS must not open the tap itself
    assert a.ports() == ["vm1-0"]
    assert a.ch.vsctl("get", "Interface", "vm1-0", "type").strip() == '""'
    ids = a.iface_ids("vm1-0")
    assert ids["iface-id"] == "vmnet-vm1-0" and ids["attached-mac"] == MAC1
    assert ids["vm-id"] == "vm1" and ids["ovn-installed"] == "true"
    assert ids["vmnet:mark"].startswith("vmnet:")

    # the overlay's MTU (underlay 1600 - Geneve over IPv4's 58), told to the guest, and
    # no vnet_hdr on the userspace datapath
    assert a.tap_mtu("vm1-0") == 1542
    words = a.vmnet("qemu-args", "vm1").stdout
    assert "vnet_hdr=off" in words and "host_mtu=1542" in words, words
    xml = a.vmnet("libvirt-xml", "vm1").stdout
    assert "<mtu size='1542'/>" in xml, xml

    st = json.loads(a.vmnet("status", "--json").stdout)["vms"][0]["nics"][0]
    assert st["state"] == "ok" and st["vnet_hdr"] is False
    assert st["ovn"]["bound"] == "a" and st["ovn"]["up"] is True
    assert st["ovn"]["installed"] is True and st["ovn"]["addresses"] == [f"{MAC1} 10.9.0.11"]
    text = a.vmnet("status").stdout
    assert "vm1 NIC 0: port vmnet-vm1-0 on switch ls0: bound to a (up, installed here)" \
        in text, text

    again = a.vmnet("up", "vm1")
    assert "already up" in again.stdout

    a.vmnet("down", "vm1")
    assert lsp(world, "vmnet-vm1-0") is None
    assert lsp(world, "not-vmnets") is not None
    assert a.ports() == []
    assert a.ch.ns.link("vm1-0") is None
    assert world.nbctl("lsp-list", SWITCH).split()[-1] == "(not-vmnets)"


def test_ovsdbapp_is_loaded_only_for_ovn_networks(hosts: dict[str, Host]) -> None:
    a = hosts["a"]
    probe = ("import sys, runpy\n"
             "sys.argv = ['vmnet', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('vmnet', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('OVSDBAPP', 'ovsdbapp' in sys.modules, 'ovs' in sys.modules)\n")
    for args, loaded in ((["up", "vm1"], "True True"),
                         (["up", "plain", "--network", "bare"], "False False")):
        r = subprocess.run(["ip", "netns", "exec", a.ch.ns.name, sys.executable, "-c", probe,
                            "--state-dir", a.state, "--config", a.config, *args],
                           text=True, capture_output=True, timeout=60)
        assert f"OVSDBAPP {loaded}" in r.stdout, (args, r.stdout, r.stderr)
    a.vmnet("down", "vm1", "plain")


def test_a_restarted_controller_binds_the_port_again(
        world: OvnWorld, hosts: dict[str, Host]) -> None:
    a = hosts["a"]
    a.vmnet("up", "vm1")
    a.ch.stop_controller()
    # while it is away, the binding goes (as when a chassis is cleaned up)
    world.sbctl("lsp-unbind", "vmnet-vm1-0")
    a.ch.vsctl("remove", "Interface", "vm1-0", "external_ids", "ovn-installed")
    st = json.loads(a.vmnet("status", "--json").stdout)["vms"][0]["nics"][0]
    assert st["state"] == "unbound" and st["ovn"]["bound"] is None
    assert "southbound_error" not in st["ovn"]  # read, and unbound
    # a southbound database vmnet cannot read is no answer: "unknown", never "no chassis"
    remote = a.ch.vsctl("get", "Open_vSwitch", ".", "external_ids:ovn-remote").strip()
    a.ch.vsctl("set", "Open_vSwitch", ".", "external_ids:ovn-remote=tcp:127.0.0.1:1")
    try:
        st = json.loads(a.vmnet("status", "--json").stdout)["vms"][0]["nics"][0]
        assert st["ovn"]["bound"] is None and st["ovn"]["up"] is False
        assert "not reachable at tcp:127.0.0.1:1" in st["ovn"]["southbound_error"], st
        text = a.vmnet("status").stdout
        assert "port vmnet-vm1-0 on switch ls0: binding unknown (the OVN southbound " \
            "database is not reachable at tcp:127.0.0.1:1" in text, text
        assert "no chassis" not in text
    finally:
        a.ch.vsctl("set", "Open_vSwitch", ".", f"external_ids:ovn-remote={remote}")
    a.ch.start_controller()
    wait_until(lambda: world.bound("vmnet-vm1-0") == "a", 20, "rebound to a")
    wait_until(lambda: a.iface_ids("vm1-0").get("ovn-installed") == "true", 20,
               "installed again")
    st = json.loads(a.vmnet("status", "--json").stdout)["vms"][0]["nics"][0]
    assert st["state"] == "ok" and st["ovn"]["bound"] == "a"
    assert "already up" in a.vmnet("up", "vm1").stdout
    a.vmnet("down", "vm1")
    assert lsp(world, "vmnet-vm1-0") is None and a.ports() == []


# -- refusals: one line, the host and the databases as they were -----------------------------
def _refused(world: OvnWorld, h: Host, want: str, *args: str) -> None:
    before = (nb_snapshot(world), h.ports(), sorted(h.ch.ns.links()))
    r = h.vmnet("up", "vm1", *args, check=False)
    assert r.returncode != 0, r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and want in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert (nb_snapshot(world), h.ports(), sorted(h.ch.ns.links())) == before
    assert "vm1" not in h.vmnet("list").stdout


def test_no_northbound_database_is_named(world: OvnWorld, hosts: dict[str, Host]) -> None:
    a = hosts["a"]
    a.write(nb="unix:/nonexistent/ovnnb_db.sock")
    _refused(world, a, "OVN northbound database is not reachable at "
                       "unix:/nonexistent/ovnnb_db.sock")
    a.write(nb="tcp:127.0.0.1:1")
    _refused(world, a, "not reachable at tcp:127.0.0.1:1")


def test_no_open_vswitch_database_no_chassis_and_no_bridge_are_named(
        world: OvnWorld, hosts: dict[str, Host]) -> None:
    a = hosts["a"]
    good = Path(a.config).read_text()
    Path(a.config).write_text(good.replace(a.ch.ovs_db, "unix:/nonexistent/db.sock"))
    _refused(world, a, "Open vSwitch database is not reachable at unix:/nonexistent/db.sock")
    Path(a.config).write_text(good)
    a.ch.stop_controller()  # (it would make a missing integration bridge itself)
    a.ch.vsctl("set", "Open_vSwitch", ".", "external_ids:ovn-bridge=br-none")
    _refused(world, a, "no integration bridge 'br-none'")
    a.ch.vsctl("remove", "Open_vSwitch", ".", "external_ids", "system-id")
    _refused(world, a, "this host is not an OVN chassis")


def test_a_stopped_controller_and_a_missing_switch_are_named(
        world: OvnWorld, hosts: dict[str, Host]) -> None:
    a = hosts["a"]
    a.ch.stop_controller()
    _refused(world, a, "ovn-controller is not running")
    a.ch.start_controller()
    world.nbctl("ls-del", SWITCH)
    _refused(world, a, "logical switch 'ls0' does not exist")


def test_a_port_name_held_by_something_else_is_refused(
        world: OvnWorld, hosts: dict[str, Host]) -> None:
    a = hosts["a"]
    world.nbctl("lsp-add", SWITCH, "vmnet-vm1-0")
    _refused(world, a, "logical switch port 'vmnet-vm1-0' exists and is not vmnet's")
    world.nbctl("lsp-del", "vmnet-vm1-0")
    # another VM's port, named by a NIC's `port`
    a.write('[vms.vm2]\n[[vms.vm2.nics]]\nport = "vmnet-vm1-0"\n')
    a.vmnet("up", "vm1")
    before = (nb_snapshot(world), a.ports())
    r = a.vmnet("up", "vm2", check=False)
    assert r.returncode != 0 and "belongs to VM 'vm1'" in r.stderr, r.stderr
    assert (nb_snapshot(world), a.ports()) == before
    a.vmnet("down", "vm1")


def test_an_interface_holding_the_iface_id_is_replaced_only_if_vmnet_may(
        world: OvnWorld, hosts: dict[str, Host]) -> None:
    a = hosts["a"]
    # vm1 came up with tap "old0"; its record is lost (a new state directory), and it
    # comes up again with tap "new0": the stale, idle vmnet tap is unplugged
    a.write('tap = "old0"\n')
    a.vmnet("up", "vm1")
    shutil.rmtree(a.state)
    a.write('tap = "new0"\n')
    a.vmnet("up", "vm1")
    assert a.ports() == ["new0"]
    assert world.bound("vmnet-vm1-0") == "a"
    assert a.ch.ns.link("old0") is not None  # the tap itself is its record's to remove
    a.vmnet("down", "vm1")
    a.ch.ns.ip("link", "del", "old0")

    # the same, but a process holds the old tap: refused, naming it
    a.write('tap = "old0"\n')
    a.vmnet("up", "vm1")
    shutil.rmtree(a.state)
    a.write('tap = "new0"\n')
    with hold_tap(a.ch.ns, "old0") as holder:
        _refused(world, a, "interface 'old0' on br-int already holds iface-id "
                           f"'vmnet-vm1-0' (pid {holder.pid}")
    a.ch.vsctl("del-port", "old0")
    a.ch.ns.ip("link", "del", "old0")
    # an interface that is not vmnet's (a veth an admin plugged in by hand)
    a.ch.ns.ip("link", "add", "hand0", "type", "veth", "peer", "name", "hand1")
    a.ch.vsctl("add-port", "br-int", "hand0", "--", "set", "Interface", "hand0",
               "external_ids:iface-id=vmnet-vm1-0")
    world.nbctl("lsp-del", "vmnet-vm1-0")
    _refused(world, a, "interface 'hand0' on br-int already holds iface-id 'vmnet-vm1-0' "
                       "(not vmnet's)")


def test_move_takes_the_port_and_the_old_chassis_lets_go(
        world: OvnWorld, hosts: dict[str, Host]) -> None:
    a, b = hosts["a"], hosts["b"]
    a.vmnet("up", "vm1")
    r = b.vmnet("up", "vm1", check=False)
    assert r.returncode != 0
    assert "logical switch port 'vmnet-vm1-0' of VM 'vm1' is bound to chassis 'a'" \
        in r.stderr and "--move" in r.stderr, r.stderr
    assert b.ports() == [] and b.ch.ns.link("vm1-0") is None
    b.vmnet("up", "vm1", "--move")
    p = lsp(world, "vmnet-vm1-0")
    assert p is not None and p["options"] == {"requested-chassis": "b"}
    assert isinstance(p["external_ids"], dict) and p["external_ids"]["vmnet:chassis"] == "b"
    assert world.bound("vmnet-vm1-0") == "b"
    st = json.loads(a.vmnet("status", "--json").stdout)["vms"][0]["nics"][0]
    assert st["ovn"]["bound"] == "b" and st["ovn"]["requested"] == "b"
    assert "requested to b (moved)" in a.vmnet("status").stdout
    # down on a: its own interface goes, the port (b's now) stays
    a.vmnet("down", "vm1")
    assert a.ports() == [] and lsp(world, "vmnet-vm1-0") is not None
    assert world.bound("vmnet-vm1-0") == "b"
    b.vmnet("down", "vm1")
    assert lsp(world, "vmnet-vm1-0") is None and b.ports() == []


def test_the_ifup_script_refuses_ovn_unless_vmnetd_runs(
        world: OvnWorld, hosts: dict[str, Host]) -> None:
    a = hosts["a"]
    a.vmnet("up", "vm1")
    a.ch.vsctl("del-port", "vm1-0")  # unplugged behind vmnet's back
    env = dict(os.environ, VMNET_STATE_DIR=a.state, VMNET_CONFIG=a.config)
    ifup = [sys.executable, "-c", "from vmnet.integrations.qemu.scripts import main_ifup; "
            "main_ifup()", "vm1-0"]
    r = subprocess.run(["ip", "netns", "exec", a.ch.ns.name, *ifup], text=True,
                       capture_output=True, env=env, timeout=60)
    assert r.returncode != 0 and "only through vmnetd" in r.stderr, r.stderr
    assert a.ports() == []
    d = Vmnetd(a.state, a.config, ns=a.ch.ns)
    try:
        r = subprocess.run(["ip", "netns", "exec", a.ch.ns.name, *ifup], text=True,
                           capture_output=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        assert a.ports() == ["vm1-0"]
        assert a.iface_ids("vm1-0").get("ovn-installed") == "true"
        # and through vmnetd, down removes the port from the databases as the CLI does
        a.vmnet("down", "vm1")
        assert lsp(world, "vmnet-vm1-0") is None and a.ports() == []
    finally:
        d.stop()


def test_a_user_without_root_plugs_a_nic_through_vmnetd_but_may_not_move_it(
        world: OvnWorld, hosts: dict[str, Host]) -> None:
    a = hosts["a"]
    uid = 64123
    a.write(f'[vms.uvm]\nuser = {uid}\n[[vms.uvm.nics]]\nmac = "52:54:00:0a:00:33"\n',
            network=f"allow_users = [{uid}]")
    user = ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups"]
    d = Vmnetd(a.state, a.config, ns=a.ch.ns)
    try:
        r = vmnet(None, a.state, "up", "uvm", prefix=user)
        assert r.returncode == 0, r.stderr
        assert world.bound("vmnet-uvm-0") == "a" and a.ports() == ["uvm-0"]
        link = a.ch.ns.link("uvm-0")
        assert link is not None and int(link["linkinfo"]["info_data"]["user"]) == uid
        r = vmnet(None, a.state, "up", "uvm", "--move", prefix=user)
        assert r.returncode != 0 and "--move" in r.stderr, r.stderr
        r = vmnet(None, a.state, "down", "uvm", prefix=user)
        assert r.returncode == 0, r.stderr
        assert lsp(world, "vmnet-uvm-0") is None and a.ports() == []
    finally:
        d.stop()


def test_a_kill_anywhere_in_an_ovn_up_or_down_is_finished_by_gc(
        world: OvnWorld, hosts: dict[str, Host], tmp_path: Path) -> None:
    a = hosts["a"]
    trace = tmp_path / "trace.json"
    for op in ("up", "down"):
        if op == "down":
            a.vmnet("up", "vm1")
        a.vmnet(op, "vm1", env={"VMNET_FAULT_TRACE": str(trace)})
        points = list(json.loads(trace.read_text()))
        if op == "up":
            a.vmnet("down", "vm1")
        steps = {p for p in points if p.startswith("step:")}
        assert ({"step:PutLsp", "step:BindPort", "step:WaitBound"} if op == "up" else
                {"step:UnbindPort", "step:DropLsp"}) <= steps, points
        for n in range(1, len(points) + 1):
            if op == "down":
                a.vmnet("up", "vm1")
            r = a.vmnet(op, "vm1", check=False,
                        env={"VMNET_FAULT": "*", "VMNET_FAULT_AT": str(n)})
            assert r.returncode == -9, (n, points[n - 1], r.returncode, r.stderr)
            g = a.vmnet("gc", check=False)
            assert g.returncode == 0 and "Traceback" not in g.stderr, (points[n - 1], g)
            if "vm1" in a.vmnet("list").stdout:
                a.vmnet("down", "vm1")  # killed after it was whole: an idle VM
            where = points[n - 1]
            assert lsp(world, "vmnet-vm1-0") is None, where
            assert a.ports() == [], where
            assert a.ch.ns.link("vm1-0") is None, where
        a.vmnet("up", "vm1")
        assert world.bound("vmnet-vm1-0") == "a"
        a.vmnet("down", "vm1")


def test_config_errors_name_the_key() -> None:
    from vmnet.config import parse_config
    from vmnet.errors import ConfigError

    base = '[networks.o]\nkind = "ovn"\n'
    cases = {
        "": "names its logical switch",
        'switch = "a b"\n': "switch: 'a b' is not a logical name",
        'switch = "s"\nnorthbound = "tcp:10.0.0.1"\n': "northbound: 'tcp:10.0.0.1' is not",
        'switch = "s"\nnorthbound = "ssl:10.0.0.1:6641"\n': "needs ssl_key, ssl_cert and "
                                                            "ssl_ca",
        'switch = "s"\nssl_key = "/k"\n': "are for an ssl: northbound address",
        'switch = "s"\novn_rundir = "run"\n': "ovn_rundir: 'run' is not an absolute path",
        'switch = "s"\nbind_timeout = 0\n': "bind_timeout: 0 is outside",
        'switch = "s"\nuplink = "eth1"\n': "an ovn network has no uplink",
    }
    for extra, want in cases.items():
        with pytest.raises(ConfigError) as e:
            parse_config(base + extra, "c.toml")
        assert want in e.value.message and "networks.o" in e.value.message, (extra, e.value)
    with pytest.raises(ConfigError) as e:
        parse_config('[networks.p]\nbridge = "b0"\nswitch = "s"\n', "c.toml")
    assert "for kind \"ovn\" only" in e.value.message
    nic = base + 'switch = "s"\n[vms.v]\n[[vms.v.nics]]\nnetwork = "o"\n'
    from vmnet.config import resolve_vm
    from vmnet.errors import InputError

    for extra, want in (('vlan = 5\n', "vlan/trunk cannot be set on ovn network"),
                        ('rate = { to_vm = "10mbit" }\n', "rate cannot be set"),
                        ('port_isolation = true\n', "port_isolation cannot be set")):
        with pytest.raises(InputError) as ie:
            resolve_vm(parse_config(nic + extra, "c.toml"), "v", env={})
        assert want in ie.value.message, (extra, ie.value)
    two = parse_config(base + 'switch = "s"\n[networks.p]\nkind = "ovn"\nswitch = "t"\n',
                       "c.toml")
    assert two.networks["o"].bridge == two.networks["p"].bridge == "br-int"


def test_the_libvirt_hook_plugs_at_prepare_and_unplugs_at_release(
        world: OvnWorld, hosts: dict[str, Host]) -> None:
    from tests.test_hook import UUID_A, domain_xml, run_hook
    from vmnet.config import Overrides

    a = hosts["a"]
    xml = domain_xml("d1", UUID_A, [("vm1", Overrides())], a.config)
    res = run_hook(a.ch.ns, a.state, a.config, "d1", "prepare", "begin", xml)
    assert (res.returncode, res.stderr) == (0, b""), res
    assert world.bound("vmnet-vm1-0") == "a" and a.ports() == ["vm1-0"]
    assert a.iface_ids("vm1-0").get("ovn-installed") == "true"
    res = run_hook(a.ch.ns, a.state, a.config, "d1", "release", "end", xml)
    assert (res.returncode, res.stderr) == (0, b""), res
    assert lsp(world, "vmnet-vm1-0") is None and a.ports() == []
    assert a.ch.ns.link("vm1-0") is None
