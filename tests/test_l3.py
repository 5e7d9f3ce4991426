"""nat/isolated networks without a guest: config and model validation, the renderers
(nft script checked by nft itself, dnsmasq command line), subnet choice, address
derivation, records, and the foreign-firewall scan over rulesets nft really prints."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.nsutil import Netns
from vmnet.config import Overrides, parse_config, resolve_vm
from vmnet.engine.plan import Claims
from vmnet.errors import ConfigError, ConflictError, InputError
from vmnet.kinds import firewall, l3, subnets
from vmnet.model import Network
from vmnet.render import dnsmasq as render_dnsmasq
from vmnet.render import nft as render_nft
from vmnet.state.records import BridgeRecord, Corrupt, bridge_from_json

ENV = {"SUDO_USER": "root"}


# -- config and model ------------------------------------------------------------------
@pytest.mark.parametrize(("text", "says"), [
    ('[networks.a]\nbridge = "ba"\nkind = "nat"\naddress = "10.1.0.1/24"\n'
     '[networks.b]\nbridge = "bb"\nkind = "isolated"\naddress = "10.1.0.129/25"\n',
     "overlapping subnets"),
    ('[networks.a]\nbridge = "ba"\nkind = "nat"\naddress = "10.1.0.1/30"\n', "too small"),
    ('[networks.a]\nbridge = "ba"\nkind = "nat"\naddress = "10.1.0.0/24"\n',
     "network's own network address"),
    ('[networks.a]\nbridge = "ba"\nkind = "nat"\naddress = "fd00::1/64"\n', "not IPv4"),
    ('[networks.a]\nbridge = "ba"\nkind = "routed"\n', "is not one of bridge, nat"),
    ('[networks.a]\nbridge = "ba"\noutbound = "eth0"\n', "are for kind"),
    ('[networks.a]\nbridge = "ba"\nkind = "nat"\nuplink = "eth1"\n', "has no uplink"),
    ('[networks.a]\nbridge = "b\\"a"\nkind = "nat"\n', "written into nftables rules"),
    ('[networks.a]\nbridge = "ba"\nkind = "nat"\ndomain = "-x"\n', "not a DNS name"),
    ('[networks.a]\nbridge = "ba"\nkind = "nat"\nupstream = ["x"]\n', "not an IPv4"),
    ('[networks.a]\nbridge = "ba"\nfirewall_fix = true\n', "only for kind"),
    ('[defaults]\ndata_dir = "rel"\n', "not an absolute path"),
    ('[vms.v]\n[[vms.v.nics]]\nip = "10.1.2"\n', "not an IPv4 address"),
    ('[vms.v]\n[[vms.v.nics]]\nnetwork = "bare"\nip = "10.77.0.5"\n', "fixed addresses"),
], ids=["overlap", "slash30", "network-address", "ipv6", "kind", "outbound-on-bridge",
        "uplink-on-nat", "quote-in-name", "domain", "upstream", "fix-on-bridge",
        "data-dir", "nic-ip", "ip-on-bare"])
def test_bad_l3_config_is_one_line_naming_the_key(text: str, says: str) -> None:
    with pytest.raises((ConfigError, InputError)) as e:
        cfg = parse_config(text, "t.toml")
        resolve_vm(cfg, "v", env=ENV)
    assert says in e.value.one_line() and "\n" not in e.value.one_line()


def test_builtin_networks_and_their_redefinition() -> None:
    cfg = parse_config("")
    assert cfg.networks["default"] == Network(name="default", bridge="vmnet0", kind="nat")
    assert cfg.networks["bare"] == Network(name="bare", bridge="vmnet-bare")
    # redefining default (kind bridge: the behaviour before 0.5) keeps bare
    cfg = parse_config('[networks.default]\nbridge = "vmnet0"\n')
    assert cfg.networks["default"].kind == "bridge" and "bare" in cfg.networks
    # a network that takes a built-in's bridge without redefining it is refused
    with pytest.raises(ConfigError, match="the built-in network 'bare'"):
        parse_config('[networks.mine]\nbridge = "vmnet-bare"\n')


def test_cli_network_and_ip_flags() -> None:
    cfg = parse_config("")
    vm = resolve_vm(cfg, "v", Overrides(network="bare"), env=ENV)
    assert vm.nics[0].network.bridge == "vmnet-bare"
    vm = resolve_vm(cfg, "v", Overrides(ips=("10.77.0.9",), nics=2), env=ENV)
    assert [n.ip for n in vm.nics] == ["10.77.0.9", None]
    for ov, says in ((Overrides(network="nope"), "no network 'nope'"),
                     (Overrides(network="bare", bridge="x"), "not both"),
                     (Overrides(network="bare", ips=("10.0.0.2",)), "kind bridge"),
                     (Overrides(ips=("1.2.3.4", "1.2.3.5")), "--ip given 2 times")):
        with pytest.raises(InputError) as e:
            resolve_vm(cfg, "v", ov, env=ENV)
        assert says in e.value.message


# -- renderers --------------------------------------------------------------------------
def _l3(bridge: str = "vmnet0", kind: str = "nat", address: str = "10.77.0.1/24",
        outbound: str | None = "wan0") -> l3.L3:
    return l3.L3(bridge, kind, address, outbound, "vmnet")


def test_l3_arithmetic() -> None:
    n = _l3(address="10.20.30.40/22")
    assert (n.gateway, n.subnet, n.netmask, n.network_address) == (
        "10.20.30.40", "10.20.28.0/22", "255.255.252.0", "10.20.28.0")


def test_the_nft_script_is_one_table_and_nft_accepts_it(ns: Netns) -> None:
    if shutil.which("nft") is None:
        pytest.skip("nft missing (apt-get install nftables)")
    script = render_nft.table([_l3(), _l3("iso-1", "isolated", "10.77.1.1/24", None),
                               _l3("odd.br", "nat", "10.77.2.1/24", "wan0")], {"wan0"})
    assert script.startswith("table ip vmnet {}\ndelete table ip vmnet\n")
    assert script.count("masquerade") == 2 and script.count('iifname "wan0" drop') == 1
    assert "chain fwd_h" in script  # "odd.br" is no nft identifier: hashed chain name
    ns.ip("link", "add", "wan0", "type", "veth", "peer", "name", "w1")
    ns.run("nft", "-f", "-", input=script)  # applies (twice: it replaces itself)
    ns.run("nft", "-f", "-", input=script)
    listed = ns.run("nft", "list", "table", "ip", "vmnet").stdout
    for bridge in ("vmnet0", "iso-1", "odd.br"):
        assert f"chain {render_nft.chain_name(bridge)} {{" in listed
    ns.run("nft", "-f", "-", input=render_nft.table([]))  # none: the table goes
    assert "vmnet" not in ns.run("nft", "list", "ruleset").stdout


def test_the_dnsmasq_command_line_reads_no_host_file() -> None:
    paths = render_dnsmasq.Paths("/run/vmnet/ns-1/dnsmasq/vmnet0")
    nat = render_dnsmasq.argv("/usr/sbin/dnsmasq", _l3(), paths, user="dnsmasq",
                              group="nogroup", upstream=("192.0.2.53",), mtu=1400)
    assert nat[:4] == ["/usr/sbin/dnsmasq", "--conf-file=/dev/null", "--no-resolv",
                       "--no-hosts"]
    for want in ("--interface=vmnet0", "--bind-dynamic", "--listen-address=10.77.0.1",
                 "--dhcp-range=10.77.0.0,static,255.255.255.0,1h",
                 f"--dhcp-hostsdir={paths.hosts}", f"--pid-file={paths.pid}",
                 "--dhcp-option=option:mtu,1400", "--server=192.0.2.53", "--user=dnsmasq",
                 "--domain=vmnet", "--local=/vmnet/"):
        assert want in nat
    assert "--dhcp-option=option:router" not in nat
    iso = render_dnsmasq.argv("/usr/sbin/dnsmasq", _l3(kind="isolated", outbound=None), paths,
                              user="nobody", group="nogroup")
    assert "--dhcp-option=option:router" in iso and not any(a.startswith("--server")
                                                            for a in iso)
    assert render_dnsmasq.host_lines("52:54:00:00:00:01", "10.77.0.5", "vm1") == (
        "52:54:00:00:00:01,10.77.0.5,vm1\n", "10.77.0.5 vm1\n")
    assert render_dnsmasq.host_lines("52:54:00:00:00:01", "10.77.0.5", None)[1] is None


@pytest.mark.parametrize(("vm", "index", "name"), [
    ("vm1", 0, "vm1"), ("vm1", 2, "vm1-2"), ("Web", 0, "web"), ("a_b", 0, None),
    ("x" * 64, 0, None), ("-a", 0, None), ("é", 0, None)],
    ids=["plain", "second-nic", "lower", "underscore", "long", "dash", "unicode"])
def test_dns_names_of_nics(vm: str, index: int, name: str | None) -> None:
    assert l3.dns_name(vm, index) == name


# -- subnets and addresses ----------------------------------------------------------------
def test_subnet_choice_steps_around_what_is_taken() -> None:
    assert subnets.choose([]) == "10.77.0.1/24"
    taken = [("route 10.77.0.0/16", subnets.span("10.77.0.0/16")),
             ("address 10.78.0.9/24", subnets.span("10.78.0.9/24"))]
    assert subnets.choose(taken) == "10.78.1.1/24"
    everything = [("route 10.0.0.0/8", subnets.span("10.0.0.0/8"))]
    with pytest.raises(ConflictError, match="no free"):
        subnets.choose(everything)


def test_subnet_is_kept_across_runs(tmp_path: object) -> None:
    d = str(tmp_path)
    assert subnets.recall(d, "default") is None
    subnets.keep(d, "default", "10.77.3.1/24")
    assert subnets.recall(d, "default") == "10.77.3.1/24"
    subnets.forget(d, "default")
    assert subnets.recall(d, "default") is None


def test_derived_addresses_are_stable_unique_and_never_the_gateway() -> None:
    cfg = parse_config('[networks.small]\nbridge = "vs"\nkind = "nat"\n'
                       'address = "10.9.0.1/29"\n')
    rec = BridgeRecord("vs", "small", True, address="10.9.0.1/29", kind="nat")
    claims = Claims()
    got = []
    for i in range(5):  # a /29 has 6 hosts, one is the host's own: 5 guests
        vm = resolve_vm(cfg, f"g{i}", Overrides(network="small"), env=ENV)
        ip = l3.nic_address(vm, vm.nics[0], rec, claims, set(got))
        got.append(ip)
    assert len(set(got)) == 5 and "10.9.0.1" not in got
    assert all(ip.startswith("10.9.0.") and 1 < int(ip.rsplit(".", 1)[1]) < 7 for ip in got)
    vm = resolve_vm(cfg, "full", Overrides(network="small"), env=ENV)
    with pytest.raises(ConflictError, match="no free address"):
        l3.nic_address(vm, vm.nics[0], rec, claims, set(got))
    # the same MAC on an empty network: the same address every time
    first = resolve_vm(cfg, "g0", Overrides(network="small"), env=ENV)
    assert l3.nic_address(first, first.nics[0], rec, Claims(), set()) == got[0]


# -- records --------------------------------------------------------------------------
def test_bridge_records_of_before_read_as_kind_bridge_and_new_ones_round_trip() -> None:
    old = {"format": 2, "bridge": "br0", "network": "lan", "created": True}
    assert bridge_from_json(old).kind == "bridge"
    assert "kind" not in BridgeRecord("br0", "lan", True).to_json()  # written as before
    rec = BridgeRecord("vmnet0", "default", True, address="10.77.0.1/24", kind="nat",
                       outbound="wan0", sysctls={
                           "/proc/sys/net/ipv4/conf/wan0/forwarding": "0"},
                       fixes=[{"family": "ip", "table": "filter", "chain": "DOCKER-USER",
                               "hook": "forward"}])
    assert bridge_from_json(json.loads(json.dumps(rec.to_json()))) == rec
    for bad in ({"kind": "routed"}, {"sysctls": {"/etc/passwd": "x"}},
                {"sysctls": {"/proc/sys/net/../../x": "1"}}, {"fixes": [{"family": "ip"}]}):
        with pytest.raises(Corrupt):
            bridge_from_json({**old, **bad})


# -- the foreign-firewall scan over what nft really prints ---------------------------------
def _ruleset(ns: Netns, script: str) -> dict[str, object]:
    ns.run("nft", "flush", "ruleset")
    ns.run("nft", "-f", "-", input=script)
    return dict(json.loads(ns.run("nft", "-j", "list", "ruleset").stdout))


def test_the_scan_finds_what_drops_and_nothing_else(ns: Netns) -> None:
    if shutil.which("nft") is None:
        pytest.skip("nft missing (apt-get install nftables)")
    nat, iso = _l3(), _l3("vmnet-iso", "isolated", "10.77.1.1/24", None)
    docker = _ruleset(ns, "table ip filter {\n chain DOCKER-USER {\n }\n chain FORWARD {\n"
                      "  type filter hook forward priority filter; policy drop;\n"
                      "  jump DOCKER-USER\n }\n}\n")
    (f,) = firewall.scan(docker, nat, br_netfilter=False)
    assert (f.family, f.table, f.chain, f.hook) == ("ip", "filter", "DOCKER-USER", "forward")
    assert "table ip filter chain FORWARD" in f.text and "br_netfilter" not in f.text
    assert firewall.scan(docker, iso, br_netfilter=False) == []  # isolated forwards nothing
    (g,) = firewall.scan(docker, iso, br_netfilter=True)
    assert "guest-to-guest" in g.text
    # vmnet's own accepts there (what firewall_fix inserts) satisfy the scan
    fixed = _ruleset(ns, "table ip filter {\n chain DOCKER-USER {\n"
                     '  iifname "vmnet0" accept comment "vmnet:vmnet0"\n }\n'
                     " chain FORWARD {\n  type filter hook forward priority filter; "
                     "policy drop;\n  jump DOCKER-USER\n }\n}\n")
    assert firewall.scan(fixed, nat, br_netfilter=False) == []
    strict = _ruleset(ns, "table inet host {\n chain input {\n  type filter hook input "
                      "priority filter; policy drop;\n  ct state established accept\n }\n"
                      " chain output {\n  type filter hook output priority filter; "
                      "policy drop;\n }\n}\n")
    (h,) = firewall.scan(strict, nat, br_netfilter=False)
    assert (h.hook, h.chain) == ("input", "input") and "DHCP and DNS" in h.text
    accepting = _ruleset(ns, "table inet ok {\n chain forward {\n  type filter hook forward "
                         "priority filter; policy accept;\n }\n}\n")
    assert firewall.scan(accepting, nat, br_netfilter=True) == []
    # vmnet's own table never counts as foreign
    own = _ruleset(ns, render_nft.table([nat]))
    assert firewall.scan(own, nat, br_netfilter=True) == []
    ns.run("nft", "flush", "ruleset")
