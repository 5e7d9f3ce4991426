"""Planning: desired model + observed host + records -> ordered steps.  Pure.

Every check that can refuse a request happens here, before anything changes,
so a refused request leaves the host exactly as it was.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vmnet.engine.ownership import is_our_bridge, is_our_tap
from vmnet.engine.steps import (
    AddAddress,
    AttachTap,
    AttachUplink,
    CreateBridge,
    CreateTap,
    DeleteLinks,
    DetachUplink,
    SetUp,
    Step,
)
from vmnet.errors import ConflictError, InputError, NotFoundError, VmnetError
from vmnet.kernel.base import LinkInfo, Snapshot, TapSpec
from vmnet.model import Network, Nic, Vm, nic_mark
from vmnet.model import validate as v
from vmnet.state.store import BridgeRecord, NicRecord, VmRecord


@dataclass(frozen=True)
class Observed:
    """What the host looks like, gathered before planning."""

    snapshot: Snapshot
    uplink_addresses: dict[str, list[str]] = field(default_factory=dict)
    default_route_devices: frozenset[str] = frozenset()


class Claims:
    """What other VMs' records hold: tap names and MACs per bridge (indexed once)."""

    def __init__(self, records: dict[str, VmRecord], exclude: str | None = None) -> None:
        self.taps: dict[str, str] = {}
        self.macs: dict[tuple[str, str], str] = {}
        for name, r in records.items():
            if name != exclude:
                self.add(name, r.nics)

    def add(self, vm: str, nics: list[NicRecord]) -> None:
        for n in nics:
            self.taps[n.tap] = vm
            self.macs[(n.bridge, n.mac)] = vm


@dataclass
class UpPlan:
    vm: Vm
    steps: list[Step]
    nics: list[NicRecord]
    new_bridges: list[BridgeRecord]
    changed_bridges: list[BridgeRecord]

    @property
    def noop(self) -> bool:
        return not self.steps


@dataclass
class DownPlan:
    vm: str
    steps: list[Step]
    taps: list[str]
    drop_bridges: list[str]
    kept_bridges: list[str]
    skipped: list[str] = field(default_factory=list)

    @property
    def noop(self) -> bool:
        return not self.steps and not self.drop_bridges


def uplinks_to_check(vm: Vm, snap: Snapshot) -> list[str]:
    """Uplinks whose addresses/routes the planner needs (those not yet enslaved here)."""
    out = []
    for net in {n.network.bridge: n.network for n in vm.nics}.values():
        if net.uplink is None:
            continue
        up = snap.get(net.uplink)
        br = snap.get(net.bridge)
        if up is not None and (br is None or up.master != br.index):
            out.append(net.uplink)
    return out


def _plan_network(net: Network, obs: Observed, bridges: dict[str, BridgeRecord],
                  steps: list[Step], new: list[BridgeRecord],
                  changed: list[BridgeRecord]) -> None:
    snap = obs.snapshot
    br = snap.get(net.bridge)
    rec = bridges.get(net.bridge)
    if br is not None and br.kind != "bridge":
        raise ConflictError(f"bridge {net.bridge!r} exists but is a {br.kind or 'plain'} "
                            "interface, not a bridge", ifname=net.bridge,
                            hint="choose another --bridge name")
    if br is None:
        steps.append(CreateBridge(net.bridge, net.bridge_mac, net.mtu, net.stp,
                                  net.forward_delay, net.mark))
        if net.address:
            steps.append(AddAddress(net.bridge, net.address))
        steps.append(SetUp(net.bridge))
        rec = BridgeRecord(bridge=net.bridge, network=net.name, created=True,
                           address=net.address)
        new.append(rec)
    elif rec is None:
        rec = BridgeRecord(bridge=net.bridge, network=net.name,
                           created=False)
        new.append(rec)
    if net.uplink is None:
        return
    up = snap.get(net.uplink)
    if up is None:
        raise NotFoundError(f"uplink {net.uplink!r} does not exist", ifname=net.uplink,
                            hint="check the name with `ip link`")
    if br is not None and up.master == br.index:
        return  # already a port of this bridge (vmnet's or the admin's doing)
    if up.master is not None:
        owner = snap.by_index(up.master)
        raise ConflictError(f"uplink {net.uplink!r} is already enslaved to "
                            f"{owner.name if owner else up.master}", ifname=net.uplink,
                            hint="an interface can belong to one master only")
    addrs = obs.uplink_addresses.get(net.uplink, [])
    if addrs:
        raise ConflictError(f"uplink {net.uplink!r} carries global addresses "
                            f"({', '.join(addrs)}); enslaving it would cut the host off",
                            ifname=net.uplink,
                            hint="move the addresses to the bridge first (vmnet does "
                                 "not move addresses yet)")
    if net.uplink in obs.default_route_devices:
        raise ConflictError(f"uplink {net.uplink!r} carries the default route; enslaving it "
                            "would cut the host off", ifname=net.uplink,
                            hint="move the route to the bridge first")
    steps.append(AttachUplink(net.uplink, net.bridge, bring_up=not up.up))
    updated = BridgeRecord(**{**rec.__dict__, "uplink": net.uplink, "uplink_attached": True,
                              "uplink_was_down": not up.up})
    if rec in new:
        new[new.index(rec)] = updated
    else:
        changed.append(updated)


def plan_up(vm: Vm, obs: Observed, records: dict[str, VmRecord],
            bridges: dict[str, BridgeRecord], claims: Claims | None = None) -> UpPlan:
    """Steps that give `vm` its network; raises before any change if refused."""
    if claims is None:
        claims = Claims(records, exclude=vm.name)
    snap = obs.snapshot
    steps: list[Step] = []
    new: list[BridgeRecord] = []
    changed: list[BridgeRecord] = []
    for net in {n.network.bridge: n.network for n in vm.nics}.values():
        _plan_network(net, obs, bridges, steps, new, changed)

    new_ports: dict[str, int] = {}
    nic_records: list[NicRecord] = []
    for nic in vm.nics:
        bridge = nic.network.bridge
        _check_mac(vm, nic, claims, snap)
        owner = claims.taps.get(nic.tap)
        if owner is not None and owner != vm.name:
            raise ConflictError(f"tap {nic.tap!r} already belongs to VM {owner!r}",
                                ifname=nic.tap, hint="give this NIC another tap name")
        link = snap.get(nic.tap)
        br = snap.get(bridge)
        mtu = nic.mtu or nic.network.mtu or (br.mtu if br else None)
        if nic.mtu and br is not None and nic.mtu < br.mtu and not is_our_bridge(br):
            raise ConflictError(f"NIC {nic.index} MTU {nic.mtu} would lower the MTU of bridge "
                                f"{bridge!r} ({br.mtu}), which vmnet did not create",
                                ifname=nic.tap, hint=f"use --mtu {br.mtu} or more")
        nic_records.append(NicRecord(
            index=nic.index, tap=nic.tap, bridge=bridge, network=nic.network.name,
            mac=nic.mac, tap_mac=nic.tap_mac, mtu=mtu, queues=nic.queues,
            vnet_hdr=nic.vnet_hdr, owner=vm.uid, group=vm.gid))
        if link is not None:
            _check_existing_tap(vm, nic, link)
            if br is None or link.master != br.index or not link.up:
                steps.append(AttachTap(nic.tap, bridge))
            continue
        new_ports[bridge] = new_ports.get(bridge, 0) + 1
        steps.append(CreateTap(TapSpec(name=nic.tap, owner=vm.uid, group=vm.gid,
                                       multi_queue=nic.multi_queue, mac=nic.tap_mac,
                                       mtu=mtu, alias=vm.mark(nic))))
        steps.append(AttachTap(nic.tap, bridge))
    for bridge, count in new_ports.items():
        have = snap.port_count(bridge)
        if have + count > v.MAX_BRIDGE_PORTS:
            raise ConflictError(f"bridge {bridge!r} would have {have + count} ports; a Linux "
                                f"bridge holds at most {v.MAX_BRIDGE_PORTS}", ifname=bridge,
                                hint="spread the VMs over several networks")
    return UpPlan(vm=vm, steps=steps, nics=nic_records, new_bridges=new,
                  changed_bridges=changed)


def plan_up_many(vms: list[Vm], obs: Observed, records: dict[str, VmRecord],
                 bridges: dict[str, BridgeRecord]) -> list[UpPlan]:
    """Plans for several VMs at once, each seeing what the ones before it will create.

    Any refusal refuses the whole batch (the error names the VM).
    """
    snap = Snapshot(dict(obs.snapshot.links))
    names = {vm.name for vm in vms}
    claims = Claims({k: r for k, r in records.items() if k not in names})
    bridges = dict(bridges)
    plans: list[UpPlan] = []
    seen: set[str] = set()
    fake = -1
    for vm in vms:
        if vm.name in seen:
            raise InputError(f"VM {vm.name!r} is named twice")
        seen.add(vm.name)
        try:
            plan = plan_up(vm, Observed(snap, obs.uplink_addresses, obs.default_route_devices),
                           records, bridges, claims)
        except VmnetError as e:
            e.message = f"VM {vm.name!r}: {e.message}"
            raise
        plans.append(plan)
        # What this plan creates, as the next plans will see it.
        for b in (*plan.new_bridges, *plan.changed_bridges):
            bridges[b.bridge] = b
        for step in plan.steps:
            if isinstance(step, CreateBridge):
                snap.add(LinkInfo(index=fake, name=step.name, kind="bridge", mac=step.mac,
                                  mtu=step.mtu or 1500, up=True, carrier=False, master=None,
                                  alias=step.alias))
                fake -= 1
            elif isinstance(step, AttachUplink):
                up, br = snap.get(step.uplink), snap.get(step.bridge)
                if up is not None and br is not None:
                    snap.add(dataclasses.replace(up, master=br.index, up=True))
            elif isinstance(step, CreateTap):
                br = snap.get(next(n.bridge for n in plan.nics if n.tap == step.spec.name))
                snap.add(LinkInfo(index=fake, name=step.spec.name, kind="tun",
                                  mac=step.spec.mac, mtu=step.spec.mtu or 1500, up=True,
                                  carrier=False, master=br.index if br else None,
                                  alias=step.spec.alias))
                fake -= 1
        claims.add(vm.name, plan.nics)
    return plans


def _check_mac(vm: Vm, nic: Nic, claims: Claims, snap: Snapshot) -> None:
    bridge = nic.network.bridge
    other = claims.macs.get((bridge, nic.mac))
    if other is not None and other != vm.name:
        raise ConflictError(f"MAC {nic.mac} of {vm.name!r} NIC {nic.index} is already "
                            f"used by VM {other!r} on bridge {bridge!r}",
                            hint="give a different --mac")
    link = snap.get(nic.tap)
    if link is not None and snap.get(bridge) is not None and \
            link.master == snap.links[bridge].index:
        return  # our own port, checked when it was made
    macs = snap.port_macs(bridge)
    if nic.mac in macs or nic.tap_mac in macs:
        port = next(p.name for p in snap.ports(bridge) if p.mac in (nic.mac, nic.tap_mac))
        raise ConflictError(f"MAC {nic.mac} of {vm.name!r} NIC {nic.index} collides with "
                            f"port {port!r} of bridge {bridge!r}", hint="give a different --mac")


def _check_existing_tap(vm: Vm, nic: Nic, link: LinkInfo) -> None:
    if link.alias != vm.mark(nic) or link.kind != "tun":
        raise ConflictError(f"interface {nic.tap!r} already exists and vmnet did not create "
                            "it for this VM", ifname=nic.tap,
                            hint="vmnet never adopts or re-owns a foreign interface; "
                                 "pick another tap name or remove it")
    assert link.tun is not None
    if link.tun.owner != vm.uid or link.tun.group != vm.gid:
        raise ConflictError(f"tap {nic.tap!r} exists with owner {link.tun.owner} group "
                            f"{link.tun.group}, not {vm.uid}/{vm.gid} as requested",
                            ifname=nic.tap, hint=f"run `vmnet down {vm.name}` first")
    if link.tun.multi_queue != nic.multi_queue:
        raise ConflictError(f"tap {nic.tap!r} exists with multi_queue="
                            f"{'on' if link.tun.multi_queue else 'off'}, but {nic.queues} "
                            "queue(s) were requested", ifname=nic.tap,
                            hint=f"run `vmnet down {vm.name}` first, then up with the "
                                 "new queue count")


def find_marked_taps(vm: str, snap: Snapshot) -> list[LinkInfo]:
    """Taps carrying this VM's mark (for a VM whose record is gone)."""
    prefix = nic_mark(vm, 0)[:-1]
    return [lk for lk in snap.links.values()
            if lk.kind == "tun" and lk.alias is not None and lk.alias.startswith(prefix)
            and lk.alias[len(prefix):].isdigit()]


def plan_down(vm: str, rec: VmRecord | None, snap: Snapshot, records: dict[str, VmRecord],
              bridges: dict[str, BridgeRecord], *, force: bool = False,
              holders: dict[str, list[str]] | None = None) -> DownPlan:
    """Steps that remove `vm`'s taps and the bridges nothing uses any more."""
    return plan_down_many({vm: rec}, snap, records, bridges, force=force, holders=holders)


def plan_down_many(batch: dict[str, VmRecord | None], snap: Snapshot,
                   records: dict[str, VmRecord], bridges: dict[str, BridgeRecord], *,
                   force: bool = False, holders: dict[str, list[str]] | None = None) -> DownPlan:
    """Remove several VMs' taps in one grouped delete, then release unused bridges.

    Refuses the whole batch, before any change, if a tap is held (unless force).
    """
    taps: list[str] = []
    skipped: list[str] = []
    used_bridges: set[str] = set()
    for vm, rec in batch.items():
        if rec is not None:
            for n in rec.nics:
                used_bridges.add(n.bridge)
                link = snap.get(n.tap)
                if link is None:
                    continue
                if not is_our_tap(link, vm, n.index, n.owner):
                    skipped.append(f"{n.tap}: exists but is not vmnet's tap for {vm} "
                                   "(mark/kind/owner differ); left alone")
                    continue
                taps.append(n.tap)
        else:
            for link in find_marked_taps(vm, snap):
                taps.append(link.name)
                br = snap.by_index(link.master)
                if br is not None:
                    used_bridges.add(br.name)
    busy = [t for t in taps if snap.links[t].carrier]
    if busy and not force:
        who = "; ".join(f"{t} held by {', '.join((holders or {}).get(t, [])) or 'a process'}"
                        for t in busy[:5]) + (f" (+{len(busy) - 5} more)" if len(busy) > 5
                                              else "")
        names = sorted({vm for vm, rec in batch.items() for n in (rec.nics if rec else [])
                        if n.tap in busy}) or sorted(batch)
        raise ConflictError(f"VM {', '.join(repr(n) for n in names)} still running: {who}",
                            ifname=busy[0], hint="stop the VM first, or use --force")
    others = {name: r for name, r in records.items() if name not in batch}
    rel = plan_release_bridges(used_bridges, taps, snap, others, bridges)
    steps: list[Step] = []
    if taps:
        steps.append(DeleteLinks(tuple(taps)))
    steps.extend(rel.steps)
    return DownPlan(vm=",".join(batch), steps=steps, taps=taps, drop_bridges=rel.drop,
                    kept_bridges=rel.kept, skipped=skipped + rel.skipped)


@dataclass
class BridgeRelease:
    steps: list[Step] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def plan_release_bridges(used: set[str], removed_taps: list[str], snap: Snapshot,
                         others: dict[str, VmRecord],
                         bridges: dict[str, BridgeRecord]) -> BridgeRelease:
    """Undo what vmnet added to bridges that no other record uses once `removed_taps` go.

    A bridge vmnet created is deleted only if it still carries vmnet's mark
    and no port is left but the uplink vmnet attached.  An uplink vmnet
    attached is detached (and put back down if vmnet brought it up).  A
    bridge or uplink that existed before vmnet keeps everything else.
    """
    rel = BridgeRelease()
    delete: list[str] = []
    for bridge in sorted(used):
        brec = bridges.get(bridge)
        if brec is None:
            continue
        if any(n.bridge == bridge for r in others.values() for n in r.nics):
            rel.kept.append(bridge)
            continue
        br = snap.get(bridge)
        uplink = brec.uplink if brec.uplink_attached else None
        remaining = [p.name for p in snap.ports(bridge)
                     if p.name not in removed_taps and p.name != uplink]
        if brec.created and br is not None and remaining:
            rel.kept.append(bridge)
            rel.skipped.append(f"bridge {bridge}: kept, ports {', '.join(remaining)} "
                               "are not vmnet's")
            continue
        if uplink and br is not None:
            up = snap.get(uplink)
            if up is not None and up.master == br.index:
                rel.steps.append(DetachUplink(uplink, bring_down=brec.uplink_was_down))
        if brec.created and is_our_bridge(br):
            delete.append(bridge)
        rel.drop.append(bridge)
    if delete:
        rel.steps.append(DeleteLinks(tuple(delete)))
    return rel


def validate_request_names(names: list[str]) -> None:
    for n in names:
        v.vm_name(n)
    if len(set(names)) != len(names):
        raise InputError("a VM is named twice")
