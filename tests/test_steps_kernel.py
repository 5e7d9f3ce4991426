"""Every step's twins against a real kernel: check fails before, holds after, fails again
after the down twin; and every step's `ip` text, replayed by hand, does what the step does."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.nsutil import Netns

pytestmark = pytest.mark.kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TWINS = r"""
import json, sys
sys.path.insert(0, ROOT)
from vmnet.engine.observe import HostView
from vmnet.engine import steps as S
from vmnet.kernel.base import TapSpec
from vmnet.kernel.linux import LinuxKernel
from vmnet.model import bridge_mark, nic_mark

k = LinuxKernel()
spec = TapSpec(name="tw0", owner=0, group=None, multi_queue=False, mac="fe:54:00:00:00:01",
               mtu=1400, alias=nic_mark("tw", 0))
chain = [S.CreateBridge("twbr", "02:00:00:00:00:01", None, False, 0, bridge_mark("twbr")),
         S.AddAddress("twbr", "192.0.2.1/24"), S.SetUp("twbr"),
         S.AttachUplink("twup", "twbr", bring_up=True),
         S.CreateTap(spec), S.AttachTap("tw0", "twbr")]
out = []
for step in chain:
    before = step.check(HostView(k))
    step.run(k)
    after = step.check(HostView(k))
    out.append([type(step).__name__, before, after])
# down twins, newest first: each original check fails again
for step in reversed(chain):
    twin = step.undo()
    if twin is None:
        continue
    twin.run(k)
    out.append([type(twin).__name__, twin.check(HostView(k)), step.check(HostView(k))])
print(json.dumps(out))
"""


def test_every_step_has_working_twins(ns: Netns) -> None:
    ns.ip("link", "add", "twup", "type", "veth", "peer", "name", "twupp")
    r = ns.run(sys.executable, "-c", TWINS.replace("ROOT", repr(ROOT)))
    rows = json.loads(r.stdout)
    forward = {name: (before, after) for name, before, after in rows[:6]}
    assert forward == {"CreateBridge": ("missing", None), "AddAddress": ("missing", None),
                       "SetUp": ("down", None), "AttachUplink": ("detached", None),
                       "CreateTap": ("missing", None), "AttachTap": ("detached", None)}, rows
    back = rows[6:]
    # DeleteLinks(tw0), DetachUplink, DelAddress, DeleteLinks(twbr): each twin's own check
    # holds, and the step it undoes no longer does.
    assert [b[0] for b in back] == ["DeleteLinks", "DetachUplink", "DelAddress", "DeleteLinks"]
    assert all(b[1] is None and b[2] is not None for b in back), back
    assert "twbr" not in ns.links() and "tw0" not in ns.links()
    assert ns.links()["twup"].get("master") is None and "UP" not in ns.links()["twup"]["flags"]


def test_dry_run_replayed_by_hand_does_what_up_does(ns: Netns, tmp_path: object) -> None:
    """`vmnet up --dry-run` under --netns, run line by line through a shell, builds the
    links `vmnet up` builds (a tap name with dots included: the sysctl line)."""
    import subprocess

    from tests.vmnetcli import vmnet

    state = str(tmp_path)
    cfg = os.path.join(state, "c.toml")
    with open(cfg, "w") as f:
        f.write('[networks.default]\nbridge = "vmnet0"\n'
                '[vms."d.v"]\n[[vms."d.v".nics]]\ntap = "d.v-0"\nmtu = 1400\n')
    r = vmnet(ns, os.path.join(state, "s"), "up", "d.v", "--dry-run", config=cfg, check=True)
    lines = [ln for ln in r.stdout.splitlines() if ln and not ln.startswith("#")]
    assert all(ln.startswith((f"ip -n {ns.name} ", f"ip netns exec {ns.name} "))
               for ln in lines), lines
    for ln in lines:
        subprocess.run(["sh", "-c", ln], check=True, capture_output=True)
    by_hand = ns.links()
    assert ns.run("cat", "/proc/sys/net/ipv6/conf/d.v-0/disable_ipv6").stdout.strip() == "1"
    tap = by_hand["d.v-0"]
    assert tap["master"] == "vmnet0" and tap["mtu"] == 1400 and tap["ifalias"] == "vmnet:d.v:0"
    assert by_hand["vmnet0"]["ifalias"] == "vmnet:bridge:vmnet0"
