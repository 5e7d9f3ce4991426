"""`vmnet up/down/status/gc` against the real kernel, each test in its own namespace."""

from __future__ import annotations

import grp
import json
import pwd
import textwrap
import threading
from pathlib import Path

import pytest

from tests.daemon import leftovers
from tests.nsutil import Netns, netns
from tests.tapholder import hold_tap
from tests.vmnetcli import host_snapshot, replace_file, status_json, vmnet

BOTH_WAYS = True  # every test in-process and through vmnetd (tests/conftest.py)


pytestmark = pytest.mark.kernel


def tap_info(link: dict) -> dict:
    """tun info_data with user/group as numbers (`ip -j` prints names when it can)."""
    info = dict(link["linkinfo"]["info_data"])
    for key, db in (("user", pwd.getpwnam), ("group", grp.getgrnam)):
        if isinstance(info.get(key), str):
            info[key] = db(info[key])[2]
    return info


def test_up_default_creates_bridge_and_user_owned_tap(ns: Netns, state_dir: str) -> None:
    r = vmnet(ns, state_dir, "up", "vm1", check=True)
    assert "vm1-0" in r.stdout and "-netdev" in r.stdout
    links = ns.links()
    br, tap = links["vmnet0"], links["vm1-0"]
    assert br["linkinfo"]["info_kind"] == "bridge"
    assert br["ifalias"] == "vmnet:bridge:vmnet0"
    assert "UP" in br["flags"]
    data = br["linkinfo"]["info_data"]
    assert data["stp_state"] == 0 and data["forward_delay"] == 0
    assert tap["linkinfo"]["info_kind"] == "tun"
    info = tap_info(tap)
    assert info["type"] == "tap" and info["pi"] is False and info["persist"] is True
    assert info["multi_queue"] is False
    assert info["user"] == 0  # not run through sudo: root owns it
    assert tap["master"] == "vmnet0"
    assert "UP" in tap["flags"]
    assert tap["ifalias"] == "vmnet:vm1:0"
    # the tap's MAC is the guest's with first byte fe: the bridge never adopts the guest's
    guest_mac = status_json(ns, state_dir, "vm1")["vms"][0]["nics"][0]["mac"]
    assert guest_mac.startswith("52:54:00:")
    assert tap["address"] == "fe" + guest_mac[2:]
    # IPv6 is off on the tap
    out = ns.run("cat", "/proc/sys/net/ipv6/conf/vm1-0/disable_ipv6").stdout.strip()
    assert out == "1"


def test_sudo_user_owns_tap_and_flags_override(ns: Netns, state_dir: str) -> None:
    vmnet(ns, state_dir, "up", "vm2", "--bridge", "brx", "--nics", "2", "--queues", "3",
          "--mtu", "1400", "--mac", "52:54:00:aa:bb:01",
          env={"SUDO_USER": "nobody"}, check=True)
    links = ns.links()
    for i in range(2):
        tap = links[f"vm2-{i}"]
        info = tap_info(tap)
        assert info["multi_queue"] is True
        assert info["user"] == 65534
        assert tap["mtu"] == 1400
        assert tap["master"] == "brx"
    assert links["vm2-0"]["address"] == "fe:54:00:aa:bb:01"
    st = status_json(ns, state_dir, "vm2")["vms"][0]
    assert [n["queues"] for n in st["nics"]] == [3, 3]
    assert st["nics"][0]["owner"] == 65534


def test_group_alone_grants_group_access(ns: Netns, state_dir: str) -> None:
    vmnet(ns, state_dir, "up", "vm3", "--group", "4242", check=True)
    info = tap_info(ns.links()["vm3-0"])
    assert "user" not in info
    assert info["group"] == 4242
    vmnet(ns, state_dir, "up", "vm4", "--user", "65534", "--group", "4242", check=True)
    info = tap_info(ns.links()["vm4-0"])
    assert info["user"] == 65534 and info["group"] == 4242


def test_down_leaves_no_trace(ns: Netns, state_dir: str) -> None:
    before = host_snapshot(ns, state_dir)
    vmnet(ns, state_dir, "up", "vm1", check=True)
    vmnet(ns, state_dir, "up", "vm2", check=True)
    vmnet(ns, state_dir, "down", "vm1", check=True)
    assert "vmnet0" in ns.links()  # still used by vm2
    r = vmnet(ns, state_dir, "down", "vm2", check=True)
    assert "released" in r.stdout
    assert host_snapshot(ns, state_dir) == before
    assert leftovers(state_dir) == []
    r = vmnet(ns, state_dir, "down", "vm2", check=True)
    assert "nothing to do" in r.stdout


def test_repeated_up_is_idempotent(ns: Netns, state_dir: str) -> None:
    vmnet(ns, state_dir, "up", "vm1", check=True)
    first = ns.links()
    r = vmnet(ns, state_dir, "up", "vm1", check=True)
    assert "already up" in r.stdout
    second = ns.links()
    assert {k: v["ifindex"] for k, v in first.items()} == \
        {k: v["ifindex"] for k, v in second.items()}


def test_preexisting_bridge_and_uplink_left_intact(ns: Netns, state_dir: str) -> None:
    ns.ip("link", "add", "br-admin", "type", "bridge")
    ns.ip("link", "set", "br-admin", "mtu", "1450")
    ns.ip("link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    ns.ip("link", "add", "other0", "type", "veth", "peer", "name", "other0p")
    ns.ip("link", "set", "other0", "master", "br-admin")
    ns.ip("link", "set", "br-admin", "up")
    ns.ip("link", "set", "up0", "up")
    before = host_snapshot(ns, state_dir)
    vmnet(ns, state_dir, "up", "vm1", "--bridge", "br-admin", "--uplink", "up0", check=True)
    links = ns.links()
    assert links["up0"]["master"] == "br-admin"
    assert links["vm1-0"]["mtu"] == 1450  # bridge's MTU, set before joining
    # a NIC MTU below a bridge vmnet did not create is refused
    r = vmnet(ns, state_dir, "up", "vm2", "--bridge", "br-admin", "--mtu", "1300")
    assert r.returncode != 0 and "would lower" in r.stderr
    vmnet(ns, state_dir, "down", "vm1", check=True)
    after = host_snapshot(ns, state_dir)
    assert after == before  # bridge kept, uplink detached again, other port untouched


def test_uplink_with_address_or_default_route_refused(ns: Netns, state_dir: str) -> None:
    ns.ip("link", "add", "up1", "type", "veth", "peer", "name", "up1p")
    ns.ip("link", "add", "up2", "type", "veth", "peer", "name", "up2p")
    ns.ip("addr", "add", "10.99.0.1/24", "dev", "up1")
    ns.ip("link", "set", "up2", "up")
    ns.ip("route", "add", "default", "dev", "up2")
    before = host_snapshot(ns, state_dir)
    r = vmnet(ns, state_dir, "up", "vm1", "--uplink", "up1")
    assert r.returncode != 0 and "carries the host's traffic" in r.stderr and \
        "address 10.99.0.1/24" in r.stderr
    r = vmnet(ns, state_dir, "up", "vm1", "--uplink", "up2")
    assert r.returncode != 0 and "route default" in r.stderr
    ns.ip("link", "add", "brz", "type", "bridge")
    ns.ip("link", "add", "up3", "type", "veth", "peer", "name", "up3p")
    ns.ip("link", "set", "up3", "master", "brz")
    before = host_snapshot(ns, state_dir)
    r = vmnet(ns, state_dir, "up", "vm1", "--uplink", "up3")
    assert r.returncode != 0 and "already enslaved to brz" in r.stderr
    assert host_snapshot(ns, state_dir) == before


def test_network_from_config_with_address_stp(ns: Netns, state_dir: str,
                                              tmp_path: Path) -> None:
    cfg = tmp_path / "vmnet.toml"
    cfg.write_text(textwrap.dedent("""
        [networks.default]
        bridge = "vmnet0"

        [networks.lab]
        bridge = "br-lab"
        mtu = 9000
        stp = true
        forward_delay = 4
        address = "10.55.0.1/24"

        [vms.web]
        user = "65534"
        [[vms.web.nics]]
        network = "lab"
        queues = 2
        mac = "52:54:00:00:00:aa"
        [[vms.web.nics]]
        tap = "web-mgmt"
        mtu = 1400
    """))
    vmnet(ns, state_dir, "up", "web", config=str(cfg), check=True)
    links = ns.links()
    br = links["br-lab"]
    assert br["mtu"] == 9000
    data = br["linkinfo"]["info_data"]
    assert data["stp_state"] == 1 and data["forward_delay"] == 400
    addrs = {a["ifname"]: a for a in ns.addrs()}
    assert any(i["local"] == "10.55.0.1" for i in addrs["br-lab"]["addr_info"])
    assert links["web-0"]["mtu"] == 9000 and links["web-0"]["master"] == "br-lab"
    assert tap_info(links["web-0"])["user"] == 65534
    assert links["web-mgmt"]["master"] == "vmnet0" and links["web-mgmt"]["mtu"] == 1400
    # bridge MAC is pinned when vmnet creates it: stays as ports come and go
    mac = br["address"]
    vmnet(ns, state_dir, "up", "db", "--bridge", "br-lab", config=str(cfg), check=True)
    assert ns.links()["br-lab"]["address"] == mac
    vmnet(ns, state_dir, "down", "web", config=str(cfg), check=True)
    vmnet(ns, state_dir, "down", "db", config=str(cfg), check=True)
    assert set(ns.links()) == {"lo"}


def test_foreign_interface_with_tap_name_is_never_adopted(ns: Netns, state_dir: str) -> None:
    ns.ip("tuntap", "add", "dev", "vm1-0", "mode", "tap", "user", "1234")
    before = host_snapshot(ns, state_dir)
    r = vmnet(ns, state_dir, "up", "vm1")
    assert r.returncode != 0 and "vm1-0" in r.stderr and "did not create" in r.stderr
    assert host_snapshot(ns, state_dir) == before  # owner unchanged, no bridge left
    r = vmnet(ns, state_dir, "down", "vm1", check=True)
    assert "vm1-0" in ns.links()


def test_busy_tap_refused_by_down_unless_force(ns: Netns, state_dir: str) -> None:
    vmnet(ns, state_dir, "up", "vm1", check=True)
    with hold_tap(ns, "vm1-0") as holder:
        st = status_json(ns, state_dir, "vm1")["vms"][0]["nics"][0]
        assert st["held"] is True and any(f"pid {holder.pid}" in h or "python" in h
                                          for h in st["holders"])
        r = vmnet(ns, state_dir, "down", "vm1")
        assert r.returncode != 0 and "still running" in r.stderr and "pid" in r.stderr
        assert "vm1-0" in ns.links()
        vmnet(ns, state_dir, "down", "vm1", "--force", check=True)
        assert "vm1-0" not in ns.links()


def test_dry_run_changes_nothing(ns: Netns, state_dir: str) -> None:
    before = host_snapshot(ns, state_dir)
    r = vmnet(ns, state_dir, "up", "vm1", "--dry-run", check=True)
    n = ns.name  # under --netns every printed command names the namespace
    assert f"ip -n {n} link add vmnet0" in r.stdout
    assert f"ip -n {n} tuntap add dev vm1-0 mode tap" in r.stdout
    assert f"ip -n {n} link set vm1-0 master vmnet0 up" in r.stdout
    assert host_snapshot(ns, state_dir) == before
    vmnet(ns, state_dir, "up", "vm1", check=True)
    r = vmnet(ns, state_dir, "down", "vm1", "--dry-run", check=True)
    assert f"ip -n {n} link del vm1-0" in r.stdout and f"ip -n {n} link del vmnet0" in r.stdout
    assert "vm1-0" in ns.links()


@pytest.mark.in_process  # VMNET_FAULT wraps the in-process engine
@pytest.mark.parametrize("point,at", [("step:CreateTap", 1), ("step:AttachTap", 2),
                                      ("step:SetUp", 1), ("step:CreateTap", 2)],
                         ids=["first-tap", "second-attach", "bridge-up", "second-tap"])
def test_failed_up_rolls_back(ns: Netns, state_dir: str, point: str, at: int) -> None:
    ns.ip("link", "add", "keep0", "type", "veth", "peer", "name", "keep0p")
    before = host_snapshot(ns, state_dir)
    r = vmnet(ns, state_dir, "up", "vm1", "--nics", "2",
              env={"VMNET_FAULT": point, "VMNET_FAULT_AT": str(at),
                   "VMNET_FAULT_ACTION": "fail"})
    assert r.returncode != 0 and "injected failure" in r.stderr
    assert "Traceback" not in r.stderr
    assert host_snapshot(ns, state_dir) == before


def test_concurrent_ups_on_one_bridge(ns: Netns, state_dir: str) -> None:
    results: dict[str, int] = {}

    def go(name: str) -> None:
        results[name] = vmnet(ns, state_dir, "up", name).returncode

    names = [f"c{i}" for i in range(6)] + ["c0", "c0"]  # plus two more ups of the same VM
    threads = [threading.Thread(target=go, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results.values()) == {0}
    links = ns.links()
    taps = sorted(n for n in links if n.startswith("c"))
    assert taps == [f"c{i}-0" for i in range(6)]
    assert all(links[t]["master"] == "vmnet0" for t in taps)
    st = status_json(ns, state_dir)
    assert sorted(v["vm"] for v in st["vms"]) == [f"c{i}" for i in range(6)]
    assert all(n["state"] == "ok" for v in st["vms"] for n in v["nics"])


def test_state_is_keyed_by_namespace_inode(ns: Netns, state_dir: str) -> None:
    vmnet(ns, state_dir, "up", "vm1", check=True)
    # (parsed-config/: the config file's parse, vmnet.config.cache, not a record)
    assert [d for d in leftovers(state_dir) if d != "parsed-config"] == [f"ns-{ns.inode}"]
    data = json.loads((Path(state_dir) / f"ns-{ns.inode}" / "vms" / "vm1.json").read_text())
    assert data["mode"] == "up" and data["writer"]["pid"] > 0 and data["format"] == 2


@pytest.mark.in_process  # VMNET_FAULT wraps the in-process engine
def test_gc_keeps_idle_up_taps_and_finishes_crashed_work(ns: Netns, state_dir: str) -> None:
    vmnet(ns, state_dir, "up", "idle", check=True)
    # an `up` killed right after recording, and one killed mid-way
    r = vmnet(ns, state_dir, "up", "crash1", env={"VMNET_FAULT": "up:recorded"})
    assert r.returncode == -9
    r = vmnet(ns, state_dir, "up", "crash2", "--nics", "2",
              env={"VMNET_FAULT": "step:AttachTap", "VMNET_FAULT_AT": "2"})
    assert r.returncode == -9
    assert "crash2-0" in ns.links()
    st = {v["vm"]: v for v in status_json(ns, state_dir)["vms"]}
    assert st["crash2"]["stale"] and not st["idle"]["stale"]
    r = vmnet(ns, state_dir, "gc", check=True)
    assert "crash1" in r.stdout and "crash2" in r.stdout and "idle" in r.stdout
    links = ns.links()
    assert "crash2-0" not in links and "crash2-1" not in links
    assert "idle-0" in links
    st = status_json(ns, state_dir)
    assert [v["vm"] for v in st["vms"]] == ["idle"]
    # a down killed mid-way is finished by gc
    r = vmnet(ns, state_dir, "down", "idle", env={"VMNET_FAULT": "down:recorded"})
    assert r.returncode == -9
    vmnet(ns, state_dir, "gc", check=True)
    assert set(ns.links()) == {"lo"}
    assert leftovers(state_dir) == []


@pytest.mark.in_process  # VMNET_FAULT wraps the in-process engine
def test_gc_never_cuts_a_held_tap(ns: Netns, state_dir: str) -> None:
    """A dead writer's record is kept while a process holds its tap (a running VM)."""
    r = vmnet(ns, state_dir, "up", "vm1", env={"VMNET_FAULT": "up:applied"})
    assert r.returncode == -9
    with hold_tap(ns, "vm1-0"):
        r = vmnet(ns, state_dir, "gc", check=True)
        assert "vm1: in use (vm1-0 held)" in r.stdout
        assert "vm1-0" in ns.links()
    r = vmnet(ns, state_dir, "gc", check=True)
    assert "vm1: rolled back" in r.stdout
    assert set(ns.links()) == {"lo"}


def test_records_of_a_dead_namespace_with_a_reused_inode_are_set_aside(
        ns: Netns, state_dir: str) -> None:
    """The kernel reuses namespace inodes; the stored cookie tells the records apart."""
    ns.ip("link", "add", "br-a", "type", "bridge")
    ns.ip("link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    ns.ip("link", "set", "up0", "up")
    vmnet(ns, state_dir, "up", "vm1", "--bridge", "br-a", "--uplink", "up0", check=True)
    nsdir = Path(state_dir) / f"ns-{ns.inode}"
    assert (nsdir / "cookie").read_text().strip().isdigit()
    # Make the records look like a dead namespace's that had this inode, and make
    # this namespace's own state unlike what they describe.
    replace_file(nsdir / "cookie", "1\n")
    ns.ip("link", "del", "vm1-0")
    r = vmnet(ns, state_dir, "gc", check=True)
    assert "nothing to do" in r.stdout
    assert status_json(ns, state_dir)["vms"] == []
    assert ns.links()["up0"]["master"] == "br-a"  # the admin's uplink stays where it is
    vmnet(ns, state_dir, "up", "vm2", "--bridge", "br-a", check=True)  # claims the dir
    assert (nsdir / "stale-1-vms" / "vm1.json").exists()
    assert (nsdir / "cookie").read_text().strip() != "1"
    vmnet(ns, state_dir, "down", "vm2", check=True)
    assert ns.links()["up0"]["master"] == "br-a"


def test_a_record_of_an_unknown_format_is_refused_and_never_collected(
        ns: Netns, state_dir: str) -> None:
    """A newer vmnet's record: up, down and gc name it in one line and leave it (and its
    tap) as they are; format 1 records are read and rewritten as format 2."""
    vmnet(ns, state_dir, "up", "vm1", check=True)
    path = Path(state_dir) / f"ns-{ns.inode}" / "vms" / "vm1.json"
    data = json.loads(path.read_text())
    data["format"] = 3
    replace_file(path, json.dumps(data))
    before = path.read_bytes()
    for args in (("up", "vm1"), ("down", "vm1")):
        r = vmnet(ns, state_dir, *args)
        assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
        assert "has format 3" in r.stderr and "will not act on it" in r.stderr
    r = vmnet(ns, state_dir, "gc", check=True)
    assert "format unknown to this vmnet" in r.stdout and "vm1.json" in r.stdout
    assert path.read_bytes() == before and "vm1-0" in ns.links()
    data["format"] = 1
    del data["nics"][0]["model"]
    replace_file(path, json.dumps(data))
    r = vmnet(ns, state_dir, "up", "vm1", "--mtu", "1400", check=True)
    assert json.loads(path.read_text())["format"] == 2


def test_a_holder_of_a_same_named_tap_in_another_namespace_is_not_named(
        ns: Netns, state_dir: str) -> None:
    """fdinfo names a tap, not its namespace: the holders vmnet names (status, the
    refusal of a second QEMU) are the ones in the namespace of the VM's taps."""
    vmnet(ns, state_dir, "up", "vm1", check=True)
    with netns() as other, hold_tap(other, "vm1-0") as theirs, \
            hold_tap(ns, "vm1-0") as mine:
        nic = status_json(ns, state_dir)["vms"][0]["nics"][0]
        pids = [h.split(" (")[0] for h in nic["holders"]]
        assert nic["held"] and pids == [f"pid {mine.pid}"], nic
        r = vmnet(ns, state_dir, "run", "vm1", "--", "true")
        assert r.returncode != 0 and f"held by pid {mine.pid} " in r.stderr, r.stderr
        assert f"pid {theirs.pid} " not in r.stderr
    vmnet(ns, state_dir, "down", "vm1", check=True)


def test_down_of_an_unknown_name_says_so(ns: Netns, state_dir: str, tmp_path: Path) -> None:
    """Neither recorded nor configured: `down` says vmnet does not know it (exit 0: a
    second `down` of a VM is no error); a configured VM never brought up is just idle."""
    cfg = tmp_path / "c.toml"
    cfg.write_text("[vms.idle]\n")
    r = vmnet(ns, state_dir, "down", "ghost", config=str(cfg), check=True)
    assert r.stdout.strip() == "ghost: unknown to vmnet (no record here, not in the config); " \
        "nothing to do"
    r = vmnet(ns, state_dir, "down", "idle", config=str(cfg), check=True)
    assert r.stdout.strip() == "idle: nothing to do"
    r = vmnet(ns, state_dir, "up", "x", "--mac", "52:54:00:00:00:01", "--mac",
              "52:54:00:00:00:02")
    assert r.returncode == 2 and "give --nics 2" in r.stderr


def test_a_bridge_given_as_uplink_is_refused_by_the_plan(ns: Netns, state_dir: str) -> None:
    """Refused before any change with vmnet's words (the kernel would say ELOOP or enslave
    one bridge into another); `up --all` with nothing configured names the file."""
    ns.ip("link", "add", "brx", "type", "bridge")
    before = host_snapshot(ns, state_dir)
    r = vmnet(ns, state_dir, "up", "vm1", "--bridge", "br1", "--uplink", "brx")
    assert r.returncode == 1 and "uplink 'brx' is a bridge" in r.stderr, r.stderr
    r = vmnet(ns, state_dir, "up", "vm1", "--bridge", "br1", "--uplink", "brx", "--dry-run")
    assert r.returncode == 1 and "is a bridge" in r.stderr
    assert host_snapshot(ns, state_dir) == before
    r = vmnet(ns, state_dir, "up", "--all")
    assert r.returncode == 2 and "--all: the config file" in r.stderr and \
        "declares no VM" in r.stderr
