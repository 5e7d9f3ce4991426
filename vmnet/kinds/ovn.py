"""Kind `ovn`: a VM NIC on an OVN logical switch.

The tap is made as on every network (owned by the VM's user, vmnet's mark), then
plugged the way OVN expects a hypervisor to plug it (os-vif's way): a *system* port of
the integration bridge (never type=tap, which OVS would open itself: EBUSY for QEMU, or
a multi-queue tap silently shared) whose Interface carries `external_ids:iface-id` (the
logical switch port), `attached-mac`, `vm-id` and vmnet's mark.  The logical switch port
`vmnet-<vm>-<nic>` (or the NIC's `port`) carries the MAC and addresses, port security,
`vmnet:vm`/`vmnet:chassis` in its external_ids, and `options:requested-chassis` this
chassis, so no other chassis claims it.  `up` waits (bounded) until this chassis'
ovn-controller has bound and installed the port (`external_ids:ovn-installed` on the
Interface).

Each step has its down twin and its check twin, and a down twin re-checks at the moment
of removal: an Interface is deleted only while it still carries this NIC's iface-id and
mark, a logical port only while it is still this VM's and requested to this chassis (a
port `--move`d to another chassis is left to it).

On the userspace datapath (`datapath_type=netdev`, no OVS kernel module) the taps are
opened and rendered without vnet_hdr, so the guest segments its own TCP: OVS 3.1 there
drops the large frames of a guest that offloads segmentation to its tap.  The NIC's MTU
defaults to what the overlay leaves on the underlay (Geneve: 58 bytes for IPv4, 78 for
IPv6; 1442 on a 1500-byte IPv4 underlay).
"""

from __future__ import annotations

import os
import time

from vmnet.engine.steps import Step
from vmnet.errors import ConflictError, NotFoundError
from vmnet.kinds import ovsdb
from vmnet.kinds.ovsdb import OvnError
from vmnet.model import Ovn
from vmnet.model.value import Value
from vmnet.render.shell import command

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from typing import Any

    from vmnet.engine.observe import HostView
    from vmnet.kernel.protocol import Kernel
    from vmnet.model import Nic, Vm
    from vmnet.state.records import NicRecord

VM_KEY = "vmnet:vm"
CHASSIS_KEY = "vmnet:chassis"
NIC_KEY = "vmnet:nic"
MARK_KEY = "vmnet:mark"
REQUESTED = "requested-chassis"
# Bytes an encapsulation adds in front of the guest's frame: outer Ethernet 14, IP 20/40,
# UDP 8, and Geneve's 8 plus OVN's 8-byte option (VXLAN: its 8 bytes, no option).
OVERHEAD = {("geneve", 4): 58, ("geneve", 6): 78, ("vxlan", 4): 50, ("vxlan", 6): 70,
            ("stt", 4): 60, ("stt", 6): 80}
UNDERLAY_MTU = 1500  # when the encap address is on no interface here
POLL = 0.005


# -- what this chassis and the databases show ------------------------------------------
class Chassis(Value):
    """This host as OVN sees it (the Open vSwitch database's external_ids)."""

    __slots__ = ("bridge", "encap_ip", "encap_type", "name", "sb", "userspace")

    def __init__(self, name: str, bridge: str, sb: str | None, encap_type: str,
                 encap_ip: str | None, userspace: bool) -> None:
        self.name = name
        self.bridge = bridge
        self.sb = sb
        self.encap_type = encap_type
        self.encap_ip = encap_ip
        self.userspace = userspace


class Lsp(Value):
    """A logical switch port as the northbound database holds it."""

    __slots__ = ("addresses", "external_ids", "name", "options", "port_security", "switch",
                 "up")

    def __init__(self, name: str, switch: str | None, addresses: tuple[str, ...],
                 port_security: tuple[str, ...], external_ids: dict[str, str],
                 options: dict[str, str], up: bool | None) -> None:
        self.name = name
        self.switch = switch
        self.addresses = addresses
        self.port_security = port_security
        self.external_ids = external_ids
        self.options = options
        self.up = up

    @property
    def vm(self) -> str | None:
        return self.external_ids.get(VM_KEY)

    @property
    def chassis(self) -> str | None:
        """The chassis vmnet asked to bind it (requested-chassis, else vmnet's note)."""
        return self.options.get(REQUESTED) or self.external_ids.get(CHASSIS_KEY)


class Iface(Value):
    """An Interface of this chassis' Open vSwitch, and the bridge its port is on."""

    __slots__ = ("bridge", "external_ids", "name", "type")

    def __init__(self, name: str, type: str, bridge: str | None,
                 external_ids: dict[str, str]) -> None:
        self.name = name
        self.type = type
        self.bridge = bridge
        self.external_ids = external_ids

    @property
    def iface_id(self) -> str | None:
        return self.external_ids.get("iface-id")

    @property
    def installed(self) -> bool:
        return self.external_ids.get("ovn-installed") == "true"


def chassis(net: Ovn) -> Chassis:
    """This chassis, refusing a host OVN is not set up on (no system-id, no bridge)."""
    a = ovsdb.ovs(net)
    top = ovsdb.rows(a, "Open_vSwitch")
    ids = dict(top[0].external_ids) if top else {}
    name = ids.get("system-id")
    if not name:
        raise NotFoundError(f"this host is not an OVN chassis: the Open vSwitch database at "
                            f"{net.ovs} has no external_ids:system-id",
                            hint="configure ovn-controller (system-id, ovn-remote, "
                                 "ovn-encap-type, ovn-encap-ip) with ovs-vsctl")
    bridge = ids.get("ovn-bridge", "br-int")
    brow = ovsdb.lookup(a, "Bridge", bridge)
    if brow is None:
        raise NotFoundError(f"no integration bridge {bridge!r} in the Open vSwitch database "
                            f"at {net.ovs}", ifname=bridge,
                            hint="ovn-controller creates it when it runs; or `ovs-vsctl "
                                 f"add-br {bridge}`")
    return Chassis(name=name, bridge=bridge, sb=ids.get("ovn-remote"),
                   encap_type=ids.get("ovn-encap-type", "geneve").split(",")[0],
                   encap_ip=ids.get("ovn-encap-ip"),
                   userspace=(brow.datapath_type or ids.get("ovn-bridge-datapath-type"))
                   == "netdev")


def controller_pid(net: Ovn) -> int | None:
    """ovn-controller's pid, from its pid file in the network's ovn_rundir, if it runs."""
    try:
        with open(os.path.join(net.rundir, "ovn-controller.pid")) as f:
            pid = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except OSError:
        return None
    return None if state in ("Z", "X") else pid


def _lsp_of(row: Any, switch: str | None) -> Lsp:
    up = row.up[0] if row.up else None
    return Lsp(name=row.name, switch=switch, addresses=tuple(row.addresses),
               port_security=tuple(row.port_security), external_ids=dict(row.external_ids),
               options=dict(row.options), up=up)


def lsp(net: Ovn, name: str) -> Lsp | None:
    """A logical switch port (its switch: the network's if the port is on it, else the
    one it is on, found by a scan of the switches)."""
    a = ovsdb.nb(net)
    ovsdb.want(a, "Logical_Switch_Port", ["name", "==", name])
    with a.ovsdb_connection.lock:
        row = ovsdb.lookup(a, "Logical_Switch_Port", name)
        if row is None:
            return None
        ours = ovsdb.lookup(a, "Logical_Switch", net.switch)
        if ours is not None and row in ours.ports:
            return _lsp_of(row, net.switch)
        on = next((sw.name for sw in a.tables["Logical_Switch"].rows.values()
                   if row in sw.ports), None)
        return _lsp_of(row, on)


def switch_exists(net: Ovn) -> bool:
    return ovsdb.lookup(ovsdb.nb(net), "Logical_Switch", net.switch) is not None


def _iface_of(a: Any, row: Any) -> Iface:
    """An Interface row as data, with the bridge its port (named as it is) is on."""
    port = ovsdb.lookup(a, "Port", row.name)
    bridge = None if port is None else next(
        (b.name for b in a.tables["Bridge"].rows.values() if port in b.ports), None)
    return Iface(row.name, row.type, bridge, dict(row.external_ids))


def holding(net: Ovn, iface_id: str) -> list[Iface]:
    """This chassis' Interfaces whose external_ids:iface-id is `iface_id` (one scan of the
    Interface table's external_ids)."""
    a = ovsdb.ovs(net)
    ovsdb.want(a, "Interface", ["external_ids", "includes", ["map", [["iface-id", iface_id]]]])
    with a.ovsdb_connection.lock:
        names = [r.name for r in a.tables["Interface"].rows.values()
                 if r.external_ids.get("iface-id") == iface_id]
    ovsdb.want(a, "Port", *(["name", "==", n] for n in names))
    with a.ovsdb_connection.lock:
        return [_iface_of(a, r) for r in a.tables["Interface"].rows.values()
                if r.external_ids.get("iface-id") == iface_id]


def _want_port(a: Any, name: str) -> None:
    ovsdb.want(a, "Interface", ["name", "==", name])
    ovsdb.want(a, "Port", ["name", "==", name])


def iface(net: Ovn, name: str) -> Iface | None:
    a = ovsdb.ovs(net)
    _want_port(a, name)
    with a.ovsdb_connection.lock:
        row = ovsdb.lookup(a, "Interface", name)
        return None if row is None else _iface_of(a, row)


def installed(net: Ovn, name: str, iface_id: str) -> bool:
    """ovn-controller has installed Interface `name` bound to `iface_id` (one lookup)."""
    a = ovsdb.ovs(net)
    _want_port(a, name)
    with a.ovsdb_connection.lock:
        row = ovsdb.lookup(a, "Interface", name)
        if row is None:
            return False
        ids = row.external_ids
        return bool(ids.get("ovn-installed") == "true" and ids.get("iface-id") == iface_id)


def binding_chassis(net: Ovn, sb_address: str | None, port: str) -> str | None:
    """The chassis the southbound database says has bound `port` (None: unbound);
    OvnError when that database cannot be read, which is no answer, not "unbound"."""
    if not sb_address:
        raise OvnError("this chassis names no southbound database (external_ids:ovn-remote "
                       "of Open_vSwitch is unset)",
                       hint="configure ovn-controller's ovn-remote")
    a = ovsdb.sb(sb_address)
    ovsdb.want(a, "Port_Binding", ["logical_port", "==", port])
    with a.ovsdb_connection.lock:
        pb = ovsdb.lookup(a, "Port_Binding", port)
        return pb.chassis[0].name if pb is not None and pb.chassis else None


def overlay_mtu(ch: Chassis, view: HostView) -> int:
    """What the encapsulation leaves of the underlay's MTU (the interface holding
    ovn-encap-ip; 1500 when it is on no interface of this namespace)."""
    fam = 6 if ch.encap_ip and ":" in ch.encap_ip else 4
    under = UNDERLAY_MTU
    if ch.encap_ip:
        link = view.link_with_address(ch.encap_ip)
        if link is not None:
            under = link.mtu
    return under - OVERHEAD.get((ch.encap_type, fam), OVERHEAD[("geneve", fam)])


# -- steps ---------------------------------------------------------------------------
def _nbctl(net: Ovn, *words: str) -> str:
    return command("ovn-nbctl", f"--db={net.nb}", *words)


def _vsctl(net: Ovn, *words: str) -> str:
    return command("ovs-vsctl", f"--db={net.ovs}", *words)


class PutLsp(Step):
    """Create or update a logical switch port as this VM's, requested to this chassis;
    the down twin puts back what was there (`prev`) or removes the port."""

    __slots__ = ("addresses", "chassis", "external_ids", "net", "port", "port_security",
                 "prev", "switch", "vm")

    def __init__(self, net: Ovn, port: str, vm: str, chassis: str,
                 addresses: tuple[str, ...], port_security: tuple[str, ...],
                 external_ids: tuple[tuple[str, str], ...], prev: Lsp | None = None) -> None:
        self.net = net
        self.switch = net.switch
        self.port = port
        self.vm = vm
        self.chassis = chassis
        self.addresses = addresses
        self.port_security = port_security
        self.external_ids = external_ids
        self.prev = prev

    def ip(self, netns: str | None = None) -> str:
        words = ["--may-exist", "lsp-add", self.switch, self.port, "--",
                 "lsp-set-addresses", self.port, *self.addresses, "--",
                 "lsp-set-port-security", self.port, *self.port_security, "--",
                 "set", "Logical_Switch_Port", self.port,
                 f"options:{REQUESTED}={self.chassis}"]
        for k, v in self.external_ids:
            words.append(f'external_ids:"{k}"="{v}"')
        return _nbctl(self.net, *words)

    def run(self, k: Kernel) -> None:
        a = ovsdb.nb(self.net)
        now = lsp(self.net, self.port)
        ext = dict(self.external_ids)
        cols: dict[str, Any] = {"addresses": list(self.addresses),
                                "port_security": list(self.port_security)}
        if now is None:
            ovsdb.run(a, f"adding logical switch port {self.port!r} to {self.switch!r}", [
                a.lsp_add(self.switch, self.port, external_ids=ext,
                          options={REQUESTED: self.chassis}, **cols)])
            return
        seen = self.prev.chassis if self.prev is not None else None
        if now.vm != self.vm or now.chassis not in (seen, self.chassis):
            raise ConflictError(f"logical switch port {self.port!r} changed while vmnet "
                                f"planned (now VM {now.vm!r}, chassis {now.chassis!r})",
                                hint="run `vmnet up` again to see what it holds now")
        options = {**now.options, REQUESTED: self.chassis}
        ovsdb.run(a, f"updating logical switch port {self.port!r}", [
            a.db_set("Logical_Switch_Port", self.port, ("external_ids", ext),
                     ("options", options), *cols.items())])

    def undo(self) -> Step:
        if self.prev is None:
            return DropLsp(self.net, self.port, self.vm, self.chassis)
        p = self.prev
        return RestoreLsp(self.net, p)

    def check(self, view: HostView) -> str | None:
        now = lsp(self.net, self.port)
        if now is None:
            return "missing"
        if now.vm != self.vm:
            return "foreign"
        if now.chassis != self.chassis:
            return "moved"
        return None


class RestoreLsp(Step):
    """Put a logical switch port back as it was (an `up` that failed after changing it)."""

    __slots__ = ("net", "prev")

    def __init__(self, net: Ovn, prev: Lsp) -> None:
        self.net = net
        self.prev = prev

    def ip(self, netns: str | None = None) -> str:
        p = self.prev
        return _nbctl(self.net, "lsp-set-addresses", p.name, *p.addresses, "--",
                      "lsp-set-port-security", p.name, *p.port_security, "--",
                      "set", "Logical_Switch_Port", p.name,
                      *(f'options:"{k}"="{v}"' for k, v in p.options.items()),
                      *(f'external_ids:"{k}"="{v}"' for k, v in p.external_ids.items()))

    def run(self, k: Kernel) -> None:
        a = ovsdb.nb(self.net)
        p = self.prev
        if lsp(self.net, p.name) is None:
            return
        ovsdb.run(a, f"restoring logical switch port {p.name!r}", [
            a.db_set("Logical_Switch_Port", p.name, ("external_ids", p.external_ids),
                     ("options", p.options), ("addresses", list(p.addresses)),
                     ("port_security", list(p.port_security)))])


class DropLsp(Step):
    """Remove a logical switch port, only while it is still this VM's and requested to this
    chassis (re-checked at the moment of removal)."""

    __slots__ = ("chassis", "net", "port", "vm")

    def __init__(self, net: Ovn, port: str, vm: str, chassis: str) -> None:
        self.net = net
        self.port = port
        self.vm = vm
        self.chassis = chassis

    def ip(self, netns: str | None = None) -> str:
        return _nbctl(self.net, "--if-exists", "lsp-del", self.port)

    def run(self, k: Kernel) -> None:
        now = lsp(self.net, self.port)
        if now is None or now.vm != self.vm or now.chassis != self.chassis:
            return  # gone, someone else's, or moved to another chassis: not ours to remove
        a = ovsdb.nb(self.net)
        ovsdb.run(a, f"removing logical switch port {self.port!r}",
                  [a.lsp_del(self.port, if_exists=True)])


class BindPort(Step):
    """Add the tap to the integration bridge as a system port bound to `iface_id`."""

    __slots__ = ("bridge", "external_ids", "net", "tap")

    def __init__(self, net: Ovn, bridge: str, tap: str,
                 external_ids: tuple[tuple[str, str], ...]) -> None:
        self.net = net
        self.bridge = bridge
        self.tap = tap
        self.external_ids = external_ids

    @property
    def iface_id(self) -> str:
        return dict(self.external_ids)["iface-id"]

    def ip(self, netns: str | None = None) -> str:
        return _vsctl(self.net, "--may-exist", "add-port", self.bridge, self.tap, "--",
                      "set", "Interface", self.tap,
                      *(f'external_ids:"{k}"="{v}"' for k, v in self.external_ids))

    def run(self, k: Kernel) -> None:
        a = ovsdb.ovs(self.net)
        _want_port(a, self.tap)  # (add-port's may_exist and the check below read them)
        ovsdb.run(a, f"adding {self.tap!r} to {self.bridge!r}", [
            a.add_port(self.bridge, self.tap, may_exist=True),
            a.db_set("Interface", self.tap, ("type", ""),
                     ("external_ids", dict(self.external_ids)))])
        # ovs-vswitchd reports a port it could not open only in the Interface row (and
        # ovsdbapp only logs it): refused here, the port taken out again.
        with a.ovsdb_connection.lock:
            row = ovsdb.lookup(a, "Interface", self.tap)
            error = (row.error[0] if row.error else None) if row is not None else "gone"
            ofport = (row.ofport[0] if row.ofport else None) if row is not None else None
        if error or ofport == -1:
            ovsdb.run(a, f"removing {self.tap!r} again", [a.del_port(self.tap, if_exists=True)])
            raise OvnError(f"Open vSwitch could not add {self.tap!r} to {self.bridge!r}: "
                           f"{error or 'no OpenFlow port'}", ifname=self.tap,
                           hint="see ovs-vswitchd's log")

    def undo(self) -> Step:
        return UnbindPort(self.net, self.tap, self.iface_id, dict(self.external_ids)[MARK_KEY])

    def check(self, view: HostView) -> str | None:
        got = iface(self.net, self.tap)
        if got is None or got.bridge != self.bridge:
            return "detached"
        if got.iface_id != self.iface_id:
            return "foreign"
        return None if all(got.external_ids.get(k) == v for k, v in self.external_ids) and \
            got.type == "" else "changed"


class UnbindPort(Step):
    """Remove an Interface from Open vSwitch, only while it still carries `iface_id` and
    vmnet's `mark` (re-checked at the moment of removal)."""

    __slots__ = ("iface_id", "mark", "net", "tap")

    def __init__(self, net: Ovn, tap: str, iface_id: str, mark: str) -> None:
        self.net = net
        self.tap = tap
        self.iface_id = iface_id
        self.mark = mark

    def ip(self, netns: str | None = None) -> str:
        return _vsctl(self.net, "--if-exists", "del-port", self.tap)

    def run(self, k: Kernel) -> None:
        got = iface(self.net, self.tap)
        if got is None or got.iface_id != self.iface_id or \
                got.external_ids.get(MARK_KEY) != self.mark:
            return
        a = ovsdb.ovs(self.net)
        ovsdb.run(a, f"removing {self.tap!r} from Open vSwitch",
                  [a.del_port(self.tap, if_exists=True)])


class WaitBound(Step):
    """Wait (at most the network's bind_timeout) until this chassis' ovn-controller has
    bound the port and installed its flows."""

    __slots__ = ("net", "port", "tap")

    def __init__(self, net: Ovn, tap: str, port: str) -> None:
        self.net = net
        self.tap = tap
        self.port = port

    def ip(self, netns: str | None = None) -> str:
        return _vsctl(self.net, f"--timeout={int(self.net.bind_timeout + 0.999)}",
                      "wait-until", "Interface", self.tap, "external_ids:ovn-installed=true")

    def run(self, k: Kernel) -> None:
        start = time.monotonic()
        deadline = start + self.net.bind_timeout
        while True:
            if installed(self.net, self.tap, self.port):
                from vmnet import log

                log.debug(f"{self.port}: bound on this chassis after "
                          f"{(time.monotonic() - start) * 1000:.1f} ms")
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        why = "ovn-controller is not running" if controller_pid(self.net) is None else \
            "ovn-controller did not claim it"
        raise OvnError(f"logical port {self.port!r} was not bound on this chassis within "
                       f"{self.net.bind_timeout:g} s ({why})",
                       hint="check ovn-controller's log, that its ovn-remote reaches the "
                            "southbound database, and that the port is not requested to "
                            "another chassis", ifname=self.tap)

    def check(self, view: HostView) -> str | None:
        got = iface(self.net, self.tap)
        return None if got is not None and got.installed else "unbound"


# -- planning --------------------------------------------------------------------------
class OvnPlan(Value):
    """One NIC's OVN steps: before the tap exists, and once it does."""

    __slots__ = ("after", "before", "mtu", "record", "vnet_hdr")

    def __init__(self, before: list[Step], after: list[Step], mtu: int, vnet_hdr: bool,
                 record: dict[str, object]) -> None:
        self.before = before
        self.after = after
        self.mtu = mtu
        self.vnet_hdr = vnet_hdr
        self.record = record


def plan_network(net: Ovn, bridge: str) -> Chassis:
    """What an ovn network needs of this host before a NIC goes on it; refuses, before
    any change, a host or deployment that cannot take one."""
    ch = chassis(net)
    if ch.bridge != bridge:
        raise ConflictError(f"ovn-controller's integration bridge is {ch.bridge!r}, not "
                            f"{bridge!r} as the network says", ifname=bridge,
                            hint=f"set the network's bridge = \"{ch.bridge}\"")
    if controller_pid(net) is None:
        raise NotFoundError(f"ovn-controller is not running (no live pid in "
                            f"{os.path.join(net.rundir, 'ovn-controller.pid')})",
                            hint="start ovn-controller on this chassis (or set the network's "
                                 "ovn_rundir to where it writes its pid file)")
    if not switch_exists(net):
        raise NotFoundError(f"logical switch {net.switch!r} does not exist in the "
                            f"northbound database at {net.nb}",
                            hint=f"create it (ovn-nbctl ls-add {net.switch}) or fix the "
                                 "network's switch")
    return ch


def addresses_of(nic: Nic) -> tuple[str, ...]:
    return tuple(a.partition("/")[0] for a in ((nic.ip,) if nic.ip else ()) + nic.addresses)


def plan_nic(vm: Vm, nic: Nic, ch: Chassis, view: HostView, *, move: bool) -> OvnPlan:
    """The steps that put `nic` on its logical switch, refusing (before any change) a
    port name held by something not vmnet's, a port of another VM, one bound to another
    chassis (unless `move`), or an interface holding the same iface-id that vmnet may
    not remove."""
    net = nic.network.ovn
    assert net is not None
    port = vm.lsp(nic)
    ips = addresses_of(nic)
    if nic.ip_filter and not ips:
        raise ConflictError(f"NIC {nic.index} of {vm.name!r}: ip_filter on ovn network "
                            f"{nic.network.name!r} needs its addresses",
                            hint="give the NIC ip = \"...\" or addresses = [...]")
    addresses = (" ".join((nic.mac, *ips)),)
    security = (" ".join((nic.mac, *ips)),) if nic.ip_filter else (nic.mac,)
    ext = ((VM_KEY, vm.name), (CHASSIS_KEY, ch.name), (NIC_KEY, str(nic.index)))
    before: list[Step] = []
    now = lsp(net, port)
    if now is not None:
        if now.vm is None:
            raise ConflictError(f"logical switch port {port!r} exists and is not vmnet's "
                                f"(no {VM_KEY} in its external_ids)",
                                hint="give the NIC another port = \"...\", or remove that "
                                     "port from the northbound database")
        if now.vm != vm.name:
            raise ConflictError(f"logical switch port {port!r} belongs to VM {now.vm!r}",
                                hint="give the NIC another port name")
        if now.switch not in (None, net.switch):
            raise ConflictError(f"logical switch port {port!r} is on switch "
                                f"{now.switch!r}, not {net.switch!r}",
                                hint=f"`vmnet down {vm.name}` where it is up, then up again")
        if now.chassis not in (None, ch.name) and not move:
            raise ConflictError(f"logical switch port {port!r} of VM {vm.name!r} is bound "
                                f"to chassis {now.chassis!r}",
                                hint="`vmnet up --move` takes it to this chassis (the VM "
                                     "there loses it)")
    want = PutLsp(net, port, vm.name, ch.name, addresses, security, ext, now)
    if now is None or (now.addresses, now.port_security, now.chassis) != (
            addresses, security, ch.name) or any(now.external_ids.get(k) != v
                                                 for k, v in ext):
        before.append(want)
    # An interface of this chassis already holding the iface-id: ours to unplug only if
    # it is a vmnet tap no process holds.
    for other in holding(net, port):
        if other.name == nic.tap:
            continue
        link = view.link(other.name)
        mark = other.external_ids.get(MARK_KEY)
        if link is None or link.kind != "tun" or mark is None or link.alias != mark or \
                link.carrier:
            who = "not vmnet's"
            if link is not None and link.carrier:
                from vmnet.engine.holders import tap_holders

                who = ", ".join(tap_holders({other.name}).get(other.name, [])) or "a process"
            raise ConflictError(f"interface {other.name!r} on {other.bridge or 'no bridge'} "
                                f"already holds iface-id {port!r} ({who})",
                                ifname=other.name,
                                hint="stop what uses it, or remove it from Open vSwitch "
                                     f"(ovs-vsctl del-port {other.name})")
        before.append(UnbindPort(net, other.name, port, mark))
    after = plug_steps(net, ch.bridge, vm.name, nic.index, nic.tap, nic.mac, port)
    mtu = nic.mtu or nic.network.mtu or overlay_mtu(ch, view)
    record: dict[str, object] = {"switch": net.switch, "port": port, "chassis": ch.name,
                                 "net": net.to_json()}
    return OvnPlan(before, after, mtu, nic.vnet_hdr and not ch.userspace, record)


def plug_steps(net: Ovn, bridge: str, vm: str, index: int, tap: str, mac: str,
               port: str) -> list[Step]:
    """Plug the tap into the integration bridge bound to `port`, and wait for the binding."""
    from vmnet.model import nic_mark

    ids = (("iface-id", port), ("attached-mac", mac), ("vm-id", vm),
           ("iface-status", "active"), (MARK_KEY, nic_mark(vm, index)))
    return [BindPort(net, bridge, tap, ids), WaitBound(net, tap, port)]


def record_steps(vm: str, n: NicRecord) -> list[Step]:
    """The OVN steps `up` took for a recorded NIC (status loops over their checks)."""
    got = recorded(n)
    if got is None:
        return []
    net, port, _ = got
    return plug_steps(net, n.bridge, vm, n.index, n.tap, n.mac, port)


def recorded(n: NicRecord) -> tuple[Ovn, str, str] | None:
    """(network, logical port, chassis) of a NIC record on an ovn network."""
    if not n.ovn:
        return None
    d = n.ovn
    return (Ovn.from_json(dict(d["net"])),  # type: ignore[call-overload]
            str(d["port"]), str(d["chassis"]))


def down_steps(vm: str, n: NicRecord) -> list[Step]:
    """A recorded NIC's OVN twins: unplug its interface, drop its port (each re-checked)."""
    got = recorded(n)
    if got is None:
        return []
    net, port, ch = got
    from vmnet.model import nic_mark

    return [UnbindPort(net, n.tap, port, nic_mark(vm, n.index)), DropLsp(net, port, vm, ch)]


def port_status(n: NicRecord) -> dict[str, object] | None:
    """What `status` shows of a NIC on an ovn network: its logical port, the chassis that
    has bound it (the southbound database), up/down, whether it is installed here, and
    its addresses; or the error that kept vmnet from knowing."""
    got = recorded(n)
    if got is None:
        return None
    net, port, _ = got
    out: dict[str, object] = {"port": port, "switch": net.switch}
    try:
        p = lsp(net, port)
        if p is None:
            return {**out, "error": f"port {port} is missing from the northbound database"}
        local = iface(net, n.tap)
        me = chassis(net)
        try:
            bound = binding_chassis(net, me.sb, port)
        except OvnError as e:  # the rest is still worth showing
            bound = None
            out["southbound_error"] = e.message
        out.update(bound=bound, up=bool(p.up),
                   installed=local is not None and local.installed,
                   requested=p.chassis, here=me.name, addresses=list(p.addresses),
                   port_security=list(p.port_security))
    except (OvnError, NotFoundError) as e:
        out["error"] = e.message
    return out


def status_text(d: dict[str, object]) -> str:
    """One line of port_status for a person."""
    head = f"port {d['port']} on switch {d['switch']}"
    if "error" in d:
        return f"{head}: {d['error']}"
    moved = "" if d["requested"] == d["here"] else f", requested to {d['requested']} (moved)"
    addrs = " ".join(str(a) for a in d["addresses"]) or "-"  # type: ignore[attr-defined]
    bound = f"bound to {d['bound'] or 'no chassis'}" if "southbound_error" not in d else \
        f"binding unknown ({d['southbound_error']})"
    return (f"{head}: {bound} ({'up' if d['up'] else 'down'}, "
            f"{'installed' if d['installed'] else 'not installed'} here{moved}), "
            f"addresses {addrs}")
