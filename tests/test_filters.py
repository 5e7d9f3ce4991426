"""Port filters (mac_filter, ip_filter, guard) in the kernel: a process holding tap fds
stands in for the guests.  It writes crafted frames into a filtered VM's tap (as its
guest would send them) and reads what the bridge delivers to another VM's tap; the
same frames from an unfiltered VM all arrive (the control that shows the test can
fail).  Then `down` leaves no table behind."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nsutil import Netns
from tests.vmnetcli import vmnet
from tests.world import dnsmasq_path, public_tmpdir

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(dnsmasq_path() is None,
                                 reason="dnsmasq missing (apt-get install dnsmasq-base)")]

# Writes FRAMES (built from the sender's MAC and IP) into tap argv[1], reads tap argv[2]
# for 1.5 s, prints the markers that arrived.
# What every stand-in script starts with: open an existing tap as its guest would.
TAP = r"""
import fcntl, json, os, select, struct, sys, time
TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000

def tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd
"""
STANDIN = TAP + r"""

def mac(text):
    return bytes.fromhex(text.replace(":", ""))

def ip4(text):
    return bytes(int(x) for x in text.split("."))

def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

def eth(src, etype, payload, dst="ff:ff:ff:ff:ff:ff"):
    return mac(dst) + mac(src) + struct.pack("!H", etype) + payload

def udp4(src, dst, sport, dport, body):
    u = struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(u), 0, 0, 64, 17, 0, ip4(src), ip4(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + u

def arp(smac, sip, tip):
    return struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac(smac), ip4(sip),
                       b"\0" * 6, ip4(tip))

def ip6(src, nh, body, dst="ff020000000000000000000000000001"):
    return struct.pack("!IHBB", 6 << 28, len(body), nh, 255) + bytes.fromhex(src) + \
        bytes.fromhex(dst) + body

sender, observer, smac, sip = sys.argv[1:5]
other_mac, other_ip = "52:54:00:de:ad:01", "10.77.0.250"
LL = "fe800000000000000000000000000001"
GLOBAL = "20010db8000000000000000000000005"
frames = {
    "good-ip": eth(smac, 0x0800, udp4(sip, "255.255.255.255", 5000, 5000, b"good-ip")),
    "spoof-mac": eth(other_mac, 0x0800, udp4(sip, "255.255.255.255", 5000, 5000,
                                              b"spoof-mac")),
    "spoof-ip": eth(smac, 0x0800, udp4(other_ip, "255.255.255.255", 5000, 5000, b"spoof-ip")),
    "dhcp-discover": eth(smac, 0x0800, udp4("0.0.0.0", "255.255.255.255", 68, 67,
                                             b"dhcp-discover")),
    "rogue-dhcp": eth(smac, 0x0800, udp4(sip, "255.255.255.255", 67, 68, b"rogue-dhcp")),
    "arp-good": eth(smac, 0x0806, arp(smac, sip, "10.77.0.201")),
    "arp-probe": eth(smac, 0x0806, arp(smac, "0.0.0.0", "10.77.0.202")),
    "arp-other-ip": eth(smac, 0x0806, arp(smac, other_ip, "10.77.0.203")),
    "arp-other-mac": eth(smac, 0x0806, arp(other_mac, sip, "10.77.0.204")),
    "v6-linklocal": eth(smac, 0x86DD, ip6(LL, 17, struct.pack("!HHHH", 5000, 5000, 20, 0)
                                           + b"v6-linklocal")),
    "v6-global": eth(smac, 0x86DD, ip6(GLOBAL, 17, struct.pack("!HHHH", 5000, 5000, 17, 0)
                                        + b"v6-global")),
    "router-advert": eth(smac, 0x86DD, ip6(LL, 58, bytes([134, 0, 0, 0]) + b"\0" * 12
                                            + b"router-advert")),
    "vlan-tagged": eth(smac, 0x8100, struct.pack("!HH", 7, 0x0800) +
                       udp4(sip, "255.255.255.255", 5000, 5000, b"vlan-tagged")),
    # NDP: a solicitation whose source link-layer option is the VM's / another's MAC, an
    # advertisement for a link-local target / for another's global address
    "ns-good": eth(smac, 0x86DD, ip6(LL, 58, bytes([135, 0, 0, 0, 0, 0, 0, 0]) +
                                     bytes.fromhex(GLOBAL) + bytes([1, 1]) + mac(smac) +
                                     b"ns-good")),
    "ns-spoof": eth(smac, 0x86DD, ip6(LL, 58, bytes([135, 0, 0, 0, 0, 0, 0, 0]) +
                                      bytes.fromhex(GLOBAL) + bytes([1, 1]) +
                                      mac(other_mac) + b"ns-spoof")),
    "na-ll-target": eth(smac, 0x86DD, ip6(LL, 58, bytes([136, 0, 0, 0, 0x20, 0, 0, 0]) +
                                          bytes.fromhex(LL) + bytes([2, 1]) + mac(smac) +
                                          b"na-ll-target")),
    "na-other-target": eth(smac, 0x86DD, ip6(LL, 58, bytes([136, 0, 0, 0, 0x20, 0, 0, 0]) +
                                             bytes.fromhex(GLOBAL) + bytes([2, 1]) +
                                             mac(smac) + b"na-other-target")),
}
arp_marks = {"10.77.0.201": "arp-good", "10.77.0.202": "arp-probe",
             "10.77.0.203": "arp-other-ip", "10.77.0.204": "arp-other-mac"}
a, b = tap(sender), tap(observer)
time.sleep(0.3)  # carrier on: the ports forward
for name, frame in frames.items():
    os.write(a, frame)
seen = set()
end = time.monotonic() + 1.5
while time.monotonic() < end:
    r, _, _ = select.select([b], [], [], 0.1)
    if not r:
        continue
    got = os.read(b, 65536)
    if got[12:14] == b"\x08\x06":
        tip = ".".join(str(x) for x in got[38:42])
        if tip in arp_marks:
            seen.add(arp_marks[tip])
        continue
    for name in frames:
        if name.encode() in got:
            seen.add(name)
print(json.dumps(sorted(seen)))
"""

ALLOWED = {"good-ip", "dhcp-discover", "arp-good", "arp-probe", "v6-linklocal", "ns-good",
           "na-ll-target"}
EVERYTHING = ALLOWED | {"spoof-mac", "spoof-ip", "rogue-dhcp", "arp-other-ip",
                        "arp-other-mac", "v6-global", "router-advert", "vlan-tagged",
                        "ns-spoof", "na-other-target"}


@pytest.fixture
def site() -> Iterator[tuple[str, str]]:
    with public_tmpdir("vmnet-filter-") as d:
        cfg = d / "vmnet.toml"
        cfg.write_text(f'[defaults]\ndata_dir = "{d}/data"\n')
        cfg.chmod(0o644)
        yield str(d / "state"), str(cfg)


def standin(ns: Netns, sender: str, observer: str, mac: str, ip: str) -> set[str]:
    r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", STANDIN,
                        sender, observer, mac, ip], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout))


def info(ns: Netns, state: str, cfg: str, vm: str) -> tuple[str, str]:
    d = json.loads(vmnet(ns, state, "ip", vm, "--json", config=cfg, check=True).stdout)
    return str(d["mac"]), str(d["ip"])


def test_a_filtered_guest_gets_only_its_own_traffic_through(
        ns: Netns, site: tuple[str, str]) -> None:
    state, cfg = site
    vmnet(ns, state, "up", "fv", "--mac-filter", "--ip-filter", config=cfg, check=True)
    vmnet(ns, state, "up", "free", config=cfg, check=True)
    vmnet(ns, state, "up", "obs", config=cfg, check=True)
    fmac, fip = info(ns, state, cfg, "fv")
    omac, oip = info(ns, state, cfg, "free")
    assert standin(ns, "free-0", "obs-0", omac, oip) == EVERYTHING  # the control
    assert standin(ns, "fv-0", "obs-0", fmac, fip) == ALLOWED
    st = json.loads(vmnet(ns, state, "status", "--json", config=cfg, check=True).stdout)
    states = {v["vm"]: v["nics"][0]["state"] for v in st["vms"]}
    assert states == {"fv": "ok", "free": "ok", "obs": "ok"}
    # the filter removed behind vmnet's back: status says so; `up` puts it back
    ns.run("nft", "delete", "table", "bridge", "vmnet")
    st = json.loads(vmnet(ns, state, "status", "--json", config=cfg, check=True).stdout)
    assert {v["vm"]: v["nics"][0]["state"] for v in st["vms"]}["fv"].startswith(
        "filter missing")
    vmnet(ns, state, "up", "fv", config=cfg, check=True)  # the recorded filter, again
    assert standin(ns, "fv-0", "obs-0", fmac, fip) == ALLOWED
    vmnet(ns, state, "down", "fv", config=cfg, check=True)
    assert "bridge vmnet" not in ns.run("nft", "list", "ruleset").stdout
    vmnet(ns, state, "down", "free", "obs", config=cfg, check=True)


def test_mac_filter_alone_and_the_guard(ns: Netns, site: tuple[str, str]) -> None:
    state, cfg = site
    vmnet(ns, state, "up", "m1", "--network", "bare", "--mac-filter", config=cfg, check=True)
    vmnet(ns, state, "up", "g1", "--network", "bare", "--mac-filter", "--no-guard",
          config=cfg, check=True)
    vmnet(ns, state, "up", "ob", "--network", "bare", config=cfg, check=True)
    mmac = json.loads(vmnet(ns, state, "status", "--json", config=cfg).stdout)["vms"]
    macs = {v["vm"]: v["nics"][0]["mac"] for v in mmac}
    got = standin(ns, "m1-0", "ob-0", macs["m1"], "10.77.0.99")
    assert got == {"good-ip", "spoof-ip", "dhcp-discover", "arp-good", "arp-probe",
                   "arp-other-ip", "v6-linklocal", "v6-global", "ns-good", "na-ll-target",
                   "na-other-target"}, got  # MACs only: the addresses are free
    got = standin(ns, "g1-0", "ob-0", macs["g1"], "10.77.0.99")
    assert {"rogue-dhcp", "router-advert"} <= got and "spoof-mac" not in got
    vmnet(ns, state, "down", "m1", "g1", "ob", config=cfg, check=True)
    assert "bridge vmnet" not in ns.run("nft", "list", "ruleset").stdout


def test_filters_in_bulk_are_one_transaction_and_a_dry_run(ns: Netns,
                                                           site: tuple[str, str]) -> None:
    state, cfg = site
    names = [f"b{i}" for i in range(12)]
    r = vmnet(ns, state, "up", *names, "--mac-filter", "--dry-run", config=cfg, check=True)
    assert r.stdout.count("add element bridge vmnet ports { ") == 12  # each VM's plan
    r = vmnet(ns, state, "-v", "up", *names, "--mac-filter", config=cfg, check=True)
    # as applied (-v logs each step run): the nat network's table, then one transaction
    # for the twelve filters, before the first tap joins the bridge
    assert r.stderr.count("nft -f - <<'EOF'") == 2, r.stderr
    assert r.stderr.index("add element bridge vmnet ports { \"b11-0\"") < \
        r.stderr.index("link set b0-0 master")
    listed = ns.run("nft", "list", "map", "bridge", "vmnet", "ports").stdout
    assert all(f'"{n}-0" : jump p_{n}-0' in listed for n in names), listed
    vmnet(ns, state, "down", *names[:6], config=cfg, check=True)
    listed = ns.run("nft", "list", "map", "bridge", "vmnet", "ports").stdout
    assert not any(f'"{n}-0"' in listed for n in names[:6])
    assert all(f'"{n}-0"' in listed for n in names[6:])
    vmnet(ns, state, "down", "--all", config=cfg, check=True)
    assert "vmnet" not in ns.run("nft", "list", "ruleset").stdout


def test_filter_bad_input_is_one_line(ns: Netns, site: tuple[str, str], tmp_path: Path
                                      ) -> None:
    state, cfg = site
    r = vmnet(ns, state, "up", "x", "--network", "bare", "--ip-filter", config=cfg)
    assert r.returncode == 2 and "no address of it is known" in r.stderr
    assert r.stderr.count("\n") == 1
    bad = tmp_path / "bad.toml"
    bad.write_text('[vms.x]\n[[vms.x.nics]]\naddresses = ["10.0.0.0/8"]\n')
    r = vmnet(ns, state, "up", "x", config=str(bad))
    assert r.returncode == 2 and "addresses[0]" in r.stderr
    assert "x-0" not in ns.links()


# -- without a kernel ---------------------------------------------------------------------
def test_rules_per_setting() -> None:
    from vmnet.nicpolicy.filters import PortFilter, rules

    both = rules(PortFilter("t", "52:54:00:00:00:01", True, True, True, ("10.0.0.5",),
                            ("2001:db8::5",)))
    assert both[0] == "ether saddr != 52:54:00:00:00:01 drop"
    assert "ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept" in both
    assert both.index("ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept") < \
        both.index("ether type ip ip saddr != { 10.0.0.5 } drop")
    assert "ether type ip6 ip6 saddr != { ::, fe80::/10, 2001:db8::5 } drop" in both
    assert "ether type arp arp saddr ip != 0.0.0.0 arp saddr ip != 10.0.0.5 drop" in both
    assert both[-1] == "ether type != @l3_types drop"  # a named set, made once per table
    v4_only = rules(PortFilter("t", "52:54:00:00:00:01", False, True, False, ("10.0.0.5",
                                                                             "10.0.0.6")))
    assert "ether type ip6 ip6 saddr != @link_local6 drop" in v4_only
    assert "ether type arp arp saddr ip != { 0.0.0.0, 10.0.0.5, 10.0.0.6 } drop" in v4_only
    guard_only = rules(PortFilter("t", "52:54:00:00:00:01", False, False, True))
    assert all("saddr" not in r for r in guard_only) and len(guard_only) == 4
    assert rules(PortFilter("t", "52:54:00:00:00:01", False, False, False)) == []
    no_v4 = rules(PortFilter("t", "52:54:00:00:00:01", False, True, False, (), ("fd00::1",)))
    assert "ether type ip drop" in no_v4  # IPv4 but DHCP discovery, with no IPv4 known


def test_merge_makes_one_transaction_where_the_first_stood() -> None:
    from vmnet.engine.steps import AttachTap, CreateTap, DeleteLinks
    from vmnet.kernel.base import TapSpec
    from vmnet.nicpolicy.filters import PortFilter, ProtectPorts, UnprotectPorts, merge

    def f(t: str) -> ProtectPorts:
        return ProtectPorts((PortFilter(t, "52:54:00:00:00:01", True, False, True),))

    def tap(t: str) -> CreateTap:
        return CreateTap(TapSpec(t, None, None, False, "fe:54:00:00:00:01", None, "x"))

    steps = [f("a"), tap("a"), AttachTap("a", "br"), f("b"), tap("b"), AttachTap("b", "br"),
             UnprotectPorts(("c",)), DeleteLinks(("c",)), UnprotectPorts(("d",))]
    out = merge(steps)
    assert isinstance(out[0], ProtectPorts) and [p.tap for p in out[0].filters] == ["a", "b"]
    assert [type(s).__name__ for s in out] == ["ProtectPorts", "CreateTap", "AttachTap",
                                              "CreateTap", "AttachTap", "UnprotectPorts",
                                              "DeleteLinks"]
    assert out[5].taps == ("c", "d")  # type: ignore[attr-defined]
    assert merge([tap("a")]) == [tap("a")]


def test_filter_records_round_trip_and_old_records_have_none() -> None:
    from vmnet.state.records import NicRecord, vm_from_json

    base = {"format": 2, "vm": "v", "mode": "up", "phase": "ready",
            "writer": {"pid": 1, "start": 1},
            "nics": [{"index": 0, "tap": "v-0", "bridge": "b", "network": "n",
                      "mac": "52:54:00:00:00:01", "tap_mac": "fe:54:00:00:00:01",
                      "mtu": None, "queues": 1, "vnet_hdr": True, "owner": 0,
                      "group": None}]}
    assert vm_from_json(base).nics[0].filter is None
    n = NicRecord(0, "v-0", "b", "n", "52:54:00:00:00:01", "fe:54:00:00:00:01", None, 1,
                  True, 0, None, filter={"mac": True, "ip": False, "guard": True,
                                         "addresses": ["10.0.0.9"]})
    assert "filter" in n.to_json()
    back = vm_from_json({**base, "nics": [n.to_json()]}).nics[0]
    assert back.filter == n.filter and back.policy_spec()["addresses"] == ("10.0.0.9",)
    from vmnet.state.records import Corrupt

    with pytest.raises(Corrupt):
        vm_from_json({**base, "nics": [{**n.to_json(), "filter": {"mac": "yes"}}]})


# -- port isolation ------------------------------------------------------------------------
# From tap argv[1] (MAC argv[2], IP argv[3]): a broadcast, a unicast to argv[4]'s MAC, and
# an ARP request for the gateway argv[5]; reads every tap in argv[6:] (and argv[1] for the
# gateway's ARP reply) for 1.5 s: which of them got what.
ISOLATION = TAP + r"""
mac = lambda t: bytes.fromhex(t.replace(":", ""))
ip4 = lambda t: bytes(int(x) for x in t.split("."))
src, smac, sip, peer_mac, gw, *others = sys.argv[1:]
fds = {n: tap(n) for n in [src, *others]}
time.sleep(0.3)
a = fds[src]
os.write(a, mac("ff:ff:ff:ff:ff:ff") + mac(smac) + b"\x88\xb5" + b"isolation-bcast")
os.write(a, mac(peer_mac) + mac(smac) + b"\x88\xb5" + b"isolation-ucast")
os.write(a, mac("ff:ff:ff:ff:ff:ff") + mac("52:54:00:de:ad:02") + b"\x88\xb5" + b"learn-me")
os.write(a, mac("ff:ff:ff:ff:ff:ff") + mac(smac) + b"\x08\x06" + struct.pack(
    "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac(smac), ip4(sip), b"\0" * 6, ip4(gw)))
seen = {n: [] for n in fds}
end = time.monotonic() + 1.5
while time.monotonic() < end:
    r, _, _ = select.select(list(fds.values()), [], [], 0.1)
    for fd in r:
        name = next(n for n, f in fds.items() if f == fd)
        got = os.read(fd, 65536)
        if b"isolation-bcast" in got:
            seen[name].append("bcast")
        elif b"isolation-ucast" in got:
            seen[name].append("ucast")
        elif got[12:14] == b"\x08\x06" and got[20:22] == b"\x00\x02" and got[28:32] == ip4(gw):
            seen[name].append("gateway-arp-reply")
print(json.dumps({n: sorted(set(v)) for n, v in seen.items()}))
"""


def test_isolated_ports_reach_the_gateway_and_other_ports_but_not_each_other(
        ns: Netns, site: tuple[str, str]) -> None:
    state, cfg = site
    for vm, extra in (("i1", ["--port-isolation"]), ("i2", ["--port-isolation"]),
                      ("n1", [])):
        vmnet(ns, state, "up", vm, *extra, config=cfg, check=True)
    info_ = {vm: info(ns, state, cfg, vm) for vm in ("i1", "i2", "n1")}
    links = ns.links()
    assert links["i1-0"]["linkinfo"]["info_slave_data"]["isolated"] is True
    assert links["i1-0"]["linkinfo"]["info_slave_data"]["learning"] is False
    assert links["n1-0"]["linkinfo"]["info_slave_data"]["isolated"] is False
    fdb = ns.run("bridge", "fdb", "show", "dev", "i1-0").stdout
    assert f"{info_['i1'][0]} master vmnet0 static" in fdb, fdb

    def run(src: str, peer: str, *others: str) -> dict[str, list[str]]:
        r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", ISOLATION,
                            f"{src}-0", info_[src][0], info_[src][1], info_[peer][0],
                            "10.77.0.1", *(f"{o}-0" for o in others)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return dict(json.loads(r.stdout))

    got = run("i1", "i2", "i2", "n1")
    assert got["i2-0"] == [], got  # isolated from the other isolated port, both ways
    assert got["n1-0"] == ["bcast"], got  # a port that is not isolated hears it
    assert got["i1-0"] == ["gateway-arp-reply"], got  # the gateway (the bridge) answers
    got = run("n1", "i1", "i1", "i2")
    assert got["i1-0"] == ["bcast", "ucast"] and got["i2-0"] == ["bcast"], got
    # learning is off on i1: a frame from another source MAC taught the bridge nothing
    # there, while n1 (learning on) had the same MAC learned from the same frame
    assert "52:54:00:de:ad:02" not in ns.run("bridge", "fdb", "show", "dev", "i1-0").stdout
    assert "52:54:00:de:ad:02" in ns.run("bridge", "fdb", "show", "dev", "n1-0").stdout
    st = json.loads(vmnet(ns, state, "status", "--json", config=cfg, check=True).stdout)
    assert {v["vm"]: v["nics"][0]["state"] for v in st["vms"]} == {
        "i1": "ok", "i2": "ok", "n1": "ok"}
    ns.run("bridge", "link", "set", "dev", "i1-0", "isolated", "off")
    st = json.loads(vmnet(ns, state, "status", "--json", config=cfg, check=True).stdout)
    assert {v["vm"]: v["nics"][0]["state"] for v in st["vms"]}["i1"] == "not isolated"
    vmnet(ns, state, "up", "i1", config=cfg, check=True)  # the recorded setting, again
    assert ns.links()["i1-0"]["linkinfo"]["info_slave_data"]["isolated"] is True
    vmnet(ns, state, "down", "--all", config=cfg, check=True)
    assert not [n for n in ns.links() if n.startswith(("i1", "i2", "n1", "vmnet"))]


# -- rates ---------------------------------------------------------------------------------
# Writes 1000-byte frames into tap argv[1] (source MAC argv[2]) as fast as it can for
# argv[4] seconds while a thread reads tap argv[3]: prints the bytes per second received
# in the steady state (from 0.5 s after the start to the end of the writing: the
# policer's burst and the frames still queued when the writer stops are not the rate).
BLAST = TAP + r"""
import threading
src, smac, dst, secs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
a, b = tap(src), tap(dst)
time.sleep(0.3)
frame = b"\xff" * 6 + bytes.fromhex(smac.replace(":", "")) + b"\x88\xb5" + b"r" * 986
got = []
t0 = time.monotonic()
stop = t0 + secs
def reader():
    while time.monotonic() < stop:
        r, _, _ = select.select([b], [], [], 0.05)
        if r:
            got.append((time.monotonic(), len(os.read(b, 65536))))
t = threading.Thread(target=reader)
t.start()
while time.monotonic() < stop:
    for _ in range(64):
        try:
            os.write(a, frame)
        except BlockingIOError:
            pass
t.join()
start = t0 + 0.5
print(sum(n for at, n in got if start <= at <= stop) / (stop - start))
"""


def blast(ns: Netns, src: str, mac: str, dst: str, secs: float = 2.0) -> float:
    r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", BLAST, src,
                        mac, dst, str(secs)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return float(r.stdout) * 8  # bits per second


def test_rates_hold_within_ten_percent_both_ways(ns: Netns, site: tuple[str, str]) -> None:
    from tests import figures

    state, cfg = site
    target = 20_000_000
    vmnet(ns, state, "up", "rf", "--rate-from-vm", "20mbit", config=cfg, check=True)
    vmnet(ns, state, "up", "rt", "--rate-to-vm", "20mbit", config=cfg, check=True)
    vmnet(ns, state, "up", "rx", config=cfg, check=True)
    macs = {vm: info(ns, state, cfg, vm)[0] for vm in ("rf", "rt", "rx")}
    free = blast(ns, "rx-0", macs["rx"], "rf-0")  # the control: nothing limits rx -> rf
    from_vm = blast(ns, "rf-0", macs["rf"], "rx-0")
    to_vm = blast(ns, "rx-0", macs["rx"], "rt-0")
    figures.report("rate", "policer", target_mbit=target // 10**6,
                   from_vm_mbit=round(from_vm / 1e6, 2), to_vm_mbit=round(to_vm / 1e6, 2),
                   unlimited_mbit=round(free / 1e6, 1))
    assert free > 3 * target, free
    assert abs(from_vm - target) <= 0.1 * target, from_vm
    assert abs(to_vm - target) <= 0.1 * target, to_vm
    st = json.loads(vmnet(ns, state, "status", "--json", config=cfg, check=True).stdout)
    assert {v["vm"]: v["nics"][0]["state"] for v in st["vms"]} == {
        "rf": "ok", "rt": "ok", "rx": "ok"}
    vmnet(ns, state, "down", "--all", config=cfg, check=True)
    assert "vmnet" not in ns.run("nft", "list", "ruleset").stdout


@pytest.mark.parametrize(("text", "says"), [
    ("100", "not a rate with a unit"), ("fast", "not a rate"), ("1tbit", "not a rate"),
    ("1kbit", "outside"), ("12.5mbit", None), ("1gbit", None), ("10mbps", None)],
    ids=["no-unit", "word", "unknown-unit", "too-slow", "fraction", "gbit", "bytes"])
def test_rate_values(text: str, says: str | None) -> None:
    from vmnet.errors import InputError
    from vmnet.model import validate

    if says is None:
        assert validate.rate(text, "--rate-to-vm") > 0
        return
    with pytest.raises(InputError, match=says):
        validate.rate(text, "--rate-to-vm")


# -- the same settings through libvirt's metadata ------------------------------------------
def test_policy_fields_round_trip_through_domain_metadata() -> None:
    from vmnet.config import Overrides
    from vmnet.integrations.libvirt.domainxml import VmEntry, override_fields

    ov = Overrides(mac_filter=True, ip_filter=True, no_guard=True, port_isolation=True,
                   rate_to_vm="100mbit", rate_from_vm="50mbit", vlan=30, network="lab",
                   ips=("10.0.0.5",))
    fields = override_fields(ov)
    assert ("mac-filter", "on") in fields and ("guard", "off") in fields
    assert ("rate-to-vm", "100mbit") in fields and ("vlan", "30") in fields
    assert VmEntry("v", fields).overrides() == ov
    from vmnet.errors import InputError

    with pytest.raises(InputError, match="only 'off'"):
        VmEntry("v", (("guard", "on"),)).overrides()
    with pytest.raises(InputError, match="'on' or 'off'"):
        VmEntry("v", (("mac-filter", "yes"),)).overrides()


def test_the_hook_applies_the_domains_policy(ns: Netns, site: tuple[str, str]) -> None:
    from tests.test_hook import domain_xml, run_hook
    from vmnet.config import Overrides

    state, cfg = site
    xml = domain_xml("pd", "0b7e0000-1111-2222-3333-444455556666",
                     [("hp", Overrides(mac_filter=True, rate_to_vm="20mbit",
                                       network="bare"))], cfg)
    assert "<vmnet:mac-filter>on</vmnet:mac-filter>" in xml
    res = run_hook(ns, state, cfg, "pd", "prepare", "begin", xml)
    assert res.returncode == 0, res.stderr
    chain = ns.run("nft", "list", "table", "bridge", "vmnet").stdout
    assert "chain p_hp-0" in chain and "limit rate over 2500000 bytes/second" in chain
    res = run_hook(ns, state, cfg, "pd", "release", "end", xml)
    assert res.returncode == 0, res.stderr
    assert "bridge vmnet" not in ns.run("nft", "list", "ruleset").stdout


def test_addresses_outside_the_network_are_refused(ns: Netns, site: tuple[str, str],
                                                   tmp_path: Path) -> None:
    state, cfg = site
    bad = tmp_path / "bad.toml"
    bad.write_text(Path(cfg).read_text() + '[vms.o]\n[[vms.o.nics]]\nip_filter = true\n'
                   'addresses = ["192.0.2.7"]\n')
    r = vmnet(ns, state, "up", "o", config=str(bad))
    assert r.returncode == 2 and "192.0.2.7" in r.stderr and "outside network" in r.stderr
    assert r.stderr.count("\n") == 1
    assert "o-0" not in ns.links() and "vmnet" not in ns.run("nft", "list", "ruleset").stdout
