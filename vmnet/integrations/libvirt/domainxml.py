"""Reading libvirt domain XML safely: vmnet's metadata element and interfaces.

Shared by the libvirt hook (which must stay import-light: stdlib, defusedxml
and vmnet.errors only at import time), the renderer and hot-plug.

vmnet's element in `<metadata>` names the vmnet VMs whose taps a domain uses,
with the overrides needed to resolve them the same way the renderer did:

    <vmnet:vmnet xmlns:vmnet="urn:vmnet:libvirt:1">
      <vmnet:vm name="vm1">
        <vmnet:bridge>br0</vmnet:bridge>
        <vmnet:queues>2</vmnet:queues>
      </vmnet:vm>
    </vmnet:vmnet>

Interfaces vmnet renders carry a user alias `ua-vmnet-<tap>` so they can be
found (and replaced) later.
"""

from __future__ import annotations

import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmnet.errors import InputError
from vmnet.model.names import ALIAS_PREFIX, MAX_XML_BYTES, alias_for

if TYPE_CHECKING:
    from vmnet.config import Overrides

NS_URI = "urn:vmnet:libvirt:1"
NS_PREFIX = "vmnet"

# Metadata child element -> Overrides field.  Order is the rendering order.
FIELDS = ("bridge", "uplink", "user", "group", "nics", "queues", "mac", "mtu", "vnet-hdr",
          "model")
_INT_FIELDS = {"nics", "queues", "mtu"}


@dataclass(frozen=True)
class VmEntry:
    """One vmnet VM named in a domain's metadata, with its overrides as text."""

    name: str
    fields: tuple[tuple[str, str], ...] = ()

    def overrides(self) -> Overrides:
        """The Overrides these fields stand for (validated later by resolve_vm)."""
        from vmnet.config import Overrides

        text: dict[str, str] = {}
        ints: dict[str, int] = {}
        macs: list[str] = []
        vnet_hdr: bool | None = None
        for key, value in self.fields:
            if key == "mac":
                macs.append(value)
            elif key == "vnet-hdr":
                if value not in ("on", "off"):
                    raise InputError(f"vmnet metadata for VM {self.name!r}: vnet-hdr must be "
                                     f"'on' or 'off', got {value!r}")
                vnet_hdr = value == "on"
            elif key in _INT_FIELDS:
                if not value.isdigit() or len(value) > 9:
                    raise InputError(f"vmnet metadata for VM {self.name!r}: {key} must be a "
                                     f"number, got {value!r}")
                ints[key] = int(value)
            else:
                text[key] = value
        return Overrides(bridge=text.get("bridge"), uplink=text.get("uplink"),
                         user=text.get("user"), group=text.get("group"),
                         nics=ints.get("nics"), queues=ints.get("queues"),
                         macs=tuple(macs), mtu=ints.get("mtu"), vnet_hdr=vnet_hdr,
                         model=text.get("model"))


@dataclass(frozen=True)
class InterfaceInfo:
    """What a domain's `<interface>` says, as far as vmnet cares."""

    type: str
    alias: str | None
    mac: str | None
    target_dev: str | None
    bridge: str | None

    @property
    def is_vmnet(self) -> bool:
        return self.alias is not None and self.alias.startswith(ALIAS_PREFIX)


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str | None
    vms: tuple[VmEntry, ...]
    interfaces: tuple[InterfaceInfo, ...]


def override_fields(ov: Overrides) -> tuple[tuple[str, str], ...]:
    """The overrides given (not None) as metadata fields, in FIELDS order."""
    out: list[tuple[str, str]] = []
    for key in FIELDS:
        if key == "mac":
            out += [("mac", m) for m in ov.macs]
            continue
        if key == "vnet-hdr":
            if ov.vnet_hdr is not None:
                out.append((key, "on" if ov.vnet_hdr else "off"))
            continue
        value = getattr(ov, key)
        if value is not None:
            out.append((key, str(value)))
    return tuple(out)


# -- parsing -------------------------------------------------------------
def parse_xml(data: bytes | str, what: str = "domain XML",
              comments: bool = False) -> ET.Element:
    """Parse untrusted XML: no DTD (so no entity tricks), no external access, bounded size."""
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import DefusedXMLParser

    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_XML_BYTES:
        raise InputError(f"{what} is larger than {MAX_XML_BYTES >> 20} MiB; refused")
    parser = DefusedXMLParser(target=ET.TreeBuilder(insert_comments=comments,
                                                    insert_pis=comments),
                              forbid_dtd=True, forbid_entities=True, forbid_external=True)
    try:
        parser.feed(raw)
        root: ET.Element = parser.close()
    except DefusedXmlException as e:
        raise InputError(f"{what} refused: {_defused_reason(e)}") from None
    except (ET.ParseError, ValueError, LookupError) as e:
        # expat raises ValueError for a multi-byte encoding it cannot handle (UTF-7)
        # and LookupError for an encoding Python does not know.
        raise InputError(f"{what} is malformed: {e}") from None
    return root


def _defused_reason(e: Exception) -> str:
    name = type(e).__name__
    return {"DTDForbidden": "it has a DTD (<!DOCTYPE>), which libvirt never sends",
            "EntitiesForbidden": "it declares entities",
            "ExternalReferenceForbidden": "it references external resources"}.get(name, name)


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _ns(tag: object) -> str | None:
    return tag[1:].split("}", 1)[0] if isinstance(tag, str) and tag.startswith("{") else None


def vmnet_elements(root: ET.Element) -> list[ET.Element]:
    """vmnet's element(s) in a domain's `<metadata>`."""
    meta = root.find("metadata")
    if meta is None:
        return []
    return [e for e in meta if e.tag == f"{{{NS_URI}}}vmnet"]


def parse_vmnet_element(elem: ET.Element, where: str = "vmnet metadata") -> list[VmEntry]:
    """The VMs named by a `vmnet` element.

    Children may be in vmnet's namespace (full domain XML) or in none (what
    virDomainGetMetadata returns).  Unknown elements are errors, not ignored:
    a typo must not silently change a VM's network.
    """
    ns = _ns(elem.tag)
    entries: list[VmEntry] = []
    for vm in elem:
        if not isinstance(vm.tag, str):
            continue  # comments
        if _ns(vm.tag) != ns or _local(vm.tag) != "vm":
            raise InputError(f"{where}: unexpected element <{_local(vm.tag)}> "
                             "(expected <vm name='...'>)")
        name = vm.get("name")
        if not name:
            raise InputError(f"{where}: <vm> without a name")
        fields: list[tuple[str, str]] = []
        for f in vm:
            if not isinstance(f.tag, str):
                continue
            key = _local(f.tag)
            if _ns(f.tag) != ns or key not in FIELDS:
                raise InputError(f"{where}: VM {name!r}: unknown element <{key}> "
                                 f"(known: {', '.join(FIELDS)})")
            if key != "mac" and any(k == key for k, _ in fields):
                raise InputError(f"{where}: VM {name!r}: <{key}> given twice")
            fields.append((key, (f.text or "").strip()))
        if any(e.name == name for e in entries):
            raise InputError(f"{where}: VM {name!r} is named twice")
        entries.append(VmEntry(name=name, fields=tuple(fields)))
    return entries


def interface_info(iface: ET.Element) -> InterfaceInfo:
    """The parts of one `<interface>` element vmnet looks at."""
    def attr(path: str, name: str) -> str | None:
        e = iface.find(path)
        return None if e is None else e.get(name)

    mac = attr("mac", "address")
    return InterfaceInfo(type=iface.get("type", ""), alias=attr("alias", "name"),
                         mac=mac.lower() if mac else None, target_dev=attr("target", "dev"),
                         bridge=attr("source", "bridge"))


def interfaces(root: ET.Element) -> list[InterfaceInfo]:
    return [interface_info(i) for i in root.iterfind("devices/interface")]


def domain_uuid(root: ET.Element) -> str | None:
    text = (root.findtext("uuid") or "").strip()
    if not text:
        return None
    try:
        return str(uuidlib.UUID(text))
    except ValueError:
        raise InputError(f"domain XML: <uuid> {text[:40]!r} is not a UUID") from None


def parse_domain(data: bytes | str, what: str = "domain XML") -> ET.Element:
    """parse_xml, and the root must be <domain>."""
    root = parse_xml(data, what)
    if root.tag != "domain":
        raise InputError(f"{what}: root element is <{_local(root.tag)}>, not <domain>")
    return root


def read_domain(data: bytes | str, what: str = "domain XML") -> DomainInfo:
    """Everything vmnet needs from a domain's XML, from untrusted input."""
    root = parse_domain(data, what)
    vms: list[VmEntry] = []
    for elem in vmnet_elements(root):
        for entry in parse_vmnet_element(elem):
            if any(e.name == entry.name for e in vms):
                raise InputError(f"vmnet metadata: VM {entry.name!r} is named twice")
            vms.append(entry)
    return DomainInfo(name=(root.findtext("name") or "").strip(), uuid=domain_uuid(root),
                      vms=tuple(vms), interfaces=tuple(interfaces(root)))


def stale_interfaces(info: DomainInfo | Sequence[InterfaceInfo], taps_macs: Sequence[
        tuple[str, str, str]]) -> list[str]:
    """Mismatches between a domain's vmnet interfaces and resolved NICs.

    taps_macs: (tap, mac, bridge) of each resolved NIC.  A vmnet interface
    whose alias names one of these taps must use that tap (type='ethernet') or
    bridge (type='bridge') and MAC; otherwise the XML was rendered from an
    older config and libvirt would plug the guest into the wrong place.
    """
    ifaces = info.interfaces if isinstance(info, DomainInfo) else info
    by_alias = {i.alias: i for i in ifaces if i.is_vmnet}
    problems = []
    for tap, mac, bridge in taps_macs:
        i = by_alias.get(alias_for(tap))
        if i is None:
            continue
        if i.type == "ethernet" and i.target_dev != tap:
            problems.append(f"interface {i.alias} uses tap {i.target_dev!r}, config says {tap!r}")
        if i.type == "bridge" and i.bridge != bridge:
            problems.append(f"interface {i.alias} uses bridge {i.bridge!r}, "
                            f"config says {bridge!r}")
        if i.mac is not None and i.mac != mac:
            problems.append(f"interface {i.alias} has MAC {i.mac}, config says {mac}")
    return problems


__all__ = ["ALIAS_PREFIX", "MAX_XML_BYTES", "NS_PREFIX", "NS_URI", "alias_for"]
