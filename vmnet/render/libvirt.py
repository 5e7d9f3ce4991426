"""libvirt XML for a VM's NICs, from the jinja2 templates in `templates/`.

Renderers return strings; callers write them.  Templates autoescape and use
StrictUndefined, and every value they see comes from the validated model.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vmnet.errors import InputError
from vmnet.integrations.libvirt.domainxml import (
    NS_PREFIX,
    NS_URI,
    VmEntry,
    alias_for,
    interface_info,
    parse_vmnet_element,
    parse_xml,
    vmnet_elements,
)
from vmnet.model import Nic, Vm

MODES = ("ethernet", "bridge")
# QEMU device names vmnet's model uses -> libvirt's <model type=...>.
_LIBVIRT_MODELS = {
    "virtio-net-pci": "virtio",
    "virtio-net": "virtio",
    "virtio-net-pci-transitional": "virtio-transitional",
    "virtio-net-pci-non-transitional": "virtio-non-transitional",
}
# Children of <domain> that conventionally precede <metadata>.
_BEFORE_METADATA = ("name", "uuid", "genid", "title", "description")


def template_dirs() -> list[str]:
    """Installed `vmnet/templates` first, then the checkout's top-level `templates/`."""
    dirs = []
    installed = importlib.resources.files("vmnet").joinpath("templates")
    if installed.is_dir():
        dirs.append(str(installed))
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "templates")
    if os.path.isdir(checkout):
        dirs.append(checkout)
    return dirs


@functools.cache
def environment() -> Any:
    import jinja2

    dirs = template_dirs()
    if not dirs:
        raise InputError("vmnet's templates are missing (neither vmnet/templates nor the "
                         "checkout's templates/ exists)", hint="reinstall vmnet")
    return jinja2.Environment(loader=jinja2.FileSystemLoader(dirs), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True)


def _render(name: str, **values: Any) -> str:
    text: str = environment().get_template(name).render(**values)
    return text


@dataclass(frozen=True)
class NicView:
    """What the interface template sees for one NIC."""

    type: str
    mac: str
    tap: str
    bridge: str
    model: str
    queues: int
    mtu: int | None
    alias: str
    no_offloads: bool = False


def libvirt_model(qemu_model: str) -> str:
    return _LIBVIRT_MODELS.get(qemu_model, qemu_model)


def nic_view(nic: Nic, mode: str = "ethernet") -> NicView:
    if mode not in MODES:
        raise InputError(f"--mode: {mode!r} is not one of {', '.join(MODES)}")
    return NicView(type=mode, mac=nic.mac, tap=nic.tap, bridge=nic.network.bridge,
                   model=libvirt_model(nic.model), queues=nic.queues,
                   mtu=nic.mtu or nic.network.mtu, alias=alias_for(nic.tap),
                   no_offloads=not nic.vnet_hdr and nic.model.startswith("virtio-net"))


def interface_xml(nic: Nic, mode: str = "ethernet") -> str:
    """One `<interface>` element (as used for hot-plug)."""
    return _render("interface.xml.j2", nic=nic_view(nic, mode))


def interfaces_xml(vm: Vm, mode: str = "ethernet") -> str:
    """All of the VM's `<interface>` elements, in NIC order."""
    return _render("interfaces.xml.j2", nics=[nic_view(n, mode) for n in vm.nics])


def metadata_xml(vms: Sequence[VmEntry], *, ns: bool = True) -> str:
    """vmnet's `<metadata>` element naming `vms`; ns=False gives the bare element
    virDomainSetMetadata wants (libvirt adds the namespace itself)."""
    return _render("metadata.xml.j2", vms=vms, ns=ns, uri=NS_URI)


# -- inserting into a domain ---------------------------------------------
def _register_prefixes(text: str) -> None:
    """Keep the document's namespace prefixes when ElementTree writes it back."""
    from defusedxml.ElementTree import iterparse

    ET.register_namespace(NS_PREFIX, NS_URI)
    try:
        for _event, (prefix, uri) in iterparse(io.BytesIO(text.encode()), events=("start-ns",),
                                               forbid_dtd=True):
            if prefix and prefix != NS_PREFIX and not re.fullmatch(r"ns\d+", prefix):
                ET.register_namespace(prefix, uri)
    except Exception:  # parse_xml has already reported anything malformed
        return


def _indent_unit(root: ET.Element) -> str:
    text = root.text or ""
    if "\n" in text and not text.strip():
        unit = text.rsplit("\n", 1)[1]
        if unit and set(unit) <= {" ", "\t"}:
            return unit
    return "  "


def domain_with_vm(domain_text: str, vm: Vm, fields: tuple[tuple[str, str], ...],
                   mode: str = "ethernet", what: str = "domain XML") -> str:
    """`domain_text` with vm's interfaces inserted and vmnet's metadata naming it.

    Interfaces vmnet rendered earlier (alias ua-vmnet-*) and vmnet's earlier
    metadata are replaced; everything else is kept.  An interface that is not
    vmnet's but uses one of vm's taps or MACs is an error.  In bridge mode
    libvirt makes the taps, so the metadata (which tells the hook to make
    them) is left out.
    """
    views = [nic_view(n, mode) for n in vm.nics]
    root = parse_xml(domain_text, what, comments=True)
    if root.tag != "domain":
        raise InputError(f"{what}: root element is <{root.tag}>, not <domain>")
    unit = _indent_unit(root)
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    taps = {v.tap for v in views}
    macs = {v.mac for v in views}
    position = None
    for child in devices.findall("interface"):
        info = interface_info(child)
        if info.is_vmnet:
            if position is None:
                position = list(devices).index(child)
            devices.remove(child)
            continue
        if info.target_dev in taps:
            raise InputError(f"{what}: an interface that vmnet did not render already uses "
                             f"tap {info.target_dev!r}", hint="remove it from the domain")
        if info.mac in macs:
            raise InputError(f"{what}: an interface that vmnet did not render already has "
                             f"MAC {info.mac}", hint="remove it or give vmnet another --mac")
    if position is None:
        kids = list(devices)
        last = max((i for i, c in enumerate(kids) if c.tag == "interface"), default=None)
        position = len(kids) if last is None else last + 1
    for offset, view in enumerate(views):
        elem = parse_xml(_render("interface.xml.j2", nic=view), "rendered interface")
        devices.insert(position + offset, elem)

    meta = root.find("metadata")
    for old in vmnet_elements(root):
        parse_vmnet_element(old, f"{what}: vmnet metadata")  # refuse to drop garbage silently
        assert meta is not None
        meta.remove(old)  # type: ignore[arg-type]  # an ET element: root is one
    if mode == "ethernet":
        if meta is None:
            kids = list(root)
            at = max((i + 1 for i, c in enumerate(kids) if c.tag in _BEFORE_METADATA),
                     default=0)
            meta = ET.Element("metadata")
            root.insert(at, meta)
        meta.append(parse_xml(metadata_xml([VmEntry(vm.name, fields)]), "rendered metadata"))
    elif meta is not None and not len(meta) and not (meta.text or "").strip():
        root.remove(meta)

    ET.indent(root, space=unit)
    _register_prefixes(domain_text)
    return ET.tostring(root, encoding="unicode") + "\n"
