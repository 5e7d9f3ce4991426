"""Bad input: a clear one-line error naming the culprit, non-zero exit, host unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.nsutil import Netns
from tests.vmnetcli import host_snapshot, vmnet

pytestmark = pytest.mark.kernel

LONG = "a" * 16
CASES: list[tuple[str, list[str], str]] = [
    ("bridge-too-long", ["up", "vm1", "--bridge", LONG], LONG),
    ("bridge-slash", ["up", "vm1", "--bridge", "br/0"], "br/0"),
    ("bridge-space", ["up", "vm1", "--bridge", "br 0"], "br 0"),
    ("bridge-colon", ["up", "vm1", "--bridge", "br:0"], "br:0"),
    ("uplink-too-long", ["up", "vm1", "--uplink", LONG], LONG),
    ("vm-too-long", ["up", "v" * 65], "longer than 64"),
    ("vm-slash", ["up", "a/b"], "a/b"),
    ("vm-space", ["up", "a b"], "a b"),
    ("vm-dotdot", ["up", ".."], "'..'"),
    ("mac-garbage", ["up", "vm1", "--mac", "52:54:00:zz:00:01"], "52:54:00:zz:00:01"),
    ("mac-short", ["up", "vm1", "--mac", "52:54:00:00:01"], "52:54:00:00:01"),
    ("mac-multicast", ["up", "vm1", "--mac", "01:00:5e:00:00:01"], "multicast"),
    ("mac-too-many", ["up", "vm1", "--mac", "52:54:00:00:00:01", "--mac",
                      "52:54:00:00:00:02"], "--mac"),
    ("mtu-low", ["up", "vm1", "--mtu", "67"], "--mtu"),
    ("mtu-high", ["up", "vm1", "--mtu", "70000"], "--mtu"),
    ("queues-zero", ["up", "vm1", "--queues", "0"], "--queues"),
    ("queues-257", ["up", "vm1", "--queues", "257"], "--queues"),
    ("nics-zero", ["up", "vm1", "--nics", "0"], "--nics"),
    ("unknown-user", ["up", "vm1", "--user", "no-such-user-vmnet"], "no-such-user-vmnet"),
    ("unknown-group", ["up", "vm1", "--group", "no-such-group-vmnet"], "no-such-group-vmnet"),
    ("bridge-is-not-bridge", ["up", "vm1", "--bridge", "veth-x"], "veth-x"),
    ("missing-uplink", ["up", "vm1", "--uplink", "nosuch0"], "nosuch0"),
    ("uplink-is-bridge", ["up", "vm1", "--bridge", "br9", "--uplink", "br9"], "br9"),
    ("no-vm", ["up"], "VM name"),
    ("down-bad-name", ["down", "a b"], "a b"),
    ("status-bad-name", ["status", "a/b"], "a/b"),
    ("status-unknown-vm", ["status", "ghost"], "ghost"),
]

CONFIGS: list[tuple[str, str, str]] = [
    ("toml-syntax", "[vms.x\nuser = 1\n", "line 1"),
    ("unknown-top-key", "colour = 'blue'\n", "colour"),
    ("unknown-vm-key", "[vms.vm1]\nram = 4\n", "ram"),
    ("unknown-nic-key", "[vms.vm1]\n[[vms.vm1.nics]]\nspeed = 10\n", "speed"),
    ("unknown-net-key", "[networks.n]\nbridge = 'b'\nvlan_x = 1\n", "vlan_x"),
    ("bad-tap-name", "[vms.vm1]\n[[vms.vm1.nics]]\ntap = 'vnet7'\n", "vnet7"),
    ("tap-too-long", f"[vms.vm1]\n[[vms.vm1.nics]]\ntap = '{LONG}'\n", LONG),
    ("bad-mac", "[vms.vm1]\n[[vms.vm1.nics]]\nmac = 'nope'\n", "nope"),
    ("queues-type", "[vms.vm1]\n[[vms.vm1.nics]]\nqueues = 'two'\n", "queues"),
    ("unknown-network", "[vms.vm1]\n[[vms.vm1.nics]]\nnetwork = 'x'\n", "'x'"),
    ("stp-delay", "[networks.n]\nbridge = 'b'\nstp = true\nforward_delay = 0\n",
     "forward_delay"),
    ("bad-address", "[networks.n]\nbridge = 'b'\naddress = '10.0.0.300/24'\n", "10.0.0.300"),
    ("missing-bridge", "[networks.n]\nuplink = 'eth9'\n", "bridge"),
]


def check_clean_failure(r: object, culprit: str) -> None:
    assert r.returncode != 0, r.stdout  # type: ignore[attr-defined]
    err = r.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in err
    assert err.startswith("vmnet: error:") or err.startswith("Error:") or \
        err.startswith("Usage:"), err
    lines = [ln for ln in err.splitlines() if ln.startswith(("vmnet: error:", "Error:"))]
    assert len(lines) == 1, err
    assert culprit in err, err


@pytest.mark.parametrize("argv,culprit", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_cli_input(ns: Netns, state_dir: str, argv: list[str], culprit: str) -> None:
    ns.ip("link", "add", "veth-x", "type", "veth", "peer", "name", "veth-y")
    before = host_snapshot(ns, state_dir)
    check_clean_failure(vmnet(ns, state_dir, *argv), culprit)
    assert host_snapshot(ns, state_dir) == before


@pytest.mark.parametrize("text,culprit", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_config(ns: Netns, state_dir: str, tmp_path: Path, text: str, culprit: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    before = host_snapshot(ns, state_dir)
    r = vmnet(ns, state_dir, "up", "vm1", config=str(cfg))
    check_clean_failure(r, culprit)
    assert str(cfg) in r.stderr or culprit in r.stderr
    assert host_snapshot(ns, state_dir) == before


def test_missing_config_file(ns: Netns, state_dir: str) -> None:
    r = vmnet(ns, state_dir, "up", "vm1", config="/nonexistent/vmnet.toml")
    check_clean_failure(r, "/nonexistent/vmnet.toml")


def test_missing_netns(state_dir: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("entering a network namespace needs root (CAP_SYS_ADMIN)")
    r = vmnet(None, state_dir, "--netns", "vmnet-no-such-ns", "up", "vm1")
    check_clean_failure(r, "vmnet-no-such-ns")


def test_missing_dev_net_tun(ns: Netns, state_dir: str) -> None:
    """/dev/net/tun hidden by a tmpfs in a private mount namespace (the host's node is kept)."""
    before = host_snapshot(ns, state_dir)
    prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c",
              'mount -n -t tmpfs vmnet-test /dev/net && exec "$@"', "sh"]
    r = vmnet(ns, state_dir, "up", "vm1", prefix=prefix)
    check_clean_failure(r, "/dev/net/tun")
    assert "modprobe tun" in r.stderr
    assert host_snapshot(ns, state_dir) == before
    assert os.path.exists("/dev/net/tun")


def test_not_root(ns: Netns, state_dir: str) -> None:
    """A non-root uid cannot enter the namespace nor change links: clear errors."""
    before = host_snapshot(ns, state_dir)
    setpriv = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    r = vmnet(ns, state_dir, "up", "vm1", prefix=setpriv)
    check_clean_failure(r, "namespace")
    assert "root" in r.stderr
    # already inside the namespace, as a non-root uid: no CAP_NET_ADMIN
    r = vmnet(None, state_dir, "up", "vm1",
              prefix=["ip", "netns", "exec", ns.name, *setpriv])
    check_clean_failure(r, "CAP_NET_ADMIN")
    assert host_snapshot(ns, state_dir) == before


def test_root_without_cap_net_admin(ns: Netns, state_dir: str) -> None:
    before = host_snapshot(ns, state_dir)
    r = vmnet(None, state_dir, "up", "vm1",
              prefix=["ip", "netns", "exec", ns.name, "setpriv", "--bounding-set=-net_admin",
                      "--inh-caps=-net_admin"])
    check_clean_failure(r, "CAP_NET_ADMIN")
    assert host_snapshot(ns, state_dir) == before
