"""`vmnet` commands for the qemu side (registered on import by vmnet.cli.main)."""

from __future__ import annotations

from typing import Any

import click

from vmnet.cli.main import Globals, emit_json, main, override_options, overrides

_QEMU_ARGV = "vmnet.qemu_argv"
# Flags the ifup script cannot see: QEMU passes it nothing but the tap's name.
_SCRIPT_BLIND = ("bridge", "uplink", "user", "group", "mtu", "macs")


class _RunCommand(click.Command):
    """Splits its arguments at the first `--`: vmnet's before, QEMU's command after."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        from vmnet.errors import InputError

        if "--" in args:
            i = args.index("--")
            ctx.meta[_QEMU_ARGV] = args[i + 1:]
            args = args[:i]
        elif not set(args) & {"--help", "-h"}:
            raise InputError("vmnet run needs `--` before the QEMU command: "
                             "vmnet run VM [OPTIONS] -- qemu-system-x86_64 ARGS...")
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "-- QEMU_COMMAND [ARGS]..."]


@main.command(cls=_RunCommand)
@click.argument("vm")
@override_options
@click.option("--netdev-only", is_flag=True,
              help="Append only -netdev (ids net0, net1, ...); write your own -device.")
@click.pass_context
def run(ctx: click.Context, /, vm: str, netdev_only: bool, **kw: Any) -> None:
    """Run QEMU on VM's network: vmnet run VM [OPTIONS] -- qemu-system-x86_64 ARGS...

    Brings the network up, starts QEMU with the taps' fds and the matching
    -netdev/-device options appended, forwards signals, removes the network
    when QEMU exits and exits with QEMU's status.  QEMU runs as the VM's user.
    """
    from vmnet.config import resolve_vm
    from vmnet.errors import InputError
    from vmnet.integrations.qemu import run as engine

    argv = ctx.meta[_QEMU_ARGV]
    if not argv:
        raise InputError("no QEMU command after `--`")
    g: Globals = ctx.obj
    model = resolve_vm(g.load_config(), vm, overrides(kw))
    ctx.exit(engine.run(g.context(), model, argv, netdev_only=netdev_only))


@main.command("qemu-args")
@click.argument("vm")
@override_options
@click.option("--mode", type=click.Choice(["ifname", "script"]), default="ifname",
              show_default=True,
              help="ifname: QEMU opens the tap `vmnet up` made (script=no); script: QEMU "
                   "opens or creates the tap and runs vmnet's ifup/ifdown scripts.")
@click.option("--netdev-only", is_flag=True, help="Only -netdev (ids net0, net1, ...).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def qemu_args(g: Globals, /, vm: str, mode: str, netdev_only: bool, as_json: bool,
              **kw: Any) -> None:
    """Print the QEMU network options for VM, as shell words."""
    import shlex

    from vmnet.config import resolve_vm
    from vmnet.errors import InputError
    from vmnet.render.qemu import vm_args

    if mode == "script":
        blind = [k for k in _SCRIPT_BLIND if kw.get(k)]
        if blind:
            flag = "--mac" if blind[0] == "macs" else f"--{blind[0]}"
            raise InputError(f"{flag} cannot reach the ifup script in --mode script (QEMU "
                             "passes it only the tap's name)",
                             hint="put it in the config file, or run `vmnet up` with it "
                                  "first: the script then finds vmnet's record")
    model = resolve_vm(g.load_config(), vm, overrides(kw))
    ifup = ifdown = None
    if mode == "script":
        from vmnet.integrations.qemu.ifup import script_paths

        ifup, ifdown = script_paths()
    args = vm_args(model, netdev_only=netdev_only, ifname_mode=mode == "ifname",
                   script=ifup, downscript=ifdown)
    if as_json:
        emit_json({"vm": model.name, "mode": mode, "args": args,
                   "script": ifup, "downscript": ifdown,
                   "nics": [{"index": n.index, "netdev": n.netdev_id, "tap": n.tap,
                             "mac": n.mac, "queues": n.queues, "bridge": n.network.bridge,
                             "model": n.model} for n in model.nics]})
        return
    click.echo(" ".join(shlex.quote(a) for a in args))
