"""The kernel seam's types: links, taps and a namespace's link table."""

from __future__ import annotations

from vmnet.model.value import Value

__all__ = ["LinkInfo", "Snapshot", "TapSpec", "TunInfo", "fresh_group"]


class TunInfo(Value):
    """What the kernel reports about a tun/tap device (IFLA_INFO_DATA)."""

    __slots__ = (
        "group",
        "multi_queue",
        "num_queues",
        "owner",
        "persist",
        "pi",
        "tap",
        "vnet_hdr",
    )

    def __init__(self, tap: bool, owner: int | None, group: int | None, multi_queue: bool,
                 persist: bool, vnet_hdr: bool, pi: bool, num_queues: int) -> None:
        self.tap = tap
        self.owner = owner
        self.group = group
        self.multi_queue = multi_queue
        self.persist = persist
        self.vnet_hdr = vnet_hdr
        self.pi = pi
        self.num_queues = num_queues


class LinkInfo(Value):
    """One network interface as the kernel reports it."""

    __slots__ = (
        "alias",
        "carrier",
        "forward_delay",
        "group",
        "index",
        "kind",
        "mac",
        "master",
        "mtu",
        "name",
        "port_isolated",
        "port_learning",
        "rx_bytes",
        "rx_packets",
        "stp",
        "tun",
        "tx_bytes",
        "tx_packets",
        "up",
        "vlan_filtering",
    )

    def __init__(self, index: int, name: str, kind: str | None, mac: str | None, mtu: int,
                 up: bool, carrier: bool, master: int | None, alias: str | None,
                 group: int = 0, tun: TunInfo | None = None, rx_bytes: int = 0,
                 tx_bytes: int = 0, rx_packets: int = 0, tx_packets: int = 0,
                 stp: bool | None = None, forward_delay: int | None = None,
                 port_isolated: bool | None = None, port_learning: bool | None = None,
                 vlan_filtering: bool | None = None) -> None:
        self.vlan_filtering = vlan_filtering  # a bridge's (None: not a bridge)
        self.port_isolated = port_isolated  # a bridge port's (None: not a bridge port)
        self.port_learning = port_learning
        self.index = index
        self.name = name
        self.kind = kind
        self.mac = mac
        self.mtu = mtu
        self.up = up
        self.carrier = carrier
        self.master = master
        self.alias = alias
        self.group = group
        self.tun = tun
        self.rx_bytes = rx_bytes
        self.tx_bytes = tx_bytes
        self.rx_packets = rx_packets
        self.tx_packets = tx_packets
        self.stp = stp
        self.forward_delay = forward_delay  # seconds, bridges only

    def with_(self, *, master: int | None = None, up: bool | None = None,
              index: int | None = None) -> LinkInfo:
        """A copy with another master, admin state or index (a planner's view of a change,
        or of a link it will create)."""
        d = self.as_dict()
        for key, value in (("master", master), ("up", up), ("index", index)):
            if value is not None:
                d[key] = value
        return LinkInfo(**d)  # type: ignore[arg-type]


class TapSpec(Value):
    """A persistent tap to create: made, IPv6 off, MAC/MTU/mark set, up, not yet a port."""

    __slots__ = ("alias", "group", "mac", "mtu", "multi_queue", "name", "owner")

    def __init__(self, name: str, owner: int | None, group: int | None, multi_queue: bool,
                 mac: str, mtu: int | None, alias: str) -> None:
        self.name = name
        self.owner = owner
        self.group = group
        self.multi_queue = multi_queue
        self.mac = mac
        self.mtu = mtu
        self.alias = alias


class Snapshot:
    """Links of the namespace from one dump, indexed by name, index and master."""

    def __init__(self, links: dict[str, LinkInfo] | None = None) -> None:
        self.links: dict[str, LinkInfo] = {}
        self._by_index: dict[int, LinkInfo] = {}
        self._ports: dict[int, list[LinkInfo]] = {}
        for link in (links or {}).values():
            self.add(link)

    def add(self, link: LinkInfo) -> None:
        """Add a link, or replace the one of that name (a planner's view of a change)."""
        old = self.links.get(link.name)
        if old is not None and old.master is not None:
            ports = self._ports.get(old.master, [])
            if old in ports:
                ports.remove(old)
        self.links[link.name] = link
        self._by_index[link.index] = link
        if link.master is not None:
            self._ports.setdefault(link.master, []).append(link)

    def by_index(self, index: int | None) -> LinkInfo | None:
        return None if index is None else self._by_index.get(index)

    def get(self, name: str) -> LinkInfo | None:
        return self.links.get(name)


    def port_count(self, bridge: str) -> int:
        br = self.links.get(bridge)
        return 0 if br is None else len(self._ports.get(br.index, ()))

    def ports(self, bridge: str) -> list[LinkInfo]:
        br = self.links.get(bridge)
        return [] if br is None else list(self._ports.get(br.index, []))


def fresh_group(used: set[int]) -> int:
    """A netdev group number no link is in (never 0, the default group)."""
    import os

    while True:
        group = 0x10000 + int.from_bytes(os.urandom(4), "little") % 0x7FFEFFFF
        if group not in used:
            return group
