"""Hot-plug a vmnet VM's NICs into a libvirt domain, and out again (libvirt-python).

attach: taps up first (records carry the domain's UUID, so the hook's
`release end` tears them down with the domain), then one attachDevice per
NIC, then vmnet's metadata names the VM (live, and persistent with
--config, so the hook brings the taps up at the next start).

detach: detachDevice, wait until the device is really gone (the guest has to
let go of it; libvirt returns after at most 5 s even if it has not), then the
taps go, then the metadata entry.  Taps are never removed under a device
QEMU still has.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vmnet.errors import ConflictError, InputError, NotFoundError, VmnetError
from vmnet.integrations.libvirt.domainxml import (
    NS_PREFIX,
    NS_URI,
    VmEntry,
    alias_for,
    interface_info,
    parse_vmnet_element,
    parse_xml,
)
from vmnet.model import Vm

if TYPE_CHECKING:
    from vmnet.config import Overrides
    from vmnet.engine.context import Context

DEFAULT_URI = "qemu:///system"
DETACH_TIMEOUT = 30.0


class LibvirtError(VmnetError):
    """libvirt refused a request (its message is kept)."""


def _libvirt() -> Any:
    try:
        import libvirt
    except ImportError:
        raise NotFoundError("libvirt-python is not installed",
                            hint="pip install 'vmnet[libvirt]' (needs libvirt-dev, pkg-config)"
                            ) from None
    # Without a handler libvirt also prints every error on stderr.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _msg(e: Exception) -> str:
    get = getattr(e, "get_error_message", None)
    return str(get() if get else e)


def connect(uri: str) -> Any:
    lv = _libvirt()
    try:
        return lv.open(uri)
    except lv.libvirtError as e:
        raise LibvirtError(f"cannot connect to libvirt at {uri}: {_msg(e)}",
                           hint="is libvirtd running? (or give --connect URI)") from None


def lookup(conn: Any, domain: str) -> Any:
    lv = _libvirt()
    for find in (conn.lookupByName, conn.lookupByUUIDString):
        try:
            return find(domain)
        except lv.libvirtError:
            continue
    raise NotFoundError(f"libvirt has no domain {domain!r}", hint="`virsh list --all`")


@dataclass
class Session:
    """A domain and what vmnet needs around it."""

    dom: Any
    lv: Any = field(default_factory=_libvirt)

    @property
    def uuid(self) -> str:
        return str(self.dom.UUIDString())

    @property
    def name(self) -> str:
        return str(self.dom.name())

    @property
    def active(self) -> bool:
        return bool(self.dom.isActive())

    def xml(self, live: bool) -> ET.Element:
        flags = 0 if live else self.lv.VIR_DOMAIN_XML_INACTIVE
        return parse_xml(self.dom.XMLDesc(flags), f"domain {self.name} XML")

    def interfaces_with(self, aliases: set[str], live: bool) -> list[str]:
        """Our interfaces, as XML strings libvirt can match on detach."""
        return [ET.tostring(i, encoding="unicode")
                for i in self.xml(live).iterfind("devices/interface")
                if interface_info(i).alias in aliases]

    def entries(self, live: bool) -> list[VmEntry]:
        flag = self.lv.VIR_DOMAIN_AFFECT_LIVE if live else self.lv.VIR_DOMAIN_AFFECT_CONFIG
        try:
            text = self.dom.metadata(self.lv.VIR_DOMAIN_METADATA_ELEMENT, NS_URI, flag)
        except self.lv.libvirtError as e:
            if e.get_error_code() == self.lv.VIR_ERR_NO_DOMAIN_METADATA:
                return []
            raise LibvirtError(f"domain {self.name}: cannot read metadata: {_msg(e)}") from None
        return parse_vmnet_element(parse_xml(text, "vmnet metadata"),
                                   f"domain {self.name}: vmnet metadata")

    def set_entries(self, entries: list[VmEntry], live: bool) -> None:
        from vmnet.render.libvirt import metadata_xml

        flag = self.lv.VIR_DOMAIN_AFFECT_LIVE if live else self.lv.VIR_DOMAIN_AFFECT_CONFIG
        text = metadata_xml(entries, ns=False) if entries else None
        self.dom.setMetadata(self.lv.VIR_DOMAIN_METADATA_ELEMENT, text,
                             NS_PREFIX if text else None, NS_URI, flag)


def _scopes(s: Session, persistent: bool) -> list[bool]:
    """[live?] for each of live and config that the request touches."""
    scopes = [True] if s.active else []
    if persistent:
        scopes.append(False)
    if not scopes:
        raise InputError(f"domain {s.name} is not running",
                         hint="give --config to change its persistent definition only")
    return scopes


def _wait_gone(s: Session, aliases: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while s.active and s.interfaces_with(aliases, live=True):
        if time.monotonic() > deadline:
            raise ConflictError(f"domain {s.name}: the guest has not released its NIC(s) "
                                f"after {timeout:g} s; vmnet keeps the taps",
                                hint="run `vmnet libvirt detach` again once the guest "
                                     "lets go (does it handle PCI hot-unplug?)")
        time.sleep(0.1)


@dataclass
class AttachResult:
    domain: str
    live: bool
    persistent: bool
    taps: list[str]


def attach(ctx: Context, conn: Any, vm: Vm, fields: tuple[tuple[str, str], ...], domain: str, *,
           persistent: bool = False) -> AttachResult:
    """Bring vm's taps up (if the domain runs), then hot-plug one interface per NIC."""
    from vmnet.engine import ops
    from vmnet.render.libvirt import interface_xml

    s = Session(lookup(conn, domain))
    scopes = _scopes(s, persistent)
    aliases = {alias_for(n.tap) for n in vm.nics}
    for live in scopes:
        if s.interfaces_with(aliases, live):
            raise ConflictError(f"domain {s.name} already has VM {vm.name!r}'s interfaces"
                                f" ({'running' if live else 'persistent'} definition)",
                                hint=f"`vmnet libvirt detach {vm.name} {s.name}` first")
    uuid = s.uuid
    live_too = s.active
    if live_too:
        ops.up(ctx, vm, mode="hook", domain_uuid=uuid, refuse_held=True)
    done: list[tuple[str, int]] = []
    try:
        for nic in vm.nics:
            xml = interface_xml(nic)
            for live in scopes:
                flag = s.lv.VIR_DOMAIN_AFFECT_LIVE if live else s.lv.VIR_DOMAIN_AFFECT_CONFIG
                try:
                    s.dom.attachDeviceFlags(xml, flag)
                except s.lv.libvirtError as e:
                    raise LibvirtError(f"domain {s.name}: attaching {nic.tap} failed: "
                                       f"{_msg(e)}") from None
                done.append((xml, flag))
        for live in scopes:
            entries = [e for e in s.entries(live) if e.name != vm.name]
            s.set_entries([*entries, VmEntry(vm.name, fields)], live)
    except BaseException:
        _rollback(ctx, s, vm, done, aliases)
        raise
    return AttachResult(s.name, live_too, persistent, [n.tap for n in vm.nics])


def _rollback(ctx: Context, s: Session, vm: Vm, done: list[tuple[str, int]],
              aliases: set[str]) -> None:
    from vmnet.engine import ops

    for xml, flag in reversed(done):
        try:
            s.dom.detachDeviceFlags(xml, flag)
        except s.lv.libvirtError:
            continue
    try:
        _wait_gone(s, aliases, DETACH_TIMEOUT)
        if s.active:
            ops.down(ctx, vm.name, domain_uuid=s.uuid, force=True)
    except VmnetError:
        pass  # the original error matters more; `vmnet gc` finishes the rest


@dataclass
class DetachResult:
    domain: str
    live: bool
    persistent: bool
    removed: list[str]  # taps


def detach(ctx: Context, conn: Any, name: str, resolve: Callable[[Overrides | None], Vm],
           domain: str, *, persistent: bool = False,
           timeout: float = DETACH_TIMEOUT) -> DetachResult:
    """Hot-unplug VM `name`'s interfaces; remove its taps once the device is gone.

    resolve(overrides) gives the VM as configured; the overrides come from the
    domain's vmnet metadata for it (None if it has none), so the taps found
    are the ones that were attached.  Taps in this domain's record count too.
    """
    from vmnet.engine import ops

    s = Session(lookup(conn, domain))
    scopes = _scopes(s, persistent)
    entry = next((e for live in scopes for e in s.entries(live) if e.name == name), None)
    vm = resolve(entry.overrides() if entry else None)
    taps = {n.tap for n in vm.nics}
    rec = ctx.store().get_vm(name)
    if rec is not None and rec.domain_uuid == s.uuid:
        taps |= {n.tap for n in rec.nics}
    aliases = {alias_for(t) for t in taps}
    found = False
    for live in scopes:
        flag = s.lv.VIR_DOMAIN_AFFECT_LIVE if live else s.lv.VIR_DOMAIN_AFFECT_CONFIG
        for xml in s.interfaces_with(aliases, live):
            found = True
            try:
                s.dom.detachDeviceFlags(xml, flag)
            except s.lv.libvirtError as e:
                raise LibvirtError(f"domain {s.name}: detaching {name!r} failed: "
                                   f"{_msg(e)}") from None
        if live:
            _wait_gone(s, aliases, timeout)
    removed: list[str] = []
    if True in scopes and rec is not None and rec.domain_uuid == s.uuid:
        removed = ops.down(ctx, name, domain_uuid=s.uuid).plan.taps
    for live in scopes:
        entries = s.entries(live)
        if any(e.name == name for e in entries):
            found = True
            s.set_entries([e for e in entries if e.name != name], live)
    if not found and not removed:
        raise NotFoundError(f"domain {s.name} has no interfaces of vmnet VM {name!r}")
    return DetachResult(s.name, True in scopes, persistent, removed)
