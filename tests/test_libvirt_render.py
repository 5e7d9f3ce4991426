"""libvirt XML rendering: golden files, libvirt's own schema, `vmnet libvirt-xml`.

Every rendered form is checked twice against libvirt itself: with
`virt-xml-validate` (fragments wrapped in a minimal domain, since the
validator picks the schema from the root element) and by defining it through
libvirt-python's in-process `test:///default` driver with
VIR_DOMAIN_DEFINE_VALIDATE.

Set VMNET_UPDATE_GOLDEN=1 to rewrite the golden files after a deliberate change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vmnetcli import cli as run_cli
from vmnet.config import Config, Overrides, parse_config, resolve_vm
from vmnet.errors import InputError
from vmnet.integrations.libvirt.domainxml import (
    NS_URI,
    VmEntry,
    alias_for,
    override_fields,
    parse_vmnet_element,
    read_domain,
)
from vmnet.model import Vm
from vmnet.render import libvirt as render

GOLDEN = Path(__file__).parent / "golden" / "libvirt"

CONFIG = """\
[networks.lan]
bridge = "br-lan"
mtu = 9000

[networks.dmz]
bridge = "br-dmz"

[vms.web]
[[vms.web.nics]]
network = "lan"
queues = 4
[[vms.web.nics]]
network = "dmz"
mac = "52:54:00:aa:bb:cc"
model = "e1000"
"""

MINIMAL_DOMAIN = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
  </os>
  <devices>
{devices}
  </devices>
</domain>
"""


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("VMNET_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing; VMNET_UPDATE_GOLDEN=1 writes it"
    assert text == path.read_text(), f"{path} differs; VMNET_UPDATE_GOLDEN=1 rewrites it"


def wrap(fragment: str, name: str = "wrapped") -> str:
    """Interface fragment(s) inside a minimal domain (what the validator needs)."""
    return MINIMAL_DOMAIN.format(name=name, devices=fragment)


# -- libvirt's judgement ---------------------------------------------------
@pytest.fixture(scope="module")
def validator() -> Iterator[Any]:
    """A function that validates domain XML with virt-xml-validate and test:///default."""
    if shutil.which("virt-xml-validate") is None or shutil.which("xmllint") is None:
        pytest.skip("virt-xml-validate/xmllint missing (apt install libvirt-clients "
                    "libxml2-utils)")
    libvirt = pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    libvirt.registerErrorHandler(lambda _c, _e: None, None)
    conn = libvirt.open("test:///default")

    def check(xml: str, tmp: Path) -> None:
        path = tmp / f"domain-{uuid.uuid4().hex[:8]}.xml"
        path.write_text(xml)
        res = subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True,
                             text=True, check=False)
        assert res.returncode == 0, f"virt-xml-validate: {res.stderr or res.stdout}\n{xml}"
        # Unique name so one module-wide connection can define many.
        root = ET.fromstring(xml)
        name_el = root.find("name")
        assert name_el is not None
        name_el.text = f"v-{uuid.uuid4().hex[:12]}"
        dom = conn.defineXMLFlags(ET.tostring(root, encoding="unicode"),
                                  libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
        try:
            # libvirt keeps vmnet's metadata where the hook and hot-plug look for it.
            entries = read_domain(xml).vms
            if entries:
                got = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS_URI, 0)
                assert tuple(parse_vmnet_element(ET.fromstring(got))) == entries
                assert read_domain(dom.XMLDesc(0)).vms == entries
        finally:
            dom.undefine()

    yield check
    conn.close()


def cfg() -> Config:
    return parse_config(CONFIG, "test.toml")


def vm_for(name: str, ov: Overrides) -> Vm:
    return resolve_vm(cfg(), name, ov, env={})


# -- interface fragments ---------------------------------------------------
CASES = [
    ("default", "vm1", Overrides(), "ethernet"),
    ("queues-mtu", "vm1", Overrides(queues=4, mtu=1400), "ethernet"),
    ("bridge-mode", "vm1", Overrides(bridge="br0"), "bridge"),
    ("two-networks", "web", Overrides(), "ethernet"),
    ("two-networks-bridge", "web", Overrides(), "bridge"),
    ("hashed-name", "db<&\"'>", Overrides(), "ethernet"),
    ("rtl8139", "vm2", Overrides(model="rtl8139", macs=("02:00:00:00:00:01",)), "ethernet"),
    # (what an ovn network on the userspace datapath gives: no vnet_hdr, the overlay's MTU)
    ("no-offloads", "vm1", Overrides(vnet_hdr=False, mtu=1442, queues=2), "ethernet"),
]


@pytest.mark.parametrize(("case", "name", "ov", "mode"), CASES, ids=[c[0] for c in CASES])
def test_interfaces_golden_and_valid(case: str, name: str, ov: Overrides, mode: str,
                                     validator: Any, tmp_path: Path) -> None:
    vm = vm_for(name, ov)
    text = render.interfaces_xml(vm, mode)
    golden(f"interfaces-{case}.xml", text)
    validator(wrap(text), tmp_path)
    # The single-interface form (hot-plug) is the same element, NIC by NIC.
    singles = "".join(render.interface_xml(n, mode) for n in vm.nics)
    assert singles == text
    for nic in vm.nics:
        validator(wrap(render.interface_xml(nic, mode)), tmp_path)


def test_ethernet_interface_content() -> None:
    vm = vm_for("web", Overrides())
    root = ET.fromstring(wrap(render.interfaces_xml(vm)))
    ifaces = root.findall("devices/interface")
    assert [i.get("type") for i in ifaces] == ["ethernet", "ethernet"]
    first, second = ifaces
    assert first.find("target").attrib == {"dev": "web-0", "managed": "no"}  # type: ignore[union-attr]
    assert first.find("driver").attrib == {"queues": "4"}  # type: ignore[union-attr]
    assert first.find("mtu").attrib == {"size": "9000"}  # type: ignore[union-attr]
    assert first.find("model").attrib == {"type": "virtio"}  # type: ignore[union-attr]
    # No driver name=: libvirt picks vhost itself, so output does not depend on the host.
    assert second.find("driver") is None and second.find("mtu") is None
    assert second.find("model").attrib == {"type": "e1000"}  # type: ignore[union-attr]
    assert second.find("mac").attrib == {"address": "52:54:00:aa:bb:cc"}  # type: ignore[union-attr]
    assert [i.find("alias").get("name") for i in ifaces] == [  # type: ignore[union-attr]
        "ua-vmnet-web-0", "ua-vmnet-web-1"]


@pytest.mark.parametrize(("tap", "alias"), [
    ("vm1-0", "ua-vmnet-vm1-0"),
    ("a.b_c-1", "ua-vmnet-a.b_c-1"),
    ("x@y", None),
    ("tap+1", None),
], ids=["plain", "dots-underscores", "at-sign", "plus"])
def test_alias_for(tap: str, alias: str | None) -> None:
    got = alias_for(tap)
    if alias is not None:
        assert got == alias
    else:
        assert got.startswith("ua-vmnet-h") and len(got) == len("ua-vmnet-h") + 12
    assert all(c.isalnum() or c in "_.-" for c in got)


# -- metadata ---------------------------------------------------------------
def test_metadata_golden_escaping(validator: Any, tmp_path: Path) -> None:
    entries = [VmEntry('a&b<"\'>', (("user", "x'y"), ("mac", "52:54:00:00:00:01"))),
               VmEntry("vm2", ())]
    text = render.metadata_xml(entries)
    golden("metadata-escaping.xml", text)
    assert parse_vmnet_element(ET.fromstring(text)) == entries
    bare = render.metadata_xml(entries, ns=False)
    assert "xmlns" not in bare and parse_vmnet_element(ET.fromstring(bare)) == entries
    dom = MINIMAL_DOMAIN.format(name="meta", devices="").replace(
        "  <memory", f"  <metadata>\n{text}  </metadata>\n  <memory")
    validator(dom, tmp_path)
    assert read_domain(dom).vms == tuple(entries)


OVERRIDES = [
    Overrides(),
    Overrides(bridge="br0", uplink="eth9", user="0", group="0", nics=2, queues=3,
              macs=("52:54:00:00:00:01", "52:54:00:00:00:02"), mtu=1400, vnet_hdr=False,
              model="e1000"),
    Overrides(vnet_hdr=True, queues=1),
]


@pytest.mark.parametrize("ov", OVERRIDES, ids=["none", "all", "vnet-hdr-on"])
def test_metadata_round_trip_resolves_the_same_vm(ov: Overrides) -> None:
    fields = override_fields(ov)
    text = render.metadata_xml([VmEntry("web", fields)])
    (entry,) = parse_vmnet_element(ET.fromstring(text))
    assert entry.overrides() == ov
    assert vm_for("web", entry.overrides()) == vm_for("web", ov)


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=64).filter(
    lambda s: s.isprintable() and "/" not in s and s not in (".", "..")
    and not any(c.isspace() for c in s) and not s.startswith("-")))
def test_any_vm_name_renders_well_formed(name: str) -> None:
    vm = vm_for(name, Overrides())
    fields = override_fields(Overrides(user="0"))
    dom = render.domain_with_vm(MINIMAL_DOMAIN.format(name="d", devices=""), vm, fields)
    info = read_domain(dom)
    assert info.vms == (VmEntry(name, fields),)
    assert [i.target_dev for i in info.interfaces] == [vm.nics[0].tap]


@pytest.mark.parametrize(("xml", "message"), [
    (f"<vmnet xmlns='{NS_URI}'><vm/></vmnet>", "without a name"),
    (f"<vmnet xmlns='{NS_URI}'><vm name='a'><colour>red</colour></vm></vmnet>",
     "unknown element <colour>"),
    (f"<vmnet xmlns='{NS_URI}'><thing/></vmnet>", "unexpected element <thing>"),
    (f"<vmnet xmlns='{NS_URI}'><vm name='a'/><vm name='a'/></vmnet>", "named twice"),
    (f"<vmnet xmlns='{NS_URI}'><vm name='a'><bridge>x</bridge><bridge>y</bridge></vm>"
     "</vmnet>", "<bridge> given twice"),
], ids=["no-name", "unknown-field", "unknown-element", "vm-twice", "field-twice"])
def test_bad_metadata_is_an_error(xml: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_vmnet_element(ET.fromstring(xml))


@pytest.mark.parametrize(("fields", "message"), [
    ((("queues", "many"),), "queues: expected a whole number"),
    ((("vnet-hdr", "maybe"),), "vnet-hdr must be"),
], ids=["queues", "vnet-hdr"])
def test_bad_metadata_values(fields: tuple[tuple[str, str], ...], message: str) -> None:
    with pytest.raises(InputError, match=message):
        VmEntry("a", fields).overrides()


# -- whole domains ------------------------------------------------------------
DOMAIN_CASES = [
    ("plain", "domain-plain.in.xml", "vm1", Overrides(), "ethernet"),
    ("replace", "domain-replace.in.xml", "web", Overrides(user="0"), "ethernet"),
    ("bridge", "domain-replace.in.xml", "web", Overrides(), "bridge"),
    ("no-devices", "domain-no-devices.in.xml", "vm1", Overrides(queues=2), "ethernet"),
]


@pytest.mark.parametrize(("case", "src", "name", "ov", "mode"), DOMAIN_CASES,
                         ids=[c[0] for c in DOMAIN_CASES])
def test_domain_golden_and_valid(case: str, src: str, name: str, ov: Overrides, mode: str,
                                 validator: Any, tmp_path: Path) -> None:
    vm = vm_for(name, ov)
    text = render.domain_with_vm((GOLDEN / src).read_text(), vm, override_fields(ov), mode)
    golden(f"domain-{case}.out.xml", text)
    validator(text, tmp_path)
    info = read_domain(text)
    ours = [i for i in info.interfaces if i.is_vmnet]
    assert [i.alias for i in ours] == [alias_for(n.tap) for n in vm.nics]
    if mode == "ethernet":
        assert info.vms == (VmEntry(name, override_fields(ov)),)
        assert [i.target_dev for i in ours] == [n.tap for n in vm.nics]
    else:
        assert info.vms == ()
        assert [i.bridge for i in ours] == [n.network.bridge for n in vm.nics]
    # Rendering again is a fixed point: the earlier vmnet parts are replaced.
    assert render.domain_with_vm(text, vm, override_fields(ov), mode) == text


def test_domain_keeps_foreign_parts() -> None:
    src = (GOLDEN / "domain-replace.in.xml").read_text()
    out = render.domain_with_vm(src, vm_for("web", Overrides()), ())
    root = ET.fromstring(out)
    # The admin's own interface, metadata, comments and qemu namespace survive.
    assert [i.get("type") for i in root.iterfind("devices/interface")] == [
        "network", "ethernet", "ethernet"]
    assert root.find("metadata/{http://example.org/app/1}app") is not None
    assert "keep this comment" in out
    assert "xmlns:qemu=" in out and "<qemu:arg" in out
    # The old vmnet VM is gone from interfaces and metadata.
    assert "ua-vmnet-old-0" not in out and "name=\"old\"" not in out


@pytest.mark.parametrize(("domain", "message"), [
    ("<domain><devices><interface type='ethernet'><target dev='vm1-0' managed='no'/>"
     "</interface></devices></domain>", "already uses tap 'vm1-0'"),
    ("<domain><devices><interface type='network'><mac address='52:54:00:06:A5:49'/>"
     "<source network='default'/></interface></devices></domain>",
     "already has MAC 52:54:00:06:a5:49"),
    ("<network><name>x</name></network>", "root element is <network>"),
    ("<domain><name>x</name>", "malformed"),
    ("<!DOCTYPE d [<!ENTITY a 'b'>]><domain>&a;</domain>", "refused: it has a DTD"),
    ("<domain><metadata><v:vmnet xmlns:v='urn:vmnet:libvirt:1'><v:junk/></v:vmnet>"
     "</metadata></domain>", "unexpected element <junk>"),
], ids=["foreign-tap", "foreign-mac", "not-a-domain", "malformed", "dtd", "bad-old-metadata"])
def test_domain_refusals(domain: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        render.domain_with_vm(domain, vm_for("vm1", Overrides()), ())


# -- templates ------------------------------------------------------------------
def test_templates_are_strict_and_escaping() -> None:
    import jinja2

    env = render.environment()
    assert env.autoescape is True
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("interface.xml.j2").render()
    dirs = render.template_dirs()
    assert dirs and all(os.path.isfile(os.path.join(d, "interface.xml.j2")) for d in dirs)


# -- the CLI ------------------------------------------------------------------
@pytest.fixture
def cfg_path(tmp_path: Path) -> str:
    p = tmp_path / "vmnet.toml"
    p.write_text(CONFIG)
    return str(p)


def cli(*args: str, input: str | None = None) -> Any:
    env = {"SUDO_USER": "", "VMNET_CONFIG": ""}
    return run_cli(list(args), input=input, env=dict(env))


def test_cli_interfaces_match_golden(cfg_path: str) -> None:
    res = cli("--config", cfg_path, "libvirt-xml", "web")
    assert res.exit_code == 0, res.output
    assert res.output == (GOLDEN / "interfaces-two-networks.xml").read_text()
    res = cli("--config", cfg_path, "libvirt-xml", "vm1", "--bridge", "br0", "--mode",
              "bridge")
    assert res.output == (GOLDEN / "interfaces-bridge-mode.xml").read_text()


def test_cli_domain_file_and_stdin(cfg_path: str) -> None:
    src = GOLDEN / "domain-replace.in.xml"
    want = (GOLDEN / "domain-replace.out.xml").read_text()
    res = cli("--config", cfg_path, "libvirt-xml", "web", "--user", "0", "--domain", str(src))
    assert res.exit_code == 0, res.output
    assert res.output == want
    res = cli("--config", cfg_path, "libvirt-xml", "web", "--user", "0", "--domain", "-",
              input=src.read_text())
    assert res.output == want


@pytest.mark.parametrize(("args", "message"), [
    (["libvirt-xml", "bad/name"], "contains '/'"),
    (["libvirt-xml", "vm1", "--domain", "/nonexistent/d.xml"], "cannot read"),
    (["libvirt-xml", "vm1", "--queues", "0"], "--queues: 0 is outside 1..256"),
    (["libvirt-xml", "vm1", "--mode", "macvtap"],
     "--mode must be one of ethernet, bridge (got 'macvtap')"),
], ids=["vm-name", "missing-file", "queues", "mode"])
def test_cli_errors_are_one_line(args: list[str], message: str, cfg_path: str) -> None:
    res = cli("--config", cfg_path, *args)
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output
