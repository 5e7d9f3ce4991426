"""Types and the narrow interface of the kernel seam."""

from __future__ import annotations

from dataclasses import dataclass

from vmnet.kernel.tun import disable_ipv6

__all__ = ["LinkInfo", "Snapshot", "TapSpec", "TunInfo", "disable_ipv6", "fresh_group"]


@dataclass(frozen=True)
class TunInfo:
    """What the kernel reports about a tun/tap device (IFLA_INFO_DATA)."""

    tap: bool
    owner: int | None
    group: int | None
    multi_queue: bool
    persist: bool
    vnet_hdr: bool
    pi: bool
    num_queues: int


@dataclass(frozen=True)
class LinkInfo:
    """One network interface as the kernel reports it."""

    index: int
    name: str
    kind: str | None
    mac: str | None
    mtu: int
    up: bool
    carrier: bool
    master: int | None
    alias: str | None
    group: int = 0
    tun: TunInfo | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    stp: bool | None = None
    forward_delay: int | None = None  # seconds, bridges only


@dataclass(frozen=True)
class TapSpec:
    """A persistent tap to create: made, IPv6 off, MAC/MTU/mark set, up, not yet a port."""

    name: str
    owner: int | None
    group: int | None
    multi_queue: bool
    mac: str
    mtu: int | None
    alias: str


class Snapshot:
    """Links of the namespace from one dump, indexed by name, index and master."""

    def __init__(self, links: dict[str, LinkInfo] | None = None) -> None:
        self.links: dict[str, LinkInfo] = {}
        self._by_index: dict[int, LinkInfo] = {}
        self._ports: dict[int, list[LinkInfo]] = {}
        self._port_macs: dict[int, set[str]] = {}
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
            if link.mac:
                self._port_macs.setdefault(link.master, set()).add(link.mac)

    def by_index(self, index: int | None) -> LinkInfo | None:
        return None if index is None else self._by_index.get(index)

    def get(self, name: str) -> LinkInfo | None:
        return self.links.get(name)

    def port_macs(self, bridge: str) -> set[str]:
        """MACs of the bridge's ports (a lookup, not a scan)."""
        br = self.links.get(bridge)
        return set() if br is None else self._port_macs.get(br.index, set())

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
