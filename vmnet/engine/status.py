"""What vmnet recorded, checked against what the kernel reports.

Generic: the state of a NIC is the first failing check twin of the steps `up`
takes for it (vmnet.engine.steps: CreateTap, then AttachTap), so status knows
no rule of its own.
"""

from __future__ import annotations

from vmnet.engine.ownership import is_our_bridge
from vmnet.engine.steps import AttachTap, CreateTap, Step
from vmnet.kernel.base import TapSpec
from vmnet.model import nic_mark, parse_nic_mark
from vmnet.model.value import Value

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from vmnet.engine.observe import HostView
    from vmnet.kinds.site import Site
    from vmnet.state.records import BridgeRecord, NicRecord, VmRecord


class NicStatus(Value):
    __slots__ = (
        "bridge",
        "group",
        "held",
        "holders",
        "index",
        "ip",
        "leased",
        "mac",
        "mtu",
        "ovn",
        "owner",
        "queues",
        "rx_bytes",
        "state",
        "tap",
        "tap_mac",
        "tx_bytes",
        "vnet_hdr",
    )

    def __init__(self, index: int, tap: str, bridge: str, owner: int | None,
                 group: int | None, mac: str, tap_mac: str | None, mtu: int | None,
                 queues: int, vnet_hdr: bool, held: bool, holders: list[str], rx_bytes: int,
                 tx_bytes: int, state: str, ip: str | None = None,
                 leased: bool | None = None, ovn: dict[str, object] | None = None) -> None:
        self.ovn = ovn  # on an ovn network: its logical port and binding (kinds.ovn)
        self.ip = ip  # its fixed address on a nat/isolated network
        self.leased = leased  # the guest has taken it by DHCP (None: not such a network)
        self.index = index
        self.tap = tap
        self.bridge = bridge
        self.owner = owner
        self.group = group
        self.mac = mac
        self.tap_mac = tap_mac
        self.mtu = mtu
        self.queues = queues
        self.vnet_hdr = vnet_hdr
        self.held = held
        self.holders = holders
        self.rx_bytes = rx_bytes
        self.tx_bytes = tx_bytes
        self.state = state  # ok | missing | foreign | detached | down | unbound

    def to_json(self) -> dict[str, object]:
        return self.as_dict()


class VmStatus(Value):
    __slots__ = (
        "domain_uuid",
        "holder_alive",
        "mode",
        "nics",
        "phase",
        "stale",
        "vm",
        "writer_alive",
    )

    def __init__(self, vm: str, mode: str, phase: str, writer_alive: bool,
                 holder_alive: bool | None, domain_uuid: str | None, stale: bool,
                 nics: list[NicStatus]) -> None:
        self.vm = vm
        self.mode = mode
        self.phase = phase
        self.writer_alive = writer_alive
        self.holder_alive = holder_alive
        self.domain_uuid = domain_uuid
        self.stale = stale
        self.nics = nics

    def to_json(self) -> dict[str, object]:
        d = self.as_dict()
        d["nics"] = [n.to_json() for n in self.nics]
        return d


def nic_steps(vm: str, n: NicRecord) -> list[Step]:
    """The steps `up` takes for a recorded NIC (their checks say whether it holds)."""
    spec = TapSpec(name=n.tap, owner=n.owner, group=n.group, multi_queue=n.queues > 1,
                   mac=n.tap_mac, mtu=n.mtu, alias=nic_mark(vm, n.index))
    from vmnet.nicpolicy import filters

    if n.ovn:
        from vmnet.kinds import ovn

        return [CreateTap(spec), *ovn.record_steps(vm, n)]
    out: list[Step] = [CreateTap(spec), AttachTap(n.tap, n.bridge)]
    f = filters.recorded(n)
    if f is not None:
        out.append(filters.ProtectPorts((f,)))
    if n.isolated:
        from vmnet.nicpolicy.isolation import IsolatePort

        out.append(IsolatePort(n.tap, n.bridge, n.mac))
    if n.vlans:
        from vmnet.nicpolicy import vlans

        out.append(vlans.SetPortVlans(n.tap, vlans.recorded(n)))
    return out


def nic_state(rec: VmRecord, n: NicRecord, view: HostView) -> str:
    for step in nic_steps(rec.vm, n):
        problem = step.check(view)
        if problem == "missing":
            moved = view.marked(nic_mark(rec.vm, n.index))
            if moved is not None and moved.kind == "tun":
                return f"renamed to {moved.name}"
        if problem is not None:
            return problem
    return "ok"


def vm_status(rec: VmRecord, view: HostView, holders: dict[str, list[str]],
              leases: dict[str, dict[str, str]] | None = None) -> VmStatus:
    """`leases`: bridge -> (MAC -> address) of the nat/isolated networks' dnsmasq."""
    holder_alive = rec.holder.alive() if rec.holder else None
    nics = []
    for n in rec.nics:
        link = view.link(n.tap)
        state = nic_state(rec, n, view)
        ours = state != "foreign" and link is not None
        tun = link.tun if ours and link is not None else None
        nics.append(NicStatus(
            index=n.index, tap=n.tap, bridge=n.bridge,
            owner=tun.owner if tun else n.owner, group=tun.group if tun else n.group,
            mac=n.mac, tap_mac=link.mac if ours and link else None,
            mtu=link.mtu if ours and link else n.mtu, queues=n.queues,
            vnet_hdr=n.vnet_hdr, held=bool(ours and link and link.carrier),
            holders=holders.get(n.tap, []),
            rx_bytes=link.rx_bytes if ours and link else 0,
            tx_bytes=link.tx_bytes if ours and link else 0, state=state, ip=n.ip,
            leased=None if n.ip is None or leases is None else
            (leases.get(n.bridge) or {}).get(n.mac) == n.ip,
            ovn=_ovn_status(n)))
    writer_alive = rec.writer.alive()
    stale = (rec.phase != "ready" and not writer_alive) or \
        (rec.mode == "run" and holder_alive is False) or \
        all(s.state in ("missing", "foreign") for s in nics)
    return VmStatus(vm=rec.vm, mode=rec.mode, phase=rec.phase, writer_alive=writer_alive,
                    holder_alive=holder_alive, domain_uuid=rec.domain_uuid, stale=stale,
                    nics=nics)


def _ovn_status(n: NicRecord) -> dict[str, object] | None:
    if not n.ovn:
        return None
    from vmnet.kinds import ovn

    return ovn.port_status(n)


def unrecorded_taps(view: HostView, records: dict[str, VmRecord]) -> list[str]:
    """Taps carrying a vmnet mark that no record explains (e.g. state dir lost)."""
    known = {n.tap for r in records.values() for n in r.nics}
    return sorted(lk.name for lk in view.all_links()
                  if lk.kind == "tun" and parse_nic_mark(lk.alias) and lk.name not in known)


def bridge_rows(view: HostView, bridges: dict[str, BridgeRecord],
                site: Site | None = None) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name, b in sorted(bridges.items()):
        link = view.link(name)
        extra: dict[str, object] = {}
        if b.kind != "bridge" and site is not None:
            from vmnet.kinds import l3

            extra = l3.network_state(b, view, site)
        rows.append({
            "bridge": name, "network": b.network, "created_by_vmnet": b.created,
            "uplink": b.uplink if b.uplink_attached else None,
            "present": link is not None,
            "marked": is_our_bridge(link),
            "mtu": link.mtu if link else None,
            "ports": len(view.ports(name)),
            "address": b.address,
            # what `down` will find there that vmnet did not add (and so keep the bridge)
            "host_traffic": view.host_traffic(name, {b.address} if b.address else set())
            if b.created and link is not None else [],
            "kind": b.kind,
            **extra,
        })
    return rows
