"""`up`, `down`, `run`, `qemu-args`, `config example` and shell completion.

Each takes the global options and the parsed values (vmnet.cli.table), calls
one operation and prints what was done.
"""

from __future__ import annotations

import sys

from vmnet.cli.main import Globals, emit_json, err, out, overrides
from vmnet.errors import InputError
from vmnet.model import validate

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from vmnet.model import Vm
    from vmnet.state.records import VmRecord

    Values = Mapping[str, object]
    Progress = Callable[[int, int], None] | None

# Flags the ifup script cannot see: QEMU passes it nothing but the tap's name.
_SCRIPT_BLIND = ("bridge", "uplink", "user", "group", "mtu", "macs")
PROGRESS_FROM = 20  # VMs: a terminal gets a progress line for runs this long


def _names(values: Values) -> list[str]:
    vms = values.get("vms")
    return [str(n) for n in vms] if isinstance(vms, list) else []


def _progress(count: int) -> Progress:
    """A progress line on a terminal for long bulk runs; nothing otherwise."""
    if count < PROGRESS_FROM or not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        sys.stderr.write(f"\rvmnet: {done}/{total} steps" + ("\n" if done == total else ""))
        sys.stderr.flush()

    return show


def up(g: Globals, values: Values) -> None:
    """Bring VMs (or every configured VM) up and say what was done."""
    from vmnet.config import resolve_vm
    from vmnet.engine import ops
    from vmnet.render import qemu

    names = _names(values)
    all_vms = bool(values.get("all_vms"))
    dry_run = bool(values.get("dry_run"))
    ov = overrides(values)
    if all_vms and names:
        raise InputError("give VM names or --all, not both")
    cfg = g.load_config()
    if all_vms:
        names = sorted(cfg.vms)
        if not names:
            where = cfg.path or "/etc/vmnet/vmnet.toml (not found: built-in defaults only)"
            raise InputError(f"--all: the config file {where} declares no VM",
                             hint="declare VMs under [vms.NAME], or name the VMs to bring up")
    if not names:
        raise InputError("no VM named: give a VM name, e.g. `vmnet up vm1`")
    for n in names:
        validate.vm_name(n)
    ctx = g.context()

    def resolve(name: str, rec: VmRecord | None) -> Vm:
        if g.peer is not None:  # a user without root (vmnetd): their own VMs only
            g.peer.check_record(name, rec)
        if rec is None:  # a first `up`: the config and the flags
            vm = resolve_vm(cfg, name, ov, env=g.env)
        else:
            from vmnet.engine.desired import desired
            from vmnet.engine.plan import BridgeRecords

            vm = desired(cfg, name, ov, rec, BridgeRecords(ctx.store()), env=g.env)
        if g.peer is not None:
            g.peer.check_vm(cfg, vm, rec, ctx.store())
        return vm

    try:
        results = ops.up_resolved(ctx, names, resolve, dry_run=dry_run,
                                  progress=_progress(len(names)),
                                  force=bool(values.get("force")),
                                  move=bool(values.get("move")))
    finally:
        ctx.close()
    for res in results:
        vm = res.vm
        if dry_run:
            out(f"# {vm.name}: planned steps" + ("" if res.plan.steps else " (none)"))
            for c in res.changes:
                out(f"# change: {c}")
            for s in res.plan.steps:
                out(s.ip(g.netns))
            continue
        for note in res.plan.notes:
            err(f"vmnet: {note}")
        if res.changes:
            out(f"{vm.name}: changed {'; '.join(res.changes)}")
        elif res.plan.noop:
            out(f"{vm.name}: already up")
        for line in qemu.up_lines(vm):
            out(line)
        for nrec in res.record.nics if res.record is not None else ():
            if nrec.ip is not None and not nrec.ovn:
                out(f"{vm.name}: NIC {nrec.index} address {nrec.ip} on network "
                    f"{nrec.network} (by DHCP from {nrec.bridge}; `vmnet ip {vm.name}`)")


def down(g: Globals, values: Values) -> None:
    """Take VMs (or every recorded VM) down and say what was removed."""
    from vmnet.engine import ops

    names = _names(values)
    all_vms = bool(values.get("all_vms"))
    if all_vms and names:
        raise InputError("give VM names or --all, not both")
    ctx = g.context()
    try:
        if all_vms:
            names = sorted(n for n, r in ctx.store().vms().items()
                           if g.peer is None or g.peer.owns(r))
        elif not names:
            raise InputError("give a VM name, e.g. `vmnet down vm1`")
        for n in names:
            validate.vm_name(n)
            if g.peer is not None:  # a user without root (vmnetd): their own VMs only
                g.peer.check_record(n, ctx.store().get_vm(n))
        if not names:
            out("nothing to do")
            return
        res = ops.down_many(ctx, names, force=bool(values.get("force")),
                            dry_run=bool(values.get("dry_run")),
                            progress=_progress(len(names)))
    finally:
        ctx.close()
    for note in res.plan.skipped:
        err(f"vmnet: {note}")
    if values.get("dry_run"):
        out(f"# {res.vm}: planned steps" + ("" if res.plan.steps else " (none)"))
        for s in res.plan.steps:
            out(s.ip(g.netns))
    elif res.plan.noop and not res.had_record:
        unknown = [n for n in names if n not in _configured(g)]
        if unknown:
            # As `status` would say; still exit 0 (down is idempotent: scripts run it twice).
            out(f"{', '.join(unknown)}: unknown to vmnet (no record here, not in the config); "
                "nothing to do")
        else:
            out(f"{res.vm}: nothing to do")
    else:
        gone = ", ".join(res.plan.taps[:20]) + (f" and {len(res.plan.taps) - 20} more"
                                               if len(res.plan.taps) > 20 else "")
        extra = f"; bridge {', '.join(res.plan.drop_bridges)} released" \
            if res.plan.drop_bridges else ""
        out(f"{res.vm if len(names) < 20 else f'{len(names)} VMs'}: removed "
            f"{gone or 'no taps left'}{extra}")


def recorded_vm(g: Globals, name: str, values: Values) -> Vm:
    """The VM as it is up (its record), or as the config and flags say if it is not;
    flags that would describe other taps than the recorded ones are refused."""
    from vmnet.engine.desired import as_recorded
    from vmnet.engine.plan import BridgeRecords

    validate.vm_name(name)
    ctx = g.context()
    store = ctx.store()
    rec = store.get_vm(name)
    cfg = g.load_config()
    if g.peer is not None:  # a user without root (vmnetd): their own VMs only
        g.peer.check_record(name, rec)
    vm = as_recorded(cfg, name, overrides(values), rec, BridgeRecords(store), env=g.env)
    if g.peer is not None:
        g.peer.check_vm(cfg, vm, rec, store)
    return vm


def _configured(g: Globals) -> set[str]:
    try:
        return set(g.load_config().vms)
    except InputError:
        return set()


def qemu_command(values: Values) -> list[str]:
    """The QEMU command after `--` of `vmnet run` (here and in vmnetd's run door),
    refused when it is missing or daemonizes."""
    from vmnet.integrations.qemu.run import check_qemu_argv

    argv = values.get("passthrough")
    qemu = [str(a) for a in argv] if isinstance(argv, list) else []
    if not qemu:
        raise InputError("no QEMU command after `--`",
                         hint="vmnet run VM [OPTIONS] -- qemu-system-x86_64 ARGS...")
    check_qemu_argv(qemu)
    return qemu


def run(g: Globals, values: Values) -> int:
    """`vmnet run VM [OPTIONS] -- QEMU ARGS...`: QEMU's exit status."""
    from vmnet.integrations.qemu import run as engine

    qemu = qemu_command(values)
    model = recorded_vm(g, str(values["vm"]), values)
    ctx = g.context()
    try:
        return engine.run(ctx, model, qemu, netdev_only=bool(values.get("netdev_only")),
                          env=g.env)
    finally:
        ctx.close()


def qemu_args(g: Globals, values: Values) -> None:
    """Print the QEMU network options for VM, as shell words."""
    from vmnet.render.qemu import vm_args
    from vmnet.render.shell import shell_quote

    mode = str(values.get("mode") or "ifname")
    if mode == "script":
        blind = [k for k in _SCRIPT_BLIND if values.get(k)]
        if blind:
            flag = "--mac" if blind[0] == "macs" else f"--{blind[0]}"
            raise InputError(f"{flag} cannot reach the ifup script in --mode script (QEMU "
                             "passes it only the tap's name)",
                             hint="put it in the config file, or run `vmnet up` with it "
                                  "first: the script then finds vmnet's record")
    model = recorded_vm(g, str(values["vm"]), values)
    ifup = ifdown = None
    if mode == "script":
        from vmnet.integrations.qemu.ifup import script_paths

        ifup, ifdown = script_paths()
    args = vm_args(model, netdev_only=bool(values.get("netdev_only")),
                   ifname_mode=mode == "ifname", script=ifup, downscript=ifdown)
    if values.get("as_json"):
        emit_json({"vm": model.name, "mode": mode, "args": args,
                   "script": ifup, "downscript": ifdown,
                   "nics": [{"index": n.index, "netdev": n.netdev_id, "tap": n.tap,
                             "mac": n.mac, "queues": n.queues, "bridge": n.network.bridge,
                             "model": n.model} for n in model.nics]})
        return
    out(" ".join(shell_quote(a) for a in args))


def config_example(g: Globals, values: Values) -> None:
    """Print the example config that ships with vmnet."""
    from vmnet.config.example import EXAMPLE

    sys.stdout.write(EXAMPLE)


def completion(g: Globals, values: Values) -> None:
    from vmnet.cli.args import completion_script
    from vmnet.cli.table import PROGRAM

    sys.stdout.write(completion_script(PROGRAM, str(values["shell"])))


def complete(g: Globals, values: Values) -> None:
    """The hidden `__complete SHELL -- WORDS...` the completion scripts call."""
    from vmnet.cli.args import complete as candidates
    from vmnet.cli.table import PROGRAM

    words = [str(w) for w in (values.get("passthrough") or [])]  # type: ignore[attr-defined]
    for c in candidates(PROGRAM, words, {"vm": lambda: _vm_names(g),
                                         "network": lambda: _network_names(g)}):
        out(c)


def _vm_names(g: Globals) -> list[str]:
    import contextlib

    names: set[str] = set()
    with contextlib.suppress(Exception):  # completion must never fail loudly
        names.update(g.context().store().vms())
    with contextlib.suppress(Exception):
        names.update(g.load_config().vms)
    return sorted(names)


def _network_names(g: Globals) -> list[str]:
    try:
        cfg = g.load_config()
    except Exception:
        return []
    return sorted({n.bridge for n in cfg.networks.values()})


def network_reload(g: Globals, values: Values) -> None:
    """Bring a nat/isolated network that is up back to what vmnet made: its dnsmasq
    restarted if it died, its rules re-applied if they are gone."""
    from vmnet.engine import ops
    from vmnet.errors import NotFoundError

    cfg = g.load_config()
    name = str(values.get("network"))
    net = cfg.networks.get(name)
    if net is None:
        raise NotFoundError(f"no network {name!r}", hint="networks: " +
                            ", ".join(sorted(cfg.networks)))
    ctx = g.context()
    try:
        done = ops.reload_network(ctx, net)
    finally:
        ctx.close()
    for line in done or [f"network {name}: as vmnet made it; nothing to do"]:
        out(line)
