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
        from vmnet.kinds import l3

        site = ctx.site()
        leases = l3.leases(site, {n.bridge for r in records.values() for n in r.nics
                                  if n.ip is not None})
        rows = [vm_status(r, view, holders, leases) for _, r in sorted(records.items())]
        extra = unrecorded_taps(view, store.vms()) if only is None and everyone else []
        bridges = bridge_rows(view, store.bridges(), site) if only is None and everyone \
            else []
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
              "RX", "TX", "STATE", "ADDRESS")
    table = [header]
    for r in rows:
        for n in r.nics:
            state = n.state + (" (stale record)" if r.stale else "")
            addr = "-" if n.ip is None else n.ip + (
                "" if n.leased or n.ovn is not None else " (not leased yet)")
            table.append((r.vm, str(n.index), n.tap, n.bridge,
                          owner_text(n.owner, n.group), n.mac,
                          str(n.mtu or "-"), str(n.queues), "on" if n.vnet_hdr else "off",
                          ",".join(n.holders) or ("yes" if n.held else "no"),
                          str(n.rx_bytes), str(n.tx_bytes), f"{r.mode}/{state}", addr))
    _print_table(table)
    for r in rows:
        for n in r.nics:
            if n.ovn is not None:
                from vmnet.kinds.ovn import status_text

                out(f"{r.vm} NIC {n.index}: {status_text(n.ovn)}")
    for b in bridges:
        if b.get("kind") in ("nat", "isolated"):
            for line in network_lines(b):
                out(line)
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


def network_lines(b: Mapping[str, object]) -> list[str]:
    """What status says of one nat/isolated network that is up."""
    name = f"network {b['network']} ({b['kind']}, bridge {b['bridge']}, {b.get('subnet')})"
    pid = b.get("dnsmasq_pid")
    head = f"{name}: " + (f"dnsmasq pid {pid}" if pid else "dnsmasq NOT running")
    if b.get("kind") == "nat":
        head += f", out {b['outbound']}" if b.get("outbound") else ", no way out (no default " \
                                                                   "route when it came up)"
    lines = [head]
    problems = b.get("problems")
    if isinstance(problems, list) and problems:
        lines.append(f"{name}: not as vmnet made it: {'; '.join(str(p) for p in problems)} "
                     f"(`vmnet network reload {b['network']}` puts it back)")
    for text in b.get("firewall") or []:  # type: ignore[attr-defined]
        lines.append(f"{name}: warning: {text}")
    return lines


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


def ip(g: Globals, values: Values) -> None:
    """Print a VM's address on its nat/isolated network; with --wait, once the guest has
    taken it by DHCP (dnsmasq's lease file says so)."""
    import time

    from vmnet.errors import InputError, NotFoundError
    from vmnet.kinds import dnsmasq
    from vmnet.model import validate

    name = validate.vm_name(values.get("vm"))
    index = values.get("nic") or 0
    wait = values.get("wait")
    ctx = g.context()
    rec = ctx.store().get_vm(name)
    if rec is None or (g.peer is not None and not g.peer.owns(rec)):
        raise NotFoundError(f"vmnet has no record of VM {name!r}",
                            hint=f"`vmnet up {name}` first (`vmnet list` shows the VMs)")
    nic = next((n for n in rec.nics if n.index == index), None)
    if nic is None:
        raise NotFoundError(f"VM {name!r} has no NIC {index}",
                            hint=f"it has NICs 0-{len(rec.nics) - 1}")
    if nic.ip is None:
        raise InputError(f"VM {name!r} NIC {index} is on network {nic.network!r}, a plain "
                         "bridge: vmnet gives no address there",
                         hint="put the NIC on a nat or isolated network (--network default)")
    leased = None
    if isinstance(wait, float) and not nic.ovn:  # (an ovn port's address is OVN's to give)
        paths = ctx.site().paths(nic.bridge)
        deadline = time.monotonic() + wait
        while True:
            leased = dnsmasq.leases(paths).get(nic.mac) == nic.ip
            if leased or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if not leased:
            raise NotFoundError(f"VM {name!r} NIC {index} has not taken {nic.ip} by DHCP "
                                f"within {wait:g} s", ifname=nic.tap,
                                hint="is the guest up, asking DHCP on that NIC? "
                                     "(`vmnet status` shows its dnsmasq)")
    if values.get("as_json"):
        emit_json({"vm": name, "nic": index, "ip": nic.ip, "network": nic.network,
                   "mac": nic.mac, "leased": leased})
        return
    out(nic.ip)


def network_list(g: Globals, values: Values) -> None:
    """Each network of the config (and any other vmnet has up): kind, bridge, subnet,
    whether it is up, its dnsmasq and foreign rules that drop its traffic."""
    from vmnet.engine.observe import HostView
    from vmnet.engine.status import bridge_rows

    cfg = g.load_config()
    ctx = g.context()
    try:
        store = ctx.store()
        recs = store.bridges() if os.path.isdir(store.dir) else {}
        rows = {str(r["bridge"]): r for r in bridge_rows(HostView(ctx.kernel()), recs,
                                                         ctx.site())}
    finally:
        ctx.close()
    nets = []
    ovn_up = {n.network for r in (store.vms() if os.path.isdir(store.dir) else {}).values()
              for n in r.nics if n.ovn} if any(n.ovn for n in cfg.networks.values()) else set()
    for net in cfg.networks.values():
        if net.ovn is not None:  # (its switch is OVN's; "up": a NIC of this host is on it)
            nets.append({"network": net.name, "kind": net.kind, "bridge": net.bridge,
                         "up": net.name in ovn_up, "subnet": None, "switch": net.ovn.switch,
                         "northbound": net.ovn.nb, "state": None})
            continue
        row = rows.pop(net.bridge, None)
        nets.append({"network": net.name, "kind": net.kind, "bridge": net.bridge,
                     "up": row is not None and bool(row.get("present")),
                     "subnet": (row or {}).get("subnet") or net.address, "state": row})
    for row in rows.values():  # up, but no longer (or never) in this config
        nets.append({"network": row["network"], "kind": row.get("kind"),
                     "bridge": row["bridge"], "up": bool(row.get("present")),
                     "subnet": row.get("subnet"), "state": row})
    if values.get("as_json"):
        emit_json({"networks": nets})
        return
    table = [("NETWORK", "KIND", "BRIDGE", "SUBNET", "UP", "DNSMASQ")]
    for n in nets:
        st = n["state"] if isinstance(n["state"], dict) else {}
        pid = st.get("dnsmasq_pid")
        table.append((str(n["network"]), str(n["kind"]), str(n["bridge"]),
                      f"switch {n['switch']}" if n["kind"] == "ovn" else
                      str(n["subnet"] or ("chosen at first up" if n["kind"] != "bridge"
                                          else "-")),
                      "yes" if n["up"] else "no",
                      "-" if n["kind"] in ("bridge", "ovn") or not n["up"] else
                      (f"pid {pid}" if pid else "NOT running")))
    _print_table(table)
    for n in nets:
        st = n["state"] if isinstance(n["state"], dict) else {}
        if st.get("kind") in ("nat", "isolated"):
            for line in network_lines(st)[1:]:
                out(line)
