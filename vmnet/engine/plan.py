"""Planning: desired model + what the host shows + records -> ordered steps.

Every check that can refuse a request happens here, before anything changes,
so a refused request leaves the host exactly as it was.  The planner reads
the host only through a HostView (vmnet.engine.observe) and the records only
through Claims, and changes neither.
"""

from __future__ import annotations

from vmnet.engine.ownership import is_our_bridge, is_our_tap
from vmnet.engine.steps import (
    AddAddress,
    AttachTap,
    AttachUplink,
    ConfigureTap,
    CreateBridge,
    CreateTap,
    DeleteLinks,
    DetachUplink,
    SetUp,
    Step,
)
from vmnet.errors import BusyError, ConflictError, InputError, NotFoundError, VmnetError
from vmnet.kernel.base import LinkInfo, TapSpec
from vmnet.model import Network, Nic, Vm, nic_mark
from vmnet.model import validate as v
from vmnet.model.value import Value
from vmnet.nicpolicy import filters
from vmnet.nicpolicy.filters import ProtectPorts, UnprotectPorts
from vmnet.state.records import BridgeRecord, NicRecord, VmRecord

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Iterable

    from vmnet.engine.observe import HostView
    from vmnet.kinds.ovn import Chassis
    from vmnet.kinds.site import Site
    from vmnet.state.store import StateStore


class Claims:
    """Which VMs' records claim a tap name or a MAC on a bridge.

    Backed by the state index (vmnet.state.store: one lookup per question) or,
    for tests and bulk plans, by records in memory; a bulk plan adds each VM's
    claims as it goes, so the next VM sees them.
    """

    def __init__(self, store: StateStore | None = None,
                 records: dict[str, VmRecord] | None = None,
                 exclude: Iterable[str] = ()) -> None:
        self.store = store
        self.exclude = set(exclude)
        self.taps: dict[str, str] = {}
        self.macs: dict[tuple[str, str], str] = {}
        self.ips: dict[tuple[str, str], str] = {}
        for name, r in (records or {}).items():
            if name not in self.exclude:
                for n in r.nics:
                    self.taps.setdefault(n.tap, name)
                    self.macs.setdefault((n.bridge, n.mac), name)
                    if n.ip is not None:
                        self.ips.setdefault((n.bridge, n.ip), name)

    def add(self, vm: str, nics: list[NicRecord]) -> None:
        for n in nics:
            self.taps[n.tap] = vm
            self.macs[(n.bridge, n.mac)] = vm
            if n.ip is not None:
                self.ips[(n.bridge, n.ip)] = vm

    def ip_owner(self, bridge: str, ip: str) -> str | None:
        owner = self.ips.get((bridge, ip))
        if owner is None and self.store is not None:
            owner = self.store.ip_owner(bridge, ip)
            owner = None if owner in self.exclude else owner
        return owner

    def tap_owner(self, tap: str) -> str | None:
        owner = self.taps.get(tap)
        if owner is None and self.store is not None:
            owner = self.store.tap_owner(tap)
            owner = None if owner in self.exclude else owner
        return owner

    def mac_owner(self, bridge: str, mac: str) -> str | None:
        owner = self.macs.get((bridge, mac))
        if owner is None and self.store is not None:
            owner = self.store.mac_owner(bridge, mac)
            owner = None if owner in self.exclude else owner
        return owner


class BridgeRecords:
    """The bridge records a plan reads (from the store, on demand) and will write."""

    def __init__(self, store: StateStore | None = None,
                 records: dict[str, BridgeRecord] | None = None) -> None:
        self.store = store
        self._recs: dict[str, BridgeRecord | None] = dict(records or {})

    def get(self, bridge: str) -> BridgeRecord | None:
        if bridge not in self._recs:
            self._recs[bridge] = None if self.store is None else self.store.get_bridge(bridge)
        return self._recs[bridge]

    def __setitem__(self, bridge: str, rec: BridgeRecord) -> None:
        self._recs[bridge] = rec

    def all(self) -> dict[str, BridgeRecord]:
        """Every bridge record of the namespace, with this plan's changes (reads them all:
        only when a nat/isolated network comes or goes)."""
        out = dict(self.store.bridges()) if self.store is not None else {}
        for bridge, rec in self._recs.items():
            if rec is None:
                out.pop(bridge, None)
            else:
                out[bridge] = rec
        return out


class UpPlan(Value):
    __slots__ = ("changed_bridges", "new_bridges", "nics", "notes", "steps", "vm")

    def __init__(self, vm: Vm, steps: list[Step], nics: list[NicRecord],
                 new_bridges: list[BridgeRecord], changed_bridges: list[BridgeRecord],
                 notes: list[str] | None = None) -> None:
        self.notes = notes or []  # what the person should know (a firewall that drops)
        self.vm = vm
        self.steps = steps
        self.nics = nics
        self.new_bridges = new_bridges
        self.changed_bridges = changed_bridges

    @property
    def noop(self) -> bool:
        return not self.steps


class DownPlan(Value):
    __slots__ = ("drop_bridges", "kept_bridges", "put_bridges", "skipped", "steps", "taps",
                 "vm")

    def __init__(self, vm: str, steps: list[Step], taps: list[str], drop_bridges: list[str],
                 kept_bridges: list[str], skipped: list[str] | None = None,
                 put_bridges: list[BridgeRecord] | None = None) -> None:
        self.put_bridges = put_bridges or []  # records that take over a released network's
        self.vm = vm
        self.steps = steps
        self.taps = taps
        self.drop_bridges = drop_bridges
        self.kept_bridges = kept_bridges
        self.skipped = skipped or []

    @property
    def noop(self) -> bool:
        return not self.steps and not self.drop_bridges


def _plan_network(net: Network, view: HostView, bridges: BridgeRecords,
                  steps: list[Step], new: list[BridgeRecord],
                  changed: list[BridgeRecord], site: Site | None, notes: list[str]) -> None:
    br = view.link(net.bridge)
    rec = bridges.get(net.bridge)
    if br is not None and br.kind != "bridge":
        raise ConflictError(f"bridge {net.bridge!r} exists but is a {br.kind or 'plain'} "
                            "interface, not a bridge", ifname=net.bridge,
                            hint="choose another --bridge name")
    if net.l3:
        from vmnet.kinds import l3

        if site is None:
            raise InputError(f"network {net.name!r} is of kind {net.kind}, which this "
                             "operation cannot set up")
        made = l3.plan_network(net, br, rec, view, bridges.all, site, steps, notes)
        if made is not rec:
            new.append(made)
            bridges[net.bridge] = made
        return
    if rec is not None and rec.kind != "bridge":
        raise ConflictError(f"bridge {net.bridge!r} is vmnet's {rec.kind} network "
                            f"{rec.network!r}, not a plain bridge", ifname=net.bridge,
                            hint=f"use network {rec.network!r} for this VM, or another bridge")
    if br is None:
        steps.append(CreateBridge(net.bridge, net.bridge_mac, net.mtu, net.stp,
                                  net.forward_delay, net.mark, net.vlan_filtering))
        if net.address:
            steps.append(AddAddress(net.bridge, net.address))
        steps.append(SetUp(net.bridge))
        rec = BridgeRecord(bridge=net.bridge, network=net.name, created=True,
                           address=net.address)
        new.append(rec)
        bridges[net.bridge] = rec
        br = view.planned(LinkInfo(0, net.bridge, "bridge", net.bridge_mac, net.mtu or 1500,
                                   True, False, None, net.mark,
                                   vlan_filtering=net.vlan_filtering))
    elif rec is None:
        rec = BridgeRecord(bridge=net.bridge, network=net.name, created=False)
        new.append(rec)
        bridges[net.bridge] = rec
    if net.uplink is None:
        return
    up = view.link(net.uplink)
    if up is None:
        raise NotFoundError(f"uplink {net.uplink!r} does not exist", ifname=net.uplink,
                            hint="check the name with `ip link`")
    if up.kind == "bridge":
        raise ConflictError(f"uplink {net.uplink!r} is a bridge; a bridge cannot be a port "
                            f"of bridge {net.bridge!r}", ifname=net.uplink,
                            hint="give the physical interface (or veth, bond) as --uplink, "
                                 "or use that bridge itself with --bridge")
    if up.master == br.index:
        return  # already a port of this bridge (vmnet's or the admin's doing)
    if up.master is not None:
        owner = view.by_index(up.master)
        raise ConflictError(f"uplink {net.uplink!r} is already enslaved to "
                            f"{owner.name if owner else up.master}", ifname=net.uplink,
                            hint="an interface can belong to one master only")
    traffic = view.host_traffic(net.uplink)
    if traffic:
        raise ConflictError(f"uplink {net.uplink!r} carries the host's traffic "
                            f"({', '.join(traffic[:4])}); enslaving it would cut the host off",
                            ifname=net.uplink,
                            hint="give an interface with no address, route or rule of its "
                                 "own (vmnet does not move addresses yet)")
    steps.append(AttachUplink(net.uplink, net.bridge, bring_up=not up.up))
    view.planned(up.with_(master=br.index, up=True), net.bridge)
    # What the uplink was before vmnet first touched it survives the bridge being deleted
    # and re-created behind vmnet's back (the uplink then stays up, freed, meanwhile).
    was_down = rec.uplink_was_down if rec.uplink_attached and rec.uplink == net.uplink \
        else not up.up
    _put_bridge_record(bridges, new, changed,
                       rec.with_(uplink=net.uplink, uplink_attached=True,
                                 uplink_was_down=was_down))


def plan_up(vm: Vm, view: HostView, claims: Claims,
            bridges: BridgeRecords, *, force: bool = False, site: Site | None = None,
            move: bool = False) -> UpPlan:
    """Steps that give `vm` its network; raises before any change if refused.

    `bridges`: updated with the bridge records this plan will write.  A tap of the
    VM that exists already is brought to the settings asked for (MTU at any time;
    MAC and bridge only while no guest holds it, unless `force`).
    """
    steps: list[Step] = []
    new: list[BridgeRecord] = []
    changed: list[BridgeRecord] = []
    notes: list[str] = []
    chassis: dict[str, Chassis] = {}
    for net in {n.network.name if n.network.ovn else n.network.bridge: n.network
                for n in vm.nics}.values():
        if net.ovn is not None:
            from vmnet.kinds import ovn

            chassis[net.name] = ovn.plan_network(net.ovn, net.bridge)
            continue
        _plan_network(net, view, bridges, steps, new, changed, site, notes)

    nic_records: list[NicRecord] = []
    ips: set[str] = set()
    nics: list[Nic] = []  # as they will be (an ovn NIC's MTU and vnet_hdr are the host's)
    for nic in vm.nics:
        bridge = nic.network.bridge
        owner = claims.tap_owner(nic.tap)
        if owner is not None and owner != vm.name:
            raise ConflictError(f"tap {nic.tap!r} already belongs to VM {owner!r}",
                                ifname=nic.tap, hint="give this NIC another tap name")
        if nic.network.ovn is not None:
            nic = _plan_ovn_nic(vm, nic, view, claims, chassis[nic.network.name], steps,
                                nic_records, move=move, force=force)
            nics.append(nic)
            continue
        nics.append(nic)
        link = view.link(nic.tap)
        br = view.link(bridge)
        assert br is not None  # made by _plan_network
        _check_mac(vm, nic, claims, view, link, br)
        mtu = nic.mtu or nic.network.mtu or (br.mtu if br.index > 0 else None)
        if nic.mtu and br.index > 0 and nic.mtu < br.mtu and not is_our_bridge(br):
            raise ConflictError(f"NIC {nic.index} MTU {nic.mtu} would lower the MTU of bridge "
                                f"{bridge!r} ({br.mtu}), which vmnet did not create",
                                ifname=nic.tap, hint=f"use --mtu {br.mtu} or more")
        ip = None
        if nic.network.l3:
            from vmnet.kinds import l3

            assert site is not None  # _plan_network refused an L3 network without one
            brec = bridges.get(bridge)
            assert brec is not None
            ip = l3.nic_address(vm, nic, brec, claims, ips)
            ips.add(ip)
            host = l3.host_step(site, bridge, vm.name, nic.index, nic.tap, nic.mac, ip)
            if link is None or host.check(view) is not None:
                steps.append(host)
        l3rec = bridges.get(bridge) if nic.network.l3 else None
        pf = filters.for_nic(vm, nic, ip, l3rec.address if l3rec is not None else None)
        protect = None if pf is None else ProtectPorts((pf,))
        if protect is not None and (link is None or protect.check(view) is not None):
            steps.append(protect)  # before the tap exists, so before it joins the bridge
        # The record keeps the MTU asked for (None: the bridge's), not the one applied.
        nic_records.append(NicRecord(
            index=nic.index, tap=nic.tap, bridge=bridge, network=nic.network.name,
            mac=nic.mac, tap_mac=nic.tap_mac, mtu=nic.mtu or nic.network.mtu,
            queues=nic.queues,
            vnet_hdr=nic.vnet_hdr, owner=vm.uid, group=vm.gid, model=nic.model, ip=ip,
            filter=filters.record_of(nic, pf), isolated=nic.port_isolation,
            rate=filters.rates_of(nic), vlans=_vlans_record(nic)))
        # the port's settings, once it is on the bridge
        after = _port_steps(vm, nic, br, view, bridges, new, changed, steps)
        if link is not None:
            _check_existing_tap(vm, nic, link)
            steps += _change_existing(vm, nic, link, br, mtu, force)
            if link.master != br.index or not link.up:
                view.planned(link.with_(master=br.index, up=True), bridge)
            steps += [s for s in after if link.master != br.index or s.check(view)]
            continue
        count = view.port_count(bridge)
        if count is not None and count + 1 > v.MAX_BRIDGE_PORTS:
            raise ConflictError(f"bridge {bridge!r} would have {count + 1} ports; a Linux "
                                f"bridge holds at most {v.MAX_BRIDGE_PORTS}", ifname=bridge,
                                hint="spread the VMs over several networks")
        spec = TapSpec(name=nic.tap, owner=vm.uid, group=vm.gid, multi_queue=nic.multi_queue,
                       mac=nic.tap_mac, mtu=mtu, alias=vm.mark(nic))
        steps.append(CreateTap(spec))
        steps.append(AttachTap(nic.tap, bridge))
        steps += after
        view.planned(LinkInfo(0, nic.tap, "tun", nic.tap_mac, mtu or 1500, True, False,
                              br.index, spec.alias), bridge)
    claims.add(vm.name, nic_records)
    if chassis:  # (an ovn NIC's MTU and vnet_hdr are this chassis')
        vm = Vm(name=vm.name, uid=vm.uid, gid=vm.gid, nics=tuple(nics), user=vm.user)
    return UpPlan(vm=vm, steps=steps, nics=nic_records, new_bridges=new,
                  changed_bridges=changed, notes=notes)


def _plan_ovn_nic(vm: Vm, nic: Nic, view: HostView, claims: Claims, ch: Chassis,
                  steps: list[Step], records: list[NicRecord], *, move: bool,
                  force: bool) -> Nic:
    """A NIC on an ovn network: its tap, plugged into the integration bridge and bound to
    its logical switch port (vmnet.kinds.ovn).  Returns the NIC as it will be."""
    from vmnet.kinds import ovn

    _check_mac_claim(vm, nic, claims)
    link = view.link(nic.tap)
    op = ovn.plan_nic(vm, nic, ch, view, move=move)
    nic = Nic(**{**nic.as_dict(), "mtu": op.mtu, "vnet_hdr": op.vnet_hdr})  # type: ignore[arg-type]
    steps += op.before
    if link is not None:
        _check_existing_tap(vm, nic, link)
        steps += _retune_tap(vm, nic, link, op.mtu, force)
        if not link.up:
            steps.append(SetUp(nic.tap))
        steps += [s for s in op.after if s.check(view) is not None]
    else:
        spec = TapSpec(name=nic.tap, owner=vm.uid, group=vm.gid, multi_queue=nic.multi_queue,
                       mac=nic.tap_mac, mtu=op.mtu, alias=vm.mark(nic))
        steps += [CreateTap(spec), SetUp(nic.tap), *op.after]
        view.planned(LinkInfo(0, nic.tap, "tun", nic.tap_mac, op.mtu, True, False, None,
                              spec.alias))
    records.append(NicRecord(
        index=nic.index, tap=nic.tap, bridge=nic.network.bridge, network=nic.network.name,
        mac=nic.mac, tap_mac=nic.tap_mac, mtu=op.mtu, queues=nic.queues,
        vnet_hdr=op.vnet_hdr, owner=vm.uid, group=vm.gid, model=nic.model, ip=nic.ip,
        ovn=op.record))
    return nic


def _vlans_record(nic: Nic) -> dict[str, object] | None:
    if nic.vlan is not None:
        return {"vlan": nic.vlan}
    if nic.trunk:
        return {"trunk": list(nic.trunk), "native": nic.native_vlan}
    return None


def _port_steps(vm: Vm, nic: Nic, br: LinkInfo, view: HostView, bridges: BridgeRecords,
                new: list[BridgeRecord], changed: list[BridgeRecord],
                steps: list[Step]) -> list[Step]:
    """The NIC's port settings that go after its attach (isolation, VLANs); the VLANs its
    bridge's uplink still lacks go into `steps` now, and into the bridge record (counted:
    removed with the last NIC that uses them).  Their modules load only for NICs that
    use them."""
    out: list[Step] = []
    if nic.port_isolation:
        from vmnet.nicpolicy.isolation import IsolatePort

        out.append(IsolatePort(nic.tap, nic.network.bridge, nic.mac))
    if nic.vlan is None and not nic.trunk:
        return out
    from vmnet.nicpolicy import vlans

    rec = bridges.get(nic.network.bridge)
    uplink_steps, uplink_vlans = vlans.plan_nic(vm, nic, br, view, rec)
    steps += uplink_steps
    if rec is not None and uplink_vlans != rec.uplink_vlans:
        _put_bridge_record(bridges, new, changed, rec.with_(uplink_vlans=uplink_vlans))
    out.append(vlans.SetPortVlans(nic.tap, vlans.for_nic(nic)))
    return out


def _put_bridge_record(bridges: BridgeRecords, new: list[BridgeRecord],
                       changed: list[BridgeRecord], updated: BridgeRecord) -> None:
    """A plan's new version of a bridge record: in `new` if this plan makes it, else in
    `changed` (once)."""
    mine = next((i for i, r in enumerate(new) if r.bridge == updated.bridge), None)
    if mine is not None:
        new[mine] = updated
    else:
        changed[:] = [r for r in changed if r.bridge != updated.bridge] + [updated]
    bridges[updated.bridge] = updated


def _change_existing(vm: Vm, nic: Nic, link: LinkInfo, br: LinkInfo, mtu: int | None,
                     force: bool) -> list[Step]:
    """Steps that bring an existing tap of this VM to the NIC's settings.

    Its MTU may change under a running guest; its MAC (fixed in the guest's QEMU) and
    its bridge (the guest would lose its network) only while no process holds it.
    """
    out = _retune_tap(vm, nic, link, mtu, force)
    held = link.carrier and not force
    if link.master != br.index or not link.up:
        if held and link.master is not None and link.master != br.index:
            raise BusyError(f"tap {nic.tap!r} of VM {vm.name!r} is held by a running guest: "
                            f"moving it to bridge {nic.network.bridge!r} would cut the guest "
                            "off its network", ifname=nic.tap,
                            hint="stop the VM first (--force moves it anyway)")
        out.append(AttachTap(nic.tap, nic.network.bridge))
    return out


def _retune_tap(vm: Vm, nic: Nic, link: LinkInfo, mtu: int | None,
                force: bool) -> list[Step]:
    """An existing tap's MAC and MTU to the NIC's: the MTU at any time, the MAC (fixed in
    the guest's QEMU) only while no process holds the tap (unless `force`)."""
    new_mac = nic.tap_mac if link.mac != nic.tap_mac else None
    new_mtu = mtu if mtu and link.mtu != mtu else None
    if new_mac and link.carrier and not force:
        raise BusyError(f"tap {nic.tap!r} of VM {vm.name!r} is held by a running guest, whose "
                        f"MAC is fixed in its QEMU: MAC {nic.mac} would not reach it",
                        ifname=nic.tap, hint="stop the VM, then `vmnet up` with the new "
                                             "--mac (--force changes the tap anyway)")
    if new_mac or new_mtu:
        return [ConfigureTap(nic.tap, new_mac, new_mtu, link.mac, link.mtu)]
    return []


def plan_up_many(vms: list[Vm], view: HostView, claims: Claims,
                 bridges: BridgeRecords, *, force: bool = False,
                 site: Site | None = None, move: bool = False) -> list[UpPlan]:
    """Plans for several VMs at once, each seeing what the ones before it will create.

    Any refusal refuses the whole batch (the error names the VM).
    """
    plans: list[UpPlan] = []
    seen: set[str] = set()
    for vm in vms:
        if vm.name in seen:
            raise InputError(f"VM {vm.name!r} is named twice")
        seen.add(vm.name)
        try:
            plans.append(plan_up(vm, view, claims, bridges, force=force, site=site,
                                 move=move))
        except VmnetError as e:
            if len(vms) > 1:
                e.message = f"VM {vm.name!r}: {e.message}"
            raise
    return plans


def _check_mac_claim(vm: Vm, nic: Nic, claims: Claims) -> None:
    """No other VM's record claims this MAC on the NIC's bridge (an ovn network's: the
    integration bridge, shared by this chassis' ovn networks)."""
    bridge = nic.network.bridge
    other = claims.mac_owner(bridge, nic.mac)
    if other is not None and other != vm.name:
        raise ConflictError(f"MAC {nic.mac} of {vm.name!r} NIC {nic.index} is already "
                            f"used by VM {other!r} on bridge {bridge!r}",
                            hint="give a different --mac (or set it in the config file); "
                                 "with thousands of VMs, defaults.mac_scheme = \"local\" "
                                 "derives 40 bits instead of 24")


def _check_mac(vm: Vm, nic: Nic, claims: Claims, view: HostView, link: LinkInfo | None,
               br: LinkInfo) -> None:
    _check_mac_claim(vm, nic, claims)
    bridge = nic.network.bridge
    if link is not None and link.master == br.index:
        return  # our own port, checked when it was made
    for mac in (nic.mac, nic.tap_mac):
        port = view.port_with_mac(bridge, mac)
        if port is not None and port != nic.tap:
            moved = view.link(port)
            if moved is not None and moved.kind == "tun" and moved.alias == vm.mark(nic):
                raise renamed_error(vm, nic, moved.name)
            raise ConflictError(f"MAC {nic.mac} of {vm.name!r} NIC {nic.index} collides with "
                                f"port {port!r} of bridge {bridge!r}",
                                hint="give a different --mac")


def renamed_error(vm: Vm, nic: Nic, name: str) -> ConflictError:
    """A tap of this VM that someone renamed (it still carries vmnet's mark)."""
    return ConflictError(f"tap {nic.tap!r} of VM {vm.name!r} was renamed to {name!r} (it "
                         f"carries vmnet's mark {vm.mark(nic)})", ifname=name,
                         hint=f"rename it back (ip link set {name} name {nic.tap}), or "
                              f"`vmnet down {vm.name}` first")


def _check_existing_tap(vm: Vm, nic: Nic, link: LinkInfo) -> None:
    if link.alias != vm.mark(nic) or link.kind != "tun":
        raise ConflictError(f"interface {nic.tap!r} already exists and vmnet did not create "
                            "it for this VM", ifname=nic.tap,
                            hint="vmnet never adopts or re-owns a foreign interface; "
                                 "pick another tap name or remove it")
    assert link.tun is not None
    if link.tun.owner != vm.uid or link.tun.group != vm.gid:
        from vmnet.config.users import owner_text

        raise ConflictError(f"tap {nic.tap!r} exists with owner "
                            f"{owner_text(link.tun.owner, link.tun.group)}, not "
                            f"{owner_text(vm.uid, vm.gid)} as requested", ifname=nic.tap,
                            hint=f"run `vmnet down {vm.name}` first, then up as the new "
                                 "owner")
    if link.tun.multi_queue != nic.multi_queue:
        raise ConflictError(f"tap {nic.tap!r} exists with multi_queue="
                            f"{'on' if link.tun.multi_queue else 'off'}, but {nic.queues} "
                            "queue(s) were requested", ifname=nic.tap,
                            hint=f"run `vmnet down {vm.name}` first, then up with the "
                                 "new queue count")


def find_marked_taps(vm: str, view: HostView) -> list[LinkInfo]:
    """Taps carrying this VM's mark (for a VM whose record is gone; reads every link)."""
    prefix = nic_mark(vm, 0)[:-1]
    return [lk for lk in view.all_links()
            if lk.kind == "tun" and lk.alias is not None and lk.alias.startswith(prefix)
            and lk.alias[len(prefix):].isdigit()]


def plan_down_many(batch: dict[str, VmRecord | None], view: HostView,
                   users: BridgeUsers, bridges: BridgeRecords, *,
                   force: bool = False,
                   holders: dict[str, list[str]] | None = None,
                   site: Site | None = None) -> DownPlan:
    """Remove several VMs' taps in one grouped delete, then release unused bridges.

    Refuses the whole batch, before any change, if a tap is held (unless force).
    """
    taps: list[str] = []
    skipped: list[str] = []
    used_bridges: set[str] = set()
    hosts: list[Step] = []
    unprotect: list[str] = []
    unplug: list[Step] = []  # ovn NICs' interfaces and logical ports (before their taps)
    for vm, rec in batch.items():
        if rec is not None:
            for n in rec.nics:
                if n.ovn:
                    from vmnet.kinds import ovn

                    unplug += ovn.down_steps(vm, n)
                else:
                    used_bridges.add(n.bridge)
                if n.filter:
                    unprotect.append(n.tap)
                if n.ip is not None and site is not None:
                    from vmnet.kinds import l3

                    hosts.append(l3.drop_host_step(site, n.bridge, n.tap, n.mac, n.ip,
                                                   bridges.get(n.bridge)))
                link = view.link(n.tap)
                if link is None:
                    moved = view.marked(nic_mark(vm, n.index))
                    if moved is not None and moved.kind == "tun":
                        skipped.append(f"{n.tap}: renamed to {moved.name} by someone; left "
                                       "alone (it still carries vmnet's mark)")
                    continue
                if not is_our_tap(link, vm, n.index, n.owner):
                    skipped.append(f"{n.tap}: exists but is not vmnet's tap for {vm} "
                                   "(mark/kind/owner differ); left alone")
                    continue
                taps.append(n.tap)
        else:
            for link in find_marked_taps(vm, view):
                taps.append(link.name)
                br = view.by_index(link.master)
                if br is not None:
                    used_bridges.add(br.name)
    busy = [t for t in taps if (lk := view.link(t)) is not None and lk.carrier]
    if busy and not force:
        who = "; ".join(f"{t} held by {', '.join((holders or {}).get(t, [])) or 'a process'}"
                        for t in busy[:5]) + (f" (+{len(busy) - 5} more)" if len(busy) > 5
                                              else "")
        names = sorted({vm for vm, rec in batch.items() for n in (rec.nics if rec else [])
                        if n.tap in busy}) or sorted(batch)
        raise ConflictError(f"VM {', '.join(repr(n) for n in names)} still running: {who}",
                            ifname=busy[0], hint="stop the VM first, or use --force")
    rel = plan_release_bridges(used_bridges, taps, view, users, bridges, leaving=set(batch),
                               site=site)
    _release_uplink_vlans(batch, users, bridges, rel)
    steps: list[Step] = []
    if unprotect:
        steps.append(UnprotectPorts(tuple(unprotect)))
    steps += unplug
    if taps:
        steps.append(DeleteLinks(tuple(taps)))
    steps.extend(hosts)
    steps.extend(rel.steps)
    return DownPlan(vm=",".join(batch), steps=steps, taps=taps, drop_bridges=rel.drop,
                    kept_bridges=rel.kept, skipped=skipped + rel.skipped,
                    put_bridges=rel.put)


def _release_uplink_vlans(batch: dict[str, VmRecord | None], users: BridgeUsers,
                          bridges: BridgeRecords, rel: BridgeRelease) -> None:
    """VLANs vmnet added to an uplink that no NIC left on its bridge uses: dropped from
    the uplink (where the bridge stays) and from the bridge record."""
    for bridge in sorted({n.bridge for r in batch.values() if r for n in r.nics if n.vlans}):
        brec = bridges.get(bridge)
        if brec is None or not brec.uplink_vlans or bridge in rel.drop:
            continue  # (a bridge that goes takes its ports' VLANs with it)
        used = users.vids(bridge, set(batch))
        gone = [v for v in brec.uplink_vlans if v not in used]
        if gone and brec.uplink:
            from vmnet.nicpolicy.vlans import DropUplinkVlan

            rel.steps[:0] = [DropUplinkVlan(brec.uplink, v) for v in gone]
            rel.put.append(brec.with_(uplink_vlans=[v for v in brec.uplink_vlans
                                                    if v in used]))


class BridgeUsers:
    """Whether a VM outside a batch still uses a bridge (state index, or records)."""

    def __init__(self, store: StateStore | None = None,
                 records: dict[str, VmRecord] | None = None) -> None:
        self.store = store
        self.records = records

    def vids(self, bridge: str, leaving: set[str]) -> set[int]:
        """VLANs the NICs on `bridge` of the VMs not leaving use (reads every record: only
        for bridges with VLANs vmnet added to their uplink)."""
        from vmnet.nicpolicy.vlans import recorded

        records = self.records if self.records is not None else (
            self.store.vms() if self.store is not None else {})
        return {v.vid for name, r in records.items() if name not in leaving for n in r.nics
                if n.bridge == bridge for v in recorded(n)}

    def other_user(self, bridge: str, leaving: set[str]) -> str | None:
        if self.records is not None:
            return next((name for name, r in self.records.items() if name not in leaving
                         and any(n.bridge == bridge for n in r.nics)), None)
        return None if self.store is None else self.store.bridge_users(bridge, leaving)


class BridgeRelease(Value):
    __slots__ = ("drop", "kept", "put", "skipped", "steps")

    def __init__(self) -> None:
        self.put: list[BridgeRecord] = []  # records that take over a released network's
        self.steps: list[Step] = []
        self.drop: list[str] = []
        self.kept: list[str] = []
        self.skipped: list[str] = []


def plan_release_bridges(used: set[str], removed_taps: list[str], view: HostView,
                         users: BridgeUsers, bridges: BridgeRecords, *,
                         leaving: set[str], site: Site | None = None) -> BridgeRelease:
    """Undo what vmnet added to bridges that no other record uses once `removed_taps` go.

    Re-checked against what each bridge and uplink carries *now*: a bridge vmnet
    created is deleted only if it still carries vmnet's mark, has no port left
    but the uplink vmnet attached, and carries no address, route or rule vmnet
    did not put there.  An uplink vmnet attached is detached (and put back down
    if vmnet brought it up, unless it has gained the host's traffic since).  A
    bridge or uplink that existed before vmnet keeps everything else.
    """
    rel = BridgeRelease()
    delete: list[str] = []
    l3_gone: list[BridgeRecord] = []
    for bridge in sorted(used):
        brec = bridges.get(bridge)
        if brec is None:
            continue
        other = users.other_user(bridge, leaving)
        if other is not None:
            rel.kept.append(bridge)
            continue
        br = view.link(bridge)
        uplink = brec.uplink if brec.uplink_attached else None
        remaining = [p.name for p in view.ports(bridge)
                     if p.name not in removed_taps and p.name != uplink]
        if brec.created and br is not None and remaining:
            rel.kept.append(bridge)
            rel.skipped.append(f"bridge {bridge}: kept, ports {', '.join(remaining)} "
                               "are not vmnet's")
            continue
        carried = view.host_traffic(bridge, {brec.address} if brec.address else set()) \
            if brec.created and br is not None else []
        if uplink and br is not None:
            up = view.link(uplink)
            if up is not None and up.master == br.index:
                down = brec.uplink_was_down and not view.host_traffic(uplink)
                rel.steps.append(DetachUplink(uplink, bring_down=down))
                if brec.uplink_was_down and not down:
                    rel.skipped.append(f"uplink {uplink}: detached but left up: it carries "
                                       "the host's traffic now")
        if carried:
            rel.kept.append(bridge)
            rel.skipped.append(f"bridge {bridge}: kept, it carries the host's traffic "
                               f"({', '.join(carried[:4])}) that vmnet did not add")
            rel.drop.append(bridge)  # its record goes: the bridge is the admin's from now on
            continue
        if brec.created and is_our_bridge(br):
            delete.append(bridge)
        rel.drop.append(bridge)
        if brec.kind != "bridge":
            l3_gone.append(brec)
    if l3_gone:
        from vmnet.kinds import l3

        if site is None:
            raise InputError("releasing a nat/isolated network needs its site (internal)")
        before = bridges.all()
        left = {b: r for b, r in before.items() if b not in {g.bridge for g in l3_gone}}
        for gone in l3_gone:
            rel.put += l3.plan_release(gone, left, site, rel.steps)
        rel.steps.append(l3.release_table(before.values(), left.values(), l3_gone[0].bridge))
    if delete:
        rel.steps.append(DeleteLinks(tuple(delete)))
    return rel
