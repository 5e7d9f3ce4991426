"""Config parsing and precedence (CLI > config > defaults)."""

from __future__ import annotations

from pathlib import Path

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


FULL = """\
[defaults]
network = "lan"

[networks.lan]
bridge = "br-lan"
uplink = "eth1"
mtu = 9000
stp = true
forward_delay = 4
address = "10.10.0.1/24"

[vms.web]
user = "alice"
group = "kvm"
[[vms.web.nics]]
network = "lan"
mac = "52:54:00:12:34:56"
queues = 4
mtu = 9000
tap = "web-lan"
vnet_hdr = false
model = "e1000"
[[vms.web.nics]]
"""


def test_parsed_config_survives_its_cache() -> None:
    """What vmnet.config.cache stores (marshal of to_plain) rebuilds the same Config."""
    import marshal

    from vmnet.config import Config

    cfg = parse_config(FULL, "/etc/vmnet/vmnet.toml")
    back = Config.from_plain(marshal.loads(marshal.dumps(cfg.to_plain())), "d")
    assert back.networks == cfg.networks and back.vms == cfg.vms
    assert (back.path, back.default_network) == (cfg.path, cfg.default_network)
    assert back.networks["lan"].uplink == "eth1" and back.vms["web"].nics[0].model == "e1000"


def test_config_cache_is_read_and_stale_never(tmp_path: Path) -> None:
    """A second load of the same bytes comes from the cache; an edit is parsed again."""
    import os

    from vmnet.config import cache, load_config

    state = tmp_path / "state"
    (state / "ns-1" / "vms").mkdir(parents=True)
    (state / "ns-1" / "vms" / "x.json").write_text("{}")  # vmnet keeps records here
    os.chmod(state, 0o700)
    conf = tmp_path / "vmnet.toml"
    conf.write_text(FULL)
    first = load_config(str(conf), {}, cache_dir=str(state))
    cache.save(str(state), first)
    assert first.digest is not None and cache.load(str(state), first.digest) is not None
    second = load_config(str(conf), {}, cache_dir=str(state))
    assert second.networks == first.networks and second.vms == first.vms
    conf.write_text(FULL.replace("9000", "1400", 1))
    third = load_config(str(conf), {}, cache_dir=str(state))
    assert third.networks["lan"].mtu == 1400 and third.digest != first.digest


def test_the_local_mac_scheme_is_opt_in_and_has_40_bits() -> None:
    """Default MACs keep 0.1's derivation (52:54:00 + 24 bits: changing it would change
    every unpinned guest's MAC); defaults.mac_scheme = "local" gives 02 + 40 bits."""
    from vmnet.model import default_mac

    plain = resolve_vm(parse_config('[vms.a]\nuser = "0"\n'), "a", Overrides(user="0"), env={})
    assert plain.nics[0].mac == default_mac("a", 0) and plain.nics[0].mac.startswith("52:54:00")
    local = parse_config('[defaults]\nmac_scheme = "local"\n')
    vm = resolve_vm(local, "a", Overrides(user="0", nics=2), env={})
    macs = [n.mac for n in vm.nics]
    assert all(m.startswith("02:") and len(m) == 17 for m in macs) and len(set(macs)) == 2
    import hashlib

    h = hashlib.sha256(b"vmnet-mac/a/0").digest()
    assert macs[0] == "02:" + ":".join(f"{b:02x}" for b in h[:5])  # 40 hashed bits
    # distinct tap MACs too (fe + the same 40 bits): the bridge never sees two alike
    assert len({n.tap_mac for n in vm.nics}) == 2
    with pytest.raises(ConfigError, match="mac_scheme: 'wide' is not one of qemu, local"):
        parse_config('[defaults]\nmac_scheme = "wide"\n')


def test_40_bits_of_default_macs_do_not_collide_among_50000_vms() -> None:
    from vmnet.model.names import default_mac

    macs = {default_mac(f"vm{i}", 0, "local") for i in range(50000)}
    assert len(macs) == 50000
