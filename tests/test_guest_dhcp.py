"""The test guest's DHCP, DNS and HTTP-fetch options, and tests.world, proved
without any of vmnet's own code: a bridge, a tap, dnsmasq, nft masquerade and
a world namespace, all made here by hand inside throwaway namespaces."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.guest import (
    GuestConsole,
    GuestDied,
    GuestImage,
    GuestTimeout,
    boot_guest,
    ensure_guest,
    guest_argv,
    http_get_from_ns,
    qemu_available,
)
from tests.guest.qemu import Lease
from tests.nsutil import Netns, netns, sh
from tests.world import (
    EXAMPLE_IP,
    EXAMPLE_NAME,
    dnsmasq,
    dnsmasq_path,
    public_tmpdir,
    world,
)

BOOT_TIMEOUT = 90.0  # TCG on two slow cores
GATEWAY = "10.98.0.1"
SUBNET = "10.98.0.0/24"
GUEST_MAC = "52:54:00:98:00:32"
GUEST_IP = "10.98.0.50"  # its static lease
GUEST_NAME = "guest1"  # sent by the guest (udhcpc -x hostname:), not in the static lease
DOMAIN = "vmnet"
DB_IP, DB_NAME = "10.98.0.60", "db"  # in dnsmasq's --hostsdir
MTU = 1400
NAT = f"""table ip t {{
    chain p {{
        type nat hook postrouting priority srcnat; ip saddr {SUBNET} oifname "wan0" masquerade
    }}
}}
"""


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, taps, dnsmasq)")


def _need_dnsmasq() -> None:
    if dnsmasq_path() is None:
        pytest.skip("dnsmasq missing (Debian package dnsmasq-base)")


def _nslookup(ns: Netns, name: str, server: str) -> str | None:
    """The first address busybox nslookup prints for ``name`` (its exit status
    also reflects the AAAA query, so it is no use)."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    out = ns.run(busybox, "nslookup", name, server, check=False).stdout
    m = re.search(r"^Name:.*\n(?:.*\n)*?Address:?\s+(\S+)", out, re.M)
    return m.group(1) if m else None


def test_guest_argv_dhcp_resolve_fetch() -> None:
    image = GuestImage(kernel=Path("/k"), initrd=Path("/i"))
    argv = guest_argv([], ip="10.0.1.2/24", dhcp=True, hostname="g1",
                      resolve=["db", "example.test"], fetch="http://198.51.100.2/", image=image)
    assert argv[argv.index("-append") + 1] == (
        "console=ttyS0 quiet panic=-1 vmnet.ip=10.0.1.2/24 vmnet.dhcp=1 vmnet.hostname=g1"
        " vmnet.resolve=db,example.test vmnet.fetch=http://198.51.100.2/"
    )
    assert argv[argv.index("-accel") + 1] == "tcg"
    plain = guest_argv([], dhcp=True, image=image)
    assert plain[plain.index("-append") + 1] == "console=ttyS0 quiet panic=-1 vmnet.dhcp=1"
    with pytest.raises(ValueError, match="dhcp=True"):
        guest_argv([], ip="10.0.0.2/24", hostname="g1", image=image)
    with pytest.raises(ValueError):
        guest_argv([], dhcp=True, resolve=["a,b"], image=image)
    with pytest.raises(ValueError):
        guest_argv([], dhcp=True, resolve=[""], image=image)
    with pytest.raises(ValueError):
        guest_argv([], dhcp=True, fetch="http://x/ init=/bin/sh", image=image)
    with pytest.raises(TypeError):
        guest_argv([], dhcp=True, resolve="db", image=image)


def test_lease_and_resolved_without_qemu() -> None:
    """Guest.lease / Guest.resolved parsing, on any process's console-like stdout."""
    assert Lease.parse(
        "VMNET-LEASE ip=10.0.0.5/24 router=none dns=10.0.0.1,10.0.0.2 mtu=none domain=none"
    ) == Lease(ip="10.0.0.5/24", router=None, dns=("10.0.0.1", "10.0.0.2"), mtu=None,
               domain=None)
    with pytest.raises(ValueError):
        Lease.parse("VMNET-LEASE ip=none router=none dns=none mtu=none domain=none")
    script = (
        "import sys, time\n"
        "w = sys.stdout.write\n"
        "w('VMNET-LEASE ip=10.98.0.50/24 router=10.98.0.1 dns=10.98.0.1 mtu=1400"
        " domain=vmnet\\r\\n')\n"
        "w('VMNET-READY\\n'); sys.stdout.flush(); time.sleep(0.3)\n"
        "w('VMNET-RESOLVED dbx 10.0.0.9\\n')\n"
        "w('VMNET-UNRESOLVED d\\n')\n"
        "w('VMNET-RESOLVED db 10.98.0.60\\n'); sys.stdout.flush(); time.sleep(1)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    console = GuestConsole(proc.stdout)
    assert console.lease(timeout=10) == Lease(ip="10.98.0.50/24", router="10.98.0.1",
                                             dns=("10.98.0.1",), mtu=1400, domain="vmnet")
    assert console.resolved("db", timeout=10) == "10.98.0.60"  # not dbx's line
    assert console.resolved("d", timeout=10) is None
    assert console.resolved("dbx", timeout=10) == "10.0.0.9"
    with pytest.raises(GuestTimeout):
        console.resolved("nothing", timeout=0.1)
    proc.wait()
    with pytest.raises(GuestDied, match="console closed"):
        console.resolved("nothing", timeout=10)
    proc.stdout.close()


def test_world_alone() -> None:
    """HTTP from the host namespace sees its own uplink address; the world's DNS
    answers; everything is gone afterwards."""
    _need_root()
    with netns() as host:
        t0 = time.monotonic()
        with world(host.name, dns=dnsmasq_path() is not None) as w:
            up = time.monotonic() - t0
            wns, pid = w.ns.name, w.http_pid
            assert w.address == "198.51.100.2" and w.url == "http://198.51.100.2/"
            assert w.clients() == []
            assert http_get_from_ns(host.name, w.address) == "198.51.100.1\n"
            assert w.clients() == ["198.51.100.1"]
            assert http_get_from_ns(host.name, w.address) == "198.51.100.1\n"
            assert w.clients() == ["198.51.100.1", "198.51.100.1"]
            routes = host.ip("route", "show", "default").stdout
            assert "default via 198.51.100.2 dev wan0" in routes
            if w.dns is not None:
                assert _nslookup(host, EXAMPLE_NAME, w.address) == EXAMPLE_IP
                assert _nslookup(host, f"www.{EXAMPLE_NAME}", w.address) == EXAMPLE_IP
                dns_pid = w.dns.pid
        print(f"world up in {up:.2f} s (dns={w.dns is not None})")
        assert host.link("wan0") is None
        assert host.ip("route", "show", "default").stdout.strip() == ""
        assert wns not in sh("ip", "netns", "list").stdout
        assert not Path(f"/proc/{pid}").exists()
        if w.dns is not None:
            assert not Path(f"/proc/{dns_pid}").exists()
        assert not w.clients_file.parent.exists()
    if w.dns is None:
        pytest.skip("HTTP part passed; DNS part needs dnsmasq (Debian package dnsmasq-base)")


@pytest.fixture
def lan() -> Iterator[Netns]:
    """The VMs' host: bridge br0 at 10.98.0.1/24 with tap0, forwarding on, masquerade
    of 10.98.0.0/24 out of wan0 (the world's uplink, added by the test)."""
    _need_root()
    _need_dnsmasq()
    if not qemu_available():
        pytest.skip("qemu-system-x86_64 missing (install with scripts/install-deps --test)")
    if shutil.which("nft") is None:
        pytest.skip("nft missing (Debian package nftables)")
    ensure_guest()
    with netns() as ns:
        ns.ip("link", "add", "br0", "type", "bridge")
        ns.ip("addr", "add", f"{GATEWAY}/24", "dev", "br0")
        ns.ip("link", "set", "br0", "up")
        ns.ip("tuntap", "add", "dev", "tap0", "mode", "tap")
        ns.ip("link", "set", "tap0", "master", "br0", "up")
        # Per namespace: the host's own forwarding setting and ruleset are untouched.
        ns.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        ns.run("nft", "-f", "-", input=NAT)
        yield ns


@pytest.mark.qemu
@pytest.mark.kernel
def test_guest_dhcp_dns_fetch_through_nat(lan: Netns) -> None:
    ns = lan
    with world(ns.name, dns=True) as w, public_tmpdir("vmnet-dhcp-") as scratch:
        hosts = scratch / "hosts"
        dhcp_hosts = scratch / "dhcp-hosts"
        hosts.mkdir()
        dhcp_hosts.mkdir()
        (hosts / "db").write_text(f"{DB_IP} {DB_NAME}\n")
        (dhcp_hosts / "guest1").write_text(f"{GUEST_MAC},{GUEST_IP}\n")
        for d in (hosts, dhcp_hosts):
            d.chmod(0o755)
        leases = scratch / "leases"
        with dnsmasq(ns.name, [
            "--interface=br0",
            f"--listen-address={GATEWAY}",
            # Static leases only (as vmnet's own dnsmasq): an unknown MAC gets none.
            "--dhcp-range=10.98.0.0,static,255.255.255.0,1h",
            "--dhcp-authoritative",
            "--no-ping",
            f"--dhcp-leasefile={leases}",
            f"--dhcp-hostsdir={dhcp_hosts}",
            f"--hostsdir={hosts}",
            f"--domain={DOMAIN}",
            f"--local=/{DOMAIN}/",
            # The hosts file says "db"; the guest's nslookup asks for db.vmnet
            # (busybox tries only the search domain for a name without a dot).
            "--expand-hosts",
            f"--dhcp-option=option:mtu,{MTU}",
            f"--server={w.address}",  # everything not local: the world's DNS
        ], scratch, name="lan-dns") as server:
            netargs = [
                "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={GUEST_MAC}",
            ]  # fmt: skip
            names = [DB_NAME, f"{GUEST_NAME}.{DOMAIN}", EXAMPLE_NAME]
            with boot_guest(ns.name, netargs, dhcp=True, hostname=GUEST_NAME,
                            resolve=names, fetch=w.url, timeout=BOOT_TIMEOUT) as guest:
                ready = guest.ready_after
                lease = guest.lease(timeout=1)
                assert lease == Lease(ip=f"{GUEST_IP}/24", router=GATEWAY, dns=(GATEWAY,),
                                      mtu=MTU, domain=DOMAIN), server.output()
                [nic] = guest.nics()
                assert nic["mac"] == GUEST_MAC and nic["ip"] == f"{GUEST_IP}/24"
                assert guest.output.index("VMNET-LEASE") < guest.output.index("VMNET-NIC")
                assert guest.resolved(DB_NAME, timeout=30) == DB_IP
                assert guest.resolved(f"{GUEST_NAME}.{DOMAIN}", timeout=30) == GUEST_IP
                assert guest.resolved(EXAMPLE_NAME, timeout=30) == EXAMPLE_IP
                m = guest.wait_for(rf"VMNET-FETCH-OK {re.escape(w.url)} (\S*)", timeout=30)
                fetched = time.monotonic() - guest.started
                assert m.group(1) == "198.51.100.1"  # the world saw the masqueraded source
                clients = w.clients()
                assert clients and set(clients) == {"198.51.100.1"}, clients
                assert "VMNET-FETCH-LOST" not in guest.output, guest.output
                # The world goes away (its end of the uplink down) and comes back.
                mark = guest.mark()
                w.ns.ip("link", "set", "world0", "down")
                guest.wait_for(rf"(?m)VMNET-FETCH-LOST {re.escape(w.url)}$", timeout=30,
                               since=mark)
                w.ns.ip("link", "set", "world0", "up")
                guest.wait_for(rf"VMNET-FETCH-OK {re.escape(w.url)} 198\.51\.100\.1$",
                               timeout=30, since=mark)
                assert "VMNET-ERROR" not in guest.output, guest.output
                # udhcpc, wget and nslookup say nothing on the console, nor does the
                # shell when timeout kills a wget ("Terminated").
                noise = re.search(r"(?mi)^.*(terminated|udhcpc|wget|nslookup|server can't).*$",
                                  guest.output)
                assert noise is None, guest.output
                assert guest.output.count("VMNET-LEASE") == 1, guest.output
            lease_line = leases.read_text()
            assert GUEST_MAC in lease_line and GUEST_IP in lease_line
            assert GUEST_NAME in lease_line  # the name came from the guest
    print(f"boot to VMNET-READY (after the lease) {ready or 0:.2f} s, "
          f"to first fetch {fetched:.2f} s")
