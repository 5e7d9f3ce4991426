"""`vmnet` commands for the libvirt side (registered on import by vmnet.cli.main).

libvirt-xml: render interfaces / insert them into a domain.  hook: install
or remove the libvirt hook.  libvirt attach/detach: hot-plug with
libvirt-python.  Thin: parse, call one function, print.
"""

from __future__ import annotations

import os
import sys

from vmnet.cli.main import Globals, out, overrides
from vmnet.consts import HOOK_LOCK_TIMEOUT
from vmnet.errors import InputError

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Mapping

    Values = Mapping[str, object]


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


def libvirt_xml(g: Globals, values: Values) -> None:
    """Print libvirt <interface> XML for VM, or a whole domain with them inserted."""
    from vmnet.cli.commands import recorded_vm
    from vmnet.integrations.libvirt.domainxml import override_fields
    from vmnet.render import libvirt as render

    ov = overrides(values)
    mode = str(values.get("mode") or "ethernet")
    domain_file = values.get("domain_file")
    model = recorded_vm(g, str(values["vm"]), values)
    if domain_file is None:
        sys.stdout.write(render.interfaces_xml(model, mode))
        return
    text = _read_file(str(domain_file))
    sys.stdout.write(render.domain_with_vm(text, model, override_fields(ov), mode,
                                           what=f"--domain {domain_file}"))


def _no_netns(g: Globals) -> None:
    if g.netns:
        raise InputError("--netns does not apply to the libvirt hook: it always works in "
                         "libvirtd's own network namespace")


def hook_install(g: Globals, values: Values) -> None:
    """Install the hook as HOOKS_DIR/qemu.d/vmnet (never touching anyone else's hook)."""
    from vmnet.integrations.libvirt import hookinstall

    _no_netns(g)
    settings = hookinstall.HookSettings(
        python=hookinstall.default_python(), state_dir=os.path.abspath(g.state_dir),
        config=os.path.abspath(g.config) if g.config else None,
        lock_timeout=min(g.lock_timeout, HOOK_LOCK_TIMEOUT))
    res = hookinstall.install(settings, str(values["hooks_dir"]))
    out(f"{res.action} {res.path} (state {settings.state_dir}, config "
        f"{settings.config or 'default'})")
    if res.action != "unchanged":
        out(hookinstall.RELOAD_HINT)


def hook_uninstall(g: Globals, values: Values) -> None:
    """Remove vmnet's hook (only the file vmnet wrote)."""
    from vmnet.integrations.libvirt import hookinstall

    hooks_dir = str(values["hooks_dir"])
    path = hookinstall.uninstall(hooks_dir)
    out(f"removed {path}" if path else
        f"nothing to do: {hookinstall.hook_path(hooks_dir)} does not exist")


def libvirt_attach(g: Globals, values: Values) -> None:
    """Bring VM's taps up and hot-plug them into running DOMAIN."""
    from vmnet.config import resolve_vm
    from vmnet.integrations.libvirt import attach as la
    from vmnet.integrations.libvirt.domainxml import override_fields

    ov = overrides(values)
    vm = str(values["vm"])
    model = resolve_vm(g.load_config(), vm, ov, env=g.env)
    ctx = g.context()
    conn = la.connect(str(values["uri"]))
    try:
        res = la.attach(ctx, conn, model, override_fields(ov), str(values["domain"]),
                        persistent=bool(values.get("persistent")))
    finally:
        conn.close()
        ctx.close()
    where = " and ".join(w for w, on in (("live", res.live), ("persistent", res.persistent))
                         if on)
    out(f"{vm}: attached {', '.join(res.taps)} to domain {res.domain} ({where})")


def libvirt_detach(g: Globals, values: Values) -> None:
    """Hot-unplug VM's NICs from DOMAIN; its taps go once the device is gone."""
    from vmnet.config import resolve_vm
    from vmnet.integrations.libvirt import attach as la

    vm = str(values["vm"])
    cfg = g.load_config()
    ctx = g.context()
    conn = la.connect(str(values["uri"]))
    try:
        res = la.detach(ctx, conn, vm, lambda ov: resolve_vm(cfg, vm, ov, env=g.env),
                        str(values["domain"]), persistent=bool(values.get("persistent")),
                        timeout=float(values["timeout"]))  # type: ignore[arg-type]
    finally:
        conn.close()
        ctx.close()
    gone = ", ".join(res.removed) or "no taps"
    out(f"{vm}: detached from domain {res.domain}; removed {gone}")
