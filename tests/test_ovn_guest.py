"""Real TCG guests on an OVN logical switch, on two chassis, over Geneve.

The deployment is tests/ovnworld.py's (a central node, chassis a and b, the
userspace datapath); vmnet runs in each chassis' namespace (tests/test_ovn.Host)
and each guest boots on the tap vmnet made there, with vmnet's own qemu-args.
What crossed is read from the guests' consoles (tests/guest/init.sh: ping, an HTTP
fetch from busybox httpd) and from AF_PACKET listeners on the taps (SNIFF: what a
guest sent, and what reached the other guest).
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.guest import Guest, GuestImage, guest_argv
from tests.ovnworld import OvnWorld, ovn_missing, ovsdbapp_missing
from tests.test_ovn import SWITCH, Host, world  # noqa: F401 - the OVN world fixture
from tests.test_run import BOOT_TIMEOUT, image  # noqa: F401 - the guest fixture

pytestmark = [pytest.mark.kernel, pytest.mark.qemu,
              pytest.mark.skipif(ovn_missing() is not None, reason=str(ovn_missing())),
              pytest.mark.skipif(ovsdbapp_missing() is not None,
                                 reason=str(ovsdbapp_missing()))]

MAC2 = "52:54:00:0a:00:02"
SPOOF_MAC = "52:54:00:ba:d0:09"
IP1, IP2 = "10.9.0.11", "10.9.0.12"
URL2 = f"http://{IP2}/"
VM2 = f'[vms.vm2]\n[[vms.vm2.nics]]\nmac = "{MAC2}"\nip = "{IP2}"\n'

# Frames per (direction, source MAC) on the interfaces in argv[1:], printed as one JSON
# object when stdin closes.  On a tap, "in" is what the guest sent and "out" what was
# delivered to it.
SNIFF = r"""
import json, select, socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
watch = set(sys.argv[1:])
seen = {}
print("ready", flush=True)
while True:
    r, _, _ = select.select([s, sys.stdin], [], [])
    if sys.stdin in r:
        break
    data, addr = s.recvfrom(65536)
    if addr[0] not in watch or len(data) < 14:
        continue
    way = "out" if addr[2] == socket.PACKET_OUTGOING else "in"
    key = f"{addr[0]} {way} {':'.join(f'{x:02x}' for x in data[6:12])}"
    seen[key] = seen.get(key, 0) + 1
print(json.dumps(seen), flush=True)
"""


@contextlib.contextmanager
def sniffing(host: Host, *ifnames: str) -> Iterator[dict[str, int]]:
    """Count frames on `ifnames` in the host's namespace for the body; the dict is
    filled when the body ends."""
    proc = subprocess.Popen(["ip", "netns", "exec", host.ch.ns.name, sys.executable, "-c",
                             SNIFF, *ifnames], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdin is not None and proc.stdout is not None
    counts: dict[str, int] = {}
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield counts
        proc.stdin.close()
        counts.update(json.loads(proc.stdout.readline()))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def boot(host: Host, img: GuestImage, vm: str, ip: str, *, ping: str,
         fetch: str | None = None, spoof: Sequence[str] = (),
         vnet_hdr: str | None = None) -> Guest:
    words = shlex.split(host.vmnet("qemu-args", vm).stdout)
    if vnet_hdr is not None:  # (the control: what the guest would get with it on)
        words = [w.replace("vnet_hdr=off", f"vnet_hdr={vnet_hdr}") for w in words]
    argv = guest_argv(words, ip=f"{ip}/24", ping=ping, fetch=fetch, spoof=spoof, image=img)
    proc = subprocess.Popen(["ip", "netns", "exec", host.ch.ns.name, *argv],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    return Guest(proc, name=vm)


@pytest.fixture
def pair(world: OvnWorld) -> Iterator[tuple[Host, Host]]:  # noqa: F811
    """vm1 on chassis a, vm2 on chassis b."""
    root = Path(tempfile.mkdtemp(prefix="vmnet-ovng-"))
    root.chmod(0o755)
    try:
        a = Host(world, world.chassis["a"], root)
        b = Host(world, world.chassis["b"], root, VM2)
        a.vmnet("up", "vm1")
        b.vmnet("up", "vm2")
        yield a, b
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_guests_on_two_chassis_talk_over_geneve_and_a_spoofed_mac_gets_nothing_through(
        world: OvnWorld, pair: tuple[Host, Host],  # noqa: F811
        image: GuestImage) -> None:  # noqa: F811
    a, b = pair
    spoof = ("sleep:10", f"mac:{SPOOF_MAC}")
    with boot(a, image, "vm1", IP1, ping=IP2, fetch=URL2, spoof=spoof) as g1, \
            boot(b, image, "vm2", IP2, ping=IP1) as g2:
        g1.wait_for(rf"VMNET-PING-OK {re.escape(IP2)}\s", BOOT_TIMEOUT)
        g2.wait_for(rf"VMNET-PING-OK {re.escape(IP1)}\s", BOOT_TIMEOUT)
        # TCP across chassis (the guest segments: no vnet_hdr on the userspace datapath)
        g1.wait_for(rf"VMNET-FETCH-OK {re.escape(URL2)} vmnet-guest-ok", 60)
        assert world.bound("vmnet-vm1-0") == "a" and world.bound("vmnet-vm2-0") == "b"

        # vm1 takes another MAC: port security drops everything it sends from it
        mark = g1.mark()
        g1.wait_for(rf"VMNET-SPOOF-DONE mac:{re.escape(SPOOF_MAC)}", 60, since=mark)
        g1.wait_for(rf"VMNET-PING-LOST {re.escape(IP2)}\s", 30, since=mark)
        with sniffing(a, "vm1-0") as sent, sniffing(b, "vm2-0") as got:
            time.sleep(4)
        assert sent.get(f"vm1-0 in {SPOOF_MAC}", 0) >= 2, sent  # it did send from it
        assert got.get(f"vm2-0 out {SPOOF_MAC}", 0) == 0, got  # none of it arrived
        # the control: without port security the same frames reach vm2
        world.nbctl("lsp-set-port-security", "vmnet-vm1-0")
        with sniffing(b, "vm2-0") as got:
            time.sleep(4)
        assert got.get(f"vm2-0 out {SPOOF_MAC}", 0) >= 2, got


def test_without_the_tso_handling_tcp_across_chassis_stalls(
        pair: tuple[Host, Host], image: GuestImage) -> None:  # noqa: F811
    """The control for the fetch above: the same guests with vnet_hdr on (the guest then
    hands 64 KiB segments to its tap) ping, but their TCP does not get through."""
    a, b = pair
    with boot(a, image, "vm1", IP1, ping=IP2, fetch=URL2, vnet_hdr="on") as g1, \
            boot(b, image, "vm2", IP2, ping=IP1, vnet_hdr="on") as g2:
        g1.wait_for(rf"VMNET-PING-OK {re.escape(IP2)}\s", BOOT_TIMEOUT)
        g2.wait_for(rf"VMNET-PING-OK {re.escape(IP1)}\s", BOOT_TIMEOUT)
        with pytest.raises(Exception, match="FETCH-OK"):
            g1.wait_for(rf"VMNET-FETCH-OK {re.escape(URL2)}", 20)


def test_a_moved_port_is_reachable_on_the_new_chassis(
        world: OvnWorld, pair: tuple[Host, Host],  # noqa: F811
        image: GuestImage) -> None:  # noqa: F811
    a, b = pair  # (both configs declare vm1: tests.test_ovn.Host)
    with boot(b, image, "vm2", IP2, ping=IP1) as g2:
        with boot(a, image, "vm1", IP1, ping=IP2):
            g2.wait_for(rf"VMNET-PING-OK {re.escape(IP1)}\s", BOOT_TIMEOUT)
        mark = g2.mark()
        g2.wait_for(rf"VMNET-PING-LOST {re.escape(IP1)}\s", 30, since=mark)
        b.vmnet("up", "vm1", "--move")
        assert world.bound("vmnet-vm1-0") == "b"
        with boot(b, image, "vm1", IP1, ping=IP2):
            g2.wait_for(rf"VMNET-PING-OK {re.escape(IP1)}\s", BOOT_TIMEOUT, since=mark)
        a.vmnet("down", "vm1")  # a lets go of its tap; the port is b's
        assert world.bound("vmnet-vm1-0") == "b"
        assert "vmnet-vm1-0" in world.nbctl("lsp-list", SWITCH)
