"""The `vmnet` command line: parse, call one operation, print.  Thin on purpose."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click

from vmnet.errors import VmnetError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Globals:
    netns: str | None
    state_dir: str
    config: str | None
    lock_timeout: float

    def context(self) -> Any:
        from vmnet.engine.ops import Context

        return Context(state_dir=self.state_dir, lock_timeout=self.lock_timeout)

    def load_config(self) -> Any:
        from vmnet.config import load_config

        return load_config(self.config)


def fail(e: VmnetError) -> NoReturn:
    click.echo(f"vmnet: error: {e.one_line()}", err=True)
    sys.exit(e.exit_code)


class VmnetGroup(click.Group):
    """Turns VmnetError into one line on stderr and its exit code: no tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VmnetError as e:
            fail(e)


@click.group(cls=VmnetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--netns", metavar="NAME", help="Work inside this named network namespace.")
@click.option("--state-dir", envvar="VMNET_STATE_DIR", default="/run/vmnet", show_default=True,
              metavar="DIR", help="Where vmnet keeps its records (also $VMNET_STATE_DIR).")
@click.option("--config", "config", envvar="VMNET_CONFIG", metavar="PATH",
              help="TOML config (default /etc/vmnet/vmnet.toml; also $VMNET_CONFIG).")
@click.option("--lock-timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for another vmnet command in this namespace.")
@click.option("-v", "--verbose", is_flag=True, help="Log each kernel change as `ip` would.")
@click.version_option(package_name="vmnet")
@click.pass_context
def main(ctx: click.Context, netns: str | None, state_dir: str, config: str | None,
         lock_timeout: float, verbose: bool) -> None:
    """Give QEMU/KVM virtual machines their network: user-owned taps on Linux bridges."""
    logging.basicConfig(level=logging.WARNING, format="vmnet: %(message)s")
    if verbose:
        from vmnet import log

        log.set_verbose(True)
        logging.getLogger("vmnet").setLevel(logging.DEBUG)
    if netns:
        from vmnet.kernel.netns import enter

        try:
            enter(netns)
        except VmnetError as e:
            fail(e)
    ctx.obj = Globals(netns=netns, state_dir=state_dir, config=config,
                      lock_timeout=lock_timeout)


def override_options(f: F) -> F:
    """The flags that override config for `up` (and `run`, `qemu-args`, ...)."""
    opts = [
        click.option("--bridge", metavar="NAME", help="Bridge for every NIC."),
        click.option("--uplink", metavar="IFACE", help="Enslave this interface to the bridge."),
        click.option("--user", metavar="USER", help="Tap owner (name or uid)."),
        click.option("--group", metavar="GROUP", help="Tap group (name or gid)."),
        click.option("--nics", type=int, metavar="N", help="Number of NICs."),
        click.option("--queues", type=int, metavar="Q", help="Queues per NIC (1..256)."),
        click.option("--mac", "macs", multiple=True, metavar="MAC",
                     help="Guest MAC (repeat for NIC 1, 2, ...)."),
        click.option("--mtu", type=int, help="MTU of the taps."),
        click.option("--no-vnet-hdr", is_flag=True, default=False,
                     help="Open taps without IFF_VNET_HDR (vnet_hdr=off)."),
        click.option("--model", metavar="DEVICE", help="QEMU NIC model (virtio-net-pci)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def overrides(kw: dict[str, Any]) -> Any:
    from vmnet.config import Overrides

    return Overrides(bridge=kw.get("bridge"), uplink=kw.get("uplink"), user=kw.get("user"),
                     group=kw.get("group"), nics=kw.get("nics"), queues=kw.get("queues"),
                     macs=tuple(kw.get("macs") or ()), mtu=kw.get("mtu"),
                     vnet_hdr=False if kw.get("no_vnet_hdr") else None,
                     model=kw.get("model"))


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@main.command()
@click.argument("vms", nargs=-1, metavar="VM...")
@click.option("--all", "all_vms", is_flag=True, help="Every VM in the config file.")
@override_options
@click.option("--dry-run", is_flag=True, help="Print the planned steps as `ip` commands.")
@click.pass_obj
def up(g: Globals, /, vms: tuple[str, ...], all_vms: bool, dry_run: bool, **kw: Any) -> None:
    """Create VM's taps (and its bridge if missing), owned by its user."""
    from vmnet.cli import commands

    cfg = g.load_config()
    count = len(cfg.vms) if all_vms else len(vms)
    with _progress(count) as bar:
        commands.up(g.context(), cfg, list(vms), all_vms, overrides(kw), dry_run,
                    click.echo, bar)


@contextlib.contextmanager
def _progress(vms: int) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on a terminal for long bulk runs; nothing otherwise."""
    if vms < 20 or not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=1, label="vmnet", file=sys.stderr) as bar:
        def update(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)
        yield update


@main.command()
@click.argument("vms", nargs=-1, metavar="VM...")
@click.option("--all", "all_vms", is_flag=True, help="Every VM vmnet has a record of.")
@click.option("--force", is_flag=True, help="Remove taps even while a process holds them.")
@click.option("--dry-run", is_flag=True, help="Print the planned steps as `ip` commands.")
@click.pass_obj
def down(g: Globals, vms: tuple[str, ...], all_vms: bool, force: bool, dry_run: bool) -> None:
    """Remove VM's taps, and bridges vmnet made that nothing uses any more."""
    from vmnet.cli import commands

    ctx = g.context()
    with _progress(len(vms) if vms else 100) as bar:
        commands.down(ctx, list(vms), all_vms, force, dry_run, click.echo,
                      lambda line: click.echo(line, err=True), bar)


# Command modules register themselves on `main` when imported.
from vmnet.cli import libvirt as _cli_libvirt  # noqa: E402, F401
from vmnet.cli import qemu as _cli_qemu  # noqa: E402, F401
from vmnet.cli import status as _cli_status  # noqa: E402, F401
