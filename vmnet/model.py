"""The typed model: networks, NICs and VMs.  Plain frozen data, validated on entry.

Nothing here touches the host; `vmnet.config` builds these from TOML and CLI
input, and everything else consumes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmnet import validate as v
from vmnet._hash import sha256
from vmnet.errors import InputError

QEMU_OUI = "52:54:00"
MARK_PREFIX = "vmnet:"
DEFAULT_NETWORK = "default"
DEFAULT_BRIDGE = "vmnet0"
HASHED_TAP_PREFIX = "vmn"


@dataclass(frozen=True)
class Network:
    """A Linux bridge, optionally with an uplink and a host address."""

    name: str
    bridge: str
    uplink: str | None = None
    mtu: int | None = None
    stp: bool = False
    forward_delay: int = 0
    address: str | None = None

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class Nic:
    """One virtual NIC of a VM: a tap on a network's bridge."""

    index: int
    network: Network
    tap: str
    mac: str
    queues: int = 1
    mtu: int | None = None
    vnet_hdr: bool = True
    model: str = "virtio-net-pci"

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class Vm:
    """A VM's network: its owner and NICs."""

    name: str
    uid: int | None
    gid: int | None
    nics: tuple[Nic, ...]
    user: str | None = None  # display name of the owner

    def __post_init__(self) -> None:
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


def nic_mark(vm: str, index: int) -> str:
    """The ifalias vmnet puts on a tap it creates: proof, kernel-side, that it is ours."""
    return f"{MARK_PREFIX}{vm}:{index}"


def parse_nic_mark(alias: str | None) -> tuple[str, int] | None:
    if not alias or not alias.startswith(MARK_PREFIX) or alias.startswith(
            f"{MARK_PREFIX}bridge:"):
        return None
    vm, _, idx = alias[len(MARK_PREFIX):].rpartition(":")
    if not vm or not idx.isdigit():
        return None
    return vm, int(idx)


def default_tap_name(vm: str, index: int) -> str:
    """`<vm>-<index>` when it fits and is safe, else `vmn<hash>-<index>`.

    Direct names are injective (the suffix after the last '-' is the index).
    Hashed names start with 'vmn' followed by 9 hex digits; a VM name that
    itself starts with 'vmn' always gets a hashed name, so the two forms
    cannot collide.
    """
    direct = f"{vm}-{index}"
    safe = all(c.isalnum() or c in "-_." for c in vm) and vm.isascii()
    reserved = vm.startswith((HASHED_TAP_PREFIX, *v.RESERVED_TAP_PREFIXES))
    if safe and not reserved and len(direct) <= v.MAX_IFNAME:
        return direct
    h = sha256(vm.encode()).hexdigest()[:9]
    return f"{HASHED_TAP_PREFIX}{h}-{index}"


def default_mac(vm: str, index: int) -> str:
    """Deterministic guest MAC in QEMU's 52:54:00 range."""
    h = sha256(f"vmnet-mac/{vm}/{index}".encode()).digest()
    return f"{QEMU_OUI}:{h[0]:02x}:{h[1]:02x}:{h[2]:02x}"


def tap_mac(guest_mac: str) -> str:
    """The tap's own MAC: the guest's with first byte 0xfe (0xfa if it already is 0xfe).

    A bridge takes the lowest MAC of its ports unless pinned; 0xfe sorts high,
    and a tap that shares the guest's MAC would confuse the bridge's FDB.
    """
    first = "fa" if guest_mac[:2].lower() == "fe" else "fe"
    return first + guest_mac[2:].lower()


def pinned_bridge_mac(bridge: str) -> str:
    """The MAC vmnet gives a bridge it creates (locally administered, from the name)."""
    h = sha256(f"vmnet-bridge/{bridge}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *h[:5]))


def bridge_mark(bridge: str) -> str:
    """The ifalias vmnet puts on a bridge it creates."""
    return f"{MARK_PREFIX}bridge:{bridge}"
