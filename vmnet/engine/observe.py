"""What an operation sees of the host: scoped kernel reads, cached for the operation.

A single-VM operation asks for exactly the links it names (one RTM_GETLINK
each), one FDB entry per MAC it checks, and the claims of its own taps and
MACs from the state index, so its cost does not grow with the number of VMs
on the host.  A bulk run, `status` and `gc` take one dump of every link
instead (`HostView(k, full=True)`), and the same questions are answered from it.

Port MACs: in scoped mode from the bridge's FDB (each port's own MAC is a
permanent local entry there, br_fdb_add_local() in net/bridge/br_fdb.c), in
full mode from the ports' MAC attribute of the dump; the kernel keeps the two
in step, and tests/test_engine_kernel.py checks they agree.

`host_traffic()` is vmnet's one definition of "this interface carries the
host's traffic": the uplink check before enslaving, the re-check before
detaching or downing it, and the check before deleting a bridge all use it.
"""

from __future__ import annotations

from vmnet.kernel.base import LinkInfo, Snapshot

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from vmnet.kernel.protocol import Kernel

RTPROT_KERNEL = 2


class HostView:
    """Read-only, cached view of the namespace's links for one operation.

    `planned()` adds links the plan will create, so later VMs of a bulk plan
    see what earlier ones make (negative indexes stand for links not yet made).
    """

    def __init__(self, k: Kernel | None, *, full: bool = False,
                 snapshot: Snapshot | None = None) -> None:
        self.k = k
        self.snap = snapshot if snapshot is not None else (
            k.snapshot() if full and k is not None else None)
        self._links: dict[str, LinkInfo | None] = {}
        self._by_index: dict[int, LinkInfo] = {}
        self._planned_macs: dict[tuple[str, str], str] = {}
        self._planned_ports: dict[str, int] = {}
        self._fdb: dict[tuple[int, str], str | None] = {}
        self._addrs: dict[str, set[str]] = {}
        self._fake = -1

    @property
    def full(self) -> bool:
        return self.snap is not None

    # -- links -------------------------------------------------------------
    def link(self, name: str) -> LinkInfo | None:
        if name in self._links:
            return self._links[name]
        if self.snap is not None:
            lk = self.snap.get(name)
        elif self.k is not None:
            lk = self.k.link(name)
        else:
            lk = None
        self._links[name] = lk
        if lk is not None:
            self._by_index[lk.index] = lk
        return lk

    def by_index(self, index: int | None) -> LinkInfo | None:
        if index is None:
            return None
        if index in self._by_index:
            return self._by_index[index]
        lk = self.snap.by_index(index) if self.snap is not None else (
            self.k.link_by_index(index) if self.k is not None and index > 0 else None)
        if lk is not None:
            self._by_index[index] = lk
        return lk

    def all_links(self) -> list[LinkInfo]:
        """Every link (loads the full dump if this view has none yet)."""
        if self.snap is None and self.k is not None:
            self.snap = self.k.snapshot()
            self._links.clear()
            self._by_index.clear()
        return [] if self.snap is None else list(self.snap.links.values())

    def marked(self, alias: str) -> LinkInfo | None:
        """The link that carries this mark (ifalias), wherever it is and whatever its name:
        finds a vmnet tap someone renamed.  Reads every link (only asked for a tap that is
        missing under its recorded name)."""
        return next((lk for lk in self.all_links() if lk.alias == alias), None)

    def ports(self, bridge: str) -> list[LinkInfo]:
        br = self.link(bridge)
        if br is None:
            return []
        if self.snap is not None:
            return self.snap.ports(bridge)
        if self.k is None or br.index < 0:
            return []
        return self.k.ports(br.index)

    def port_count(self, bridge: str) -> int | None:
        """Ports of the bridge, None where unknown without a dump (the kernel itself
        refuses a port past its limit, EXFULL, which vmnet words the same way)."""
        extra = self._planned_ports.get(bridge, 0)
        if self.snap is None:
            br = self.link(bridge)
            return extra if br is None or br.index < 0 else None
        return self.snap.port_count(bridge) + extra

    def port_with_mac(self, bridge: str, mac: str) -> str | None:
        """A port of `bridge` (or one a plan will add) whose own MAC is `mac`."""
        planned = self._planned_macs.get((bridge, mac))
        if planned is not None:
            return planned
        br = self.link(bridge)
        if br is None or br.index < 0:
            return None
        key = (br.index, mac)
        if self.snap is not None:
            if (br.index, "") not in self._fdb:  # index the bridge's port MACs once
                self._fdb[(br.index, "")] = None
                for p in self.snap.ports(bridge):
                    if p.mac:
                        self._fdb.setdefault((br.index, p.mac), p.name)
            return self._fdb.get(key)
        if key not in self._fdb:
            name = None
            entry = self.k.fdb_get(br.index, mac) if self.k is not None else None
            if entry is not None and entry.permanent and entry.ifindex != br.index:
                port = self.by_index(entry.ifindex)
                name = port.name if port is not None else str(entry.ifindex)
            self._fdb[key] = name
        return self._fdb[key]

    def planned(self, link: LinkInfo, bridge: str | None = None) -> LinkInfo:
        """Record a link the plan will create or change (index < 0 when new)."""
        if link.index == 0:
            link = link.with_(index=self._fake)
            self._fake -= 1
        old = self._links.get(link.name)
        self._links[link.name] = link
        self._by_index[link.index] = link
        if bridge is not None and (old is None or old.master != link.master):
            self._planned_ports[bridge] = self._planned_ports.get(bridge, 0) + 1
            if link.mac:
                self._planned_macs[(bridge, link.mac)] = link.name
        return link

    # -- addresses and the host's traffic ----------------------------------
    def addresses(self, name: str) -> set[str]:
        """ADDRESS/PREFIX of every address on `name` (empty if it does not exist)."""
        if name not in self._addrs:
            lk = self.link(name)
            if lk is None or lk.index < 0 or self.k is None:
                self._addrs[name] = set()
            else:
                self._addrs[name] = {f"{a.address}/{a.prefixlen}"
                                     for a in self.k.addresses(lk.index)}
        return self._addrs[name]

    def link_with_address(self, ip: str) -> LinkInfo | None:
        """The link holding address `ip` (one dump of the namespace's addresses)."""
        if self.k is None:
            return None
        a = next((a for a in self.k.addresses() if (a.local or a.address) == ip), None)
        return None if a is None else self.by_index(a.index)

    def host_traffic(self, name: str, ours: set[str] | None = None) -> list[str]:
        """Why `name` carries the host's traffic (empty: it does not).

        Counts: any address but IPv6 link-local; any route or nexthop in any table
        that goes out through it (multipath legs and nexthop objects included),
        except the kernel's own routes for IPv6 link-local and multicast; any
        policy rule whose iif or oif names it.  `ours` are addresses vmnet put
        there itself (a bridge's configured address), with their kernel routes.
        """
        lk = self.link(name)
        if lk is None or lk.index < 0 or self.k is None:
            return []
        ours = ours or set()
        k = self.k
        reasons: list[str] = []
        for a in k.addresses(lk.index):
            text = f"{a.address}/{a.prefixlen}"
            if (a.family == 10 and a.address.lower().startswith("fe80:")) or text in ours:
                continue
            reasons.append(f"address {text}")
        nh_ids = set()
        for nh in k.nexthops():
            if nh.oif == lk.index:
                nh_ids.add(nh.id)
                reasons.append(f"nexthop id {nh.id}")
        for r in k.routes():
            uses = lk.index in r.oifs or (r.nh_id is not None and r.nh_id in nh_ids)
            # The kernel's own routes (proto kernel) come from an address, which is
            # counted above, or from IPv6 link-local and multicast, which are not.
            if not uses or r.protocol == RTPROT_KERNEL:
                continue
            dst = "default" if r.dst is None else f"{r.dst}/{r.dst_len}"
            table = "" if r.table == 254 else f" table {r.table}"
            reasons.append(f"route {dst}{table}")
        for rule in k.rules():
            if name in (rule.iifname, rule.oifname):
                reasons.append(f"policy rule {rule.priority}")
        return reasons
