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

from vmnet.consts import MAX_XML_BYTES
from vmnet.errors import InputError
from vmnet.model.names import ALIAS_PREFIX, alias_for
from vmnet.model.value import Value

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    import xml.etree.ElementTree as ET
    from collections.abc import Iterator, Sequence

    from vmnet.config import Overrides

NS_URI = "urn:vmnet:libvirt:1"
NS_PREFIX = "vmnet"

# Metadata child element -> Overrides field.  Order is the rendering order.
FIELDS = ("bridge", "uplink", "user", "group", "nics", "queues", "mac", "mtu", "vnet-hdr",
          "model", "network", "ip", "mac-filter", "ip-filter", "guard", "port-isolation",
          "rate-to-vm", "rate-from-vm", "vlan")
_INT_FIELDS = {"nics", "queues", "mtu", "vlan"}
_MULTI_FIELDS = {"mac", "ip"}  # one element per NIC, in order
# on/off fields -> the Overrides keyword (guard off is no_guard: flags only tighten a NIC
# but for that one, as on the command line)
_ONOFF = {"vnet-hdr": "vnet_hdr", "mac-filter": "mac_filter", "ip-filter": "ip_filter",
          "port-isolation": "port_isolation", "guard": "no_guard"}


class VmEntry(Value):
    """One vmnet VM named in a domain's metadata, with its overrides as text."""

    __slots__ = ("fields", "name")

    def __init__(self, name: str, fields: tuple[tuple[str, str], ...] = ()) -> None:
        self.name = name
        self.fields = fields

    def overrides(self) -> Overrides:
        """The Overrides these fields stand for (validated later by resolve_vm)."""
        from vmnet.config import Overrides
        from vmnet.model import validate

        text: dict[str, str] = {}
        ints: dict[str, int] = {}
        multi: dict[str, list[str]] = {"mac": [], "ip": []}
        onoff: dict[str, bool] = {}
        for key, value in self.fields:
            if key in _MULTI_FIELDS:
                multi[key].append(value)
            elif key in _ONOFF:
                if value not in ("on", "off"):
                    raise InputError(f"vmnet metadata for VM {self.name!r}: {key} must be "
                                     f"'on' or 'off', got {value!r}")
                onoff[key] = value == "on"
            elif key in _INT_FIELDS:
                ints[key] = validate.integer(value, f"vmnet metadata for VM {self.name!r}: "
                                                    f"{key}", 0, 10**9)
            else:
                text[key] = value
        if onoff.get("guard") is True:
            raise InputError(f"vmnet metadata for VM {self.name!r}: guard is on by default "
                             "with a filter; only 'off' means something here")
        flags: dict[str, bool | None] = {}
        for k, on in onoff.items():
            if k == "vnet-hdr":
                flags["vnet_hdr"] = on
            elif k == "guard":
                flags["no_guard"] = True  # (only off is accepted above)
            else:
                flags[_ONOFF[k]] = True if on else None  # off: as if not given
        return Overrides(bridge=text.get("bridge"), uplink=text.get("uplink"),
                         user=text.get("user"), group=text.get("group"),
                         nics=ints.get("nics"), queues=ints.get("queues"),
                         macs=tuple(multi["mac"]), mtu=ints.get("mtu"),
                         model=text.get("model"), network=text.get("network"),
                         ips=tuple(multi["ip"]), rate_to_vm=text.get("rate-to-vm"),
                         rate_from_vm=text.get("rate-from-vm"), vlan=ints.get("vlan"),
                         **flags)


class InterfaceInfo(Value):
    """What a domain's `<interface>` says, as far as vmnet cares."""

    __slots__ = ("alias", "bridge", "mac", "target_dev", "type")

    def __init__(self, type: str, alias: str | None, mac: str | None, target_dev: str | None,
                 bridge: str | None) -> None:
        self.type = type
        self.alias = alias
        self.mac = mac
        self.target_dev = target_dev
        self.bridge = bridge

    @property
    def is_vmnet(self) -> bool:
        return self.alias is not None and self.alias.startswith(ALIAS_PREFIX)


class DomainInfo(Value):
    __slots__ = ("interfaces", "name", "uuid", "vms")

    def __init__(self, name: str, uuid: str | None, vms: tuple[VmEntry, ...],
                 interfaces: tuple[InterfaceInfo, ...]) -> None:
        self.name = name
        self.uuid = uuid
        self.vms = vms
        self.interfaces = interfaces


def override_fields(ov: Overrides) -> tuple[tuple[str, str], ...]:
    """The overrides given (not None) as metadata fields, in FIELDS order."""
    out: list[tuple[str, str]] = []
    for key in FIELDS:
        if key in _MULTI_FIELDS:
            out += [(key, m) for m in (ov.macs if key == "mac" else ov.ips)]
            continue
        if key in _ONOFF:
            flag = getattr(ov, _ONOFF[key])
            if key == "guard":
                if flag:
                    out.append((key, "off"))
            elif flag is not None:
                out.append((key, "on" if flag else "off"))
            continue
        value = getattr(ov, key.replace("-", "_"))
        if value is not None:
            out.append((key, str(value)))
    return tuple(out)


# -- parsing -------------------------------------------------------------
class Node:
    """A parsed element: the few ElementTree calls vmnet's readers use, with none of its
    import cost (xml.etree.ElementTree costs ~16 ms: it pulls in `re`)."""

    __slots__ = ("attrib", "children", "tag", "tail", "text")

    def __init__(self, tag: str, attrib: dict[str, str]) -> None:
        self.tag = tag
        self.attrib = attrib
        self.text: str | None = None
        self.tail: str | None = None
        self.children: list[Node] = []

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.attrib.get(key, default)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.children)

    def iterfind(self, path: str) -> Iterator[Node]:
        """Children matching a path of plain tags ("devices/interface")."""
        level = [self]
        for step in path.split("/"):
            level = [c for n in level for c in n.children if c.tag == step]
        return iter(level)

    def find(self, path: str) -> Node | None:
        return next(self.iterfind(path), None)

    def findtext(self, path: str) -> str | None:
        n = self.find(path)
        return None if n is None else (n.text or "")


if TYPE_CHECKING:
    Element = Node | ET.Element  # what the readers below accept


class _Builder:
    """Builds Nodes from parser events (the TreeBuilder interface)."""

    def __init__(self) -> None:
        self.stack: list[Node] = []
        self.root: Node | None = None
        self.chunks: list[str] = []

    def _flush(self) -> None:
        if self.chunks and self.stack:
            text = "".join(self.chunks)
            node = self.stack[-1]
            if node.children:
                last = node.children[-1]
                last.tail = (last.tail or "") + text
            else:
                node.text = (node.text or "") + text
        self.chunks = []

    def start(self, tag: str, attrib: dict[str, str]) -> Node:
        self._flush()
        node = Node(tag, attrib)
        if self.stack:
            self.stack[-1].children.append(node)
        elif self.root is None:
            self.root = node
        self.stack.append(node)
        return node

    def end(self, tag: str) -> Node:
        self._flush()
        return self.stack.pop()

    def data(self, text: str) -> None:
        self.chunks.append(text)

    def close(self) -> Node:
        assert self.root is not None
        return self.root


def _ns_name(name: str) -> str:
    """expat's "uri}local" (namespace_separator "}") as ElementTree's "{uri}local"."""
    return "{" + name if "}" in name else name


def _expat(raw: bytes, what: str, builder: object, comments: bool = False) -> object:
    """The one parser of untrusted XML: no DTD (so no entity tricks), no external
    access, bounded size.  Feeds `builder` (a TreeBuilder's start/end/data/close, plus
    comment/pi when `comments`) and returns what its close() returns."""
    import pyexpat

    if len(raw) > MAX_XML_BYTES:
        raise InputError(f"{what} is larger than {MAX_XML_BYTES >> 20} MiB; refused")

    class Refused(Exception):
        pass

    def refuse(why: str) -> object:
        def handler(*_args: object) -> int:
            raise Refused(why)
        return handler

    p = pyexpat.ParserCreate(None, "}")
    p.buffer_text = True
    p.ordered_attributes = False
    b = builder

    def start(tag: str, attrs: dict[str, str]) -> None:
        b.start(_ns_name(tag), {_ns_name(k): v for k, v in attrs.items()})  # type: ignore[attr-defined]

    p.StartElementHandler = start
    p.EndElementHandler = lambda tag: b.end(_ns_name(tag))  # type: ignore[attr-defined]
    p.CharacterDataHandler = b.data  # type: ignore[attr-defined]
    if comments:
        p.CommentHandler = b.comment  # type: ignore[attr-defined]
        p.ProcessingInstructionHandler = b.pi  # type: ignore[attr-defined]
    p.StartDoctypeDeclHandler = refuse(  # type: ignore[assignment]
        "it has a DTD (<!DOCTYPE>), which libvirt never sends")
    p.EntityDeclHandler = refuse("it declares entities")  # type: ignore[assignment]
    p.UnparsedEntityDeclHandler = refuse("it declares entities")  # type: ignore[assignment]
    p.ExternalEntityRefHandler = refuse(  # type: ignore[assignment]
        "it references external resources")
    try:
        p.Parse(raw, True)
    except Refused as e:
        raise InputError(f"{what} refused: {e}") from None
    except pyexpat.ExpatError as e:
        raise InputError(f"{what} is malformed: {e}") from None
    except (ValueError, LookupError) as e:
        # expat raises ValueError for a multi-byte encoding it cannot handle (UTF-7)
        # and LookupError for an encoding Python does not know.
        raise InputError(f"{what} is malformed: {e}") from None
    try:
        return b.close()  # type: ignore[attr-defined]
    except (AssertionError, IndexError):
        raise InputError(f"{what} is malformed: no element found") from None


def parse_xml(data: bytes | str, what: str = "domain XML",
              comments: bool = False) -> ET.Element:
    """Untrusted XML as an ElementTree element (for the renderer, which edits and writes it)."""
    import xml.etree.ElementTree as ET

    raw = data.encode() if isinstance(data, str) else data
    builder = ET.TreeBuilder(insert_comments=comments, insert_pis=comments)
    root: ET.Element = _expat(raw, what, builder, comments)  # type: ignore[assignment]
    return root


def parse_nodes(data: bytes | str, what: str = "domain XML") -> Node:
    """Untrusted XML as Nodes (for readers: the hook, which must start fast)."""
    raw = data.encode() if isinstance(data, str) else data
    root: Node = _expat(raw, what, _Builder())  # type: ignore[assignment]
    return root


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _ns(tag: object) -> str | None:
    return tag[1:].split("}", 1)[0] if isinstance(tag, str) and tag.startswith("{") else None


def vmnet_elements(root: Element) -> list[Element]:
    """vmnet's element(s) in a domain's `<metadata>`."""
    meta = root.find("metadata")
    if meta is None:
        return []
    return [e for e in meta if e.tag == f"{{{NS_URI}}}vmnet"]


def parse_vmnet_element(elem: Element, where: str = "vmnet metadata") -> list[VmEntry]:
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


def interface_info(iface: Element) -> InterfaceInfo:
    """The parts of one `<interface>` element vmnet looks at."""
    def attr(path: str, name: str) -> str | None:
        e = iface.find(path)
        return None if e is None else e.get(name)

    mac = attr("mac", "address")
    return InterfaceInfo(type=iface.get("type") or "", alias=attr("alias", "name"),
                         mac=mac.lower() if mac else None, target_dev=attr("target", "dev"),
                         bridge=attr("source", "bridge"))


def interfaces(root: Element) -> list[InterfaceInfo]:
    return [interface_info(i) for i in root.iterfind("devices/interface")]


def domain_uuid(root: Element) -> str | None:
    """The domain's UUID in canonical form (as uuid.UUID would print it; that module
    imports enum, ~4 ms)."""
    text = (root.findtext("uuid") or "").strip()
    if not text:
        return None
    h = text.replace("urn:", "").replace("uuid:", "").strip("{}").replace("-", "")
    if len(h) != 32 or not h.isascii() or not all(c in "0123456789abcdefABCDEF" for c in h):
        raise InputError(f"domain XML: <uuid> {text[:40]!r} is not a UUID")
    h = h.lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def parse_domain(data: bytes | str, what: str = "domain XML") -> Node:
    """parse_nodes, and the root must be <domain>."""
    root = parse_nodes(data, what)
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
