"""Putting vmnet's taps back on a bridge that was deleted and re-created under them.

A network restart, an `ifreload` or an admin's `ip link del` + `add` leaves every VM
tap that was on the bridge without a master, the guests running with no network.
The repair is the re-up rule (vmnet.engine.desired): each VM on that bridge is
brought up again exactly as recorded, through ops.up_resolved, so its taps are
re-attached with the MTU and MAC vmnet set, and nothing else changes.

The bridge is vmnet's only if it carries vmnet's mark; then its address and up state
come back too (the settings a step can check; MTU, STP and forward delay are the
re-creator's).  An unmarked re-created bridge is the admin's from then on: its record
says so (never deleted by `down` or `gc`).
The uplink goes back only if it passes the host-traffic check now; if not, the taps
are re-attached without it and the reason is reported.

A tap someone detached from a bridge that stayed is not forced back: that is drift,
shown by `status`, and only re-created bridges are repaired (vmnetd's watcher tells
them by their new ifindex).
"""

from __future__ import annotations

from vmnet.config import Config, Overrides
from vmnet.engine import ops
from vmnet.engine.apply import Transaction
from vmnet.engine.context import Context
from vmnet.engine.desired import desired
from vmnet.engine.observe import HostView
from vmnet.engine.plan import BridgeRecords
from vmnet.engine.steps import AddAddress, SetUp, Step
from vmnet.errors import ConflictError
from vmnet.model import Nic, Vm, bridge_mark
from vmnet.model.value import Value
from vmnet.state.records import VmRecord


class Repair(Value):
    """What one repair did: the VMs brought back, as `ip` commands, and what it left."""

    __slots__ = ("bridge", "commands", "notes", "vms")

    def __init__(self, bridge: str, vms: list[str], commands: list[str],
                 notes: list[str]) -> None:
        self.bridge = bridge
        self.vms = vms
        self.commands = commands
        self.notes = notes


def _without_uplinks(vm: Vm) -> Vm:
    nics = tuple(Nic(**{**n.as_dict(), "network": n.network.with_uplink(None)})  # type: ignore[arg-type]
                 for n in vm.nics)
    return Vm(**{**vm.as_dict(), "nics": nics})  # type: ignore[arg-type]


def reattach(ctx: Context, cfg: Config, bridge: str) -> Repair:
    """Bring every VM recorded on `bridge` up again as recorded (see the module)."""
    store = ctx.store()
    k = ctx.kernel()
    # Only VMs alive and whole: every tap there (a repair re-attaches, it never creates),
    # and a run or hook VM's QEMU still running (a dead one is gc's to reap).
    names = sorted(name for name, rec in store.vms().items()
                   if any(n.bridge == bridge for n in rec.nics) and rec.phase == "ready"
                   and all(k.link(n.tap) is not None for n in rec.nics)
                   and (rec.holder is None or rec.holder.alive()))
    out = Repair(bridge, [], [], [])
    live = k.link(bridge)
    if not names or live is None or live.kind != "bridge":
        return out
    with store.locked(ctx.lock_timeout):
        brec = store.get_bridge(bridge)
        if brec is not None and brec.created and live.alias != bridge_mark(bridge):
            store.put_bridge(brec.with_(created=False))
            out.notes.append(f"bridge {bridge} was re-created without vmnet's mark: it is "
                             "the admin's now (vmnet will never delete it)")
        elif brec is not None and brec.created:
            # vmnet's (its mark): its settings come back too, those a step can check
            want: list[Step] = [AddAddress(bridge, brec.address)] if brec.address else []
            want.append(SetUp(bridge))
            view = HostView(k)
            todo = [st for st in want if st.check(view) is not None]
            if todo:
                Transaction(k, store, ctx.netns).run(todo)
                out.commands += [st.ip(ctx.netns) for st in todo]
                out.notes.append(f"bridge {bridge} carries vmnet's mark: its settings "
                                 "restored")
    strip = False

    def resolve(name: str, rec: VmRecord | None) -> Vm:
        vm = desired(cfg, name, Overrides(), rec, BridgeRecords(store), env={})
        return _without_uplinks(vm) if strip else vm

    try:
        results = ops.up_resolved(ctx, names, resolve)
    except ConflictError as e:
        uplinks = {n.uplink for n in cfg.networks.values() if n.bridge == bridge} | {
            b.uplink for b in [store.get_bridge(bridge)] if b is not None}
        if e.ifname is None or e.ifname not in uplinks:
            raise
        strip = True
        out.notes.append(f"uplink {e.ifname} not re-attached to {bridge}: {e.one_line()}")
        results = ops.up_resolved(ctx, names, resolve)
    for res in results:
        cmds = [s.ip(ctx.netns) for s in res.plan.steps]
        if cmds:
            out.vms.append(res.vm.name)
            out.commands += cmds
    return out
