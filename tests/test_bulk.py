"""Bulk `up`/`down`: the same kernel-state guarantees as single-VM commands.

Documented behaviour: bulk `up` is all-or-nothing (a refused VM or a failed
kernel step leaves the host as it was); bulk `down` refuses the whole batch
before any change if a tap is held, else removes every named VM's taps in one
grouped delete.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.nsutil import Netns
from tests.tapholder import hold_tap
from tests.test_core_kernel import tap_info
from tests.vmnetcli import host_snapshot, status_json, vmnet

pytestmark = pytest.mark.kernel
N = 24


def bulk_config(tmp_path: Path, extra: str = "") -> str:
    lines = ['[networks.lab]\nbridge = "br-bulk"\nmtu = 1400\n[defaults]\nnetwork = "lab"\n']
    for i in range(N):
        lines.append(f'[vms.b{i}]\nuser = "{1000 + i}"\n')
        if i % 3 == 0:
            lines.append(f'[[vms.b{i}.nics]]\nqueues = 2\n[[vms.b{i}.nics]]\nmtu = 1300\n')
    cfg = tmp_path / "bulk.toml"
    cfg.write_text("".join(lines) + extra)
    return str(cfg)


def expected_taps() -> dict[str, tuple[int, bool, int]]:
    """tap -> (owner, multi_queue, mtu)."""
    out = {}
    for i in range(N):
        if i % 3 == 0:
            out[f"b{i}-0"] = (1000 + i, True, 1400)
            out[f"b{i}-1"] = (1000 + i, False, 1300)
        else:
            out[f"b{i}-0"] = (1000 + i, False, 1400)
    return out


def test_bulk_up_and_down_all(ns: Netns, state_dir: str, tmp_path: Path) -> None:
    ns.ip("link", "add", "keep0", "type", "veth", "peer", "name", "keep1")
    ns.ip("tuntap", "add", "dev", "foreign0", "mode", "tap")
    before = host_snapshot(ns, state_dir)
    cfg = bulk_config(tmp_path)
    vmnet(ns, state_dir, "up", "--all", config=cfg, check=True)
    links = ns.links()
    for tap, (owner, mq, mtu) in expected_taps().items():
        info = tap_info(links[tap])
        assert info["user"] == owner and info["multi_queue"] is mq and info["persist"]
        assert links[tap]["master"] == "br-bulk" and links[tap]["mtu"] == mtu
        assert "UP" in links[tap]["flags"]
    st = status_json(ns, state_dir)
    assert len(st["vms"]) == N
    assert all(n["state"] == "ok" for v in st["vms"] for n in v["nics"])
    r = vmnet(ns, state_dir, "down", "--all", config=cfg, check=True)
    assert "bridge br-bulk released" in r.stdout
    assert host_snapshot(ns, state_dir) == before  # foreign tap and veth untouched
    assert os.listdir(state_dir) == []


def test_bulk_up_by_name_lean_path(ns: Netns, state_dir: str) -> None:
    names = [f"n{i}" for i in range(10)]
    r = vmnet(ns, state_dir, "up", *names, check=True)
    assert r.stdout.count("QEMU options") == 10
    links = ns.links()
    assert all(links[f"{n}-0"]["master"] == "vmnet0" for n in names)
    vmnet(ns, state_dir, "down", *names[:5], check=True)
    links = ns.links()
    assert not any(f"{n}-0" in links for n in names[:5])
    assert all(f"{n}-0" in links for n in names[5:]) and "vmnet0" in links
    vmnet(ns, state_dir, "down", *names[5:], check=True)
    assert set(ns.links()) == {"lo"}


@pytest.mark.parametrize("bad,culprit", [
    ('[vms.zz]\nuser = "no-such-user-bulk"\n', "no-such-user-bulk"),
    ('[vms.zz]\n[[vms.zz.nics]]\ntap = "foreign0"\n', "foreign0"),
    ('[vms.zz]\n[[vms.zz.nics]]\nmac = "52:54:00:00:00:01"\n[vms.zy]\n'
     '[[vms.zy.nics]]\nmac = "52:54:00:00:00:01"\n', "52:54:00:00:00:01"),
], ids=["unknown-user", "foreign-tap-name", "mac-clash-in-batch"])
def test_bulk_up_is_all_or_nothing(ns: Netns, state_dir: str, tmp_path: Path, bad: str,
                                   culprit: str) -> None:
    ns.ip("tuntap", "add", "dev", "foreign0", "mode", "tap")
    before = host_snapshot(ns, state_dir)
    cfg = bulk_config(tmp_path, bad)
    r = vmnet(ns, state_dir, "up", "--all", config=cfg)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert culprit in r.stderr and ("zz" in r.stderr or "zy" in r.stderr)
    assert host_snapshot(ns, state_dir) == before


def test_bulk_up_kernel_failure_rolls_back_everything(ns: Netns, state_dir: str,
                                                      tmp_path: Path) -> None:
    before = host_snapshot(ns, state_dir)
    cfg = bulk_config(tmp_path)
    r = vmnet(ns, state_dir, "up", "--all", config=cfg,
              env={"VMNET_FAULT": "step:AttachTap", "VMNET_FAULT_AT": "20",
                   "VMNET_FAULT_ACTION": "fail"})
    assert r.returncode != 0 and "injected failure" in r.stderr
    assert host_snapshot(ns, state_dir) == before


def test_bulk_down_refuses_batch_with_held_tap(ns: Netns, state_dir: str) -> None:
    names = [f"h{i}" for i in range(6)]
    vmnet(ns, state_dir, "up", *names, check=True)
    with hold_tap(ns, "h3-0"):
        before = ns.links()
        r = vmnet(ns, state_dir, "down", *names)
        assert r.returncode != 0 and "h3" in r.stderr and "still running" in r.stderr
        assert set(ns.links()) == set(before)
        vmnet(ns, state_dir, "down", "--force", *names, check=True)
        assert not any(n.startswith("h") for n in ns.links())


def test_ports_are_settled_when_up_returns(ns: Netns, state_dir: str, tmp_path: Path) -> None:
    """A tap's carrier flaps while it is made and the kernel applies that to its
    operstate up to a second later; enslaved meanwhile, a port counts as up and the
    bridge forwards to it, takes carrier and an IPv6 link-local address.  vmnet
    settles each tap before it joins: when `up` returns, every tap says DOWN, no
    port is forwarding and the bridge has no address (without the settle, most of
    200 taps made in a row still say UNKNOWN here)."""
    import json

    lines = ['[networks.lab]\nbridge = "br-set"\n[defaults]\nnetwork = "lab"\n']
    lines += [f'[vms.s{i}]\nuser = "0"\n' for i in range(200)]
    cfg = tmp_path / "settle.toml"
    cfg.write_text("".join(lines))
    vmnet(ns, state_dir, "up", "--all", config=str(cfg), check=True)
    links = ns.links()
    states = {n: lk["operstate"] for n, lk in links.items() if n.startswith("s")}
    assert len(states) == 200 and set(states.values()) == {"DOWN"}, \
        {s: sum(1 for v in states.values() if v == s) for s in set(states.values())}
    ports = json.loads(ns.run("bridge", "-j", "link", "show").stdout)
    assert {p["state"] for p in ports} == {"disabled"}  # none forwarding
    addrs = [a for a in ns.addrs() if a["ifname"] == "br-set"]
    assert not addrs[0].get("addr_info"), addrs
    vmnet(ns, state_dir, "down", "--all", config=str(cfg), check=True)
