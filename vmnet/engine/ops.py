"""The operations every edge (CLI, qemu scripts, libvirt hook) calls: up, down, gc.

Each runs under the namespace's state lock: observe -> plan -> record -> apply.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from vmnet import fault
from vmnet.engine.apply import apply_steps
from vmnet.engine.plan import (
    DownPlan,
    Observed,
    UpPlan,
    plan_down_many,
    plan_release_bridges,
    plan_up_many,
    uplinks_to_check,
)
from vmnet.engine.steps import CreateTap
from vmnet.errors import BusyError, ConflictError, NotFoundError, PrivilegeError
from vmnet.kernel import open_kernel
from vmnet.kernel import tun as tunmod
from vmnet.kernel.base import Snapshot
from vmnet.kernel.caps import has_net_admin
from vmnet.kernel.netns import current_cookie, current_inode
from vmnet.model import Vm
from vmnet.state.store import DEFAULT_STATE_DIR, Proc, StateStore, VmRecord

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from vmnet.kernel.protocol import Kernel


@dataclass
class Context:
    """Where vmnet works: state directory, kernel factory, lock patience."""

    state_dir: str = DEFAULT_STATE_DIR
    lock_timeout: float = 30.0
    kernel_factory: Callable[[], Kernel] = open_kernel
    tun_path: str = tunmod.TUN_PATH
    _kernel: Kernel | None = field(default=None, repr=False)

    def store(self) -> StateStore:
        return StateStore(self.state_dir, current_inode(), current_cookie())

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
    if not has_net_admin():
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
    return up_many(ctx, [vm], mode=mode, dry_run=dry_run, holder=holder,
                   domain_uuid=domain_uuid, refuse_held=refuse_held)[0]


def up_many(ctx: Context, vms: list[Vm], *, mode: str = "up", dry_run: bool = False,
            holder: Proc | None = None, domain_uuid: str | None = None,
            refuse_held: bool = False,
            progress: Callable[[int, int], None] | None = None) -> list[UpResult]:
    """Give several VMs their network in one transaction: all of them, or none.

    One lock, one link dump, one plan; a refusal (naming the VM) or a failed
    step undoes everything this call did.
    """
    if not dry_run:
        require_net_admin()
    store = ctx.store()
    k = ctx.kernel()
    with store.locked(ctx.lock_timeout):
        obs = observe(k, vms)
        records = store.vms()
        plans = plan_up_many(vms, obs, records, store.bridges())
        prevs = {vm.name: records.get(vm.name) for vm in vms}
        for vm in vms:
            prev = prevs[vm.name]
            if prev is not None and domain_uuid is not None and prev.domain_uuid not in (
                    None, domain_uuid):
                raise ConflictError(f"VM {vm.name!r} belongs to libvirt domain "
                                    f"{prev.domain_uuid}, not {domain_uuid}",
                                    hint="two domains must not name the same vmnet VM")
            if refuse_held:
                _refuse_held(vm, obs)
        if dry_run:
            return [UpResult(p.vm, p, prevs[p.vm.name]) for p in plans]
        steps = [s for p in plans for s in p.steps]
        if any(isinstance(s, CreateTap) for s in steps) and not os.path.exists(ctx.tun_path):
            raise NotFoundError(f"{ctx.tun_path} does not exist",
                                hint="load the tun module (modprobe tun) or create the node: "
                                     "mknod /dev/net/tun c 10 200")
        changed = [b for p in plans for b in p.changed_bridges]
        new_bridges = [b for p in plans for b in p.new_bridges]
        old_bridges = {b.bridge: store.get_bridge(b.bridge) for b in changed}
        me = Proc.me()
        for b in (*new_bridges, *changed):
            store.put_bridge(dataclasses.replace(b, writer=me))
        recs = []
        for p in plans:
            prev = prevs[p.vm.name]
            rec = VmRecord(vm=p.vm.name, mode=mode, phase="applying", writer=me, nics=p.nics,
                           holder=holder or (prev.holder if prev else None),
                           domain_uuid=domain_uuid or (prev.domain_uuid if prev else None))
            if prev is not None and prev.mode != "up" and mode == "up":
                rec.mode = prev.mode
            if p.noop and prev is not None and prev.phase == "ready" and prev.nics == rec.nics \
                    and (prev.mode, prev.holder, prev.domain_uuid) == (
                        rec.mode, rec.holder, rec.domain_uuid):
                recs.append(prev)
                continue
            store.put_vm(rec)
            recs.append(rec)
        fault.point("up:recorded")
        try:
            apply_steps(k, steps, progress=progress)
        except BaseException:
            for p in plans:
                prev = prevs[p.vm.name]
                if prev is not None:
                    store.put_vm(prev)
                else:
                    store.drop_vm(p.vm.name)
            for b in new_bridges:
                store.drop_bridge(b.bridge)
            for old in old_bridges.values():
                if old is not None:
                    store.put_bridge(old)
            store.cleanup_dir()
            raise
        fault.point("up:applied")
        for rec in recs:
            if rec.phase != "ready":
                rec.phase = "ready"
                store.put_vm(rec)
        return [UpResult(p.vm, p, rec) for p, rec in zip(plans, recs, strict=True)]


def _refuse_held(vm: Vm, obs: Observed) -> None:
    from vmnet.engine.holders import tap_holders

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
    return down_many(ctx, [name], force=force, dry_run=dry_run, domain_uuid=domain_uuid)


def down_many(ctx: Context, names: list[str], *, force: bool = False, dry_run: bool = False,
              domain_uuid: str | None = None,
              progress: Callable[[int, int], None] | None = None) -> DownResult:
    """Remove several VMs' networks: one dump, one grouped delete of all their taps.

    A held tap refuses the whole batch before any change (unless force).
    """
    if not dry_run:
        require_net_admin()
    store = ctx.store()
    with store.locked(ctx.lock_timeout):
        records = store.vms()
        batch = {n: records.get(n) for n in names}
        for name, rec in batch.items():
            if rec is not None and domain_uuid is not None and rec.domain_uuid not in (
                    None, domain_uuid):
                raise ConflictError(f"VM {name!r} belongs to libvirt domain "
                                    f"{rec.domain_uuid}; domain {domain_uuid} may not tear "
                                    "it down")
        return _teardown(ctx, store, batch, records, force=force, dry_run=dry_run,
                         progress=progress)


def _teardown(ctx: Context, store: StateStore, batch: dict[str, VmRecord | None],
              records: dict[str, VmRecord], *, force: bool, dry_run: bool = False,
              progress: Callable[[int, int], None] | None = None) -> DownResult:
    """Plan and apply the removal of `batch`; the caller holds the lock."""
    from vmnet.engine.holders import tap_holders

    k = ctx.kernel()
    snap = k.snapshot()
    busy = {n.tap for rec in batch.values() for n in (rec.nics if rec else [])
            if (lk := snap.get(n.tap)) is not None and lk.carrier}
    holders = tap_holders(busy) if busy and not force else {}
    plan = plan_down_many(batch, snap, records, store.bridges(), force=force, holders=holders)
    had = any(r is not None for r in batch.values())
    name = ",".join(batch)
    if dry_run or (plan.noop and not had):
        return DownResult(name, plan, had)
    me = Proc.me()
    for rec in batch.values():
        if rec is not None:
            rec.phase = "removing"
            rec.writer = me
            store.put_vm(rec)
    fault.point("down:recorded")
    apply_steps(k, plan.steps, progress=progress)
    fault.point("down:applied")
    for vm in batch:
        store.drop_vm(vm)
    for b in plan.drop_bridges:
        store.drop_bridge(b)
    store.cleanup_dir()
    return DownResult(name, plan, had)


@dataclass
class GcReport:
    cleared: list[str] = field(default_factory=list)  # VM: reason
    idle: list[str] = field(default_factory=list)  # plain `up` taps waiting for their VM
    skipped: list[str] = field(default_factory=list)  # live writer/holder: left alone
    bridges: list[str] = field(default_factory=list)  # bridge records settled
    corrupt: list[str] = field(default_factory=list)  # unreadable record files removed


def held_taps(rec: VmRecord, snap: Snapshot) -> list[str]:
    """The record's taps that a process holds (carrier on)."""
    return [n.tap for n in rec.nics if (lk := snap.get(n.tap)) is not None and lk.carrier]


def gc_reason(rec: VmRecord, snap: Snapshot,
              domain_alive: Callable[[str], bool | None]) -> str | None:
    """Why a record should be cleared now, or None to keep it.

    A record whose taps a process still holds is always kept, whatever its
    writer's fate: clearing it would cut a running VM off (e.g. a `vmnet run`
    killed in the instant between starting QEMU and recording it).
    """
    if held_taps(rec, snap):
        return None
    if rec.phase != "ready":
        if rec.writer.alive():
            return None
        return ("rolled back: its `up` died mid-way" if rec.phase == "applying"
                else "finished: its `down` died mid-way")
    if not any(n.tap in snap.links for n in rec.nics):
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
            reason = gc_reason(rec, snap, alive)
            if reason is None:
                held = held_taps(rec, snap)
                if held:
                    report.skipped.append(f"{name}: in use ({', '.join(held)} held)")
                elif rec.phase != "ready" or (rec.holder and rec.holder.alive()):
                    report.skipped.append(f"{name}: in progress")
                elif rec.mode == "up":
                    idle = [n.tap for n in rec.nics
                            if (lk := snap.get(n.tap)) is not None and not lk.carrier]
                    if idle:
                        report.idle.append(f"{name}: {', '.join(idle)}")
                continue
            report.cleared.append(f"{name}: {reason}")
            if not dry_run:
                _teardown(ctx, store, {name: rec}, store.vms(), force=True)
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
