"""QEMU command-line fragments for a VM's NICs, as argv lists (never shell strings)."""

from __future__ import annotations

from vmnet.render.shell import shell_quote

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Sequence

    from vmnet.model import Nic, Vm

__all__ = ["shell_quote"]


def escape(value: str) -> str:
    """QEMU option values escape ',' by doubling it."""
    return value.replace(",", ",,")


def split_opts(text: str) -> list[tuple[str, str]]:
    """Parse `k=v,k=v` back (',,' is a literal comma): the inverse of our rendering."""
    out: list[tuple[str, str]] = []
    parts: list[str] = []
    cur = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == ",":
            if i + 1 < len(text) and text[i + 1] == ",":
                cur += ","
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    parts.append(cur)
    for p in parts:
        k, _, val = p.partition("=")
        out.append((k, val))
    return out


def _opts(head: str, pairs: Sequence[tuple[str, str | int]]) -> str:
    return ",".join([head, *(f"{k}={escape(str(v))}" for k, v in pairs)])


def netdev(nic: Nic, *, fds: Sequence[int] | None = None,
           vhostfds: Sequence[int] | None = None, ifname_mode: bool = False,
           script: str | None = None, downscript: str | None = None,
           vhost: bool = False) -> list[str]:
    """`-netdev tap,...` for one NIC.

    fds: tap fds inherited by QEMU (one per queue).  ifname_mode: QEMU opens
    the pre-created tap itself (script=no).  script/downscript: QEMU creates
    or opens the tap and runs our scripts.
    """
    pairs: list[tuple[str, str | int]] = [("id", nic.netdev_id)]
    if fds is not None:
        if len(fds) == 1:
            pairs.append(("fd", fds[0]))
        else:
            pairs.append(("fds", ":".join(str(f) for f in fds)))
        if vhostfds:
            pairs.append(("vhost", "on"))
            if len(vhostfds) == 1:
                pairs.append(("vhostfd", vhostfds[0]))
            else:
                pairs.append(("vhostfds", ":".join(str(f) for f in vhostfds)))
    else:
        pairs.append(("ifname", nic.tap))
        if ifname_mode:
            pairs += [("script", "no"), ("downscript", "no")]
        else:
            pairs += [("script", script or "no"), ("downscript", downscript or "no")]
        if nic.queues > 1:
            pairs.append(("queues", nic.queues))
        if vhost:
            pairs.append(("vhost", "on"))
        # Only when QEMU opens the tap: with fd=/fds= QEMU probes the fd's own
        # IFF_VNET_HDR and rejects vnet_hdr= (qemu net/tap.c, "invalid with fd=").
        pairs.append(("vnet_hdr", "on" if nic.vnet_hdr else "off"))
    return ["-netdev", _opts("tap", pairs)]


def device(nic: Nic) -> list[str]:
    """`-device MODEL,netdev=...,mac=...` (+ mq=on,vectors=2Q+2 for Q queues; host_mtu=
    for a virtio-net NIC with an MTU)."""
    pairs: list[tuple[str, str | int]] = [("netdev", nic.netdev_id), ("mac", nic.mac)]
    if nic.queues > 1:
        pairs += [("mq", "on"), ("vectors", 2 * nic.queues + 2)]
    mtu = nic.mtu or nic.network.mtu
    if mtu and nic.model.startswith("virtio-net"):
        pairs.append(("host_mtu", mtu))  # the guest learns it (VIRTIO_NET_F_MTU), as <mtu>'s
    return ["-device", _opts(nic.model, pairs)]


def vm_args(vm: Vm, *, fds: dict[int, list[int]] | None = None,
            vhostfds: dict[int, list[int]] | None = None, netdev_only: bool = False,
            ifname_mode: bool = True, script: str | None = None,
            downscript: str | None = None, vhost: bool = False) -> list[str]:
    """All NICs' options for `vm`, in NIC order."""
    out: list[str] = []
    for nic in vm.nics:
        out += netdev(nic, fds=None if fds is None else fds[nic.index],
                      vhostfds=None if vhostfds is None else vhostfds.get(nic.index),
                      ifname_mode=ifname_mode, script=script, downscript=downscript,
                      vhost=vhost)
        if not netdev_only:
            out += device(nic)
    return out


def up_lines(vm: Vm) -> list[str]:
    """What `up` says of a VM that is up: its taps, then its QEMU options."""
    from vmnet.config.users import owner_text

    lines = []
    owner = owner_text(vm.uid, vm.gid)
    for nic in vm.nics:
        on = f"bridge {nic.network.bridge}" if nic.network.ovn is None else \
            f"logical switch {nic.network.ovn.switch} (port {vm.lsp(nic)} on " \
            f"{nic.network.bridge}, MTU {nic.mtu})"
        lines.append(f"{vm.name}: tap {nic.tap} on {on} "
                     f"(owner {owner}, mac {nic.mac}, queues {nic.queues})")
    lines.append("QEMU options: " + " ".join(shell_quote(a) for a in vm_args(vm)))
    return lines
