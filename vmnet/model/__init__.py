"""The typed model: networks, NICs and VMs.  Plain frozen data, validated on entry.

Nothing here touches the host; `vmnet.config` builds these from TOML and CLI
input, and everything else consumes them.
"""

from __future__ import annotations

from vmnet.errors import InputError
from vmnet.model import validate as v
from vmnet.model.names import (
    DEFAULT_BRIDGE,
    DEFAULT_NETWORK,
    HASHED_TAP_PREFIX,
    MARK_PREFIX,
    QEMU_OUI,
    bridge_mark,
    default_mac,
    default_tap_name,
    nic_mark,
    parse_nic_mark,
    pinned_bridge_mac,
    tap_mac,
)
from vmnet.model.value import Value


class Network(Value):
    """A Linux bridge, optionally with an uplink and a host address."""

    __slots__ = ("address", "bridge", "forward_delay", "mtu", "name", "stp", "uplink")

    def __init__(self, name: str, bridge: str, uplink: str | None = None,
                 mtu: int | None = None, stp: bool = False, forward_delay: int = 0,
                 address: str | None = None) -> None:
        self.name = name
        self.bridge = bridge
        self.uplink = uplink
        self.mtu = mtu
        self.stp = stp
        self.forward_delay = forward_delay
        self.address = address
        what = f"network {self.name!r}"
        v.ifname(self.bridge, f"{what} bridge")
        if self.uplink is not None:
            v.ifname(self.uplink, f"{what} uplink")
            if self.uplink == self.bridge:
                raise InputError(f"{what}: uplink {self.uplink!r} is the bridge itself")
        if self.mtu is not None:
            v.mtu(self.mtu, f"{what} mtu")
        v.int_range(self.forward_delay, f"{what} forward_delay", 0, v.FORWARD_DELAY_MAX)
        v.stp_pair(self.stp, self.forward_delay, what)
        if self.address is not None:
            v.cidr(self.address, f"{what} address")

    def with_uplink(self, uplink: str | None) -> Network:
        return Network(self.name, self.bridge, uplink, self.mtu, self.stp, self.forward_delay,
                       self.address)

    @property
    def bridge_mac(self) -> str:
        """Pinned bridge MAC: locally administered, derived from the bridge name.

        Without it a bridge takes the lowest port MAC and changes it as ports
        come and go, which breaks the host's neighbours' ARP caches.
        """
        return pinned_bridge_mac(self.bridge)

    @property
    def mark(self) -> str:
        return bridge_mark(self.bridge)


class Nic(Value):
    """One virtual NIC of a VM: a tap on a network's bridge."""

    __slots__ = ("index", "mac", "model", "mtu", "network", "queues", "tap", "vnet_hdr")

    def __init__(self, index: int, network: Network, tap: str, mac: str, queues: int = 1,
                 mtu: int | None = None, vnet_hdr: bool = True,
                 model: str = "virtio-net-pci") -> None:
        self.index = index
        self.network = network
        self.tap = tap
        self.mac = mac
        self.queues = queues
        self.mtu = mtu
        self.vnet_hdr = vnet_hdr
        self.model = model
        what = f"NIC {self.index}"
        v.tap_name(self.tap, f"{what} tap")
        v.mac(self.mac, f"{what} mac")
        v.queues(self.queues, f"{what} queues")
        if self.mtu is not None:
            v.mtu(self.mtu, f"{what} mtu")

    @property
    def tap_mac(self) -> str:
        return tap_mac(self.mac)

    @property
    def multi_queue(self) -> bool:
        return self.queues > 1

    @property
    def netdev_id(self) -> str:
        """The QEMU netdev id vmnet uses for this NIC (documented: net0, net1, ...)."""
        return f"net{self.index}"


class Vm(Value):
    """A VM's network: its owner and NICs."""

    __slots__ = ("gid", "name", "nics", "uid", "user")

    def __init__(self, name: str, uid: int | None, gid: int | None, nics: tuple[Nic, ...],
                 user: str | None = None) -> None:
        self.name = name
        self.uid = uid
        self.gid = gid
        self.nics = nics
        self.user = user  # display name of the owner
        v.vm_name(self.name)
        if not 1 <= len(self.nics) <= v.MAX_NICS:
            raise InputError(f"VM {self.name!r}: needs 1..{v.MAX_NICS} NICs, "
                               f"got {len(self.nics)}")
        taps = [n.tap for n in self.nics]
        if len(set(taps)) != len(taps):
            raise InputError(f"VM {self.name!r}: two NICs share a tap name")
        macs = [n.mac for n in self.nics]
        if len(set(macs)) != len(macs):
            raise InputError(f"VM {self.name!r}: two NICs share a MAC")

    def mark(self, nic: Nic) -> str:
        return nic_mark(self.name, nic.index)


__all__ = ["DEFAULT_BRIDGE", "DEFAULT_NETWORK", "HASHED_TAP_PREFIX", "MARK_PREFIX", "QEMU_OUI",
           "Network", "Nic", "Vm", "bridge_mark", "default_mac", "default_tap_name", "nic_mark",
           "parse_nic_mark", "pinned_bridge_mac", "tap_mac"]
