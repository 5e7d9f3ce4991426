"""vmnet's names for things: tap names, MACs and the marks it puts on links.

Pure functions of a VM's or bridge's name, with nothing to import but the
validation limits and sha256, so every layer (model, config, state index)
names everything the same way.
"""

from __future__ import annotations

from vmnet.model import validate as v

try:  # sha256 without hashlib's OpenSSL import (about 2 ms): the builtin module
    from _sha256 import sha256 as sha256
except ImportError:  # pragma: no cover - builds without the builtin module
    from hashlib import sha256 as sha256

QEMU_OUI = "52:54:00"
MARK_PREFIX = "vmnet:"
HASHED_TAP_PREFIX = "vmn"
DEFAULT_NETWORK = "default"
DEFAULT_BRIDGE = "vmnet0"
BARE_NETWORK = "bare"  # built in: the bridge alone (what `default` was before 0.5)
BARE_BRIDGE = "vmnet-bare"
ALIAS_PREFIX = "ua-vmnet-"  # user alias of the libvirt <interface> vmnet renders
_ALIAS_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


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
    Hashed names start with 'vmn' followed by 9 hex digits (36 bits: two VMs' hashed
    names collide with a chance of about n**2 / 2**37; a collision is refused); a VM
    name that itself starts with 'vmn' always gets a hashed name, so the two forms
    cannot collide with each other.
    """
    direct = f"{vm}-{index}"
    safe = all(c.isalnum() or c in "-_." for c in vm) and vm.isascii()
    reserved = vm.startswith((HASHED_TAP_PREFIX, *v.RESERVED_TAP_PREFIXES))
    if safe and not reserved and len(direct) <= v.MAX_IFNAME:
        return direct
    h = sha256(vm.encode()).hexdigest()[:9]
    return f"{HASHED_TAP_PREFIX}{h}-{index}"


MAC_SCHEMES = ("qemu", "local")


def default_mac(vm: str, index: int, scheme: str = "qemu") -> str:
    """Deterministic guest MAC of a NIC that names none.

    "qemu" (the default, unchanged since 0.1): QEMU's 52:54:00 prefix and 24 bits of a
    hash of the VM name and NIC index.  Two VMs' default MACs collide with a chance
    of about n**2 / 2**25 among n NICs: 1 % at ~580, 50 % at ~4,800 (a collision is
    refused, naming both VMs).  "local" (opt-in): 02 (locally administered, unicast)
    and 40 bits of the hash: 1 % at ~150,000 NICs, 50 % at ~1.2 million.
    """
    h = sha256(f"vmnet-mac/{vm}/{index}".encode()).digest()
    if scheme == "local":
        return "02:" + ":".join(f"{b:02x}" for b in h[:5])
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


def alias_for(tap: str) -> str:
    """The user alias of the `<interface>` vmnet renders for a tap.

    Tap names are unique in a namespace, so the alias is unique in a domain.
    libvirt allows [A-Za-z0-9_.-] in aliases; other tap names are hashed.
    """
    if tap and all(c in _ALIAS_SAFE for c in tap):
        return f"{ALIAS_PREFIX}{tap}"
    return f"{ALIAS_PREFIX}h{sha256(tap.encode()).hexdigest()[:12]}"
