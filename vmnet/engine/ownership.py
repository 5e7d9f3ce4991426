"""Kernel-side proof that a link is vmnet's: its mark (ifalias), kind and owner.

A record in the state directory is never proof by itself.  Kept apart from
vmnet.engine.plan so the qemu ifup script can use it without importing the planner.
"""

from __future__ import annotations

from vmnet.kernel.base import LinkInfo
from vmnet.model import bridge_mark, nic_mark, pinned_bridge_mac


def is_our_tap(link: LinkInfo | None, vm: str, index: int, owner: int | None) -> bool:
    """The tap vmnet made for this VM's NIC: marked, a tap, owned as recorded."""
    return (link is not None and link.kind == "tun" and link.tun is not None
            and link.tun.tap and link.alias == nic_mark(vm, index)
            and link.tun.owner == owner)


def is_our_bridge(link: LinkInfo | None) -> bool:
    """A bridge vmnet created: it carries vmnet's bridge mark.

    The mark is a second request (the kernel ignores IFLA_IFALIAS when it
    creates a link), so a vmnet killed in between leaves a bridge without it;
    the MAC vmnet pins, derived from the name, is set by the creating request
    itself and stands in for the mark on an unmarked bridge.
    """
    if link is None or link.kind != "bridge":
        return False
    return link.alias == bridge_mark(link.name) or (
        not link.alias and link.mac == pinned_bridge_mac(link.name))
