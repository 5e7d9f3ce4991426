"""VLANs per NIC on a VLAN-aware bridge (vlan_filtering on): `vlan` (an access port:
untagged to the VM, its PVID) or `trunk` (tagged VLANs, and optionally a native one
that goes untagged).

The NIC's port loses the bridge's default VLAN 1 (an access or trunk port carries
only its own VLANs); VLANs the NICs use are added, tagged, to the bridge's uplink,
counted per VLAN over the NICs of the bridge, and removed with the last NIC that uses
them, but only those vmnet added (the bridge record says which).  vmnet never
changes the uplink's or the bridge's own PVID or untagged VLAN, so the bridge's own
untagged traffic (the host's address on it, the uplink's untagged frames) keeps
flowing whatever the NICs ask for.

This kernel has no bridge VLAN filtering (EOPNOTSUPP): the steps are planned and
printed (`--dry-run`) and refused by the kernel with that errno; tests check the
plans and skip the live part with the reason.
"""

from __future__ import annotations

from vmnet.engine.steps import Step
from vmnet.model.value import Value
from vmnet.render.shell import command

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from vmnet.engine.observe import HostView
    from vmnet.kernel.base import LinkInfo
    from vmnet.kernel.protocol import Kernel
    from vmnet.model import Nic, Vm
    from vmnet.state.records import BridgeRecord, NicRecord

DEFAULT_VLAN = 1  # the bridge's default_pvid: every new port starts with it (pvid untagged)
PVID, UNTAGGED = 0x2, 0x4  # BRIDGE_VLAN_INFO_* (include/uapi/linux/if_bridge.h)


class PortVlan(Value):
    """One VLAN on a port: its id, whether it is the port's PVID and leaves untagged."""

    __slots__ = ("pvid", "untagged", "vid")

    def __init__(self, vid: int, pvid: bool = False, untagged: bool = False) -> None:
        self.vid = vid
        self.pvid = pvid
        self.untagged = untagged

    def words(self) -> list[str]:
        return ["vid", str(self.vid), *(["pvid"] if self.pvid else []),
                *(["untagged"] if self.untagged else [])]


def port_vlans(vlan: int | None, trunk: tuple[int, ...], native: int | None
               ) -> tuple[PortVlan, ...]:
    """What a NIC's settings make of its port's VLAN table."""
    if vlan is not None:
        return (PortVlan(vlan, pvid=True, untagged=True),)
    return tuple(PortVlan(v, pvid=v == native, untagged=v == native)
                 for v in sorted(set(trunk) | ({native} if native is not None else set())))


def _bridge(netns: str | None, *words: str) -> str:
    return command("bridge", *(("-n", netns) if netns else ()), "vlan", *words)


class SetPortVlans(Step):
    """The port's VLANs: the default VLAN off, the NIC's on."""

    __slots__ = ("tap", "vlans")

    def __init__(self, tap: str, vlans: tuple[PortVlan, ...]) -> None:
        self.tap = tap
        self.vlans = vlans

    def ip(self, netns: str | None = None) -> str:
        lines = [] if any(v.vid == DEFAULT_VLAN for v in self.vlans) else [
            _bridge(netns, "del", "vid", str(DEFAULT_VLAN), "dev", self.tap)]
        lines += [_bridge(netns, "add", *v.words(), "dev", self.tap) for v in self.vlans]
        return "\n".join(lines)

    def run(self, k: Kernel) -> None:
        if not any(v.vid == DEFAULT_VLAN for v in self.vlans):
            k.vlan_del(self.tap, DEFAULT_VLAN)
        for v in self.vlans:
            k.vlan_add(self.tap, v.vid, pvid=v.pvid, untagged=v.untagged)

    def undo(self) -> Step:
        return ClearPortVlans(self.tap, tuple(v.vid for v in self.vlans))

    def check(self, view: HostView) -> str | None:
        if view.k is None:
            return None
        have = dict(view.k.port_vlans(self.tap))
        for v in self.vlans:
            flags = have.get(v.vid)
            want = (PVID if v.pvid else 0) | (UNTAGGED if v.untagged else 0)
            if flags is None or flags & (PVID | UNTAGGED) != want:
                return f"vlan {v.vid} missing"
        return None


class ClearPortVlans(Step):
    """Back to the bridge's default VLAN (a rollback: the tap itself is deleted on down)."""

    __slots__ = ("tap", "vids")

    def __init__(self, tap: str, vids: tuple[int, ...]) -> None:
        self.tap = tap
        self.vids = vids

    def ip(self, netns: str | None = None) -> str:
        return "\n".join([_bridge(netns, "del", "vid", str(v), "dev", self.tap)
                          for v in self.vids] +
                         [_bridge(netns, "add", "vid", str(DEFAULT_VLAN), "pvid", "untagged",
                                  "dev", self.tap)])

    def run(self, k: Kernel) -> None:
        if k.link(self.tap) is None:
            return
        for v in self.vids:
            k.vlan_del(self.tap, v)
        k.vlan_add(self.tap, DEFAULT_VLAN, pvid=True, untagged=True)


class AddUplinkVlan(Step):
    """A VLAN the bridge's NICs use, tagged on its uplink (its PVID untouched)."""

    __slots__ = ("uplink", "vid")

    def __init__(self, uplink: str, vid: int) -> None:
        self.uplink = uplink
        self.vid = vid

    def ip(self, netns: str | None = None) -> str:
        return _bridge(netns, "add", "vid", str(self.vid), "dev", self.uplink)

    def run(self, k: Kernel) -> None:
        k.vlan_add(self.uplink, self.vid)

    def undo(self) -> Step:
        return DropUplinkVlan(self.uplink, self.vid)

    def check(self, view: HostView) -> str | None:
        if view.k is None:
            return None
        return None if self.vid in dict(view.k.port_vlans(self.uplink)) else "missing"


class DropUplinkVlan(Step):
    """Remove a VLAN vmnet added to the uplink, once no NIC of the bridge uses it (and
    only if it is still tagged there: never the uplink's PVID or untagged VLAN)."""

    __slots__ = ("uplink", "vid")

    def __init__(self, uplink: str, vid: int) -> None:
        self.uplink = uplink
        self.vid = vid

    def ip(self, netns: str | None = None) -> str:
        return _bridge(netns, "del", "vid", str(self.vid), "dev", self.uplink)

    def run(self, k: Kernel) -> None:
        if k.link(self.uplink) is None:
            return
        flags = dict(k.port_vlans(self.uplink)).get(self.vid)
        if flags is not None and not flags & (PVID | UNTAGGED):
            k.vlan_del(self.uplink, self.vid)


# -- from a NIC and its record ---------------------------------------------------------------
def for_nic(nic: Nic) -> tuple[PortVlan, ...]:
    return port_vlans(nic.vlan, nic.trunk, nic.native_vlan)


def recorded(n: NicRecord) -> tuple[PortVlan, ...]:
    """The VLANs a NIC's record says its port has (none: no record of any)."""
    d = n.vlans or {}
    trunk = d.get("trunk") or []
    native = d.get("native")
    vlan = d.get("vlan")
    return port_vlans(vlan if isinstance(vlan, int) else None,
                      tuple(trunk) if isinstance(trunk, list) else (),
                      native if isinstance(native, int) else None)


def plan_nic(vm: Vm, nic: Nic, br: LinkInfo, view: HostView, rec: BridgeRecord | None
             ) -> tuple[list[Step], list[int]]:
    """The steps that give the bridge's uplink the NIC's VLANs it still lacks, and the
    VLANs vmnet has added there then (the bridge record's `uplink_vlans`).  Refuses VLANs
    on a bridge that is not VLAN-aware."""
    from vmnet.errors import ConflictError

    net = nic.network
    if not br.vlan_filtering:
        raise ConflictError(f"VM {vm.name!r} NIC {nic.index}: VLANs need a VLAN-aware bridge, "
                            f"and bridge {net.bridge!r} has vlan_filtering off",
                            ifname=net.bridge,
                            hint=f"set networks.{net.name}.vlan_filtering = true (a bridge "
                                 "vmnet creates), or turn it on on your bridge (ip link set "
                                 f"{net.bridge} type bridge vlan_filtering 1)")
    ours = list(rec.uplink_vlans) if rec is not None else []
    uplink = net.uplink or (rec.uplink if rec is not None and rec.uplink_attached else None)
    link = view.link(uplink) if uplink is not None else None
    if rec is None or uplink is None or link is None:
        return [], ours
    have = set() if view.k is None or link.index < 0 else {
        vid for vid, _ in view.k.port_vlans(uplink)}
    added = [v.vid for v in for_nic(nic) if v.vid not in have and v.vid not in ours]
    return [AddUplinkVlan(uplink, vid) for vid in added], sorted({*ours, *added})
