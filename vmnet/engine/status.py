"""What vmnet recorded, checked against what the kernel reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from vmnet.engine.ownership import is_our_bridge, is_our_tap
from vmnet.kernel.base import Snapshot
from vmnet.model import parse_nic_mark
from vmnet.state.store import BridgeRecord, VmRecord


@dataclass
class NicStatus:
    index: int
    tap: str
    bridge: str
    owner: int | None
    group: int | None
    mac: str
    tap_mac: str | None
    mtu: int | None
    queues: int
    vnet_hdr: bool
    held: bool
    holders: list[str]
    rx_bytes: int
    tx_bytes: int
    state: str  # ok | missing | foreign | detached | down


@dataclass
class VmStatus:
    vm: str
    mode: str
    phase: str
    writer_alive: bool
    holder_alive: bool | None
    domain_uuid: str | None
    stale: bool
    nics: list[NicStatus] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def nic_state(rec: VmRecord, i: int, snap: Snapshot) -> str:
    n = rec.nics[i]
    link = snap.get(n.tap)
    if link is None:
        return "missing"
    if not is_our_tap(link, rec.vm, n.index, n.owner):
        return "foreign"
    br = snap.get(n.bridge)
    if br is None or link.master != br.index:
        return "detached"
    if not link.up:
        return "down"
    return "ok"


def vm_status(rec: VmRecord, snap: Snapshot, holders: dict[str, list[str]]) -> VmStatus:
    holder_alive = rec.holder.alive() if rec.holder else None
    nics = []
    for i, n in enumerate(rec.nics):
        link = snap.get(n.tap)
        state = nic_state(rec, i, snap)
        ours = state != "foreign" and link is not None
        nics.append(NicStatus(
            index=n.index, tap=n.tap, bridge=n.bridge,
            owner=link.tun.owner if ours and link and link.tun else n.owner,
            group=link.tun.group if ours and link and link.tun else n.group,
            mac=n.mac, tap_mac=link.mac if ours and link else None,
            mtu=link.mtu if ours and link else n.mtu, queues=n.queues,
            vnet_hdr=n.vnet_hdr, held=bool(ours and link and link.carrier),
            holders=holders.get(n.tap, []),
            rx_bytes=link.rx_bytes if ours and link else 0,
            tx_bytes=link.tx_bytes if ours and link else 0, state=state))
    writer_alive = rec.writer.alive()
    stale = (rec.phase != "ready" and not writer_alive) or \
        (rec.mode == "run" and holder_alive is False) or \
        all(s.state in ("missing", "foreign") for s in nics)
    return VmStatus(vm=rec.vm, mode=rec.mode, phase=rec.phase, writer_alive=writer_alive,
                    holder_alive=holder_alive, domain_uuid=rec.domain_uuid, stale=stale,
                    nics=nics)


def unrecorded_taps(snap: Snapshot, records: dict[str, VmRecord]) -> list[str]:
    """Taps carrying a vmnet mark that no record explains (e.g. state dir lost)."""
    known = {n.tap for r in records.values() for n in r.nics}
    return sorted(lk.name for lk in snap.links.values()
                  if lk.kind == "tun" and parse_nic_mark(lk.alias) and lk.name not in known)


def bridge_rows(snap: Snapshot, bridges: dict[str, BridgeRecord]) -> list[dict[str, Any]]:
    rows = []
    for name, b in sorted(bridges.items()):
        link = snap.get(name)
        rows.append({
            "bridge": name, "network": b.network, "created_by_vmnet": b.created,
            "uplink": b.uplink if b.uplink_attached else None,
            "present": link is not None,
            "marked": is_our_bridge(link),
            "mtu": link.mtu if link else None,
            "ports": len(snap.ports(name)),
            "address": b.address,
        })
    return rows
