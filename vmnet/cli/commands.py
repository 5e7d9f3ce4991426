"""`up` and `down` as plain functions: the click CLI and the lean entry point
(vmnet.cli.entry, which skips importing click for these two commands) both call
them, so the two paths print and behave the same.
"""

from __future__ import annotations

from vmnet.errors import InputError
from vmnet.model import validate

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Echo = Callable[[str], None]
    Progress = Callable[[int, int], None] | None


def up(ctx: Any, cfg: Any, vms: list[str], all_vms: bool, ov: Any, dry_run: bool,
       out: Echo, progress: Progress = None) -> None:
    """Bring `vms` (or every configured VM) up and say what was done."""
    from vmnet.config import Overrides, resolve_vm
    from vmnet.engine import ops
    from vmnet.render import qemu

    if all_vms and vms:
        raise InputError("give VM names or --all, not both")
    names = sorted(cfg.vms) if all_vms else list(vms)
    if not names:
        raise InputError("no VM named" + (" (the config declares none)" if all_vms else
                                          ": give a VM name, e.g. `vmnet up vm1`"))
    for n in names:
        validate.vm_name(n)
    models = [resolve_vm(cfg, n, ov) for n in names]
    results = ops.up_many(ctx, models, dry_run=dry_run, progress=progress)
    if not dry_run:  # the hot path (vmnet.hot) reads this config's compiled form from now on
        from vmnet import confcache

        plain = ov is None or ov == Overrides()  # resolved without overrides: reusable
        confcache.save(ctx.state_dir, cfg, {vm.name: vm for vm in models} if plain else None)
    for res in results:
        vm = res.vm
        if dry_run:
            out(f"# {vm.name}: planned steps" + ("" if res.plan.steps else " (none)"))
            for s in res.plan.steps:
                out(s.ip())
            continue
        if res.plan.noop:
            out(f"{vm.name}: already up")
        for line in qemu.up_lines(vm):
            out(line)


def down(ctx: Any, vms: list[str], all_vms: bool, force: bool, dry_run: bool, out: Echo,
         err: Echo, progress: Progress = None) -> None:
    """Take `vms` (or every recorded VM) down and say what was removed."""
    from vmnet.engine import ops

    if all_vms and vms:
        raise InputError("give VM names or --all, not both")
    names = sorted(ctx.store().vms()) if all_vms else list(vms)
    if not names and not all_vms:
        raise InputError("give a VM name, e.g. `vmnet down vm1`")
    for n in names:
        validate.vm_name(n)
    if not names:
        out("nothing to do")
        return
    res = ops.down_many(ctx, names, force=force, dry_run=dry_run, progress=progress)
    for note in res.plan.skipped:
        err(f"vmnet: {note}")
    if dry_run:
        out(f"# {res.vm}: planned steps" + ("" if res.plan.steps else " (none)"))
        for s in res.plan.steps:
            out(s.ip())
    elif res.plan.noop and not res.had_record:
        out(f"{res.vm}: nothing to do")
    else:
        gone = ", ".join(res.plan.taps[:20]) + (f" and {len(res.plan.taps) - 20} more"
                                               if len(res.plan.taps) > 20 else "")
        extra = f"; bridge {', '.join(res.plan.drop_bridges)} released" \
            if res.plan.drop_bridges else ""
        out(f"{res.vm if len(names) < 20 else f'{len(names)} VMs'}: removed "
            f"{gone or 'no taps left'}{extra}")
