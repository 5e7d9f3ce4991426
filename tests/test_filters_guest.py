"""Port filters and port isolation with real TCG guests on the default nat network.

tests/test_filters.py proves `--mac-filter`, `--ip-filter`, the guard and
`--port-isolation` with a process writing crafted frames into tap fds; here a real
guest kernel misbehaves (tests/guest/init.sh `vmnet.spoof=`): it answers DHCP
discoveries with a server of its own (busybox udhcpd), sends a gratuitous ARP for
the other guest's address, sends from an address that is not its own, and changes
its MAC.  What the host saw is read three ways, all inside the test's namespace:

- an AF_PACKET listener (SNIFF) on the spoofer's tap (what the guest sent: proof
  that it really did each thing) and on the bridge device vmnet0 (what passed the
  bridge: nft's bridge prerouting hook runs before the bridge delivers a frame
  to the host or learns its source);
- the host's neighbour table and the bridge's fdb, polled while it happens;
- both guests' consoles (their pings to the gateway).

The same spoofing from an unfiltered guest gets through on every count (the
control).  The guest's router advertisements come from tests/guest/ra.c, built into
the guest image where gcc links statically (install-deps brings gcc and libc6-dev).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from tests.guest import Guest, GuestImage
from tests.nsutil import Netns
from tests.test_nat import Site, assert_clean, dnsmasqs, vm_ip
from tests.test_nat import boot as nat_boot
from tests.test_run import BOOT_TIMEOUT, image  # noqa: F401 - the guest fixture
from tests.world import dnsmasq_path, public_tmpdir

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(dnsmasq_path() is None,
                                 reason="dnsmasq missing (apt-get install dnsmasq-base)"),
              pytest.mark.skipif(shutil.which("nft") is None,
                                 reason="nft missing (apt-get install nftables)")]

GATEWAY = "10.77.0.1"
SPOOF_MAC = "52:54:00:ba:d0:01"  # the MAC the spoofer takes
FOREIGN = ("10.77.0.200", "10.77.0.201", "10.77.0.202", "10.77.0.203")  # none of the VMs'
PING_OK_GW = rf"VMNET-PING-OK {re.escape(GATEWAY)}\s"
PING_LOST_GW = rf"VMNET-PING-LOST {re.escape(GATEWAY)}\s"

# Every IPv4 and ARP frame received (not sent) on the interfaces in argv[1:], once per
# distinct summary, as a JSON line:
#   ["arp", IF, ETH_SRC, OP, SENDER_MAC, SENDER_IP, TARGET_IP]
#   ["ip", IF, ETH_SRC, SRC, DST, PROTO, SPORT, DPORT]   (ports 0 but for TCP/UDP)
# One unbound socket sees every interface of the namespace; on a tap, "received" is
# what the guest sent; on the bridge device, what the bridge passed up to the host.
SNIFF = r"""
import json, socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
watch = set(sys.argv[1:])
mac = lambda b: ":".join(f"{x:02x}" for x in b)
seen = set()
print("ready", flush=True)
while True:
    data, addr = s.recvfrom(65536)
    if addr[0] not in watch or addr[2] == socket.PACKET_OUTGOING or len(data) < 42:
        continue
    etype = struct.unpack("!H", data[12:14])[0]
    if etype == 0x0806:
        rec = ("arp", addr[0], mac(data[6:12]), data[21], mac(data[22:28]),
               socket.inet_ntoa(data[28:32]), socket.inet_ntoa(data[38:42]))
    elif etype == 0x86DD:
        if data[20] != 58 or data[54] != 134:  # ICMPv6 router advertisements only
            continue
        rec = ("ra", addr[0], mac(data[6:12]), b"vmnet-rogue-ra" in data)
    elif etype == 0x0800:
        ihl, proto = (data[14] & 15) * 4, data[23]
        sport = dport = 0
        if proto in (6, 17) and len(data) >= 18 + ihl:
            sport, dport = struct.unpack("!HH", data[14 + ihl:18 + ihl])
        rec = ("ip", addr[0], mac(data[6:12]), socket.inet_ntoa(data[26:30]),
               socket.inet_ntoa(data[30:34]), proto, sport, dport)
    else:
        continue
    if rec not in seen:
        seen.add(rec)
        print(json.dumps(rec), flush=True)
"""

# Three DHCPDISCOVERs (broadcast flag set), broadcast out of argv[1]: any DHCP server
# on the bridge, the spoofer's udhcpd included, answers with a broadcast offer.
DISCOVER = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
chaddr = bytes.fromhex("02000000d15c")
pkt = struct.pack("!BBBBIHH16s16s64s128sI", 1, 1, 6, 0, 0x5EED0001, 0, 0x8000, b"\0" * 16,
                  chaddr, b"", b"", 0x63825363) + bytes([53, 1, 1, 255])
for _ in range(3):
    s.sendto(pkt, ("255.255.255.255", 67))
    time.sleep(0.3)
"""


@pytest.fixture
def site() -> Iterator[Site]:
    with public_tmpdir("vmnet-fguest-") as root:
        yield Site(root)


def boot(ns: Netns, site: Site, img: GuestImage, vm: str, *, ping: Sequence[str] = (),
         spoof: Sequence[str] = ()) -> Guest:
    """test_nat's guest on vmnet's tap (DHCP), pinging several peers."""
    return nat_boot(ns, site, img, vm, ping=",".join(ping) or None, spoof=spoof)


def vm_mac(ns: Netns, site: Site, vm: str) -> str:
    return str(json.loads(site.vmnet(ns, "ip", vm, "--json").stdout)["mac"]).lower()


def nic_states(ns: Netns, site: Site) -> dict[str, str]:
    """`vmnet status`'s state of each VM's first NIC."""
    vms: list[dict[str, Any]] = json.loads(site.vmnet(ns, "status", "--json").stdout)["vms"]
    return {str(v["vm"]): str(v["nics"][0]["state"]) for v in vms}


class Sniffer:
    """SNIFF in the namespace; `records()` stops it (by its PID) and parses what it saw."""

    def __init__(self, ns: Netns, *ifnames: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, sys.executable, "-c", SNIFF, *ifnames],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.stop()
            raise AssertionError(f"sniffer did not start: {line!r} {self.proc.stderr}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def records(self) -> list[list[object]]:
        self.stop()
        assert self.proc.stdout is not None
        out = [json.loads(ln) for ln in self.proc.stdout.read().splitlines() if ln]
        self.proc.stdout.close()
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return out


class Watch:
    """Polls the host's neighbour table and the bridge's fdb (every ~0.1 s) in a
    thread: every (address, MAC) and (MAC, port) seen while it ran."""

    def __init__(self, ns: Netns, bridge: str = "vmnet0") -> None:
        self.ns = ns
        self.bridge = bridge
        self.neigh: set[tuple[str, str]] = set()
        self.fdb: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        neigh = json.loads(self.ns.ip("-j", "neigh", "show", "dev", self.bridge,
                                       check=False).stdout
                           or "[]")
        fdb = json.loads(self.ns.run("bridge", "-j", "fdb", "show", "br", self.bridge,
                                     check=False).stdout
                         or "[]")
        with self._lock:
            self.neigh |= {(n["dst"], n["lladdr"].lower()) for n in neigh if "lladdr" in n}
            self.fdb |= {(f["mac"].lower(), f.get("ifname", "")) for f in fdb}

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(0.1)

    def until(self, what: Callable[[Watch], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if what(self):
                    return True
            time.sleep(0.1)
        with self._lock:
            return what(self)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._poll()  # a last look


@contextlib.contextmanager
def running(*guests: Guest) -> Iterator[None]:
    try:
        yield
    finally:
        for g in guests:
            g.stop()


def unused(*taken: str) -> list[str]:
    return [a for a in FOREIGN if a not in taken]


def ping_lines(g: Guest, peer: str, since: int) -> list[str]:
    return re.findall(rf"VMNET-PING-(OK|LOST) {re.escape(peer)}\s", g.output[since:])


@pytest.mark.qemu
@pytest.mark.parametrize("filtered", [True, False], ids=["filtered", "unfiltered-control"])
def test_a_spoofing_guest_is_stopped_by_its_filters(
        ns: Netns, site: Site, image: GuestImage, filtered: bool) -> None:  # noqa: F811
    """The spoofer (`--mac-filter --ip-filter`, the guard on by default; or nothing, the
    control) and a victim on the default network.  Filtered: its fixed lease and its
    ping to the gateway work, and nothing it spoofs passes the bridge; unfiltered, all
    of it does (and the victim's pings go to the spoofer)."""
    flags = ["--mac-filter", "--ip-filter"] if filtered else []
    site.vmnet(ns, "up", "spy", *flags)
    site.vmnet(ns, "up", "vic")
    sip, vip = vm_ip(ns, site, "spy"), vm_ip(ns, site, "vic")
    smac, vmac = vm_mac(ns, site, "spy"), vm_mac(ns, site, "vic")
    offered, foreign = unused(sip, vip)[:2]
    if image.no_ra_sender is not None:
        pytest.skip(image.no_ra_sender)
    spoof = [f"dhcpd:{offered}", "sleep:2", f"garp:{vip}", "ra", f"ip:{foreign}/24",
             f"mac:{SPOOF_MAC}"]
    sniffer = Sniffer(ns, "spy-0", "vmnet0")
    watch = Watch(ns)
    try:
        vic = boot(ns, site, image, "vic", ping=[GATEWAY])
        with running(vic):
            vic.wait_ready(BOOT_TIMEOUT)
            vic.wait_for(PING_OK_GW, 30)
            # the host knows the victim: the entry a gratuitous ARP would overwrite
            assert watch.until(lambda w: (vip, vmac) in w.neigh, 10), watch.neigh
            spy = boot(ns, site, image, "spy", ping=[GATEWAY], spoof=spoof)
            with running(spy):
                spy.wait_ready(BOOT_TIMEOUT)
                lease = spy.lease(BOOT_TIMEOUT)
                assert lease.ip == f"{sip}/24" and lease.router == GATEWAY, lease
                spy.wait_for(PING_OK_GW, 30)
                assert nic_states(ns, site) == {"spy": "ok", "vic": "ok"}
                spy.wait_for(rf"VMNET-SPOOF-DONE dhcpd:{re.escape(offered)}\s", 30)
                r = ns.run(sys.executable, "-c", DISCOVER, "vmnet0")
                assert r.returncode == 0, r.stderr
                at_mac = spy.wait_for(rf"VMNET-SPOOF-DONE mac:{SPOOF_MAC}\s", 30).end()
                res = spy.wait_for(
                    rf"VMNET-SPOOF-PING {re.escape(foreign)} {re.escape(GATEWAY)} (\S+)", 1)
                assert res.group(1) == ("LOST" if filtered else "OK"), spy.output
                if filtered:
                    # its own MAC gone, nothing of it reaches the gateway any more
                    spy.wait_for(PING_LOST_GW, 10, since=at_mac)
                    time.sleep(1)  # what would have come through had a moment
                else:
                    # the host and the bridge took the new MAC for the spoofer's address
                    assert watch.until(lambda w: (sip, SPOOF_MAC) in w.neigh and
                                       (SPOOF_MAC, "spy-0") in w.fdb, 10), (watch.neigh,
                                                                            watch.fdb)
                    # the victim's answers went to the spoofer (its gratuitous ARP)
                    vic.wait_for(PING_LOST_GW, 10)
                    time.sleep(3)
                    assert ping_lines(spy, GATEWAY, at_mac)[-1:] in ([], ["OK"]), spy.output
                assert "VMNET-ERROR" not in spy.output, spy.output
            if filtered:
                assert ping_lines(vic, GATEWAY, 0) == ["OK"], vic.output  # never lost
    finally:
        watch.stop()
        recs = sniffer.records()

    def kinds(ifname: str) -> set[str]:
        got = set()
        for rec in recs:
            if rec[1] != ifname:
                continue
            if rec[2] in (smac, SPOOF_MAC) and rec[0] == "ip" and rec[5:] == [17, 67, 68]:
                got.add("dhcp-offer")
            if rec[0] == "arp" and rec[2] == smac and rec[5] == vip:
                got.add("garp-for-victim")
            if rec[0] == "ip" and rec[3] == foreign:
                got.add("foreign-source")
            if rec[2] == SPOOF_MAC:
                got.add("spoofed-mac")
            if rec[0] == "ra" and rec[2] == smac and rec[3] is True:
                got.add("router-advert")
        return got

    everything = {"dhcp-offer", "garp-for-victim", "foreign-source", "spoofed-mac",
                  "router-advert"}
    assert kinds("spy-0") == everything, recs  # the guest really sent all of it
    assert kinds("vmnet0") == (set() if filtered else everything), recs
    # what the host and the bridge learned
    about_victim = {mac for ip, mac in watch.neigh if ip == vip}
    if filtered:
        assert about_victim == {vmac}, watch.neigh
        assert not any(mac == SPOOF_MAC for _, mac in watch.neigh), watch.neigh
        assert not any(ip == foreign for ip, _ in watch.neigh), watch.neigh
        assert not any(mac == SPOOF_MAC for mac, _ in watch.fdb), watch.fdb
    else:
        assert smac in about_victim and (foreign, smac) in watch.neigh, watch.neigh
    site.vmnet(ns, "down", "spy", "vic")
    assert_clean(ns, wan=None)
    assert "bridge vmnet" not in ns.run("nft", "list", "ruleset").stdout


@pytest.mark.qemu
def test_isolated_guests_reach_the_gateway_but_not_each_other(
        ns: Netns, site: Site, image: GuestImage) -> None:  # noqa: F811
    """Two `--port-isolation` guests ping the gateway and each other: the gateway
    answers both, the other never does; with one port's isolation switched off by
    hand (the control), they reach each other."""
    site.vmnet(ns, "up", "iso1", "--port-isolation")
    site.vmnet(ns, "up", "iso2", "--port-isolation")
    ip1, ip2 = vm_ip(ns, site, "iso1"), vm_ip(ns, site, "iso2")
    g1 = boot(ns, site, image, "iso1", ping=[GATEWAY, ip2])
    g2 = boot(ns, site, image, "iso2", ping=[GATEWAY, ip1])
    with running(g1, g2):
        for g, ip in ((g1, ip1), (g2, ip2)):
            g.wait_ready(BOOT_TIMEOUT)
            assert g.lease(BOOT_TIMEOUT).ip == f"{ip}/24"
        for g in (g1, g2):
            g.wait_for(PING_OK_GW, 30)
        time.sleep(5)  # both have pinged each other for 5 s (and longer) by now
        assert ping_lines(g1, ip2, 0) == [] and ping_lines(g2, ip1, 0) == [], (
            g1.output, g2.output)
        assert ping_lines(g1, GATEWAY, 0) == ["OK"] and ping_lines(g2, GATEWAY, 0) == ["OK"]
        ns.run("bridge", "link", "set", "dev", "iso1-0", "isolated", "off")
        g1.wait_for(rf"VMNET-PING-OK {re.escape(ip2)}\s", 15)
        g2.wait_for(rf"VMNET-PING-OK {re.escape(ip1)}\s", 15)
    site.vmnet(ns, "down", "iso1", "iso2")
    assert_clean(ns, wan=None)
    assert dnsmasqs(ns) == []
