"""Config parsing and precedence (CLI > config > defaults)."""

from __future__ import annotations

import pytest

from vmnet.config import Overrides, parse_config, resolve_vm
from vmnet.errors import ConfigError, NotFoundError

TEXT = """
[defaults]
network = "lan"

[networks.lan]
bridge = "br-lan"
mtu = 9000

[networks.dmz]
bridge = "br-dmz"
uplink = "eth2"

[vms.web]
user = "0"
group = "0"
[[vms.web.nics]]
queues = 4
mac = "52:54:00:00:00:01"
[[vms.web.nics]]
network = "dmz"
tap = "web-dmz"
vnet_hdr = false
"""


def test_config_values_and_defaults() -> None:
    cfg = parse_config(TEXT, "/etc/vmnet/vmnet.toml")
    vm = resolve_vm(cfg, "web", env={})
    a, b = vm.nics
    assert (a.network.bridge, a.queues, a.mac, a.tap) == ("br-lan", 4, "52:54:00:00:00:01",
                                                          "web-0")
    assert (b.network.bridge, b.network.uplink, b.tap, b.vnet_hdr) == (
        "br-dmz", "eth2", "web-dmz", False)
    assert vm.uid == 0 and vm.gid == 0
    other = resolve_vm(cfg, "adhoc", Overrides(user="0"), env={})
    assert other.nics[0].network.bridge == "br-lan"  # defaults.network


def test_cli_wins_over_config() -> None:
    cfg = parse_config(TEXT)
    vm = resolve_vm(cfg, "web", Overrides(queues=2, bridge="brx", mtu=1400,
                                          macs=("52:54:00:00:00:09",), vnet_hdr=False), env={})
    assert all(n.queues == 2 and n.network.bridge == "brx" and n.mtu == 1400 and
               not n.vnet_hdr for n in vm.nics)
    assert vm.nics[0].mac == "52:54:00:00:00:09" and vm.nics[1].mac != vm.nics[0].mac


def test_sudo_user_default() -> None:
    cfg = parse_config("")
    vm = resolve_vm(cfg, "x", env={"SUDO_USER": "nobody"})
    assert vm.uid == 65534


def test_unknown_user_names_source() -> None:
    cfg = parse_config('[vms.x]\nuser = "no-such-user-zz"\n')
    with pytest.raises(NotFoundError, match=r"vms\.x\.user.*no-such-user-zz"):
        resolve_vm(cfg, "x", env={})


@pytest.mark.parametrize("text,match", [
    ("[networks.a]\nbridge='b'\n[networks.c]\nbridge='b'\n", "same bridge"),
    ("[defaults]\nnetwork='nope'\n", "unknown network"),
    ("[vms.x]\nnics = 3\n", "array of tables"),
    ("[vms.x]\nuser = 1.5\n", "numeric id"),
    ("[vms.'a b']\n", "whitespace"),
    ("[networks.n]\nbridge = 'b'\nstp = 'yes'\n", "stp"),
])
def test_config_errors(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(text, "f.toml")
