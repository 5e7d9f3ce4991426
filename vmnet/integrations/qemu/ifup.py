"""QEMU's `script=`/`downscript=`: put a tap on its bridge, and take it off again.

QEMU runs these with exactly one argument, the interface name, as its own
uid, in its own network namespace, and waits for them before the VM starts.
So they are import-light (no click, no jinja2; the kernel through the
`vmnet.kernel` seam) and do one netlink request for the whole change.

ifup finds what the tap is for, in this order: vmnet's records (a tap made
by `vmnet up`), then the config file (a VM whose NIC resolves to this tap
name, including unconfigured VMs with vmnet's default `<vm>-<n>` names), else
the default network.  It sets the MTU (the NIC's, else the bridge's) before
the tap joins the bridge, sets the tap's MAC to the guest's with first byte
0xfe when the guest MAC is known, turns IPv6 off on it, enslaves it and
brings it up.  ifdown takes it off the bridge and down; neither deletes
anything (a tap QEMU created vanishes when QEMU closes it, a tap vmnet made
stays until `vmnet down`), and neither creates a bridge.

The environment says where to look, as for `vmnet`: $VMNET_STATE_DIR and
$VMNET_CONFIG (QEMU passes its environment on).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from vmnet.errors import ConflictError, InputError, NotFoundError, PrivilegeError, VmnetError
from vmnet.kernel.caps import has_net_admin
from vmnet.model import validate

if TYPE_CHECKING:
    from vmnet.config import Config
    from vmnet.kernel import Kernel
    from vmnet.state.store import VmRecord

IFUP = "vmnet-qemu-ifup"
IFDOWN = "vmnet-qemu-ifdown"
_DEFAULT_NAME = re.compile(r"^(.+)-(\d+)$")


@dataclass(frozen=True)
class Port:
    """What ifup does to a tap: the bridge it joins, its MTU and MAC (None: leave)."""

    tap: str
    bridge: str
    mtu: int | None
    tap_mac: str | None
    source: str  # why: "record of VM x NIC n", "config VM x NIC n", "default network"
    nic_mtu: bool = False  # the MTU is the NIC's own (refused if it lowers a foreign bridge)


def port_from_records(tap: str, records: Mapping[str, VmRecord]) -> Port | None:
    for name, rec in sorted(records.items()):
        for n in rec.nics:
            if n.tap == tap:
                return Port(tap, n.bridge, n.mtu, n.tap_mac, f"record of VM {name} NIC {n.index}")
    return None


def port_from_config(tap: str, cfg: Config, env: Mapping[str, str]) -> Port:
    """A configured VM whose NIC resolves to `tap`, else vmnet's default naming, else default."""
    from vmnet.config import Overrides, resolve_vm

    candidates: list[tuple[str, Overrides]] = [(vm, Overrides()) for vm in sorted(cfg.vms)]
    m = _DEFAULT_NAME.match(tap)
    if m and m.group(1) not in cfg.vms:
        candidates.append((m.group(1), Overrides(nics=int(m.group(2)) + 1)))
    for name, ov in candidates:
        try:
            vm = resolve_vm(cfg, name, ov, env=dict(env))
        except VmnetError:
            continue  # not a name vmnet could have given this tap
        for nic in vm.nics:
            if nic.tap == tap:
                return Port(tap, nic.network.bridge, nic.mtu or nic.network.mtu, nic.tap_mac,
                            f"{'config' if name in cfg.vms else 'default'} VM {name} "
                            f"NIC {nic.index}", nic_mtu=nic.mtu is not None)
    net = cfg.networks[cfg.default_network]
    return Port(tap, net.bridge, net.mtu, None, f"default network {net.name}")


def find_port(tap: str, env: Mapping[str, str]) -> Port:
    """Records first (they know `vmnet up`'s overrides), then the config file."""
    from vmnet.kernel.netns import current_cookie, current_inode
    from vmnet.state.store import DEFAULT_STATE_DIR, StateStore

    store = StateStore(env.get("VMNET_STATE_DIR") or DEFAULT_STATE_DIR, current_inode(),
                       current_cookie())
    port = port_from_records(tap, store.vms())
    if port is not None:
        return port
    from vmnet import confcache
    from vmnet.config import load_config

    cfg = load_config(None, dict(env))
    confcache.save(store.root, cfg)  # for the hot path (vmnet.hot) next time
    return port_from_config(tap, cfg, env)


def ifup(tap: str, env: Mapping[str, str], k: Kernel) -> Port:
    """Apply MTU, MAC, IPv6 off, bridge and up to an existing tap; return what was done."""
    from vmnet.engine.ownership import is_our_bridge

    port = find_port(tap, env)
    snap = k.snapshot()
    link = snap.get(tap)
    if link is None:
        raise NotFoundError(f"interface {tap} does not exist", ifname=tap)
    if link.kind != "tun" or link.tun is None or not link.tun.tap:
        raise ConflictError(f"interface {tap} is not a tap ({link.kind or 'no kind'})",
                            ifname=tap, hint="QEMU's script= is for tap interfaces only")
    br = snap.get(port.bridge)
    if br is None:
        raise NotFoundError(f"bridge {port.bridge} for {tap} ({port.source}) does not exist",
                            ifname=port.bridge,
                            hint="vmnet's scripts never create bridges: `vmnet up` a VM on "
                                 "that network first, or create the bridge")
    if br.kind != "bridge":
        raise ConflictError(f"{port.bridge} ({port.source}) is not a bridge", ifname=port.bridge)
    # The rule `vmnet up` applies (vmnet.engine.plan): only the NIC's own MTU is refused.
    ours = is_our_bridge(br)
    if port.nic_mtu and port.mtu and port.mtu < br.mtu and not ours:
        raise ConflictError(f"MTU {port.mtu} of {tap} ({port.source}) would lower the MTU of "
                            f"bridge {port.bridge} ({br.mtu}), which vmnet did not create",
                            ifname=tap)
    mtu = port.mtu or br.mtu
    k.disable_ipv6(tap)  # before up: no link-local address, no router solicitations
    k.set_link(tap, mtu=mtu if link.mtu != mtu else None,
               mac=port.tap_mac if port.tap_mac and link.mac != port.tap_mac else None,
               master=port.bridge if link.master != br.index else None, up=True)
    return port


def ifdown(tap: str, k: Kernel) -> None:
    """Take the tap off its bridge and down; a tap already gone is fine."""
    link = k.snapshot().get(tap)
    if link is None:
        return
    if link.kind != "tun" or link.tun is None or not link.tun.tap:
        raise ConflictError(f"interface {tap} is not a tap ({link.kind or 'no kind'})",
                            ifname=tap, hint="QEMU's downscript= is for tap interfaces only")
    k.set_link(tap, nomaster=link.master is not None, up=False)


def _main(prog: str, action: Callable[[str, Kernel], object], argv: list[str]) -> int:
    try:
        if len(argv) != 1:
            raise InputError(f"usage: {prog} IFNAME (QEMU passes exactly one argument, "
                             f"the interface name; got {len(argv)})")
        tap = validate.ifname(argv[0], "argument")
        if not has_net_admin():
            raise PrivilegeError(
                f"{tap}: changing a bridge port needs CAP_NET_ADMIN, which this QEMU lacks",
                hint="start QEMU with `vmnet run VM -- qemu-system-...`, which passes it "
                     "ready tap fds and needs no script; or `vmnet up VM` and use "
                     "`vmnet qemu-args VM`")
        from vmnet.kernel import open_kernel

        k = open_kernel()
        try:
            action(tap, k)
        finally:
            k.close()
    except VmnetError as e:
        print(f"{prog}: error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    return 0


def main_ifup(argv: list[str] | None = None) -> NoReturn:
    """Entry point of `vmnet-qemu-ifup IFNAME` (and scripts/qemu-ifup)."""
    env = os.environ
    sys.exit(_main(IFUP, lambda tap, k: ifup(tap, env, k),
                   sys.argv[1:] if argv is None else argv))


def main_ifdown(argv: list[str] | None = None) -> NoReturn:
    """Entry point of `vmnet-qemu-ifdown IFNAME` (and scripts/qemu-ifdown)."""
    sys.exit(_main(IFDOWN, ifdown, sys.argv[1:] if argv is None else argv))


def script_paths() -> tuple[str, str]:
    """Absolute paths of the ifup/ifdown scripts QEMU should run.

    The console scripts installed next to this Python (same installation as
    the running vmnet), else on PATH, else the checkout's scripts/.
    """
    import shutil
    from pathlib import Path

    out = []
    checkout = Path(__file__).resolve().parent.parent / "scripts"
    for console, shim in ((IFUP, "qemu-ifup"), (IFDOWN, "qemu-ifdown")):
        beside = Path(sys.executable).parent / console
        found = (str(beside) if os.access(beside, os.X_OK) else None) or shutil.which(console)
        if found is None and os.access(checkout / shim, os.X_OK):
            found = str(checkout / shim)
        if found is None:
            raise NotFoundError(f"{console} is not installed",
                                hint="install vmnet (pip install .) so its scripts are on PATH")
        out.append(os.path.abspath(found))
    return out[0], out[1]
