"""`vmnet status`, `vmnet list` and `vmnet gc`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import click

from vmnet.cli.main import Globals, emit_json, main


def _collect(g: Globals, only: str | None) -> tuple[list[Any], list[str], list[Any]]:
    from vmnet.engine.holders import tap_holders
    from vmnet.engine.status import bridge_rows, unrecorded_taps, vm_status

    ctx = g.context()
    store = ctx.store()
    records = store.vms() if os.path.isdir(store.dir) else {}
    if only is not None:
        records = {k: r for k, r in records.items() if k == only}
    snap = ctx.kernel().snapshot()
    held = {n.tap for r in records.values() for n in r.nics
            if (lk := snap.get(n.tap)) is not None and lk.carrier}
    holders = tap_holders(held)
    rows = [vm_status(r, snap, holders) for _, r in sorted(records.items())]
    extra = unrecorded_taps(snap, store.vms()) if only is None else []
    bridges = bridge_rows(snap, store.bridges()) if only is None else []
    return rows, extra, bridges


@main.command()
@click.argument("vm", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(g: Globals, vm: str | None, as_json: bool) -> None:
    """Per NIC: tap, bridge, owner, MAC, MTU, queues, holder, counters, agreement."""
    from vmnet.errors import NotFoundError
    from vmnet.model import validate

    if vm is not None:
        validate.vm_name(vm)
    rows, extra, bridges = _collect(g, vm)
    if vm is not None and not rows:
        raise NotFoundError(f"vmnet has no record of VM {vm!r}",
                            hint="`vmnet list` shows the VMs vmnet knows")
    if as_json:
        emit_json({"vms": [r.to_json() for r in rows], "unrecorded_taps": extra,
                   "bridges": bridges})
        return
    header = ("VM", "NIC", "TAP", "BRIDGE", "OWNER", "MAC", "MTU", "Q", "VHDR", "HELD",
              "RX", "TX", "STATE")
    table = [header]
    for r in rows:
        for n in r.nics:
            state = n.state + (" (stale record)" if r.stale else "")
            table.append((r.vm, str(n.index), n.tap, n.bridge,
                          "-" if n.owner is None else str(n.owner), n.mac,
                          str(n.mtu or "-"), str(n.queues), "on" if n.vnet_hdr else "off",
                          ",".join(n.holders) or ("yes" if n.held else "no"),
                          str(n.rx_bytes), str(n.tx_bytes), f"{r.mode}/{state}"))
    _print_table(table)
    for t in extra:
        click.echo(f"unrecorded vmnet tap: {t} (no record explains it; `vmnet down` its VM)")


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def list_(g: Globals, as_json: bool) -> None:
    """One line per VM vmnet knows in this namespace."""
    rows, extra, bridges = _collect(g, None)
    if as_json:
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


@main.command()
@click.option("--dry-run", is_flag=True, help="Say what would be cleared; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def gc(g: Globals, dry_run: bool, as_json: bool) -> None:
    """Finish or roll back interrupted work and clear stale records."""
    from dataclasses import asdict

    from vmnet.engine import ops

    ctx = g.context()
    report = ops.gc(ctx, dry_run=dry_run, domain_alive=_domain_alive_probe())
    if as_json:
        emit_json(asdict(report))
        return
    verb = "would clear" if dry_run else "cleared"
    for line in report.cleared:
        click.echo(f"{verb} {line}")
    for line in report.corrupt:
        click.echo(f"{'would remove' if dry_run else 'removed'} unreadable record {line}")
    for line in report.skipped:
        click.echo(f"left alone {line}")
    for line in report.idle:
        click.echo(f"idle (kept, waiting for its VM) {line}")
    if not (report.cleared or report.corrupt or report.skipped or report.idle):
        click.echo("nothing to do")


def _domain_alive_probe() -> Any:
    from vmnet.integrations.libvirt.probe import domain_alive

    return domain_alive


def _print_table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
