"""Pure tests of validation, naming and MAC rules."""

from __future__ import annotations

import pytest

from vmnet.errors import InputError
from vmnet.model import (
    Network,
    Nic,
    Vm,
    default_mac,
    default_tap_name,
    nic_mark,
    parse_nic_mark,
    tap_mac,
)
from vmnet.model import validate as v


@pytest.mark.parametrize("name,ok", [
    ("eth0", True), ("a" * 15, True), ("a" * 16, False), ("br/0", False), ("br 0", False),
    ("br:0", False), ("", False), (".", False), ("..", False), ("tab\t", False),
    ("x%d", False), ("é" * 8, False),  # 16 bytes in UTF-8
], ids=lambda p: repr(p))
def test_ifname(name: str, ok: bool) -> None:
    if ok:
        assert v.ifname(name, "x") == name
    else:
        with pytest.raises(InputError):
            v.ifname(name, "x")


@pytest.mark.parametrize("mac,ok", [
    ("52:54:00:12:34:56", True), ("52:54:00:AB:CD:EF", True), ("01:00:5e:00:00:01", False),
    ("ff:ff:ff:ff:ff:ff", False), ("00:00:00:00:00:00", False), ("52:54:00:12:34", False),
    ("52-54-00-12-34-56", False), ("5254.0012.3456", False),
])
def test_mac(mac: str, ok: bool) -> None:
    if ok:
        assert v.mac(mac, "m") == mac.lower()
    else:
        with pytest.raises(InputError):
            v.mac(mac, "m")


def test_tap_mac_rule() -> None:
    assert tap_mac("52:54:00:01:02:03") == "fe:54:00:01:02:03"
    assert tap_mac("fe:54:00:01:02:03") == "fa:54:00:01:02:03"


@pytest.mark.parametrize("vm", ["vm1", "a" * 13, "a" * 14, "web.prod", "x:y", "vnet-sneaky",
                                "vmn123", "ü", "a" * 64])
def test_tap_names_fit_and_avoid_libvirt_prefixes(vm: str) -> None:
    for i in (0, 9, 31):
        name = default_tap_name(vm, i)
        assert len(name) <= 15
        v.tap_name(name, "t")


def test_tap_names_never_collide() -> None:
    names = [f"vm{i}" for i in range(300)] + [f"{'x' * 20}{i}" for i in range(300)] + \
        ["vmn0123456789", "vmn01234567"]
    taps = [default_tap_name(n, i) for n in names for i in range(3)]
    assert len(set(taps)) == len(taps)
    assert default_tap_name("vm1", 0) == "vm1-0"
    assert default_tap_name("a" * 20, 0).startswith("vmn")


def test_default_mac_is_deterministic_unicast_qemu() -> None:
    m = default_mac("vm1", 0)
    assert m == default_mac("vm1", 0) and m != default_mac("vm1", 1)
    assert m.startswith("52:54:00:")
    v.mac(m, "m")


def test_marks_round_trip() -> None:
    assert parse_nic_mark(nic_mark("a:b", 3)) == ("a:b", 3)
    assert parse_nic_mark("vmnet:bridge:br0") is None
    assert parse_nic_mark("something else") is None


@pytest.mark.parametrize("kw,msg", [
    ({"bridge": "b", "uplink": "b"}, "bridge itself"),
    ({"bridge": "b", "stp": True, "forward_delay": 1}, "forward_delay"),
    ({"bridge": "b", "forward_delay": 31}, "forward_delay"),
    ({"bridge": "b", "mtu": 10}, "mtu"),
    ({"bridge": "b", "address": "10.0.0.1"}, "ADDRESS/PREFIX"),
], ids=["uplink-is-bridge", "stp-delay-low", "delay-high", "mtu", "address"])
def test_network_validation(kw: dict, msg: str) -> None:
    with pytest.raises(InputError, match=msg):
        Network(name="n", **kw)


def test_vm_rejects_duplicate_taps_and_macs() -> None:
    net = Network(name="n", bridge="b")
    a = Nic(index=0, network=net, tap="t0", mac="52:54:00:00:00:01")
    with pytest.raises(InputError, match="tap"):
        Vm(name="v", uid=0, gid=None, nics=(a, Nic(index=1, network=net, tap="t0",
                                                   mac="52:54:00:00:00:02")))
    with pytest.raises(InputError, match="MAC"):
        Vm(name="v", uid=0, gid=None, nics=(a, Nic(index=1, network=net, tap="t1",
                                                   mac="52:54:00:00:00:01")))
