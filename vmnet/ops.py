"""The operations every edge (CLI, qemu scripts, libvirt hook) calls: up, down, gc.

Each runs under the namespace's state lock: observe -> plan -> record -> apply.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from vmnet import fault
from vmnet.apply import apply_steps
from vmnet.errors import BusyError, ConflictError, NotFoundError, PrivilegeError
from vmnet.kernel import Kernel, open_kernel
from vmnet.kernel import tun as tunmod
from vmnet.kernel.netns import current_inode
from vmnet.model import Vm
from vmnet.plan import (
    DownPlan,
    Observed,
    UpPlan,
    plan_down,
    plan_release_bridges,
    plan_up,
    uplinks_to_check,
)
from vmnet.state import DEFAULT_STATE_DIR, Proc, StateStore, VmRecord
from vmnet.steps import CreateTap

log = logging.getLogger("vmnet")
CAP_NET_ADMIN = 12


@dataclass
class Context:
    """Where vmnet works: state directory, kernel factory, lock patience."""

    state_dir: str = DEFAULT_STATE_DIR
    lock_timeout: float = 30.0
    kernel_factory: Callable[[], Kernel] = open_kernel
    tun_path: str = tunmod.TUN_PATH
    _kernel: Kernel | None = field(default=None, repr=False)

    def store(self) -> StateStore:
        return StateStore(self.state_dir, current_inode())

    def kernel(self) -> Kernel:
        if self._kernel is None:
            self._kernel = self.kernel_factory()
        return self._kernel

    def close(self) -> None:
        if self._kernel is not None:
            self._kernel.close()
            self._kernel = None


def require_net_admin() -> None:
    """Refuse early, with a hint, when the caller lacks CAP_NET_ADMIN."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    if int(line.split()[1], 16) >> CAP_NET_ADMIN & 1:
                        return
                    break
    except OSError:
        return
    raise PrivilegeError("vmnet needs CAP_NET_ADMIN to change network interfaces",
                         hint="run it as root (e.g. with sudo)")


def observe(k: Kernel, vms: list[Vm]) -> Observed:
    snap = k.snapshot()
    uplinks: dict[str, list[str]] = {}
    need_routes = False
    for vm in vms:
        for name in uplinks_to_check(vm, snap):
            uplinks[name] = k.global_addresses(name)
            need_routes = True
    routes = frozenset(k.default_route_devices()) if need_routes else frozenset()
    return Observed(snapshot=snap, uplink_addresses=uplinks, default_route_devices=routes)


@dataclass
class UpResult:
    vm: Vm
    plan: UpPlan
    record: VmRecord | None


def up(ctx: Context, vm: Vm, *, mode: str = "up", dry_run: bool = False,
       holder: Proc | None = None, domain_uuid: str | None = None,
       refuse_held: bool = False) -> UpResult:
    """Give `vm` its network (idempotent).  Refusals change nothing.

    refuse_held: fail if one of the VM's taps already has a holder (the
    libvirt hook: at `prepare` nobody may hold the taps libvirt will open).
    """
    if not dry_run:
        require_net_admin()
    store = ctx.store()
    k = ctx.kernel()
    with store.locked(ctx.lock_timeout):
        obs = observe(k, [vm])
        plan = plan_up(vm, obs, store.vms(), store.bridges())
        prev = store.get_vm(vm.name)
        if prev is not None and domain_uuid is not None and prev.domain_uuid not in (
                None, domain_uuid):
            raise ConflictError(f"VM {vm.name!r} belongs to libvirt domain "
                                f"{prev.domain_uuid}, not {domain_uuid}",
                                hint="two domains must not name the same vmnet VM")
        if refuse_held:
            _refuse_held(vm, obs)
        if dry_run:
            return UpResult(vm, plan, prev)
        if any(isinstance(s, CreateTap) for s in plan.steps) and \
                not os.path.exists(ctx.tun_path):
            raise NotFoundError(f"{ctx.tun_path} does not exist",
                                hint="load the tun module (modprobe tun) or create the node: "
                                     "mknod /dev/net/tun c 10 200")
        old_bridges = {b.bridge: store.get_bridge(b.bridge) for b in plan.changed_bridges}
        me = Proc.me()
        for b in (*plan.new_bridges, *plan.changed_bridges):
            store.put_bridge(dataclasses.replace(b, writer=me))
        rec = VmRecord(vm=vm.name, mode=mode, phase="applying", writer=me, nics=plan.nics,
                       holder=holder or (prev.holder if prev else None),
                       domain_uuid=domain_uuid or (prev.domain_uuid if prev else None))
        if prev is not None and prev.mode != "up" and mode == "up":
            rec.mode = prev.mode
        store.put_vm(rec)
        fault.point("up:recorded")
        try:
            apply_steps(k, plan.steps)
        except BaseException:
            if prev is not None:
                store.put_vm(prev)
            else:
                store.drop_vm(vm.name)
            for b in plan.new_bridges:
                store.drop_bridge(b.bridge)
            for old in old_bridges.values():
                if old is not None:
                    store.put_bridge(old)
            store.cleanup_dir()
            raise
        fault.point("up:applied")
        rec.phase = "ready"
        store.put_vm(rec)
        return UpResult(vm, plan, rec)


def _refuse_held(vm: Vm, obs: Observed) -> None:
    from vmnet.holders import tap_holders

    busy = {n.tap for n in vm.nics
            if (lk := obs.snapshot.get(n.tap)) is not None and lk.carrier}
    if busy:
        holders = tap_holders(busy)
        who = "; ".join(f"{t} held by {', '.join(holders.get(t, [])) or 'a process'}"
                        for t in sorted(busy))
        raise BusyError(f"VM {vm.name!r} is in use: {who}", ifname=min(busy),
                        hint="another VM or process holds its taps")


@dataclass
class DownResult:
    vm: str
    plan: DownPlan
    had_record: bool


def down(ctx: Context, name: str, *, force: bool = False, dry_run: bool = False,
         domain_uuid: str | None = None) -> DownResult:
    """Remove `name`'s taps and the bridges nothing uses any more (idempotent)."""
    if not dry_run:
        require_net_admin()
    store = ctx.store()
    with store.locked(ctx.lock_timeout):
        rec = store.get_vm(name)
        if rec is not None and domain_uuid is not None and rec.domain_uuid not in (
                None, domain_uuid):
            raise ConflictError(f"VM {name!r} belongs to libvirt domain {rec.domain_uuid}; "
                                f"domain {domain_uuid} may not tear it down")
        return _teardown(ctx, store, name, rec, force=force, dry_run=dry_run)


def _teardown(ctx: Context, store: StateStore, name: str, rec: VmRecord | None, *,
              force: bool, dry_run: bool = False) -> DownResult:
    """Plan and apply a VM's removal; the caller holds the lock."""
    from vmnet.holders import tap_holders

    k = ctx.kernel()
    snap = k.snapshot()
    busy = {n.tap for n in (rec.nics if rec else [])
            if (lk := snap.get(n.tap)) is not None and lk.carrier}
    holders = tap_holders(busy) if busy and not force else {}
    plan = plan_down(name, rec, snap, store.vms(), store.bridges(), force=force,
                     holders=holders)
    if dry_run or (plan.noop and rec is None):
        return DownResult(name, plan, rec is not None)
    if rec is not None:
        rec.phase = "removing"
        rec.writer = Proc.me()
        store.put_vm(rec)
    fault.point("down:recorded")
    apply_steps(k, plan.steps)
    fault.point("down:applied")
    store.drop_vm(name)
    for b in plan.drop_bridges:
        store.drop_bridge(b)
    store.cleanup_dir()
    return DownResult(name, plan, rec is not None)


@dataclass
class GcReport:
    cleared: list[str] = field(default_factory=list)  # VM: reason
    idle: list[str] = field(default_factory=list)  # plain `up` taps waiting for their VM
    skipped: list[str] = field(default_factory=list)  # live writer/holder: left alone
    bridges: list[str] = field(default_factory=list)  # bridge records settled
    corrupt: list[str] = field(default_factory=list)  # unreadable record files removed


def gc_reason(rec: VmRecord, snap_has: Callable[[str], bool],
              domain_alive: Callable[[str], bool | None]) -> str | None:
    """Why a record should be cleared now, or None to keep it."""
    if rec.phase != "ready":
        if rec.writer.alive():
            return None
        return ("rolled back: its `up` died mid-way" if rec.phase == "applying"
                else "finished: its `down` died mid-way")
    if not any(snap_has(n.tap) for n in rec.nics):
        return "its interfaces are gone"
    if rec.mode == "run" and rec.holder is not None and not rec.holder.alive():
        return f"its QEMU (pid {rec.holder.pid}) is gone"
    if rec.mode == "hook" and rec.domain_uuid and domain_alive(rec.domain_uuid) is False:
        return f"its libvirt domain {rec.domain_uuid} is gone"
    return None


def gc(ctx: Context, *, dry_run: bool = False,
       domain_alive: Callable[[str], bool | None] | None = None) -> GcReport:
    """Finish or roll back interrupted work, clear stale records; never touch idle `up` taps."""
    if not dry_run:
        require_net_admin()
    alive = domain_alive or (lambda _uuid: None)
    report = GcReport()
    store = ctx.store()
    if not os.path.isdir(store.dir):
        return report
    k = ctx.kernel()
    with store.locked(ctx.lock_timeout):
        for path in store.corrupt():
            report.corrupt.append(path)
            if not dry_run:
                store.remove_corrupt(path)
        snap = k.snapshot()
        for name, rec in sorted(store.vms().items()):
            reason = gc_reason(rec, snap.links.__contains__, alive)
            if reason is None:
                if rec.phase != "ready" or (rec.holder and rec.holder.alive()):
                    report.skipped.append(f"{name}: in use or in progress")
                elif rec.mode == "up":
                    idle = [n.tap for n in rec.nics
                            if (lk := snap.get(n.tap)) is not None and not lk.carrier]
                    if idle:
                        report.idle.append(f"{name}: {', '.join(idle)}")
                continue
            report.cleared.append(f"{name}: {reason}")
            if not dry_run:
                _teardown(ctx, store, name, rec, force=True)
                snap = k.snapshot()
        records = store.vms()
        used = {n.bridge for r in records.values() for n in r.nics}
        for bridge, brec in sorted(store.bridges().items()):
            if bridge in used:
                continue
            report.bridges.append(bridge)
            if dry_run:
                continue
            rel = plan_release_bridges({bridge}, [], snap, records, {bridge: brec})
            apply_steps(k, rel.steps)
            for b in rel.drop:
                store.drop_bridge(b)
            snap = k.snapshot()
        if not dry_run:
            store.cleanup_dir()
    return report
