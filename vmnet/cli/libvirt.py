"""`vmnet` commands for the libvirt side (registered on import by vmnet.cli.main).

libvirt-xml: render interfaces / insert them into a domain.  hook: install
or remove the libvirt hook.  libvirt attach/detach: hot-plug with
libvirt-python.  Thin: parse, call one function, print.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from vmnet.cli.main import Globals, main, override_options, overrides
from vmnet.errors import InputError

URI_OPTION = click.option(
    "-c", "--connect", "uri", envvar="VMNET_LIBVIRT_URI", default="qemu:///system",
    show_default=True, metavar="URI", help="libvirt URI (also $VMNET_LIBVIRT_URI).")


def _read_file(path: str) -> str:
    from vmnet.integrations.libvirt.domainxml import MAX_XML_BYTES

    data: bytes
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_XML_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_XML_BYTES + 1)
    except OSError as e:
        raise InputError(f"--domain: cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_XML_BYTES:
        raise InputError(f"--domain: {path} is larger than {MAX_XML_BYTES >> 20} MiB")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InputError(f"--domain: {path} is not UTF-8 text") from None


@main.command("libvirt-xml")
@click.argument("vm")
@click.option("--mode", type=click.Choice(["ethernet", "bridge"]), default="ethernet",
              show_default=True,
              help="ethernet: libvirt opens vmnet's taps; bridge: libvirt makes its own taps.")
@click.option("--domain", "domain_file", metavar="FILE",
              help="Insert the interfaces (and vmnet's metadata) into this domain XML "
                   "('-' for stdin), replacing earlier vmnet ones.")
@override_options
@click.pass_obj
def libvirt_xml(g: Globals, /, vm: str, mode: str, domain_file: str | None, **kw: Any) -> None:
    """Print libvirt <interface> XML for VM, or a whole domain with them inserted."""
    from vmnet.config import resolve_vm
    from vmnet.integrations.libvirt.domainxml import override_fields
    from vmnet.render import libvirt as render

    ov = overrides(kw)
    model = resolve_vm(g.load_config(), vm, ov)
    if domain_file is None:
        click.echo(render.interfaces_xml(model, mode), nl=False)
        return
    text = _read_file(domain_file)
    click.echo(render.domain_with_vm(text, model, override_fields(ov), mode,
                                     what=f"--domain {domain_file}"), nl=False)


@main.group("hook")
def hook() -> None:
    """The libvirt hook: vmnet brings taps up when a domain starts, down when it stops."""


def _no_netns(g: Globals) -> None:
    if g.netns:
        raise InputError("--netns does not apply to the libvirt hook: it always works in "
                         "libvirtd's own network namespace")


@hook.command("install")
@click.option("--hooks-dir", default="/etc/libvirt/hooks", show_default=True, metavar="DIR",
              help="libvirt's hooks directory.")
@click.pass_obj
def hook_install(g: Globals, hooks_dir: str) -> None:
    """Install the hook as HOOKS_DIR/qemu.d/vmnet (never touching anyone else's hook)."""
    from vmnet.integrations.libvirt import hookinstall

    _no_netns(g)
    settings = hookinstall.HookSettings(
        python=hookinstall.default_python(), state_dir=os.path.abspath(g.state_dir),
        config=os.path.abspath(g.config) if g.config else None,
        lock_timeout=min(g.lock_timeout, 10.0))
    res = hookinstall.install(settings, hooks_dir)
    click.echo(f"{res.action} {res.path} (state {settings.state_dir}, config "
               f"{settings.config or 'default'})")
    if res.action != "unchanged":
        click.echo(hookinstall.RELOAD_HINT)


@hook.command("uninstall")
@click.option("--hooks-dir", default="/etc/libvirt/hooks", show_default=True, metavar="DIR",
              help="libvirt's hooks directory.")
@click.pass_obj
def hook_uninstall(g: Globals, hooks_dir: str) -> None:
    """Remove vmnet's hook (only the file vmnet wrote)."""
    from vmnet.integrations.libvirt import hookinstall

    path = hookinstall.uninstall(hooks_dir)
    click.echo(f"removed {path}" if path else
               f"nothing to do: {hookinstall.hook_path(hooks_dir)} does not exist")


@main.group("libvirt")
def libvirt_group() -> None:
    """Hot-plug a vmnet VM's NICs into a libvirt domain (libvirt-python)."""


@libvirt_group.command("attach")
@click.argument("vm")
@click.argument("domain")
@click.option("--config", "persistent", is_flag=True,
              help="Also add them to the domain's persistent definition (like virsh --config).")
@URI_OPTION
@override_options
@click.pass_obj
def libvirt_attach(g: Globals, /, vm: str, domain: str, persistent: bool, uri: str,
                   **kw: Any) -> None:
    """Bring VM's taps up and hot-plug them into running DOMAIN."""
    from vmnet.config import resolve_vm
    from vmnet.integrations.libvirt import attach as la
    from vmnet.integrations.libvirt.domainxml import override_fields

    ov = overrides(kw)
    model = resolve_vm(g.load_config(), vm, ov)
    ctx = g.context()
    conn = la.connect(uri)
    try:
        res = la.attach(ctx, conn, model, override_fields(ov), domain, persistent=persistent)
    finally:
        conn.close()
        ctx.close()
    where = " and ".join(w for w, on in (("live", res.live), ("persistent", res.persistent))
                         if on)
    click.echo(f"{vm}: attached {', '.join(res.taps)} to domain {res.domain} ({where})")


@libvirt_group.command("detach")
@click.argument("vm")
@click.argument("domain")
@click.option("--config", "persistent", is_flag=True,
              help="Also remove them from the domain's persistent definition.")
@click.option("--timeout", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the guest to release the device.")
@URI_OPTION
@click.pass_obj
def libvirt_detach(g: Globals, vm: str, domain: str, persistent: bool, timeout: float,
                   uri: str) -> None:
    """Hot-unplug VM's NICs from DOMAIN; its taps go once the device is gone."""
    from vmnet.config import resolve_vm
    from vmnet.integrations.libvirt import attach as la

    cfg = g.load_config()
    ctx = g.context()
    conn = la.connect(uri)
    try:
        res = la.detach(ctx, conn, vm, lambda ov: resolve_vm(cfg, vm, ov), domain,
                        persistent=persistent, timeout=timeout)
    finally:
        conn.close()
        ctx.close()
    gone = ", ".join(res.removed) or "no taps"
    click.echo(f"{vm}: detached from domain {res.domain}; removed {gone}")
