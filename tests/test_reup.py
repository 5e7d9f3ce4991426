"""`up` on a VM that is up: what it was brought up with is remembered, and a change is
planned, shown and applied only where a running guest survives it (README, the re-up
rule).  Each case was a surprise on 0.1: flags forgotten, a MAC written to the record but
not the tap, a live guest's tap moved to another bridge."""

from __future__ import annotations

import json
import shlex
import time

import pytest

from tests.nsutil import Netns
from tests.tapholder import hold_tap
from tests.vmnetcli import host_snapshot, vmnet

BOTH_WAYS = True  # every test in-process and through vmnetd (tests/conftest.py)


pytestmark = pytest.mark.kernel

MAC = "52:54:00:aa:00:07"


def stable(ns: Netns, state_dir: str) -> dict[str, object]:
    """host_snapshot once the kernel's late flag updates have landed (linkwatch applies
    carrier changes to the operstate up to a second later)."""
    time.sleep(1.1)
    return host_snapshot(ns, state_dir)


def up7(ns: Netns, state_dir: str) -> None:
    vmnet(ns, state_dir, "up", "vm7", "--mac", MAC, "--bridge", "br7", "--queues", "2",
          check=True)


def test_the_flags_of_up_are_what_everything_else_uses(ns: Netns, state_dir: str) -> None:
    up7(ns, state_dir)
    args = shlex.split(vmnet(ns, state_dir, "qemu-args", "vm7", check=True).stdout)
    joined = " ".join(args)
    assert f"mac={MAC}" in joined and "queues=2" in joined and "ifname=vm7-0" in joined
    xml = vmnet(ns, state_dir, "libvirt-xml", "vm7", check=True).stdout
    assert f"<mac address='{MAC}'/>" in xml and "queues='2'" in xml
    r = vmnet(ns, state_dir, "up", "vm7", check=True)  # no flags: the same VM, a no-op
    assert r.stdout.startswith("vm7: already up\n") and "on bridge br7" in r.stdout
    r = vmnet(ns, state_dir, "qemu-args", "vm7", "--queues", "4")
    assert r.returncode == 2 and "queues 4 on vm7-0 (it is up with 2)" in r.stderr
    assert "vmnet up vm7" in r.stderr


def test_a_new_mac_reaches_the_tap_while_no_guest_runs(ns: Netns, state_dir: str) -> None:
    up7(ns, state_dir)
    new = "52:54:00:aa:00:99"
    r = vmnet(ns, state_dir, "up", "vm7", "--mac", new, "--dry-run", check=True)
    assert f"# change: mac {MAC} -> {new} on vm7-0" in r.stdout
    assert f"ip -n {ns.name} link set vm7-0 address fe:54:00:aa:00:99" in r.stdout
    assert ns.links()["vm7-0"]["address"] == "fe" + MAC[2:]
    r = vmnet(ns, state_dir, "up", "vm7", "--mac", new, check=True)
    assert f"vm7: changed mac {MAC} -> {new} on vm7-0" in r.stdout
    assert ns.links()["vm7-0"]["address"] == "fe:54:00:aa:00:99"
    st = json.loads(vmnet(ns, state_dir, "status", "--json", "vm7", check=True).stdout)
    assert st["vms"][0]["nics"][0]["mac"] == new
    assert f"mac={new}" in vmnet(ns, state_dir, "qemu-args", "vm7", check=True).stdout


def test_a_running_guest_keeps_its_mac_and_bridge_but_takes_an_mtu(ns: Netns,
                                                                  state_dir: str) -> None:
    up7(ns, state_dir)
    ns.ip("link", "add", "br9", "type", "bridge")
    with hold_tap(ns, "vm7-0", queues=2):
        before = stable(ns, state_dir)
        for flags, word in ((["--mac", "52:54:00:aa:00:98"], "MAC"),
                            (["--bridge", "br9"], "cut the guest off"),
                            (["--model", "e1000"], "model")):
            r = vmnet(ns, state_dir, "up", "vm7", *flags)
            assert r.returncode == 1 and word in r.stderr and "held" in r.stderr, r.stderr
            assert r.stderr.count("\n") == 1
            assert stable(ns, state_dir) == before
        r = vmnet(ns, state_dir, "up", "vm7", "--bridge", "br9", "--force", check=True)
        assert ns.links()["vm7-0"]["master"] == "br9"
        r = vmnet(ns, state_dir, "up", "vm7", "--mtu", "1600", check=True)
        assert "changed mtu none -> 1600 on vm7-0" in r.stdout
        assert ns.links()["vm7-0"]["mtu"] == 1600


def test_an_idle_tap_moves_to_another_bridge(ns: Netns, state_dir: str) -> None:
    up7(ns, state_dir)
    r = vmnet(ns, state_dir, "up", "vm7", "--bridge", "br9", check=True)
    assert "changed bridge br7 -> br9 on vm7-0" in r.stdout
    assert ns.links()["vm7-0"]["master"] == "br9"
    r = vmnet(ns, state_dir, "down", "vm7", check=True)
    assert "bridge br9 released" in r.stdout
    assert "br7" in ns.links()  # br7 lost its last user earlier but keeps its record: later
    vmnet(ns, state_dir, "gc", check=True)  # gc releases it
    assert "br7" not in ns.links() and "br9" not in ns.links()


def test_dropping_a_nic_of_a_vm_that_is_up_is_refused(ns: Netns, state_dir: str) -> None:
    vmnet(ns, state_dir, "up", "vm8", "--nics", "2", check=True)
    before = stable(ns, state_dir)
    r = vmnet(ns, state_dir, "up", "vm8", "--nics", "1")
    assert r.returncode == 1 and "vm8-1" in r.stderr and "vmnet down vm8" in r.stderr
    assert stable(ns, state_dir) == before
    r = vmnet(ns, state_dir, "up", "vm8", "--nics", "3", check=True)
    assert "new NIC 2: tap vm8-2" in r.stdout and "vm8-2" in ns.links()


def test_owners_read_the_same_everywhere(ns: Netns, state_dir: str) -> None:
    """Names with the number where it helps, the same in `up`, `status` and refusals;
    never a Python None."""
    r = vmnet(ns, state_dir, "up", "o1", "--user", "65534", check=True)
    assert "(owner nobody (65534), mac" in r.stdout
    r = vmnet(ns, state_dir, "up", "o2", "--user", "4242", "--group", "4243", check=True)
    assert "(owner uid 4242, gid 4243, mac" in r.stdout
    table = vmnet(ns, state_dir, "status", check=True).stdout
    assert "nobody (65534)" in table and "uid 4242, gid 4243" in table
    r = vmnet(ns, state_dir, "up", "o1", "--user", "0")
    assert r.returncode == 1 and "owner nobody (65534), not root as requested" in r.stderr
    assert "None" not in r.stderr + table
