"""The QEMU test guest itself: boots, answers ping and HTTP, reports its NICs."""

from __future__ import annotations

import os
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
    Qmp,
    boot_guest,
    ensure_guest,
    guest_argv,
    http_get_from_ns,
    ping_from_ns,
    qemu_available,
    qmp_args,
)
from tests.nsutil import Netns, netns

BOOT_TIMEOUT = 90.0  # TCG on two slow cores; a boot takes a few seconds
MAC_A = "52:54:00:12:34:56"
MAC_B = "52:54:00:12:34:57"


@pytest.fixture(scope="module")
def guest_ready() -> None:
    if os.geteuid() != 0:
        pytest.skip("QEMU guest tests need root (network namespaces, taps)")
    if not qemu_available():
        pytest.skip("qemu-system-x86_64 missing (install with scripts/install-deps --test)")
    ensure_guest()


@pytest.fixture
def bridged(guest_ready: None) -> Iterator[Netns]:
    """A namespace with bridge br0 at 10.77.0.1/24."""
    with netns() as ns:
        ns.ip("link", "add", "br0", "type", "bridge")
        ns.ip("addr", "add", "10.77.0.1/24", "dev", "br0")
        ns.ip("link", "set", "br0", "up")
        yield ns


def add_tap(ns: Netns, name: str, *, multi_queue: bool = False) -> None:
    ns.ip("tuntap", "add", "dev", name, "mode", "tap", *(["multi_queue"] if multi_queue else []))
    ns.ip("link", "set", name, "master", "br0", "up")


def tap_netargs(tap: str, mac: str, *, queues: int = 1) -> list[str]:
    netdev = f"tap,id=n0,ifname={tap},script=no,downscript=no"
    device = f"virtio-net-pci,netdev=n0,mac={mac}"
    if queues > 1:
        netdev += f",queues={queues}"
        device += f",mq=on,vectors={2 * queues + 2}"
    return ["-netdev", netdev, "-device", device]


@pytest.mark.qemu
def test_boot_ping_http_stop(bridged: Netns) -> None:
    ns = bridged
    add_tap(ns, "tap0")
    guest = boot_guest(ns.name, tap_netargs("tap0", MAC_A), ip="10.77.0.2/24",
                       timeout=BOOT_TIMEOUT)
    with guest:
        print(f"boot to VMNET-READY: {guest.ready_after:.2f} s")
        assert guest.nics() == [
            {"name": "eth0", "mac": MAC_A, "rxq": 1, "txq": 1, "ip": "10.77.0.2/24"}
        ]
        assert ping_from_ns(ns.name, "10.77.0.2", count=2, timeout=30)
        assert http_get_from_ns(ns.name, "10.77.0.2") == "vmnet-guest-ok"
        link = ns.link("tap0")
        assert link is not None and "LOWER_UP" in link["flags"]
        pid = guest.pid
        guest.stop()
    assert guest.proc.returncode is not None
    assert not Path(f"/proc/{pid}").exists()
    link = ns.link("tap0")
    assert link is not None and "LOWER_UP" not in link["flags"]  # last fd closed


@pytest.mark.qemu
def test_multiqueue(bridged: Netns) -> None:
    ns = bridged
    add_tap(ns, "tap0", multi_queue=True)
    with boot_guest(ns.name, tap_netargs("tap0", MAC_A, queues=2), ip="10.77.0.2/24",
                    smp=2, timeout=BOOT_TIMEOUT) as guest:
        print(f"boot to VMNET-READY (2 queues, -smp 2): {guest.ready_after:.2f} s")
        [nic] = guest.nics()
        assert nic["rxq"] == 2
        assert nic["txq"] == 2
        assert ping_from_ns(ns.name, "10.77.0.2", timeout=30)


@pytest.mark.qemu
def test_two_guests_ping_each_other(bridged: Netns) -> None:
    ns = bridged
    add_tap(ns, "tap0")
    add_tap(ns, "tap1")
    with boot_guest(ns.name, tap_netargs("tap0", MAC_A), ip="10.77.0.2/24",
                    timeout=BOOT_TIMEOUT, name="guest-a") as a:
        started = time.monotonic()
        with boot_guest(ns.name, tap_netargs("tap1", MAC_B), ip="10.77.0.3/24",
                        ping="10.77.0.2", timeout=BOOT_TIMEOUT, name="guest-b") as b:
            b.wait_for(r"VMNET-PING-OK 10\.77\.0\.2", timeout=60)
            print(f"A ready {a.ready_after:.2f} s, B ready {b.ready_after:.2f} s, "
                  f"B start to ping ok {time.monotonic() - started:.2f} s")
            assert http_get_from_ns(ns.name, "10.77.0.3") == "vmnet-guest-ok"


@pytest.mark.qemu
def test_hotplug_nic(bridged: Netns, tmp_path: Path) -> None:
    ns = bridged
    add_tap(ns, "tap0")
    add_tap(ns, "tap1")
    sock = tmp_path / "qmp.sock"
    with boot_guest(ns.name, tap_netargs("tap0", MAC_A), ip="10.77.0.2/24,10.77.0.4/24",
                    extra=qmp_args(sock), timeout=BOOT_TIMEOUT) as guest, Qmp(sock) as qmp:
        assert [n["name"] for n in guest.nics()] == ["eth0"]
        mark, t0 = guest.mark(), time.monotonic()
        qmp.execute("netdev_add", type="tap", id="n1", ifname="tap1",
                    script="no", downscript="no")
        qmp.execute("device_add", driver="virtio-net-pci", id="nic1", netdev="n1", mac=MAC_B)
        assert guest.wait_nic("eth1", timeout=60, since=mark) == {
            "name": "eth1", "mac": MAC_B, "rxq": 1, "txq": 1, "ip": "10.77.0.4/24"
        }
        t_plug = time.monotonic() - t0
        assert [n["name"] for n in guest.nics()] == ["eth0", "eth1"]
        assert ping_from_ns(ns.name, "10.77.0.4", timeout=30)

        mark, t0 = guest.mark(), time.monotonic()
        qmp.execute("device_del", id="nic1")
        guest.wait_for(r"VMNET-NIC-GONE name=eth1", timeout=60, since=mark)
        print(f"hot-plug to VMNET-NIC {t_plug:.2f} s, "
              f"unplug to VMNET-NIC-GONE {time.monotonic() - t0:.2f} s")
        assert [n["name"] for n in guest.nics()] == ["eth0"]


def test_console_protocol_without_qemu() -> None:
    """GuestConsole on any process's stdout: line parsing, marks, early EOF."""
    script = (
        "import sys, time\n"
        "w = sys.stdout.write\n"
        "w('noise VMNET-NIC name=eth0 mac=52:54:00:00:00:01 rxq=2 txq=2 ip=10.0.0.2/24\\r\\n')\n"
        "w('VMNET-READY\\r\\n'); sys.stdout.flush(); time.sleep(0.2)\n"
        "w('VMNET-NIC name=eth10 mac=52:54:00:00:00:03 rxq=1 txq=1 ip=none\\n')\n"
        "w('VMNET-NIC name=eth2 mac=52:54:00:00:00:02 rxq=1 txq=1 ip=none\\n')\n"
        "w('VMNET-NIC-GONE name=eth10\\n')\n"
        "w('VMNET-NIC name=eth3 mac=52:54'); sys.stdout.flush(); time.sleep(2)\n"
        "w(':00:00:00:04 rxq=1 txq=1 ip=none\\n')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    console = GuestConsole(proc.stdout)
    console.wait_for("VMNET-READY", timeout=10)
    mark = console.mark()
    console.wait_for("VMNET-NIC-GONE name=eth10", timeout=10, since=mark)
    time.sleep(0.2)  # the first half of eth3's line has arrived by now
    assert "VMNET-NIC name=eth3 mac=52:54" in console.output
    assert [n["name"] for n in console.nics()] == ["eth0", "eth2"]  # eth3's line is partial
    with pytest.raises(GuestTimeout):
        console.wait_for("eth3 mac", timeout=0.1)  # complete lines only
    assert console.wait_nic("eth3", timeout=10)["mac"] == "52:54:00:00:00:04"
    proc.wait()
    assert "\r" not in console.output
    assert console.nics() == [
        {"name": "eth0", "mac": "52:54:00:00:00:01", "rxq": 2, "txq": 2, "ip": "10.0.0.2/24"},
        {"name": "eth2", "mac": "52:54:00:00:00:02", "rxq": 1, "txq": 1, "ip": None},
        {"name": "eth3", "mac": "52:54:00:00:00:04", "rxq": 1, "txq": 1, "ip": None},
    ]
    with pytest.raises(GuestDied, match="console closed"):
        console.wait_for("never printed", timeout=10)
    proc.stdout.close()


def test_guest_argv_is_tcg_only() -> None:
    image = GuestImage(kernel=Path("/k"), initrd=Path("/i"))
    argv = guest_argv(["-netdev", "tap,id=n0,fd=3"], ip="10.0.0.2/24,10.0.1.2/24",
                      ping="10.0.0.1", smp=2, image=image)
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert not any("kvm" in a for a in argv)
    assert argv[argv.index("-append") + 1] == (
        "console=ttyS0 quiet panic=-1 vmnet.ip=10.0.0.2/24,10.0.1.2/24 vmnet.ping=10.0.0.1"
    )
    assert argv[-2:] == ["-netdev", "tap,id=n0,fd=3"]
    with pytest.raises(ValueError):
        guest_argv([], ip="10.0.0.2/24 init=/bin/sh", image=image)
