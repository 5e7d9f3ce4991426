"""The operations every door (CLI, qemu scripts, libvirt hook) calls: up, down, gc.

Each is one transaction under the namespace's state lock: observe only what it
needs (vmnet.engine.observe), plan (vmnet.engine.plan, no changes), write the
records ahead, apply (vmnet.engine.apply), with one reverter that undoes kernel
steps and records in reverse on any failure.
"""

from __future__ import annotations

import errno
import os

from vmnet import log
from vmnet.engine.apply import Transaction
from vmnet.engine.context import Context
from vmnet.engine.holders import tap_holders
from vmnet.engine.observe import HostView
from vmnet.engine.plan import (
    BridgeRecords,
    BridgeUsers,
    Claims,
    DownPlan,
    UpPlan,
    plan_down_many,
    plan_release_bridges,
    plan_up_many,
    renamed_error,
)
from vmnet.engine.steps import CreateTap, DeleteLinks
from vmnet.errors import BusyError, ConflictError, NotFoundError, PrivilegeError, StateError
from vmnet.kernel.netns import has_net_admin
from vmnet.model.value import Value
from vmnet.nicpolicy.filters import UnprotectPorts
from vmnet.nicpolicy.filters import merge as merge_filters
from vmnet.state.records import NicRecord, Proc, VmRecord

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Callable

    from vmnet.engine.steps import Step
    from vmnet.kernel.protocol import Kernel
    from vmnet.model import Network, Vm
    from vmnet.state.records import Mode
    from vmnet.state.store import StateStore

    Progress = Callable[[int, int], None] | None

# From this many VMs on, one dump of every link is cheaper than a read per link.
BULK = 8


def require_net_admin() -> None:
    """Refuse early, with a hint, when the caller lacks CAP_NET_ADMIN."""
    if not has_net_admin():
        raise PrivilegeError("vmnet needs CAP_NET_ADMIN to change network interfaces",
                             hint="run it as root (e.g. with sudo)")


class UpResult(Value):
    __slots__ = ("vm", "plan", "record", "changes")

    def __init__(self, vm: Vm, plan: UpPlan, record: VmRecord | None,
                 changes: list[str] | None = None) -> None:
        self.vm = vm
        self.plan = plan
        self.record = record
        self.changes = changes or []  # what an `up` of a VM already up changed


_SETTINGS = ("bridge", "mac", "mtu", "queues", "vnet_hdr", "model", "owner", "group", "ip")
# Settings a running guest's QEMU holds (its fds, its device): changed only while idle.
_FIXED_WHILE_HELD = ("mac", "queues", "vnet_hdr", "model")


def setting_changes(prev: VmRecord, nics: list[NicRecord], view: HostView,
                    force: bool) -> list[str]:
    """What a new `up` changes in a VM that is up, as lines; refuses what a running
    guest would not see (a NIC dropped, or its QEMU-side settings while it runs)."""
    out = []
    new = {n.tap: n for n in nics}
    dropped = [n.tap for n in prev.nics if n.tap not in new]
    if dropped:
        raise ConflictError(f"VM {prev.vm!r} is up with NIC(s) {', '.join(dropped)} that the "
                            "new settings drop", ifname=dropped[0],
                            hint=f"`vmnet down {prev.vm}` first, then up with the new settings")
    for old in prev.nics:
        cur = new[old.tap]
        diff = [(k, getattr(old, k), getattr(cur, k)) for k in _SETTINGS
                if getattr(old, k) != getattr(cur, k)]
        link = view.link(old.tap)
        held = link is not None and link.carrier and not force
        for key, a, b in diff:
            if held and key in _FIXED_WHILE_HELD:
                raise BusyError(f"tap {old.tap!r} of VM {prev.vm!r} is held by a running "
                                f"guest: its {key} ({_show(a)} -> {_show(b)}) cannot change "
                                "under it", ifname=old.tap,
                                hint="stop the VM first (--force changes the record anyway)")
            out.append(f"{key} {_show(a)} -> {_show(b)} on {old.tap}")
    out += [f"new NIC {n.index}: tap {n.tap}" for n in nics
            if n.tap not in {o.tap for o in prev.nics}]
    return out


def _show(value: object) -> str:
    return "none" if value is None else ("on" if value is True else
                                         "off" if value is False else str(value))


def up(ctx: Context, vm: Vm, *, mode: Mode = "up", dry_run: bool = False,
       holder: Proc | None = None, domain_uuid: str | None = None,
       refuse_held: bool = False, force: bool = False) -> UpResult:
    """Give `vm` its network (idempotent).  Refusals change nothing.

    refuse_held: fail if one of the VM's taps already has a holder (the
    libvirt hook: at `prepare` nobody may hold the taps libvirt will open).
    """
    return up_many(ctx, [vm], mode=mode, dry_run=dry_run, holder=holder,
                   domain_uuid=domain_uuid, refuse_held=refuse_held, force=force)[0]


def up_many(ctx: Context, vms: list[Vm], *, mode: Mode = "up", dry_run: bool = False,
            holder: Proc | None = None, domain_uuid: str | None = None,
            refuse_held: bool = False, progress: Progress = None,
            force: bool = False) -> list[UpResult]:
    """Give several VMs their network in one transaction: all of them, or none.

    One lock, one plan; a refusal (naming the VM) or a failed step undoes
    everything this call did.  A VM that is up already is brought to the settings
    asked for, where that is safe for a running guest (`force`: even where not).
    """
    by_name = {vm.name: vm for vm in vms}
    return up_resolved(ctx, [vm.name for vm in vms], lambda name, _prev: by_name[name],
                       mode=mode, dry_run=dry_run, holder=holder, domain_uuid=domain_uuid,
                       refuse_held=refuse_held, progress=progress, force=force)


def up_resolved(ctx: Context, names: list[str],
                resolve: Callable[[str, VmRecord | None], Vm], *, mode: Mode = "up",
                dry_run: bool = False, holder: Proc | None = None,
                domain_uuid: str | None = None, refuse_held: bool = False,
                progress: Progress = None, force: bool = False,
                move: bool = False) -> list[UpResult]:
    """up_many for VMs whose model depends on their record: `resolve(name, record)` is
    called under the lock, with the record read there (vmnet.engine.desired: a VM that
    is up is its record, changed by the flags)."""
    if not dry_run:
        require_net_admin()
    store = ctx.store()
    k = ctx.kernel()
    with store.locked(ctx.lock_timeout):
        try:
            return _up_locked(ctx, store, k, names, resolve, mode=mode, dry_run=dry_run,
                              holder=holder, domain_uuid=domain_uuid, refuse_held=refuse_held,
                              progress=progress, force=force, move=move)
        except BaseException:
            store.cleanup_dir()  # a refusal leaves the state directory as it was, too
            raise


def _up_locked(ctx: Context, store: StateStore, k: Kernel, names: list[str],
               resolve: Callable[[str, VmRecord | None], Vm], *, mode: Mode,
               dry_run: bool, holder: Proc | None, domain_uuid: str | None,
               refuse_held: bool, progress: Progress, force: bool,
               move: bool = False) -> list[UpResult]:
    prevs = {n: store.get_vm(n) for n in names}
    vms = [resolve(n, prevs[n]) for n in names]
    for vm in vms:
        prev = prevs[vm.name]
        if prev is not None and domain_uuid is not None and prev.domain_uuid not in (
                None, domain_uuid):
            raise ConflictError(f"VM {vm.name!r} belongs to libvirt domain "
                                f"{prev.domain_uuid}, not {domain_uuid}",
                                hint="two domains must not name the same vmnet VM")
    view = HostView(k, full=len(vms) >= BULK)
    for vm in vms:
        if prevs[vm.name] is not None:
            _refuse_renamed(vm, view)
    bridges = BridgeRecords(store)
    plans = plan_up_many(vms, view, Claims(store, exclude=names), bridges, force=force,
                         site=ctx.site(), move=move)
    changes = {p.vm.name: setting_changes(prev, p.nics, view, force)
               for p in plans if (prev := prevs[p.vm.name]) is not None}

    if refuse_held:
        for vm in vms:
            _refuse_held(vm, view)
    if dry_run:
        return [UpResult(p.vm, p, prevs[p.vm.name], changes.get(p.vm.name))
                for p in plans]
    steps = [s for p in plans for s in p.steps]
    for p in plans:  # a filter the new settings drop goes
        prev = prevs[p.vm.name]
        now = {n.tap: n for n in p.nics}
        gone = tuple(n.tap for n in (prev.nics if prev else []) if n.filter and
                     n.tap in now and not now[n.tap].filter)
        if gone:
            steps.append(UnprotectPorts(gone))
        released = [n for n in (prev.nics if prev else [])
                    if n.isolated and n.tap in now and not now[n.tap].isolated]
        if released:
            from vmnet.nicpolicy.isolation import ReleasePort

            steps += [ReleasePort(n.tap, n.mac) for n in released]
    steps = merge_filters(steps)
    if any(isinstance(s, CreateTap) for s in steps) and not os.path.exists(ctx.tun_path):
        raise NotFoundError(f"{ctx.tun_path} does not exist",
                            hint="load the tun module (modprobe tun) or create the node: "
                                 "mknod /dev/net/tun c 10 200")
    me = Proc.me()
    recs: list[VmRecord] = []
    fresh: list[int] = []  # positions in recs of the records this call writes
    for p in plans:
        prev = prevs[p.vm.name]
        # (a dead holder is not carried over: a domain prepared again before its new
        # QEMU starts must not look like one whose QEMU died)
        kept = prev.holder if prev is not None and prev.holder is not None and \
            prev.holder.alive() else None
        rec = VmRecord(vm=p.vm.name, mode=mode, phase="applying", writer=me, nics=p.nics,
                       holder=holder or kept,
                       domain_uuid=domain_uuid or (prev.domain_uuid if prev else None))
        if prev is not None and prev.mode != "up" and mode == "up":
            rec.mode = prev.mode
        if p.noop and prev is not None and prev.phase == "ready" and prev.nics == rec.nics \
                and (prev.mode, prev.holder, prev.domain_uuid) == (
                    rec.mode, rec.holder, rec.domain_uuid):
            recs.append(prev)
            continue
        fresh.append(len(recs))
        recs.append(rec)
    if not fresh and not steps:
        return [UpResult(p.vm, p, rec, changes.get(p.vm.name))
                for p, rec in zip(plans, recs, strict=True)]
    journal = store.begin([recs[i].vm for i in fresh], me)
    try:
        with Transaction(k, store, ctx.netns) as txn:
            for p in plans:
                for b in (*p.new_bridges, *p.changed_bridges):
                    txn.put_bridge(b.with_(writer=me), store.get_bridge(b.bridge))
            for i in fresh:
                txn.put_vm(recs[i], prevs[recs[i].vm])
            txn.run(steps, progress)
            for i in fresh:
                ready = recs[i].copy()
                ready.phase = "ready"
                txn.put_vm(ready, recs[i], index=False)  # same NICs: entries written
                recs[i] = ready
    except BaseException:
        store.end(journal)
        raise
    store.end(journal)
    return [UpResult(p.vm, p, rec, changes.get(p.vm.name))
            for p, rec in zip(plans, recs, strict=True)]


def _refuse_renamed(vm: Vm, view: HostView) -> None:
    """A tap of a VM that is up, missing under its name but found by vmnet's mark under
    another: say so (making a second tap with the same mark would hide the first)."""
    for nic in vm.nics:
        if view.link(nic.tap) is None:
            moved = view.marked(vm.mark(nic))
            if moved is not None and moved.kind == "tun":
                raise renamed_error(vm, nic, moved.name)


def _refuse_held(vm: Vm, view: HostView) -> None:
    busy = {n.tap for n in vm.nics if (lk := view.link(n.tap)) is not None and lk.carrier}
    if busy:
        from vmnet.engine.holders import tap_holders

        holders = tap_holders(busy)
        who = "; ".join(f"{t} held by {', '.join(holders.get(t, [])) or 'a process'}"
                        for t in sorted(busy))
        raise BusyError(f"VM {vm.name!r} is in use: {who}", ifname=min(busy),
                        hint="another VM or process holds its taps")


def reload_network(ctx: Context, net: Network) -> list[str]:
    """Put a nat/isolated network that is up back as vmnet made it (a dead dnsmasq
    restarted, a missing table re-applied): what it did, as lines."""
    from vmnet.errors import InputError
    from vmnet.kinds import l3

    if not net.l3:
        raise InputError(f"network {net.name!r} is a plain bridge: nothing to reload",
                         hint="reload is for nat and isolated networks")
    require_net_admin()
    store = ctx.store()
    k = ctx.kernel()
    with store.locked(ctx.lock_timeout):
        rec = store.get_bridge(net.bridge)
        view = HostView(k)
        if rec is None or rec.kind != net.kind or view.link(net.bridge) is None:
            raise NotFoundError(f"network {net.name!r} is not up",
                                hint=f"`vmnet up VM --network {net.name}` brings it up")
        steps: list[Step] = []
        notes: list[str] = []
        made = l3.plan_network(net, view.link(net.bridge), rec, view, store.bridges,
                               ctx.site(), steps, notes, repair=True)
        with Transaction(k, store, ctx.netns) as txn:
            if made is not rec:
                txn.put_bridge(made, rec)
            txn.run(steps)
        return notes


class DownResult(Value):
    __slots__ = ("had_record", "plan", "vm")

    def __init__(self, vm: str, plan: DownPlan, had_record: bool) -> None:
        self.vm = vm
        self.plan = plan
        self.had_record = had_record


def down(ctx: Context, name: str, *, force: bool = False, dry_run: bool = False,
         domain_uuid: str | None = None) -> DownResult:
    """Remove `name`'s taps and the bridges nothing uses any more (idempotent)."""
    return down_many(ctx, [name], force=force, dry_run=dry_run, domain_uuid=domain_uuid)


def down_many(ctx: Context, names: list[str], *, force: bool = False, dry_run: bool = False,
              domain_uuid: str | None = None, progress: Progress = None) -> DownResult:
    """Remove several VMs' networks: one grouped delete of all their taps.

    A held tap refuses the whole batch before any change (unless force).
    """
    if not dry_run:
        require_net_admin()
    store = ctx.store()
    with store.locked(ctx.lock_timeout):
        batch = {n: store.get_vm(n) for n in names}
        for name, rec in batch.items():
            if rec is not None and domain_uuid is not None and rec.domain_uuid not in (
                    None, domain_uuid):
                raise ConflictError(f"VM {name!r} belongs to libvirt domain "
                                    f"{rec.domain_uuid}; domain {domain_uuid} may not tear "
                                    "it down")
        view = HostView(ctx.kernel(), full=len(names) >= BULK)
        return _teardown(ctx, store, view, batch, force=force, dry_run=dry_run,
                         progress=progress)


def _teardown(ctx: Context, store: StateStore, view: HostView,
              batch: dict[str, VmRecord | None], *, force: bool, dry_run: bool = False,
              users: BridgeUsers | None = None, progress: Progress = None) -> DownResult:
    """Plan and apply the removal of `batch`; the caller holds the lock."""
    from vmnet.engine.holders import tap_holders

    busy = {n.tap for rec in batch.values() for n in (rec.nics if rec else [])
            if (lk := view.link(n.tap)) is not None and lk.carrier}
    holders = tap_holders(busy) if busy and not force else {}
    bridges = BridgeRecords(store)
    plan = plan_down_many(batch, view, users or BridgeUsers(store), bridges, force=force,
                          holders=holders, site=ctx.site())
    had = any(r is not None for r in batch.values())
    name = ",".join(batch)
    if dry_run or (plan.noop and not had):
        if not dry_run:
            store.cleanup_dir()
        return DownResult(name, plan, had)
    me = Proc.me()
    for rec in batch.values():
        if rec is not None:
            rec.phase = "removing"
            rec.writer = me
            try:
                store.put_vm(rec)
            except StateError as e:
                # Freeing space must not need free space: without the mark, a crash
                # from here leaves a ready record whose taps are gone, which gc clears.
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                log.warning(f"{e.one_line()}; removing {rec.vm} without marking it first")
    Transaction(ctx.kernel(), store, ctx.netns).run(merge_filters(plan.steps), progress)
    for vm, rec in batch.items():
        store.drop_vm(vm, rec)
    for b in plan.drop_bridges:
        store.drop_bridge(b)
    for heir in plan.put_bridges:
        store.put_bridge(heir)
    store.cleanup_dir()
    return DownResult(name, plan, had)


class GcReport(Value):
    __slots__ = ("bridges", "cleared", "corrupt", "idle", "skipped", "unknown")

    def __init__(self) -> None:
        self.cleared: list[str] = []  # VM: reason
        self.idle: list[str] = []  # plain `up` taps waiting for their VM
        self.skipped: list[str] = []  # live writer/holder: left alone
        self.bridges: list[str] = []  # bridge records settled (and what was done)
        self.corrupt: list[str] = []  # unreadable record files removed
        self.unknown: list[str] = []  # records of a format this vmnet does not know: kept

    def to_json(self) -> dict[str, list[str]]:
        return {s: list(getattr(self, s)) for s in self.__slots__}


def held_taps(rec: VmRecord, view: HostView) -> list[str]:
    """The record's taps that a process holds (carrier on)."""
    return [n.tap for n in rec.nics if (lk := view.link(n.tap)) is not None and lk.carrier]


def gc_reason(rec: VmRecord, view: HostView, domain_alive: Callable[[str], bool | None],
              in_flight: bool = False) -> str | None:
    """Why a record should be cleared now, or None to keep it.

    A record whose taps a process still holds is always kept, whatever its
    writer's fate: clearing it would cut a running VM off (e.g. a `vmnet run`
    killed in the instant between starting QEMU and recording it).
    `in_flight`: the record belongs to the journal of an `up` whose writer died.
    """
    if held_taps(rec, view):
        return None
    if in_flight:
        return "rolled back: its `up` died mid-way"
    if rec.phase != "ready":
        if rec.writer.alive():
            return None
        return ("rolled back: its `up` died mid-way" if rec.phase == "applying"
                else "finished: its `down` died mid-way")
    if not any(view.link(n.tap) is not None for n in rec.nics):
        return "its interfaces are gone"
    if rec.mode in ("run", "hook") and rec.holder is not None and not rec.holder.alive():
        return f"its QEMU (pid {rec.holder.pid}) is gone"  # (a hook's: recorded at `started`)
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
        corrupt, unknown = store.problems()
        for path in corrupt:
            report.corrupt.append(path)
            if not dry_run:
                store.remove_corrupt(path)
        report.unknown += [e.one_line() for e in unknown]
        in_flight: set[str] = set()
        dead_journals = []
        for path, writer, vms in store.journals():
            if not writer.alive():
                in_flight.update(vms)
                dead_journals.append(path)
        view = HostView(k, full=True)
        records = store.vms()
        for name, rec in sorted(records.items()):
            reason = gc_reason(rec, view, alive, name in in_flight)
            if reason is not None:
                # Carrier off is not proof enough: a process that holds a tap fd is asked
                # for in /proc before its tap goes (the watcher reaps on carrier loss).
                live = {n.tap for n in rec.nics if view.link(n.tap) is not None}
                holders = tap_holders(live) if live else {}
                if holders:
                    tap = sorted(holders)[0]
                    report.skipped.append(f"{name}: in use ({tap} held by "
                                          f"{', '.join(holders[tap])})")
                    continue
            if reason is None:
                held = held_taps(rec, view)
                if held:
                    report.skipped.append(f"{name}: in use ({', '.join(held)} held)")
                elif rec.phase != "ready" or (rec.holder and rec.holder.alive()):
                    report.skipped.append(f"{name}: in progress")
                elif rec.mode == "up":
                    idle = [n.tap for n in rec.nics
                            if (lk := view.link(n.tap)) is not None and not lk.carrier]
                    if idle:
                        report.idle.append(f"{name}: {', '.join(idle)}")
                continue
            if dry_run:
                plan = plan_down_many({name: rec}, view, BridgeUsers(records=records),
                                      BridgeRecords(store), force=True, site=ctx.site())
                report.cleared.append(f"{name}: {reason}" + _what(plan, ctx.netns))
                continue
            res = _teardown(ctx, store, view, {name: rec}, force=True,
                            users=BridgeUsers(records=records))
            records.pop(name, None)
            report.cleared.append(f"{name}: {reason}" + _what(res.plan, ctx.netns))
            view = HostView(k, full=True)
        if not dry_run:
            for path in dead_journals:
                store.end(path)
            store.prune_index()
        used = {n.bridge for r in records.values() for n in r.nics}
        for bridge, brec in sorted(store.bridges().items()):
            if bridge in used:
                continue
            if unknown:  # a newer vmnet's records may use it: release nothing
                report.skipped.append(f"bridge {bridge}: kept while records of an unknown "
                                      "format are here")
                continue
            rel = plan_release_bridges({bridge}, [], view, BridgeUsers(records=records),
                                       BridgeRecords(store, records={bridge: brec}),
                                       leaving=set(), site=ctx.site())
            done = "; ".join(s.ip(ctx.netns).replace("\n", "; ") for s in rel.steps)
            report.bridges.append(bridge + (f": {done}" if done else ": record cleared"))
            report.skipped += rel.skipped
            if dry_run:
                continue
            Transaction(k, store, ctx.netns).run(rel.steps)
            for b in rel.drop:
                store.drop_bridge(b)
            for heir in rel.put:
                store.put_bridge(heir)
            view = HostView(k, full=True)
        if not dry_run:
            store.cleanup_dir()
    return report


def _what(plan: DownPlan, netns: str | None = None) -> str:
    """Everything a gc teardown removes: the taps, then every other step as its command
    (an uplink detached, a bridge deleted)."""
    parts = []
    if plan.taps:
        parts.append(f"removed {', '.join(plan.taps)}")
    parts += [line for s in plan.steps if not (isinstance(s, DeleteLinks) and
                                               set(s.names) <= set(plan.taps))
              for line in s.ip(netns).splitlines()]
    if plan.drop_bridges:
        parts.append(f"bridge record {', '.join(plan.drop_bridges)} cleared")
    return f" ({'; '.join(parts)})" if parts else ""
