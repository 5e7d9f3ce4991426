"""`vmnet status`, `vmnet list` and `vmnet gc`."""

from __future__ import annotations

import os

from vmnet.cli.main import Globals, emit_json, out

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from vmnet.engine.status import VmStatus

    Values = Mapping[str, object]


def _collect(g: Globals, only: str | None
             ) -> tuple[list[VmStatus], list[str], list[dict[str, object]]]:
    from vmnet.engine.holders import tap_holders
    from vmnet.engine.observe import HostView
    from vmnet.engine.status import bridge_rows, unrecorded_taps, vm_status

    ctx = g.context()
    try:
        store = ctx.store()
        records = store.vms() if os.path.isdir(store.dir) else {}
        if only is not None:
            records = {k: r for k, r in records.items() if k == only}
        everyone = g.peer is None
        if g.peer is not None:  # a user without root (vmnetd) sees their own VMs only
            records = {k: r for k, r in records.items() if g.peer.owns(r)}
        view = HostView(ctx.kernel(), full=True)
        held = {n.tap for r in records.values() for n in r.nics
                if (lk := view.link(n.tap)) is not None and lk.carrier}
        holders = tap_holders(held)
        rows = [vm_status(r, view, holders) for _, r in sorted(records.items())]
        extra = unrecorded_taps(view, store.vms()) if only is None and everyone else []
        bridges = bridge_rows(view, store.bridges()) if only is None and everyone else []
    finally:
        ctx.close()
    return rows, extra, bridges


def _watcher(g: Globals) -> list[dict[str, object]]:
    """What vmnetd's watcher did in this namespace lately, newest last."""
    from vmnet.daemon.watch import notes
    from vmnet.kernel.netns import current_inode

    return notes(os.path.join(g.state_dir, f"ns-{current_inode()}"))[1]


def status(g: Globals, values: Values) -> None:
    """Per NIC: tap, bridge, owner, MAC, MTU, queues, holder, counters, agreement."""
    from vmnet.errors import NotFoundError
    from vmnet.model import validate

    vm = values.get("vm")
    name = None if vm is None else validate.vm_name(vm)
    rows, extra, bridges = _collect(g, name)
    if name is not None and not rows:
        raise NotFoundError(f"vmnet has no record of VM {name!r}",
                            hint="`vmnet list` shows the VMs vmnet knows")
    history = _watcher(g) if g.peer is None else []
    if values.get("as_json"):
        emit_json({"vms": [r.to_json() for r in rows], "unrecorded_taps": extra,
                   "bridges": bridges, "watcher": history})
        return
    from vmnet.config.users import owner_text

    header = ("VM", "NIC", "TAP", "BRIDGE", "OWNER", "MAC", "MTU", "Q", "VHDR", "HELD",
              "RX", "TX", "STATE")
    table = [header]
    for r in rows:
        for n in r.nics:
            state = n.state + (" (stale record)" if r.stale else "")
            table.append((r.vm, str(n.index), n.tap, n.bridge,
                          owner_text(n.owner, n.group), n.mac,
                          str(n.mtu or "-"), str(n.queues), "on" if n.vnet_hdr else "off",
                          ",".join(n.holders) or ("yes" if n.held else "no"),
                          str(n.rx_bytes), str(n.tx_bytes), f"{r.mode}/{state}"))
    _print_table(table)
    for t in extra:
        out(f"unrecorded vmnet tap: {t} (no record explains it; `vmnet down` its VM)")
    import time

    for h in history[-5:]:
        at = h.get("at")
        when = time.strftime("%H:%M:%S", time.localtime(at)) if isinstance(at, float) else "?"
        out(f"watcher {when}: {h.get('text')}")
    for b in bridges:
        carried = b["host_traffic"]
        if isinstance(carried, list) and carried:
            out(f"bridge {b['bridge']}: carries the host's traffic vmnet did not add "
                f"({', '.join(str(c) for c in carried[:4])}): `vmnet down` will keep it")


def list_(g: Globals, values: Values) -> None:
    """One line per VM vmnet knows in this namespace."""
    rows, extra, bridges = _collect(g, None)
    if values.get("as_json"):
        emit_json({"vms": [{"vm": r.vm, "mode": r.mode, "phase": r.phase, "stale": r.stale,
                            "nics": len(r.nics),
                            "held": any(n.held for n in r.nics),
                            "taps": [n.tap for n in r.nics]} for r in rows],
                   "unrecorded_taps": extra, "bridges": bridges})
        return
    table = [("VM", "MODE", "NICS", "HELD", "STATE", "TAPS")]
    for r in rows:
        states = {n.state for n in r.nics}
        table.append((r.vm, r.mode, str(len(r.nics)),
                      "yes" if any(n.held for n in r.nics) else "no",
                      "stale" if r.stale else ",".join(sorted(states)),
                      ",".join(n.tap for n in r.nics)))
    _print_table(table)


def gc(g: Globals, values: Values) -> None:
    """Finish or roll back interrupted work and clear stale records."""
    from vmnet.engine import ops
    from vmnet.integrations.libvirt.probe import domain_alive

    dry_run = bool(values.get("dry_run"))
    ctx = g.context()
    try:
        report = ops.gc(ctx, dry_run=dry_run, domain_alive=domain_alive)
    finally:
        ctx.close()
    if values.get("as_json"):
        emit_json(report.to_json())
        return
    verb = "would clear" if dry_run else "cleared"
    for line in report.cleared:
        out(f"{verb} {line}")
    for line in report.bridges:
        out(f"{'would release' if dry_run else 'released'} bridge record {line}")
    for line in report.corrupt:
        out(f"{'would remove' if dry_run else 'removed'} unreadable record {line}")
    for line in report.unknown:
        out(f"left alone (format unknown to this vmnet) {line}")
    for line in report.skipped:
        out(f"left alone {line}")
    for line in report.idle:
        out(f"idle (kept, waiting for its VM) {line}")
    if not (report.cleared or report.corrupt or report.skipped or report.idle
            or report.bridges or report.unknown):
        out("nothing to do")


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
