"""Property-based tests (hypothesis): config parsing, names and MACs, qemu escaping, hook XML.

Profiles (tests/conftest.py): `ci` (CI=true) is derandomized, so a CI run is
repeatable; every profile has deadline=None (a loaded machine must not turn
into a flaky failure).  VMNET_HYPOTHESIS_EXAMPLES scales max_examples.

Each property counts the examples it ran; the counts go to tests/figures.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shlex
import string
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests import figures
from tests.nsutil import Netns
from vmnet.config import (
    ConfigError,
    NicSpec,
    Overrides,
    VmSpec,
    parse_config,
    resolve_vm,
)
from vmnet.errors import InputError, VmnetError
from vmnet.integrations.libvirt.domainxml import override_fields, read_domain, stale_interfaces
from vmnet.model import DEFAULT_BRIDGE, Network, default_mac, default_tap_name, tap_mac, validate
from vmnet.render.libvirt import domain_with_vm
from vmnet.render.qemu import _opts, device, escape, netdev, split_opts, vm_args

EXAMPLES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_examples() -> Iterator[None]:
    yield
    for name, n in sorted(EXAMPLES.items()):
        figures.report("property", name, examples=n)
    print(f"\nhypothesis examples: {sum(EXAMPLES.values())} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(EXAMPLES.items()))})")


# -- reference predicates -------------------------------------------------------------
# The kernel's dev_valid_name() (net/core/dev.c), on the UTF-8 bytes, with the kernel's
# isspace() (lib/ctype.c: Latin-1, so 0xA0, NBSP, is a space too).
C_SPACE = set(b" \t\n\v\f\r\xa0")


def kernel_valid_name(name: str) -> bool:
    b = name.encode()
    return (0 < len(b) < 16 and b not in (b".", b"..")
            and not any(c in b"/:" or c in C_SPACE for c in b) and b"\0" not in b)


def ref_ifname(name: str) -> bool:
    """vmnet's documented rule: the kernel's, plus no '%' (ip's printf-style names) and
    only printable characters (names are printed in messages and `ip` commands)."""
    return kernel_valid_name(name) and "%" not in name and name.isprintable() \
        and not any(c.isspace() for c in name)


def ref_vm_name(name: str) -> bool:
    # A leading '-' would read as an option on every command line that names the VM.
    return 0 < len(name) <= 64 and name not in (".", "..") and "/" not in name \
        and name.isprintable() and not any(c.isspace() for c in name) \
        and not name.startswith("-")


def ref_mac(text: str) -> bool:
    """Six colon-separated hex octets, unicast, not all zero (the kernel's
    is_valid_ether_addr(), which refuses multicast and zero)."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in string.hexdigits for c in p)
                                  for p in parts):
        return False
    octets = [int(p, 16) for p in parts]
    return not octets[0] & 1 and any(octets)


def accepts(fn: Any, value: object) -> bool:
    try:
        fn(value, "test")
    except InputError:
        return False
    return True


# -- strategies -----------------------------------------------------------------------
# Printable, no whitespace, none of / : % (ref_ifname filters the byte length).
NAME_CHARS = st.characters(categories=["L", "N", "P", "S"], exclude_characters="/:%")
names_valid = st.text(NAME_CHARS, min_size=1, max_size=15).filter(ref_ifname)
tap_names = names_valid.filter(lambda n: not n.startswith(validate.RESERVED_TAP_PREFIXES))
ascii_names = st.text(string.ascii_letters + string.digits + "-_.", min_size=1,
                      max_size=15).filter(ref_ifname)
vm_names = st.text(NAME_CHARS, min_size=1, max_size=64).filter(ref_vm_name)
any_names = st.one_of(st.text(max_size=24), names_valid,
                      st.text(string.printable, min_size=0, max_size=20))


@st.composite
def unicast_macs(draw: st.DrawFn) -> str:
    b = draw(st.binary(min_size=6, max_size=6))
    first = b[0] & 0xFE
    assume(first or any(b[1:]))
    return ":".join(f"{x:02x}" for x in (first, *b[1:]))


mac_texts = st.one_of(
    unicast_macs(), unicast_macs().map(str.upper),
    st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)),
    st.binary(min_size=6, max_size=6).map(lambda b: "-".join(f"{x:02X}" for x in b)),
    st.binary(min_size=5, max_size=7).map(lambda b: ":".join(f"{x:02x}" for x in b)),
    st.text(string.hexdigits + ":-. ", max_size=20), st.just("00:00:00:00:00:00"))


# -- names and MACs ---------------------------------------------------------------------
@given(any_names)
def test_ifname_agrees_with_reference(name: str) -> None:
    EXAMPLES["ifname"] += 1
    assert accepts(validate.ifname, name) == ref_ifname(name)
    if accepts(validate.ifname, name):
        assert kernel_valid_name(name)  # never more permissive than the kernel


@given(st.one_of(any_names, tap_names.map(lambda n: "vnet" + n[:11]),
                 st.sampled_from(["vnet0", "macvtap3", "macvlan1", "vnet"])))
def test_tap_name_refuses_libvirts_prefixes(name: str) -> None:
    EXAMPLES["tap_name"] += 1
    ok = ref_ifname(name) and not name.startswith(("vnet", "macvtap", "macvlan"))
    assert accepts(validate.tap_name, name) == ok


@given(st.one_of(vm_names, st.text(max_size=80), st.text(NAME_CHARS, min_size=60,
                                                          max_size=70)))
def test_vm_name_agrees_with_reference(name: str) -> None:
    EXAMPLES["vm_name"] += 1
    assert accepts(validate.vm_name, name) == ref_vm_name(name)


@given(mac_texts)
def test_mac_agrees_with_reference(text: str) -> None:
    EXAMPLES["mac"] += 1
    assert accepts(validate.mac, text) == ref_mac(text)
    if ref_mac(text):
        assert validate.mac(text, "t") == text.lower()
        t = tap_mac(text.lower())
        assert ref_mac(t) and t != text.lower() and t[2:] == text.lower()[2:]


@given(vm_names, st.integers(0, validate.MAX_NICS - 1))
def test_default_tap_names_and_macs_are_valid(vm: str, index: int) -> None:
    EXAMPLES["default_names"] += 1
    tap = default_tap_name(vm, index)
    validate.tap_name(tap, "default tap")
    assert ref_mac(default_mac(vm, index)) and default_mac(vm, index).startswith("52:54:00:")


@given(st.lists(st.tuples(vm_names, st.integers(0, 3)), min_size=2, max_size=8, unique=True))
def test_default_tap_names_never_collide(pairs: list[tuple[str, int]]) -> None:
    EXAMPLES["tap_collisions"] += 1
    taps = [default_tap_name(vm, i) for vm, i in pairs]
    assert len(set(taps)) == len(taps), list(zip(pairs, taps, strict=True))


@pytest.mark.kernel
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(names_valid, ascii_names, st.text(NAME_CHARS, max_size=17)),
       mac=mac_texts)
def test_kernel_agrees_with_name_and_mac_validation(ns: Netns, name: str, mac: str) -> None:
    """What vmnet accepts, the kernel accepts: a link (a bridge: no dummy module here)
    with that name, and exactly the MACs vmnet accepts."""
    EXAMPLES["kernel_agreement"] += 1
    if not accepts(validate.ifname, name):
        name = "d0"
    assume(name != "lo")
    r = ns.ip("link", "add", "name", name, "type", "bridge", check=False)
    assert r.returncode == 0, (name, r.stderr)
    try:
        if ref_mac(text := mac) or _is_mac_shaped(text):
            r = ns.ip("link", "set", "dev", name, "address", text, check=False)
            assert (r.returncode == 0) == accepts(validate.mac, text), (text, r.stderr)
    finally:
        ns.ip("link", "del", "dev", name)


def _is_mac_shaped(text: str) -> bool:
    parts = text.split(":")
    return len(parts) == 6 and all(len(p) == 2 and all(c in string.hexdigits for c in p)
                                   for p in parts)


# -- config parsing ---------------------------------------------------------------------
def toml_str(s: str) -> str:
    """A TOML basic string (json escapes, but never surrogate pairs; DEL escaped)."""
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_str(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def toml_doc(networks: dict[str, dict[str, Any]], vms: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, t in networks.items():
        lines.append(f"[networks.{toml_str(name)}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in t.items()]
    for name, t in vms.items():
        lines.append(f"[vms.{toml_str(name)}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in t.items() if k != "nics"]
        for nic in t.get("nics", []):
            lines.append(f"[[vms.{toml_str(name)}.nics]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in nic.items()]
    return "\n".join(lines) + "\n"


host_cidrs = st.builds(lambda a, p: f"{ipaddress.IPv4Address(a)}/{p}",
                       st.integers(0x01000001, 0xDFFFFFFE), st.integers(8, 30))


@st.composite
def network_tables(draw: st.DrawFn, bridge: str) -> dict[str, Any]:
    t: dict[str, Any] = {"bridge": bridge}
    if draw(st.booleans()):
        t["uplink"] = draw(names_valid.filter(lambda n: n != bridge))
    if draw(st.booleans()):
        t["mtu"] = draw(st.integers(validate.MIN_MTU, validate.MAX_MTU))
    stp = draw(st.booleans())
    if stp or draw(st.booleans()):
        t["stp"] = stp
        t["forward_delay"] = draw(st.integers(2, 30) if stp else st.integers(0, 30))
    if draw(st.booleans()):
        t["address"] = draw(host_cidrs)
    return t


@st.composite
def valid_configs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    bridges = draw(st.lists(names_valid.filter(lambda n: n not in (DEFAULT_BRIDGE,
                                                                   "vmnet-bare")),
                            max_size=3, unique=True))
    net_names = draw(st.lists(st.text(min_size=1, max_size=10).filter(
        lambda n: n not in ("default", "bare")), min_size=len(bridges),
        max_size=len(bridges), unique=True))
    networks = {n: draw(network_tables(b)) for n, b in zip(net_names, bridges, strict=True)}
    vms: dict[str, Any] = {}
    for name in draw(st.lists(vm_names, max_size=3, unique=True)):
        t: dict[str, Any] = {}
        if draw(st.booleans()):
            t["user"] = draw(st.one_of(st.integers(0, 2**31), st.integers(0, 70000).map(str)))
        if draw(st.booleans()):
            t["group"] = draw(st.one_of(st.integers(0, 2**31), st.integers(0, 70000).map(str)))
        nics = []
        for _ in range(draw(st.integers(0, 3))):
            nic: dict[str, Any] = {}
            for key, strat in (("network", st.sampled_from(["default", *networks])),
                               ("mac", unicast_macs()), ("queues", st.integers(1, 256)),
                               ("mtu", st.integers(validate.MIN_MTU, validate.MAX_MTU)),
                               ("tap", tap_names), ("vnet_hdr", st.booleans()),
                               ("model", st.sampled_from(["virtio-net-pci", "e1000",
                                                          "rtl8139"]))):
                if draw(st.booleans()):
                    nic[key] = draw(strat)
            nics.append(nic)
        if nics:
            t["nics"] = nics
        vms[name] = t
    return networks, vms


@given(valid_configs())
def test_valid_configs_round_trip(cfg: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """Generated config -> TOML text -> parse_config gives back every value."""
    EXAMPLES["config_round_trip"] += 1
    networks, vms = cfg
    parsed = parse_config(toml_doc(networks, vms), "gen.toml")
    assert set(parsed.networks) == {"default", "bare", *networks}
    for name, t in networks.items():
        assert parsed.networks[name] == Network(
            name=name, bridge=t["bridge"], uplink=t.get("uplink"), mtu=t.get("mtu"),
            stp=t.get("stp", False), forward_delay=t.get("forward_delay", 0),
            address=t.get("address"))
    assert set(parsed.vms) == set(vms)
    for name, t in vms.items():
        want = VmSpec(user=None if "user" not in t else str(t["user"]),
                      group=None if "group" not in t else str(t["group"]),
                      nics=tuple(NicSpec(**n) for n in t.get("nics", [])))
        assert parsed.vms[name] == want
        # Resolving is allowed to refuse (two NICs sharing a tap or MAC) but only cleanly,
        # and what it resolves is what the config says.
        try:
            vm = resolve_vm(parsed, name, env={})
        except VmnetError:
            continue
        for nic, spec in zip(vm.nics, want.nics, strict=False):
            assert nic.tap == (spec.tap or default_tap_name(name, nic.index))
            assert nic.mac == (spec.mac or default_mac(name, nic.index))
            assert nic.queues == (spec.queues or 1) and nic.mtu == spec.mtu
            assert nic.network.name == (spec.network or "default")


TOML_KEYS = ["networks", "vms", "defaults", "bridge", "uplink", "mtu", "stp",
             "forward_delay", "address", "user", "group", "nics", "network", "mac", "queues",
             "tap", "vnet_hdr", "model", "x", ""]
toml_scalars = st.one_of(st.integers(-(2**63), 2**63 - 1), st.booleans(), st.text(max_size=20),
                         st.floats(allow_nan=False), names_valid)
toml_dates = st.sampled_from(["1979-05-27", "07:32:00", "1979-05-27T07:32:00Z", "nan", "inf"])
toml_values = st.recursive(
    st.one_of(toml_scalars.map(toml_value), toml_dates),
    lambda inner: st.one_of(st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs)
                                                             + "]"),
                            st.dictionaries(st.sampled_from(TOML_KEYS[3:]), inner,
                                            max_size=3).map(
                                lambda d: "{" + ", ".join(f"{toml_str(k)} = {v}"
                                                          for k, v in d.items()) + "}")),
    max_leaves=6)
toml_keypaths = st.lists(st.one_of(st.sampled_from(TOML_KEYS), st.text(max_size=6)),
                         min_size=1, max_size=4).map(lambda ks: ".".join(toml_str(k)
                                                                         for k in ks))
toml_lines = st.one_of(
    st.builds(lambda k: f"[{k}]", toml_keypaths),
    st.builds(lambda k: f"[[{k}]]", toml_keypaths),
    st.builds(lambda k, v: f"{k} = {v}", toml_keypaths, toml_values),
    st.text(max_size=30))


@given(st.one_of(st.lists(toml_lines, max_size=12).map("\n".join), st.text(max_size=200)))
def test_any_tomlish_text_is_config_error_or_config(text: str) -> None:
    """Nothing but ConfigError/InputError ever escapes parse_config (no TypeError, no
    KeyError: those are tracebacks for the person at the keyboard)."""
    EXAMPLES["config_fuzz"] += 1
    try:
        cfg = parse_config(text, "fuzz.toml")
    except InputError as e:
        assert "\n" not in e.one_line().strip() or "TOML" in e.one_line()
        return
    for name in cfg.vms:
        with contextlib.suppress(VmnetError):
            resolve_vm(cfg, name, env={})


@given(st.lists(st.tuples(st.sampled_from(["bridge", "uplink", "mtu", "stp", "user",
                                           "queues", "mac", "tap"]),
                          st.one_of(toml_scalars, st.lists(st.integers(), max_size=2))),
                max_size=6))
def test_typed_values_in_every_table(pairs: list[tuple[str, Any]]) -> None:
    """Well-formed TOML with values of any type in every table: ConfigError or a config."""
    EXAMPLES["config_types"] += 1
    body = {k: v for k, v in pairs}
    nic_keys = {"mac", "queues", "tap", "mtu"}
    text = toml_doc({"n": {"bridge": "brq", **{k: v for k, v in body.items()
                                               if k in ("uplink", "mtu", "stp")}}},
                    {"vm": {**({"user": body["user"]} if "user" in body else {}),
                            "nics": [{k: v for k, v in body.items() if k in nic_keys}]}})
    try:
        cfg = parse_config(text)
    except ConfigError:
        return
    with contextlib.suppress(VmnetError):
        resolve_vm(cfg, "vm", env={})


# -- qemu option escaping ---------------------------------------------------------------
opt_keys = st.text(string.ascii_lowercase + "_-", min_size=1, max_size=8)


@given(st.text(string.ascii_lowercase + "-", min_size=1, max_size=12),
       st.lists(st.tuples(opt_keys, st.text(max_size=20)), max_size=6))
def test_qemu_options_round_trip(head: str, pairs: list[tuple[str, str]]) -> None:
    EXAMPLES["qemu_escape"] += 1
    text = _opts(head, pairs)
    assert split_opts(text) == [(head, ""), *pairs]


@given(st.text(max_size=30))
def test_escape_doubles_every_comma(value: str) -> None:
    EXAMPLES["qemu_escape"] += 1
    e = escape(value)
    assert e.replace(",,", "").count(",") == 0 and e.replace(",,", ",") == value
    assert split_opts(f"k={e}") == [("k", value)]


@given(tap=tap_names, mac=unicast_macs(), queues=st.integers(1, 8),
       vnet_hdr=st.booleans(), model=st.sampled_from(["virtio-net-pci", "e1000"]),
       index=st.integers(0, 3))
def test_rendered_netdev_and_device_parse_back(tap: str, mac: str, queues: int,
                                               vnet_hdr: bool, model: str, index: int) -> None:
    """The tap name (which may hold commas and '=') and MAC come back out of the argv."""
    from vmnet.model import Nic

    EXAMPLES["qemu_render"] += 1
    nic = Nic(index=index, network=Network(name="n", bridge="br0"), tap=tap, mac=mac,
              queues=queues, vnet_hdr=vnet_hdr, model=model)
    nd = dict(split_opts(netdev(nic, ifname_mode=True)[1]))
    assert nd["ifname"] == tap and nd["id"] == f"net{index}"
    assert nd["vnet_hdr"] == ("on" if vnet_hdr else "off")
    assert nd.get("queues") == (str(queues) if queues > 1 else None)
    dv = split_opts(device(nic)[1])
    assert dv[0] == (model, "") and dict(dv[1:])["mac"] == mac
    # printed for a shell (`vmnet qemu-args`), the words come back intact
    from vmnet.model import Vm

    words = vm_args(Vm(name="v", uid=0, gid=None, nics=(nic,)))
    assert shlex.split(" ".join(shlex.quote(w) for w in words)) == words


# -- hook XML ---------------------------------------------------------------------------
BASE_DOMAIN = ("<domain type='qemu'><name>d</name>"
               "<uuid>0b7e1c9a-3f4d-4e5a-8b6c-7d8e9f0a1b2c</uuid>"
               "<memory unit='MiB'>64</memory><devices/></domain>")


@st.composite
def overrides(draw: st.DrawFn) -> Overrides:
    nics = draw(st.none() | st.integers(1, 3))
    nmacs = draw(st.integers(0, nics or 1))
    macs = tuple(draw(st.lists(unicast_macs(), min_size=nmacs, max_size=nmacs, unique=True)))
    return Overrides(
        bridge=draw(st.none() | ascii_names.filter(lambda n: n != "up-x")),
        uplink=draw(st.none() | st.just("up-x")),
        user=draw(st.none() | st.integers(0, 70000).map(str)),
        group=draw(st.none() | st.integers(0, 70000).map(str)),
        nics=nics, queues=draw(st.none() | st.integers(1, 8)), macs=macs,
        mtu=draw(st.none() | st.integers(validate.MIN_MTU, validate.MAX_MTU)),
        vnet_hdr=draw(st.none() | st.booleans()),
        model=draw(st.none() | st.sampled_from(["virtio-net-pci", "e1000"])))


@given(vm_names, overrides(), st.sampled_from(["ethernet"]))
def test_rendered_domain_reads_back_as_the_same_vm(name: str, ov: Overrides,
                                                   mode: str) -> None:
    """`vmnet libvirt-xml --domain` output, read as the hook reads stdin, names the same
    VM with the same overrides, and its interfaces match the resolved NICs."""
    EXAMPLES["hook_round_trip"] += 1
    cfg = parse_config("")
    try:
        vm = resolve_vm(cfg, name, ov, env={})
    except VmnetError:
        assume(False)
        return
    xml = domain_with_vm(BASE_DOMAIN, vm, override_fields(ov), mode)
    info = read_domain(xml.encode(), "stdin")
    assert [e.name for e in info.vms] == [name]
    back = info.vms[0].overrides()
    assert back == ov
    again = resolve_vm(cfg, name, back, env={})
    assert again == vm
    assert stale_interfaces(info, [(n.tap, n.mac, n.network.bridge) for n in vm.nics]) == []


XML_TAGS = ["domain", "name", "uuid", "metadata", "devices", "interface", "target", "mac",
            "alias", "source", "vm", "bridge", "queues", "nics", "mtu", "user", "mac",
            "vnet-hdr", "model", "colour"]
xml_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="<&"),
                   max_size=12)


@st.composite
def xml_trees(draw: st.DrawFn, depth: int = 0) -> str:
    tag = draw(st.sampled_from(XML_TAGS))
    vmnet_ns = draw(st.booleans())
    prefix = "v:" if vmnet_ns and tag in ("vm", "bridge", "queues", "nics", "mtu", "user",
                                          "mac", "vnet-hdr", "model", "colour") else ""
    if tag == "metadata" and draw(st.booleans()):
        body = "<v:vmnet xmlns:v='urn:vmnet:libvirt:1'>" + "".join(
            draw(st.lists(xml_trees(depth + 1), max_size=3))) + "</v:vmnet>"
        return f"<metadata>{body}</metadata>"
    attrs = draw(st.dictionaries(st.sampled_from(["name", "dev", "address", "type", "bridge"]),
                                 xml_text.map(lambda s: s.replace("'", "")), max_size=2))
    a = "".join(f" {k}='{v}'" for k, v in attrs.items())
    kids = draw(st.lists(xml_trees(depth + 1), max_size=3)) if depth < 3 else []
    text = draw(xml_text)
    return f"<{prefix}{tag}{a}>{text}{''.join(kids)}</{prefix}{tag}>"


wrap_ns = "xmlns:v='urn:vmnet:libvirt:1'"


@given(st.one_of(
    xml_trees().map(lambda t: f"<domain {wrap_ns}>{t}</domain>"),
    xml_trees().map(lambda t: f"<domain {wrap_ns}><uuid>0b7e1c9a-3f4d-4e5a-8b6c-7d8e9f0a1b2c"
                              f"</uuid><metadata>{t}</metadata></domain>"),
    st.builds(lambda t, cut: t[:cut], xml_trees(), st.integers(0, 200)),
    st.binary(max_size=200),
    st.builds(lambda d, t: d + t, st.sampled_from([
        "<!DOCTYPE d [<!ENTITY e 'x'>]>", "<!DOCTYPE d SYSTEM 'file:///etc/passwd'>",
        "<?xml version='1.0' encoding='latin-1'?>", "<?xml-stylesheet href='x'?>", ""]),
        xml_trees())))
def test_any_hook_xml_is_input_error_or_understood(data: str | bytes) -> None:
    """Whatever arrives on the hook's stdin: InputError, or a DomainInfo whose VM entries
    resolve (or are refused) with VmnetError only."""
    EXAMPLES["hook_xml_fuzz"] += 1
    try:
        info = read_domain(data, "stdin")
    except InputError as e:
        assert e.one_line() and "\n" not in e.one_line()
        return
    cfg = parse_config("")
    for entry in info.vms:
        try:
            vm = resolve_vm(cfg, entry.name, entry.overrides(), env={})
        except VmnetError:
            continue
        stale_interfaces(info, [(n.tap, n.mac, n.network.bridge) for n in vm.nics])


@given(st.sampled_from(["start", "started", "stopped", "reconnect", "migrate", "restore",
                        "attach", "prepare", "release"]),
       st.sampled_from(["begin", "end", "-"]), st.binary(max_size=300))
def test_hook_run_never_raises_anything_unexpected(op: str, subop: str, data: bytes) -> None:
    """hook.run on garbage: 0, or a VmnetError (the hook turns it into one line).  A
    prepare that gets this far would need the kernel: never here (no vmnet metadata
    can survive random bytes)."""
    import io
    import tempfile

    from vmnet.integrations.libvirt import hook

    EXAMPLES["hook_run_fuzz"] += 1
    with tempfile.TemporaryDirectory() as d:
        state = os.path.join(d, "state")
        try:
            rc = hook.run([f"--state-dir={state}", "dom", op, subop, "-"], io.BytesIO(data))
        except VmnetError:
            rc = 1
        assert rc in (0, 1)
        assert not os.path.exists(state)


# -- the light layer's shortcuts, checked against what they stand for -----------------
def test_whitespace_or_unprintable_shortcut_over_all_of_unicode() -> None:
    """validate's two C-level scans equal any(c.isspace() or not c.isprintable())."""
    import sys

    for cp in range(sys.maxunicode + 1):
        c = chr(cp)
        assert validate._spaced_or_unprintable(c) == (c.isspace() or not c.isprintable()), cp


@given(st.text(max_size=40))
def test_shell_quote_is_shlex_quote(word: str) -> None:
    from vmnet.render.qemu import shell_quote

    assert shell_quote(word) == shlex.quote(word)


@given(st.recursive(st.none() | st.booleans() | st.integers()
                    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
                    lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids),
                    max_leaves=20))
def test_record_json_is_json_dumps_and_loads(value: Any) -> None:
    """statefs writes exactly what json.dumps(sort_keys=True) writes, and reads it back
    (records hold no NaN or infinity: statefs.loads refuses those, see below)."""
    import json

    from vmnet.state import files as statefs

    assert statefs.dumps(value) == json.dumps(value, sort_keys=True).encode()
    assert statefs.loads(statefs.dumps(value)) == json.loads(json.dumps(value))


@pytest.mark.parametrize("text", [b"NaN", b"[Infinity]", b'{"a": 1} x', b"", b"\xff"])
def test_record_json_reader_refuses_what_vmnet_never_writes(text: bytes) -> None:
    from vmnet.state import files as statefs

    with pytest.raises(ValueError):
        statefs.loads(text)


@given(st.text(alphabet=string.hexdigits + ":", min_size=15, max_size=19))
def test_mac_validation_shortcut(value: str) -> None:
    ok = len(value) == 17 and all((c == ":") if i % 3 == 2 else (c in string.hexdigits)
                                  for i, c in enumerate(value))
    try:
        validate.mac(value, "m")
        accepted = True
    except InputError as e:
        accepted = "not a MAC address" not in e.message
    assert accepted == ok


_VM_RECORD = {"format": 1, "vm": "vm1", "mode": "up", "phase": "ready",
              "writer": {"pid": 1, "start": 2}, "holder": None, "domain_uuid": None,
              "created_at": 1.5,
              "nics": [{"index": 0, "tap": "vm1-0", "bridge": "br0", "network": "n",
                        "mac": "52:54:00:00:00:01", "tap_mac": "fe:54:00:00:00:01", "mtu": 1500,
                        "queues": 1, "vnet_hdr": True, "owner": 0, "group": None,
                        "created": True}]}
_BRIDGE_RECORD = {"format": 1, "bridge": "br0", "network": "n", "created": True,
                  "uplink": None, "uplink_attached": False, "uplink_was_down": False,
                  "address": None, "writer": {"pid": 1, "start": 2}}
_JUNK = st.none() | st.booleans() | st.integers() | st.text(max_size=5) | \
    st.just({"pid": 1}) | st.just({}) | st.just([]) | st.just("x/y") | st.just("a" * 20)


def _mutate(data: Any, path: list[Any], drop: bool, value: Any) -> Any:
    import copy

    out = copy.deepcopy(data)
    node = out
    for key in path[:-1]:
        node = node[key]
    if drop:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return out


_VM_PATHS = [[k] for k in _VM_RECORD] + [["nics", 0, k] for k in _VM_RECORD["nics"][0]] + \
    [["writer", "pid"], ["holder"], ["extra"]]


@given(st.sampled_from(_VM_PATHS), st.booleans(), _JUNK)
def test_vm_record_decoder_accepts_or_refuses_cleanly(path: list[Any], drop: bool,
                                                      value: Any) -> None:
    """Any mutation of a record is either a record (whose re-encoding decodes to itself)
    or Corrupt / UnknownFormat: never another exception, never a half-read record."""
    from vmnet.state import records

    data = _mutate(_VM_RECORD, path, drop, value)
    try:
        rec = records.vm_from_json(data)
    except (records.Corrupt, records.UnknownFormat):
        return
    assert rec.mode in records.MODES and rec.phase in records.PHASES
    assert records.vm_from_json(rec.to_json()) == rec


@given(st.sampled_from([[k] for k in _BRIDGE_RECORD] + [["writer", "start"]]), st.booleans(),
       _JUNK)
def test_bridge_record_decoder_accepts_or_refuses_cleanly(path: list[Any], drop: bool,
                                                          value: Any) -> None:
    from vmnet.state import records

    data = _mutate(_BRIDGE_RECORD, path, drop, value)
    try:
        rec = records.bridge_from_json(data)
    except (records.Corrupt, records.UnknownFormat):
        return
    assert records.bridge_from_json(rec.to_json()) == rec


@given(st.text(max_size=40))
def test_record_file_names_round_trip(key: str) -> None:
    """fname's fast path (nothing to encode) and its slow path agree with the rule:
    [A-Za-z0-9_.-] kept, every other byte percent-encoded, '.'/'..' never a name."""
    from vmnet.state.files import fname, key_of

    name = fname(key)
    raw = name[: -len(".json")]
    assert name.endswith(".json") and raw not in (".", "..") and "/" not in raw
    assert all(c.isascii() and (c.isalnum() or c in "_.-%") for c in raw)
    if key and all(c.isascii() and (c.isalnum() or c in "_.-") for c in key) and \
            key not in (".", ".."):
        assert raw == key
    assert key_of(name) == key
