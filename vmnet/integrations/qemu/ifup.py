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
import sys

from vmnet.consts import DEFAULT_LOCK_TIMEOUT, DEFAULT_STATE_DIR
from vmnet.errors import ConflictError, InputError, NotFoundError, PrivilegeError, VmnetError
from vmnet.kernel.netns import has_net_admin
from vmnet.model import validate
from vmnet.model.value import Value

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from vmnet.config import Config
    from vmnet.engine.context import Context
    from vmnet.model import Vm
    from vmnet.state.records import VmRecord
    from vmnet.state.store import StateStore

IFUP = "vmnet-qemu-ifup"
IFDOWN = "vmnet-qemu-ifdown"


class Port(Value):
    """What ifup does to a tap: the bridge it joins, its MTU and MAC (None: leave)."""

    __slots__ = ("bridge", "mtu", "nic_mtu", "ovn", "source", "tap", "tap_mac")

    def __init__(self, tap: str, bridge: str, mtu: int | None, tap_mac: str | None,
                 source: str, nic_mtu: bool = False, ovn: str | None = None) -> None:
        self.ovn = ovn  # a tap `up` made on an ovn network: its VM (brought up again)
        self.tap = tap
        self.bridge = bridge
        self.mtu = mtu
        self.tap_mac = tap_mac
        self.source = source  # why: "record of VM x NIC n", "config VM x NIC n", ...
        self.nic_mtu = nic_mtu  # the NIC's own MTU (refused if it lowers a foreign bridge)


def port_from_records(tap: str, store: StateStore) -> Port | None:
    """The NIC of the VM whose record claims this tap (the state index: one lookup)."""
    vm = store.tap_owner(tap)
    rec = None if vm is None else store.get_vm(vm)
    for n in rec.nics if rec is not None else ():
        if n.tap == tap:
            return Port(tap, n.bridge, n.mtu, n.tap_mac, f"record of VM {vm} NIC {n.index}",
                        ovn=vm if n.ovn else None)
    return None


def _default_name(tap: str) -> tuple[str, int] | None:
    """(vm, index) of a tap named the way vmnet names them by default: <vm>-<n>."""
    vm, dash, idx = tap.rpartition("-")
    if not dash or not vm or not idx.isascii() or not idx.isdigit():
        return None
    return vm, int(idx)


def port_from_config(tap: str, cfg: Config, env: Mapping[str, str]) -> Port:
    """A configured VM whose NIC resolves to `tap`, else vmnet's default naming, else default."""
    from vmnet.config import Overrides, resolve_vm

    candidates: list[tuple[str, Overrides]] = [(vm, Overrides()) for vm in sorted(cfg.vms)]
    m = _default_name(tap)
    if m and m[0] not in cfg.vms and m[1] < 32:
        candidates.append((m[0], Overrides(nics=m[1] + 1)))
    for name, ov in candidates:
        try:
            vm = resolve_vm(cfg, name, ov, env=env)
        except VmnetError:
            continue  # not a name vmnet could have given this tap
        for nic in vm.nics:
            if nic.tap == tap and nic.network.ovn is not None:
                raise ConflictError(f"{tap} is for ovn network {nic.network.name!r} (VM "
                                    f"{name}), whose taps `vmnet up` makes", ifname=tap,
                                    hint=f"`vmnet up {name}` first, then start QEMU with "
                                         f"`vmnet qemu-args {name}` (ifname mode)")
            if nic.tap == tap:
                return Port(tap, nic.network.bridge, nic.mtu or nic.network.mtu, nic.tap_mac,
                            f"{'config' if name in cfg.vms else 'default'} VM {name} "
                            f"NIC {nic.index}", nic_mtu=nic.mtu is not None)
    net = cfg.networks[cfg.default_network]
    return Port(tap, net.bridge, net.mtu, None, f"default network {net.name}")


def find_port(tap: str, store: StateStore, env: Mapping[str, str]
              ) -> tuple[Port, Config | None]:
    """Records first (they know `vmnet up`'s overrides), then the config file (returned
    too, so its parse can be kept once ifup has succeeded)."""
    port = port_from_records(tap, store)
    if port is not None:
        return port, None
    from vmnet.config import load_config

    cfg = load_config(None, env, cache_dir=store.root)
    return port_from_config(tap, cfg, env), cfg


def ifup(tap: str, env: Mapping[str, str], ctx: Context, daemon: bool = False) -> Port:
    """Apply MTU, MAC, IPv6 off, bridge and up to an existing tap; return what was done.

    Under the namespace lock, as `up` and `down` are: a `down` racing this never
    deletes the bridge under the tap being enslaved.  A tap `vmnet up` made on an ovn
    network is brought back to what `up` made (plugged and bound) by that same `up`,
    and only through vmnetd (`daemon`): OVN's databases take writes from root's CLI,
    the hook and vmnetd, never from a script QEMU runs.
    """
    store = ctx.store()
    with store.locked(ctx.lock_timeout):
        try:
            port = _ifup_locked(tap, env, ctx, store)
        finally:
            # the lock made the namespace's directory: gone if empty (ifup writes nothing)
            store.cleanup_dir(tidy=False)
    if port.ovn is not None:
        _ovn_up(port, env, ctx, daemon)
    return port


def _ovn_up(port: Port, env: Mapping[str, str], ctx: Context, daemon: bool) -> None:
    vm = port.ovn
    assert vm is not None
    if not daemon:
        raise PrivilegeError(f"{port.tap} is on an ovn network (VM {vm}): the ifup script "
                             "writes to OVN's databases only through vmnetd",
                             hint="start vmnetd; or open the tap with `vmnet run` or "
                                  "`vmnet qemu-args` (ifname mode) after `vmnet up`")
    from vmnet.config import Overrides, load_config
    from vmnet.engine import ops
    from vmnet.engine.desired import desired
    from vmnet.engine.plan import BridgeRecords

    store = ctx.store()
    cfg = load_config(None, env, cache_dir=store.root)

    def resolve(name: str, rec: VmRecord | None) -> Vm:
        if rec is None:
            raise NotFoundError(f"VM {name!r} went down while its tap {port.tap} came up")
        return desired(cfg, name, Overrides(), rec, BridgeRecords(store), env)

    ops.up_resolved(ctx, [vm], resolve)


def _ifup_locked(tap: str, env: Mapping[str, str], ctx: Context, store: StateStore) -> Port:
    from vmnet.engine.ownership import is_our_bridge

    port, cfg = find_port(tap, store, env)
    if port.ovn is not None:
        return port  # (not a Linux bridge's port: `up` does it, after the lock)
    k = ctx.kernel()
    link = k.link(tap)
    if link is None:
        raise NotFoundError(f"interface {tap} does not exist", ifname=tap)
    if link.kind != "tun" or link.tun is None or not link.tun.tap:
        raise ConflictError(f"interface {tap} is not a tap ({link.kind or 'no kind'})",
                            ifname=tap, hint="QEMU's script= is for tap interfaces only")
    br = k.link(port.bridge)
    if br is None:
        raise NotFoundError(f"bridge {port.bridge} for {tap} ({port.source}) does not "
                            "exist", ifname=port.bridge,
                            hint="vmnet's scripts never create bridges: `vmnet up` a VM "
                                 "on that network first, or create the bridge")
    if br.kind != "bridge":
        raise ConflictError(f"{port.bridge} ({port.source}) is not a bridge",
                            ifname=port.bridge)
    if link.master is not None and link.master != br.index:
        other = k.link_by_index(link.master)
        raise ConflictError(f"tap {tap} is already a port of "
                            f"{other.name if other else link.master}, not of "
                            f"{port.bridge} ({port.source})", ifname=tap,
                            hint="vmnet never takes a port from another master")
    # The rule `vmnet up` applies (vmnet.engine.plan): only the NIC's own MTU is refused.
    if port.nic_mtu and port.mtu and port.mtu < br.mtu and not is_our_bridge(br):
        raise ConflictError(f"MTU {port.mtu} of {tap} ({port.source}) would lower the MTU "
                            f"of bridge {port.bridge} ({br.mtu}), which vmnet did not "
                            "create", ifname=tap)
    mtu = port.mtu or br.mtu
    k.disable_ipv6(tap)  # before up: no link-local address, no router solicitations
    k.set_link(tap, mtu=mtu if link.mtu != mtu else None,
               mac=port.tap_mac if port.tap_mac and link.mac != port.tap_mac else None,
               master=port.bridge if link.master != br.index else None, up=True)
    if cfg is not None:
        from vmnet.config import cache

        cache.save(store.root, cfg)
    return port


def ifdown(tap: str, env: Mapping[str, str], ctx: Context, daemon: bool = False) -> None:
    """Take the tap off its bridge and down; a tap already gone is fine.

    Only off the bridge ifup puts it on (the same lookup: records, then config):
    a tap someone has since moved to another master is left where it is."""
    store = ctx.store()
    with store.locked(ctx.lock_timeout):
        try:
            k = ctx.kernel()
            link = k.link(tap)
            if link is None:
                return
            if link.kind != "tun" or link.tun is None or not link.tun.tap:
                raise ConflictError(f"interface {tap} is not a tap "
                                    f"({link.kind or 'no kind'})", ifname=tap,
                                    hint="QEMU's downscript= is for tap interfaces only")
            detach = False
            if link.master is not None:
                port, _cfg = find_port(tap, store, env)
                br = k.link(port.bridge)
                detach = br is not None and link.master == br.index
                if not detach:
                    other = k.link_by_index(link.master)
                    sys.stderr.write(f"{IFDOWN}: {tap} is a port of "
                                     f"{other.name if other else link.master}, not of "
                                     f"{port.bridge}: left as it is\n")
                    return
            k.set_link(tap, nomaster=detach, up=False)
        finally:
            store.cleanup_dir(tidy=False)


def serve(prog: str, action: Callable[[str, Mapping[str, str], Context, bool], object],
          argv: list[str], env: Mapping[str, str], privileged: bool | None = None) -> int:
    """Run the script's action here (in-process, or in vmnetd for a root QEMU, which
    says whether its peer holds CAP_NET_ADMIN: `privileged`)."""
    from vmnet.engine.context import Context

    try:
        if len(argv) != 1:
            raise InputError(f"usage: {prog} IFNAME (QEMU passes exactly one argument, "
                             f"the interface name; got {len(argv)})")
        tap = validate.ifname(argv[0], "argument")
        if not (has_net_admin() if privileged is None else privileged):
            raise PrivilegeError(
                f"{tap}: changing a bridge port needs CAP_NET_ADMIN, which this QEMU lacks",
                hint="start QEMU with `vmnet run VM -- qemu-system-...`, which passes it "
                     "ready tap fds and needs no script; or `vmnet up VM` and use "
                     "`vmnet qemu-args VM`")
        timeout = env.get("VMNET_LOCK_TIMEOUT")
        ctx = Context(state_dir=env.get("VMNET_STATE_DIR") or DEFAULT_STATE_DIR,
                      lock_timeout=DEFAULT_LOCK_TIMEOUT if not timeout else
                      validate.duration(timeout, "$VMNET_LOCK_TIMEOUT"))
        try:
            action(tap, env, ctx, privileged is not None)
        finally:
            ctx.close()
    except VmnetError as e:
        sys.stderr.write(f"{prog}: error: {e.one_line()}\n")
        return e.exit_code
    return 0


def main_ifup(argv: list[str] | None = None) -> None:
    """(Kept for old launchers: vmnet.integrations.qemu.scripts is the door.)"""
    from vmnet.integrations.qemu.scripts import main_ifup as door

    door(argv)


def main_ifdown(argv: list[str] | None = None) -> None:
    from vmnet.integrations.qemu.scripts import main_ifdown as door

    door(argv)


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
