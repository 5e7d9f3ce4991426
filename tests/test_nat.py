"""nat and isolated networks with real TCG guests, a real dnsmasq and real nftables, in
throwaway namespaces with a "world" namespace behind a veth standing for the outside
(tests/world.py).

Each test checks what the kernel and the processes report: the guest's lease and
lookups (its console), what the world saw (its HTTP server logs the source
address), the namespace's ruleset, sysctls and processes; and that `down` of the
last VM leaves none of them behind.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.daemon import vmnetd
from tests.guest import Guest, GuestImage, guest_argv
from tests.nsutil import Netns
from tests.test_run import BOOT_TIMEOUT, image  # noqa: F401 - the guest fixture
from tests.vmnetcli import vmnet
from tests.world import dnsmasq_path, public_tmpdir, world

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(dnsmasq_path() is None,
                                 reason="dnsmasq missing (apt-get install dnsmasq-base)")]


class Site:
    """A public state directory (dnsmasq drops root and must reach its files), a data
    directory and a config file for one test."""

    def __init__(self, root: Path, config: str = "") -> None:
        self.root = root
        self.state = str(root / "state")
        self.data = str(root / "data")
        self.config_path = str(root / "vmnet.toml")
        self.write(config)

    def write(self, config: str) -> None:
        Path(self.config_path).write_text(f'[defaults]\ndata_dir = "{self.data}"\n' + config)
        os.chmod(self.config_path, 0o644)

    def vmnet(self, ns: Netns, *args: str, check: bool = True
              ) -> subprocess.CompletedProcess[str]:
        return vmnet(ns, self.state, *args, config=self.config_path, check=check)

    def status(self, ns: Netns) -> dict[str, object]:
        return dict(json.loads(self.vmnet(ns, "status", "--json").stdout))


@pytest.fixture
def site() -> Iterator[Site]:
    with public_tmpdir("vmnet-nat-") as root:
        yield Site(root)


def ruleset(ns: Netns) -> str:
    return ns.run("nft", "list", "ruleset").stdout


def sysctl(ns: Netns, key: str) -> str | None:
    r = ns.run("sysctl", "-n", key, check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def dnsmasqs(ns: Netns) -> list[int]:
    """PIDs of the dnsmasq processes in the namespace."""
    pids = subprocess.run(["ip", "netns", "pids", ns.name], capture_output=True,
                          text=True).stdout.split()
    out = []
    for p in pids:
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() == "dnsmasq":
                    out.append(int(p))
        except OSError:
            continue
    return out


def assert_clean(ns: Netns, wan: str | None = "wan0", forwarding: str = "0") -> None:
    """Nothing of a nat/isolated network is left: process, rule, bridge, address, sysctl."""
    assert dnsmasqs(ns) == [], "a dnsmasq is left"
    assert "vmnet" not in ruleset(ns), ruleset(ns)
    assert not any(n.startswith("vmnet") for n in ns.links()), ns.links().keys()
    addrs = [a["local"] for link in ns.addrs() for a in link.get("addr_info", [])]
    assert not any(a.startswith("10.77.") for a in addrs), addrs
    if wan is not None:
        assert sysctl(ns, f"net.ipv4.conf.{wan}.forwarding") == forwarding
    assert sysctl(ns, "net.ipv4.ip_forward") == "0"  # never the global switch


def boot(ns: Netns, site: Site, image: GuestImage, vm: str, *,  # noqa: F811
         resolve: tuple[str, ...] = (), fetch: str | None = None,
         ping: str | None = None, spoof: Sequence[str] = ()) -> Guest:
    """QEMU on the tap `vmnet up` made (its own qemu-args), the guest asking DHCP."""
    words = shlex.split(site.vmnet(ns, "qemu-args", vm).stdout)
    argv = guest_argv(words, dhcp=True, hostname=vm, resolve=resolve, fetch=fetch,
                      ping=ping, spoof=spoof, image=image)
    proc = subprocess.Popen(["ip", "netns", "exec", ns.name, *argv],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    return Guest(proc, name=vm)


def vm_ip(ns: Netns, site: Site, vm: str) -> str:
    return site.vmnet(ns, "ip", vm).stdout.strip()


@pytest.mark.qemu
def test_default_network_gives_address_dns_and_a_way_out(
        ns: Netns, site: Site, image: GuestImage) -> None:  # noqa: F811
    """The built-in default: a guest gets its fixed address by DHCP, resolves the other
    guest by name, reaches the world, and the world sees the host's address."""
    with world(ns.name) as w:
        r = site.vmnet(ns, "up", "vm1")
        assert "address" in r.stdout, r.stdout
        site.vmnet(ns, "up", "vm2")
        ip1, ip2 = vm_ip(ns, site, "vm1"), vm_ip(ns, site, "vm2")
        assert ip1.startswith("10.77.0.") and ip2.startswith("10.77.0.") and ip1 != ip2
        # what the network changed: forwarding on the bridge and wan0 only
        assert sysctl(ns, "net.ipv4.conf.vmnet0.forwarding") == "1"
        assert sysctl(ns, "net.ipv4.conf.wan0.forwarding") == "1"
        assert sysctl(ns, "net.ipv4.ip_forward") == "0"
        assert "masquerade" in ruleset(ns) and 'oifname "wan0"' in ruleset(ns)
        g2 = boot(ns, site, image, "vm2")
        g1 = boot(ns, site, image, "vm1", resolve=("vm2",), fetch=w.url, ping=ip2)
        with g1, g2:
            g2.wait_ready(BOOT_TIMEOUT)
            g1.wait_ready(BOOT_TIMEOUT)
            lease = g1.lease(BOOT_TIMEOUT)
            assert lease.ip == f"{ip1}/24" and lease.router == "10.77.0.1", lease
            assert lease.domain == "vmnet" and lease.dns == ("10.77.0.1",), lease
            assert g1.resolved("vm2", 30) == ip2
            g1.wait_for(rf"VMNET-FETCH-OK {w.url} 198\.51\.100\.1\b", 30)
            g1.wait_for(rf"VMNET-PING-OK {ip2}", 30)
            assert set(w.clients()) == {"198.51.100.1"}  # masqueraded: never 10.77.x
            got = site.vmnet(ns, "ip", "vm1", "--wait", "10").stdout.strip()
            assert got == ip1
            st = site.status(ns)
            nics = {v["vm"]: v["nics"][0] for v in st["vms"]}  # type: ignore[index, union-attr]
            assert nics["vm1"]["ip"] == ip1 and nics["vm1"]["leased"] is True
            net = next(b for b in st["bridges"] if b["bridge"] == "vmnet0")  # type: ignore[union-attr, index]
            assert net["kind"] == "nat" and net["problems"] == [] and net["dnsmasq_pid"]
        site.vmnet(ns, "down", "vm1")
        assert dnsmasqs(ns), "dnsmasq goes with the network's last VM, not before"
        site.vmnet(ns, "down", "vm2")
        assert_clean(ns)
        # the chosen subnet is kept (across reboots: under the data directory)
        kept = json.loads((Path(site.data) / "networks" / "default.json").read_text())
        assert kept["address"] == "10.77.0.1/24"


@pytest.mark.qemu
def test_an_isolated_guest_reaches_the_other_guest_but_not_the_world(
        ns: Netns, site: Site, image: GuestImage) -> None:  # noqa: F811
    site.write('[networks.iso]\nbridge = "vmnet-iso"\nkind = "isolated"\n'
               'address = "10.77.40.1/24"\n')
    with world(ns.name) as w:
        site.vmnet(ns, "up", "i1", "--network", "iso")
        site.vmnet(ns, "up", "i2", "--network", "iso", "--ip", "10.77.40.9")
        assert vm_ip(ns, site, "i2") == "10.77.40.9"
        assert sysctl(ns, "net.ipv4.conf.wan0.forwarding") == "0"  # nothing forwarded
        g2 = boot(ns, site, image, "i2")
        g1 = boot(ns, site, image, "i1", fetch=w.url, ping="10.77.40.9", resolve=("i2",))
        with g1, g2:
            g2.wait_ready(BOOT_TIMEOUT)
            g1.wait_ready(BOOT_TIMEOUT)
            lease = g1.lease(BOOT_TIMEOUT)
            assert lease.router is None, lease  # no way out, not even a default route
            g1.wait_for(r"VMNET-PING-OK 10\.77\.40\.9", 30)
            assert g1.resolved("i2", 30) == "10.77.40.9"
            time.sleep(3)  # the fetch loop has tried several times by now
            assert "VMNET-FETCH-OK" not in g1.console.output
            assert w.clients() == []
        site.vmnet(ns, "down", "i1", "i2")
    assert_clean(ns, wan=None)


@pytest.mark.qemu
def test_a_foreign_forward_drop_is_reported_and_the_explicit_fix_works(
        ns: Netns, site: Site, image: GuestImage) -> None:  # noqa: F811
    """Docker's shape: table ip filter, FORWARD policy drop jumping to DOCKER-USER."""
    docker = ("table ip filter {\n chain DOCKER-USER {\n }\n"
              " chain FORWARD {\n  type filter hook forward priority filter; policy drop;\n"
              "  jump DOCKER-USER\n }\n}\n")
    ns.run("nft", "-f", "-", input=docker)
    foreign = ns.run("nft", "list", "table", "ip", "filter").stdout
    with world(ns.name) as w:
        r = site.vmnet(ns, "up", "vf")
        assert "table ip filter chain FORWARD drops forwarded traffic" in r.stderr, r.stderr
        assert "firewall_fix" in r.stderr
        st = site.status(ns)
        net = next(b for b in st["bridges"] if b["bridge"] == "vmnet0")  # type: ignore[union-attr, index]
        assert any("chain FORWARD" in f for f in net["firewall"]), net
        g = boot(ns, site, image, "vf", fetch=w.url)
        with g:
            g.wait_ready(BOOT_TIMEOUT)
            time.sleep(3)
            assert "VMNET-FETCH-OK" not in g.console.output and w.clients() == []
            site.write('[networks.default]\nbridge = "vmnet0"\nkind = "nat"\n'
                       'firewall_fix = true\n')
            r = site.vmnet(ns, "network", "reload", "default")
            assert "inserted" in r.stdout, r.stdout
            user = ns.run("nft", "list", "chain", "ip", "filter", "DOCKER-USER").stdout
            assert user.count('comment "vmnet:vmnet0"') == 2, user
            g.wait_for(rf"VMNET-FETCH-OK {w.url}", 30)
            assert set(w.clients()) == {"198.51.100.1"}
            st = site.status(ns)
            net = next(b for b in st["bridges"] if b["bridge"] == "vmnet0")  # type: ignore[union-attr, index]
            assert net["firewall"] == [] and net["firewall_fixes"] == [
                "ip filter DOCKER-USER"], net
        site.vmnet(ns, "down", "vf")
    assert ns.run("nft", "list", "table", "ip", "filter").stdout == foreign  # as it was
    ns.run("nft", "delete", "table", "ip", "filter")
    assert_clean(ns, wan=None)


def test_br_netfilter_and_a_strict_input_chain_are_reported_and_fixed(
        ns: Netns, site: Site) -> None:
    """An isolated network beside a forward chain that drops: only br_netfilter makes it
    matter (guest-to-guest frames then pass the IP forward hook); an input chain that
    drops takes DHCP and DNS.  The fix inserts one accept per direction, with vmnet's
    comment, and removes exactly those."""
    if sysctl(ns, "net.bridge.bridge-nf-call-iptables") != "1":
        pytest.skip("br_netfilter is not on in a new namespace on this kernel")
    ns.run("nft", "-f", "-", input="table inet fw {\n chain input {\n"
           "  type filter hook input priority filter; policy drop;\n  iifname \"lo\" accept\n"
           " }\n chain forward {\n  type filter hook forward priority filter; policy drop;\n"
           " }\n}\n")
    before = ns.run("nft", "list", "table", "inet", "fw").stdout
    site.write('[networks.iso]\nbridge = "vmnet-iso"\nkind = "isolated"\n'
               'address = "10.77.41.1/24"\n')
    r = site.vmnet(ns, "up", "b1", "--network", "iso")
    assert "br_netfilter is on" in r.stderr and "table inet fw chain forward" in r.stderr
    assert "table inet fw chain input drops input" in r.stderr, r.stderr
    site.vmnet(ns, "down", "b1")
    site.write('[networks.iso]\nbridge = "vmnet-iso"\nkind = "isolated"\n'
               'address = "10.77.41.1/24"\nfirewall_fix = true\n')
    r = site.vmnet(ns, "up", "b1", "--network", "iso")
    fw = ns.run("nft", "list", "table", "inet", "fw").stdout
    assert fw.count('comment "vmnet:vmnet-iso"') == 4, fw
    assert 'iifname "vmnet-iso" udp dport { 53, 67 } accept' in fw
    assert 'iifname "vmnet-iso" accept' in fw and 'oifname "vmnet-iso" accept' in fw
    st = site.status(ns)
    net = next(b for b in st["bridges"] if b["bridge"] == "vmnet-iso")  # type: ignore[union-attr, index]
    assert net["firewall"] == [], net
    # a rule of the admin's that happens to look like vmnet's, without its comment, stays
    ns.run("nft", "add", "rule", "inet", "fw", "input", "iifname", "vmnet-iso", "accept")
    site.vmnet(ns, "down", "b1")
    after = ns.run("nft", "list", "table", "inet", "fw").stdout
    assert "vmnet:" not in after and after.count('iifname "vmnet-iso" accept') == 1, after
    ns.run("nft", "delete", "rule", "inet", "fw", "input", "handle", _last_handle(ns))
    assert ns.run("nft", "list", "table", "inet", "fw").stdout == before
    ns.run("nft", "delete", "table", "inet", "fw")
    assert_clean(ns, wan=None)


def _last_handle(ns: Netns) -> str:
    text = ns.run("nft", "-a", "list", "chain", "inet", "fw", "input").stdout
    return [ln for ln in text.splitlines() if "# handle" in ln][-1].rpartition(" ")[2]


@pytest.mark.parametrize("how", ["up", "network reload", "vmnetd"])
def test_a_killed_dnsmasq_is_reported_and_restarted(ns: Netns, site: Site, how: str) -> None:
    site.vmnet(ns, "up", "d1")
    (pid,) = dnsmasqs(ns)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid in dnsmasqs(ns) and time.monotonic() < deadline:
        time.sleep(0.02)
    st = site.status(ns)
    net = next(b for b in st["bridges"] if b["bridge"] == "vmnet0")  # type: ignore[union-attr, index]
    assert net["dnsmasq_pid"] is None and "dnsmasq: dnsmasq not running" in net["problems"]
    text = site.vmnet(ns, "status").stdout
    assert "dnsmasq NOT running" in text and "vmnet network reload default" in text, text
    if how == "up":
        r = site.vmnet(ns, "up", "d1")
        assert "restarted" in r.stderr, r.stderr
    elif how == "network reload":
        r = site.vmnet(ns, "network", "reload", "default")
        assert "restarted" in r.stdout, r.stdout
    else:
        with vmnetd(site.state, argv=[sys.executable, "-m", "vmnet.daemon.main", "--foreground",
                                      "--state-dir", site.state, "--config", site.config_path,
                                      "--sweep", "0.3"]):
            deadline = time.monotonic() + 10
            while not dnsmasqs(ns) and time.monotonic() < deadline:
                time.sleep(0.05)
    (new,) = dnsmasqs(ns)
    assert new != pid
    st = site.status(ns)
    net = next(b for b in st["bridges"] if b["bridge"] == "vmnet0")  # type: ignore[union-attr, index]
    assert net["dnsmasq_pid"] == new and net["problems"] == []
    site.vmnet(ns, "down", "d1")
    assert_clean(ns, wan=None)


def test_two_nat_networks_share_the_outbound_switch(ns: Netns, site: Site) -> None:
    """The first nat network out of wan0 switches its forwarding on; the second finds it
    on; the switch goes back off only when the last of them goes, whichever order."""
    site.write('[networks.two]\nbridge = "vmnet-two"\nkind = "nat"\n'
               'address = "10.77.50.1/24"\n')
    with world(ns.name):
        site.vmnet(ns, "up", "a")
        site.vmnet(ns, "up", "b", "--network", "two")
        text = ruleset(ns)
        assert text.count("masquerade") == 2 and text.count('iifname "wan0" drop') == 1
        site.vmnet(ns, "down", "a")  # the one that switched it on goes first
        assert sysctl(ns, "net.ipv4.conf.wan0.forwarding") == "1"
        assert 'iifname "wan0" drop' in ruleset(ns)  # the guard stays with it
        site.vmnet(ns, "down", "b")
        assert_clean(ns)


def test_an_admins_forwarding_is_left_as_it_was(ns: Netns, site: Site) -> None:
    with world(ns.name):
        ns.run("sysctl", "-qw", "net.ipv4.conf.wan0.forwarding=1")
        site.vmnet(ns, "up", "a")
        assert 'iifname "wan0" drop' not in ruleset(ns)  # not vmnet's switch: no guard
        site.vmnet(ns, "down", "a")
        assert_clean(ns, forwarding="1")


def test_no_default_route_means_no_way_out_said_plainly(ns: Netns, site: Site) -> None:
    r = site.vmnet(ns, "up", "lonely")
    assert "no IPv4 default route" in r.stderr, r.stderr
    assert "masquerade" not in ruleset(ns)
    assert "no way out" in site.vmnet(ns, "status").stdout
    site.vmnet(ns, "down", "lonely")
    assert_clean(ns, wan=None)


# -- bad input: one line naming the culprit, nothing changed -----------------------------
def _unchanged(ns: Netns, site: Site, before: dict[str, object]) -> None:
    assert dnsmasqs(ns) == [] and "vmnet" not in ruleset(ns)
    assert set(ns.links()) == before["links"]
    assert sysctl(ns, "net.ipv4.conf.all.forwarding") == "0"
    assert not os.path.exists(os.path.join(site.state, f"ns-{ns.inode}", "vms"))


def test_a_subnet_on_a_host_route_is_refused_naming_the_route(ns: Netns, site: Site) -> None:
    ns.ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
    ns.ip("link", "set", "d0", "up")
    ns.ip("route", "add", "10.77.0.0/16", "dev", "d0")
    site.write('[networks.default]\nbridge = "vmnet0"\nkind = "nat"\n'
               'address = "10.77.3.1/24"\n')
    before = {"links": set(ns.links())}
    r = site.vmnet(ns, "up", "x", check=False)
    assert r.returncode == 1 and "route 10.77.0.0/16 dev d0" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1
    _unchanged(ns, site, before)
    # with no address given, the choice steps around it
    site.write("")
    site.vmnet(ns, "up", "x")
    assert not vm_ip(ns, site, "x").startswith("10.77.")
    site.vmnet(ns, "down", "x")


def test_a_port_53_already_bound_names_the_process_and_rolls_back(
        ns: Netns, site: Site) -> None:
    holder = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, "python3", "-c",
         "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
         "s.bind(('0.0.0.0',53))\nprint('bound',flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "bound"
        before = {"links": set(ns.links())}
        with world(ns.name):
            before = {"links": set(ns.links())}
            r = site.vmnet(ns, "up", "x", check=False)
            assert r.returncode == 1, r.stderr
            assert f"pid {holder.pid} (python3)" in r.stderr and "udp 0.0.0.0:53" in r.stderr
            assert r.stderr.count("\n") == 1, r.stderr
            _unchanged(ns, site, before)
            assert sysctl(ns, "net.ipv4.conf.wan0.forwarding") == "0"
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize(("program", "package"), [("dnsmasq", "dnsmasq-base"),
                                                  ("nft", "nftables")])
def test_a_missing_program_names_the_package(ns: Netns, site: Site, program: str,
                                             package: str) -> None:
    """The program hidden in a private mount namespace (the host's file is not touched)."""
    path = dnsmasq_path() if program == "dnsmasq" else shutil.which("nft")
    assert path is not None
    argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f'mount --bind /dev/null {path} && exec "$@"', "sh"]
    before = {"links": set(ns.links())}
    r = vmnet(ns, site.state, "up", "x", config=site.config_path, prefix=argv)
    assert r.returncode == 1 and f"apt-get install {package}" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    _unchanged(ns, site, before)


def test_a_state_directory_dnsmasq_cannot_reach_is_refused(
        ns: Netns, tmp_path: Path) -> None:
    """pytest's tmp_path is 0700: dnsmasq, once it drops root, could not read its hosts."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[defaults]\ndata_dir = "{tmp_path}/data"\n')
    r = vmnet(ns, str(tmp_path / "state"), "up", "x", config=str(cfg))
    assert r.returncode == 1 and "dnsmasq (which drops root) cannot reach" in r.stderr
    assert dnsmasqs(ns) == [] and "vmnet" not in ruleset(ns) and "vmnet0" not in ns.links()


def test_the_bare_network_is_todays_plain_bridge(ns: Netns, site: Site) -> None:
    r = site.vmnet(ns, "up", "p", "--network", "bare")
    assert "address" not in r.stdout
    assert "vmnet-bare" in ns.links() and dnsmasqs(ns) == [] and "vmnet" not in ruleset(ns)
    r = site.vmnet(ns, "ip", "p", check=False)
    assert r.returncode == 2 and "plain bridge" in r.stderr
    site.vmnet(ns, "down", "p")
    assert "vmnet-bare" not in ns.links()


def test_addresses_are_fixed_kept_and_refused_when_taken(ns: Netns, site: Site) -> None:
    site.vmnet(ns, "up", "f1", "--ip", "10.77.0.20")
    assert vm_ip(ns, site, "f1") == "10.77.0.20"
    r = site.vmnet(ns, "up", "f2", "--ip", "10.77.0.20", check=False)
    assert r.returncode == 1 and "already VM f1's" in r.stderr, r.stderr
    for bad, why in (("10.77.0.1", "not a guest address"), ("10.77.9.9", "not a guest"),
                     ("10.77.0.255", "not a guest")):
        r = site.vmnet(ns, "up", "f2", "--ip", bad, check=False)
        assert r.returncode == 1 and why in r.stderr, (bad, r.stderr)
    site.vmnet(ns, "up", "f2")
    derived = vm_ip(ns, site, "f2")
    site.vmnet(ns, "up", "f2")  # again: the recorded address, not a new one
    assert vm_ip(ns, site, "f2") == derived
    hosts = Path(site.state) / f"ns-{ns.inode}" / "dnsmasq" / "vmnet0" / "hosts"
    assert sorted(p.read_text() for p in hosts.iterdir()) == sorted([
        f"{_mac(ns, site, 'f1')},10.77.0.20,f1\n", f"{_mac(ns, site, 'f2')},{derived},f2\n"])
    site.vmnet(ns, "down", "f1", "f2")
    assert_clean(ns, wan=None)


def _mac(ns: Netns, site: Site, vm: str) -> str:
    return str(json.loads(site.vmnet(ns, "ip", vm, "--json").stdout)["mac"])


# -- dnsmasq is detached: no child, no lock, no fd of whoever started it -------------------
def _fds(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return out


def _ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rpartition(")")[2].split()[1])
        out.append(pid)
    return out


def test_the_libvirt_hook_leaves_no_child_and_no_fd(ns: Netns, site: Site) -> None:
    """libvirtd waits for its hook's stdout and stderr to close: a dnsmasq that kept them
    would hang every domain start.  run_hook reads both to the end (60 s timeout)."""
    from tests.test_hook import domain_xml, run_hook
    from vmnet.config import Overrides

    uuid = "0a7e0000-1111-2222-3333-444455556666"
    xml = domain_xml("dom1", uuid, [("h1", Overrides())], site.config_path)
    t0 = time.monotonic()
    res = run_hook(ns, site.state, site.config_path, "dom1", "prepare", "begin", xml)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 < 30
    (pid,) = dnsmasqs(ns)
    lock = os.path.join(site.state, f"ns-{ns.inode}", "lock")
    fds = _fds(pid)
    assert lock not in fds and all(not f.endswith(".json") for f in fds), fds
    res = run_hook(ns, site.state, site.config_path, "dom1", "release", "end", xml)
    assert res.returncode == 0, res.stderr
    assert_clean(ns, wan=None)


def test_through_vmnetd_the_dnsmasq_is_not_the_daemons(ns: Netns, site: Site) -> None:
    with vmnetd(site.state, config=site.config_path) as d:
        site.vmnet(ns, "up", "dd")
        (pid,) = dnsmasqs(ns)
        assert d.pid not in _ancestors(pid)
        sock = os.path.join(site.state, "vmnetd.sock")
        fds = _fds(pid)
        assert not any(sock in f for f in fds)
        daemon_sockets = {f for f in _fds(d.pid) if f.startswith("socket:")}
        assert not daemon_sockets & {f for f in fds if f.startswith("socket:")}
        assert site.vmnet(ns, "ip", "dd", "--wait", "0.2", check=False).returncode == 1
        site.vmnet(ns, "down", "dd")
    assert_clean(ns, wan=None)


# -- crashes: a kill at any point of up or down leaves nothing gc cannot finish -------------
def _points(ns: Netns, site: Site, tmp: Path, *args: str) -> list[str]:
    trace = tmp / "trace.json"
    r = vmnet(ns, site.state, *args, config=site.config_path,
              env={"VMNET_FAULT_TRACE": str(trace)})
    assert r.returncode == 0, r.stderr
    return list(json.loads(trace.read_text()))


@pytest.mark.parametrize("op", ["up", "down"])
def test_a_kill_anywhere_in_a_nat_up_or_down_is_finished_by_gc(
        ns: Netns, site: Site, tmp_path: Path, op: str) -> None:
    with world(ns.name):
        site.vmnet(ns, "up", "c1")  # the subnet is chosen and kept: later ups recall it
        if op == "up":
            site.vmnet(ns, "down", "c1")
        points = _points(ns, site, tmp_path, op, "c1")
        if op == "up":
            site.vmnet(ns, "down", "c1")
        steps = {p for p in points if p.startswith("step:")}
        want = {"step:StartDnsmasq", "step:ApplyTable", "step:PutHost"} if op == "up" else \
            {"step:StopDnsmasq", "step:ApplyTable", "step:RestoreSysctl", "step:DropHost"}
        assert want <= steps, points
        for n in range(1, len(points) + 1):
            if op == "down":
                site.vmnet(ns, "up", "c1")
            r = vmnet(ns, site.state, op, "c1", config=site.config_path,
                      env={"VMNET_FAULT": "*", "VMNET_FAULT_AT": str(n)})
            assert r.returncode == -9, (n, points[n - 1], r.returncode, r.stderr)
            g = site.vmnet(ns, "gc", check=False)
            assert g.returncode == 0 and "Traceback" not in g.stderr, (points[n - 1], g)
            if op == "up" and "c1" in site.vmnet(ns, "list").stdout:
                site.vmnet(ns, "down", "c1")  # killed after it was whole: an idle VM
            assert_clean(ns), points[n - 1]
            # and it works again from there
            site.vmnet(ns, "up", "c1")
            assert len(dnsmasqs(ns)) == 1 and sysctl(ns, "net.ipv4.conf.wan0.forwarding") == "1"
            site.vmnet(ns, "down", "c1")
            assert_clean(ns)


def test_the_dry_run_replayed_by_hand_builds_the_network(ns: Netns, site: Site) -> None:
    """`up --dry-run` prints every step as the command that does it (sysctl, the nft
    script as a here-document, dnsmasq's command line, the host files): run as one shell
    script, it gives the guest the same network."""
    with world(ns.name):
        r = site.vmnet(ns, "up", "h1", "--dry-run")
        script = "\n".join(ln for ln in r.stdout.splitlines() if not ln.startswith("# "))
        subprocess.run(["sh", "-e", "-c", script], check=True, capture_output=True)
        try:
            assert sysctl(ns, "net.ipv4.conf.wan0.forwarding") == "1"
            assert "masquerade" in ruleset(ns) and len(dnsmasqs(ns)) == 1
            addrs = {a["local"] for link in ns.addrs() if link["ifname"] == "vmnet0"
                     for a in link.get("addr_info", []) if a["family"] == "inet"}
            assert addrs == {"10.77.0.1"}
            assert ns.links()["h1-0"]["master"] == "vmnet0"
            hosts = Path(site.state) / f"ns-{ns.inode}" / "dnsmasq" / "vmnet0" / "hosts"
            assert [p.name for p in hosts.iterdir()] == ["h1-0"]
        finally:
            for pid in dnsmasqs(ns):
                os.kill(pid, signal.SIGKILL)


def test_a_bulk_up_makes_the_network_once(ns: Netns, site: Site) -> None:
    names = [f"k{i}" for i in range(6)]
    site.vmnet(ns, "up", *names)
    assert len(dnsmasqs(ns)) == 1
    ips = {vm_ip(ns, site, n) for n in names}
    assert len(ips) == 6 and all(ip.startswith("10.77.0.") for ip in ips)
    hosts = Path(site.state) / f"ns-{ns.inode}" / "dnsmasq" / "vmnet0" / "hosts"
    assert sorted(p.name for p in hosts.iterdir()) == sorted(f"{n}-0" for n in names)
    site.vmnet(ns, "down", "--all")
    assert_clean(ns, wan=None)


# -- a freed address is free: dnsmasq forgets the NIC that went ----------------------------
# DHCP DISCOVER/REQUEST from tap argv[1] with MAC argv[2]; prints the acked address or "none".
DORA = r"""
import fcntl, os, select, socket, struct, sys, time
TUNSETIFF, IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x400454CA, 0x0002, 0x1000, 0x4000
tap, mac = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", ""))
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", tap.encode(), IFF_TAP | IFF_NO_PI))
time.sleep(0.3)
def csum(d):
    s = sum(struct.unpack(f"!{len(d) // 2}H", d))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
def frame(kind, xid, extra=b""):
    opts = bytes([53, 1, kind]) + extra + b"\xff"
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128sI", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4),
                        bytes(4), bytes(4), bytes(4), mac, b"", b"", 0x63825363) + opts
    bootp += bytes(300 - len(bootp))
    udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4),
                     b"\xff" * 4)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return b"\xff" * 6 + mac + b"\x08\x00" + ip + udp
def reply(xid, want):
    end = time.monotonic() + 3
    while time.monotonic() < end:
        if not select.select([fd], [], [], 0.2)[0]:
            continue
        f = os.read(fd, 65536)
        b = f[42:]
        if f[12:14] == b"\x08\x00" and len(b) > 240 and b[0] == 2 and \
                struct.unpack("!I", b[4:8])[0] == xid and b[240:243] == bytes([53, 1, want]):
            return socket.inet_ntoa(b[16:20])
    return None
xid = int.from_bytes(os.urandom(4), "big")
os.write(fd, frame(1, xid))
offered = reply(xid, 2)
if offered is None:
    print("none")
    sys.exit(0)
os.write(fd, frame(3, xid, bytes([50, 4]) + socket.inet_aton(offered) +
                   bytes([54, 4]) + socket.inet_aton(sys.argv[3])))
print(reply(xid, 5) or "none")
"""


def dora(ns: Netns, tap: str, mac: str) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-c", DORA, tap, mac,
                        "10.77.0.1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_an_address_freed_by_down_is_leased_to_the_next_nic(ns: Netns, site: Site) -> None:
    site.vmnet(ns, "up", "keep")
    site.vmnet(ns, "up", "gone")
    gone = json.loads(site.vmnet(ns, "ip", "gone", "--json").stdout)
    assert dora(ns, "gone-0", gone["mac"]) == gone["ip"]
    leases = Path(site.state) / f"ns-{ns.inode}" / "dnsmasq" / "vmnet0" / "leases"
    assert gone["mac"] in leases.read_text()
    site.vmnet(ns, "down", "gone")
    deadline = time.monotonic() + 3
    while gone["mac"] in leases.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone["mac"] not in leases.read_text()  # released, not left for an hour
    site.vmnet(ns, "up", "new", "--ip", gone["ip"])
    new = json.loads(site.vmnet(ns, "ip", "new", "--json").stdout)
    assert dora(ns, "new-0", new["mac"]) == gone["ip"]
    # and the gone NIC's MAC gets nothing any more (its static lease was dropped)
    site.vmnet(ns, "up", "probe")
    assert dora(ns, "probe-0", gone["mac"]) == "none"
    log = (leases.parent / "log").read_text()
    assert ".tmp" not in log and "duplicate" not in log, log  # no temp file was read
    site.vmnet(ns, "down", "--all")
    assert_clean(ns, wan=None)


def test_a_kernel_without_nat_is_one_line_and_nothing_changed(ns: Netns, site: Site,
                                                              tmp_path: Path) -> None:
    """An nft that refuses the masquerade rule, as a kernel without nf_nat does (a script
    bind-mounted over nft in a private mount namespace: the host's nft is not touched):
    one line, and the bridge, sysctls and dnsmasq are rolled back."""
    real = shutil.which("nft")
    assert real is not None
    copy = tmp_path / "nft.real"
    shutil.copy(real, copy)
    fake = tmp_path / "nft"
    fake.write_text('#!/bin/sh\n'
                    'if [ "$1" = "-f" ]; then\n'
                    '  script=$(cat)\n'
                    '  case "$script" in *masquerade*)\n'
                    '    echo "Error: Could not process rule: No such file or directory" >&2\n'
                    '    exit 1;;\n'
                    '  esac\n'
                    f'  printf "%s\\n" "$script" | exec {copy} "$@"\n'
                    'fi\n'
                    f'exec {copy} "$@"\n')
    fake.chmod(0o755)
    with world(ns.name):
        before = {"links": set(ns.links())}
        r = vmnet(ns, site.state, "up", "x", config=site.config_path, timeout=60,
                  prefix=["unshare", "-m", "--propagation", "private", "sh", "-c",
                          f'mount --bind {fake} {real} && exec "$@"', "sh"])
        assert r.returncode == 1, r.stderr
        assert "nft refused vmnet's rules" in r.stderr and "nat support" in r.stderr
        assert r.stderr.count("\n") == 1, r.stderr
        _unchanged(ns, site, before)
        assert sysctl(ns, "net.ipv4.conf.wan0.forwarding") == "0"


def test_a_bridge_deleted_under_a_nat_network_comes_back_whole(ns: Netns, site: Site) -> None:
    """`ip link del vmnet0` behind vmnet's back (its dnsmasq lives on, bound to nothing):
    `up` again makes the network anew with one dnsmasq, keeps what it must put back (the
    outbound's forwarding switch), and `down` then leaves nothing."""
    with world(ns.name):
        site.vmnet(ns, "up", "w1")
        (first,) = dnsmasqs(ns)
        ns.ip("link", "del", "vmnet0")
        site.vmnet(ns, "up", "w1")
        assert "vmnet0" in ns.links() and ns.links()["w1-0"]["master"] == "vmnet0"
        (second,) = dnsmasqs(ns)
        assert second != first
        st = site.status(ns)
        net = next(b for b in st["bridges"] if b["bridge"] == "vmnet0")  # type: ignore[union-attr, index]
        assert net["problems"] == [], net
        w1 = json.loads(site.vmnet(ns, "ip", "w1", "--json").stdout)
        assert dora(ns, "w1-0", w1["mac"]) == w1["ip"]  # its static lease came along
        site.vmnet(ns, "down", "w1")
        assert_clean(ns)  # wan0's forwarding back to 0: the first up's value was kept
