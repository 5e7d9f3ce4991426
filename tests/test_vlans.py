"""VLANs per NIC: the plans (`bridge vlan` steps, the uplink's VLANs counted per
bridge and removed with the last NIC that uses them), their dry run, and bad input.
This kernel has no bridge VLAN filtering: the live test skips with that reason, and a
live `up` there fails in one line leaving the host as it was."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.nsutil import Netns
from tests.test_plan import link
from tests.vmnetcli import vmnet
from vmnet.config import Config, Overrides, parse_config, resolve_vm
from vmnet.engine.observe import HostView
from vmnet.engine.plan import BridgeRecords, BridgeUsers, Claims, plan_down_many, plan_up
from vmnet.errors import ConfigError, ConflictError, InputError
from vmnet.kernel.base import Snapshot
from vmnet.model import Network
from vmnet.state.records import BridgeRecord, Proc, VmRecord

NET = Network(name="lab", bridge="br-lab", uplink="eth1", vlan_filtering=True)
CFG = Config(path=None, networks={"lab": NET, "plain": Network(name="plain", bridge="br0")},
             vms={}, default_network="lab")


def vm(name: str, **kw: object):  # type: ignore[no-untyped-def]
    return resolve_vm(CFG, name, Overrides(user="0", **kw), env={})  # type: ignore[arg-type]


def lines(steps: list[object]) -> list[str]:
    return [ln for s in steps for ln in s.ip().splitlines()]  # type: ignore[attr-defined]


def test_an_access_port_on_a_new_vlan_aware_bridge() -> None:
    host = Snapshot({"eth1": link(5, "eth1", "veth")})
    bridges = BridgeRecords(records={})
    p = plan_up(vm("a1", vlan=10), HostView(None, snapshot=host), Claims(), bridges)
    text = lines(p.steps)
    assert "vlan_filtering 1" in text[0]
    assert text[-2:] == ["bridge vlan del vid 1 dev a1-0",
                         "bridge vlan add vid 10 pvid untagged dev a1-0"], text
    assert "bridge vlan add vid 10 dev eth1" in text  # the uplink's, tagged
    assert text.index("bridge vlan del vid 1 dev a1-0") > text.index(
        "ip link set a1-0 master br-lab up")  # after the port joins the bridge
    assert p.new_bridges[0].uplink_vlans == [10]
    assert p.nics[0].vlans == {"vlan": 10}


def test_a_trunk_with_a_native_vlan_and_the_uplink_counted_once() -> None:
    cfg = parse_config('[networks.lab]\nbridge = "br-lab"\nuplink = "eth1"\n'
                       'vlan_filtering = true\n[defaults]\nnetwork = "lab"\n'
                       '[vms.t1]\nuser = "0"\n[[vms.t1.nics]]\ntrunk = [20, 10, 30]\n'
                       'native_vlan = 10\n')
    br = link(2, "br-lab", "bridge", alias="vmnet:bridge:br-lab", vlan_filtering=True)
    up1 = link(5, "eth1", "veth", master=2)
    rec = BridgeRecord("br-lab", "lab", True, uplink="eth1", uplink_attached=True,
                       uplink_vlans=[10])
    p = plan_up(resolve_vm(cfg, "t1", env={}), HostView(None, snapshot=Snapshot(
        {"br-lab": br, "eth1": up1})), Claims(), BridgeRecords(records={"br-lab": rec}))
    text = lines(p.steps)
    assert [t for t in text if "dev eth1" in t] == ["bridge vlan add vid 20 dev eth1",
                                                    "bridge vlan add vid 30 dev eth1"]
    assert text[-4:] == ["bridge vlan del vid 1 dev t1-0",
                         "bridge vlan add vid 10 pvid untagged dev t1-0",
                         "bridge vlan add vid 20 dev t1-0", "bridge vlan add vid 30 dev t1-0"]
    assert p.changed_bridges[0].uplink_vlans == [10, 20, 30]


def _rec(name: str, vlans: dict[str, object]) -> VmRecord:
    v = vm(name, vlan=1)  # any: only the NIC record's vlans count here
    n = plan_up(v, HostView(None, snapshot=Snapshot({"eth1": link(5, "eth1", "veth")})),
                Claims(), BridgeRecords(records={})).nics[0]
    n.vlans = vlans
    return VmRecord(name, "up", "ready", Proc(1, 1), [n])


def test_the_uplinks_vlans_go_with_the_last_nic_that_uses_them() -> None:
    a, b = _rec("a", {"vlan": 10}), _rec("b", {"trunk": [10, 20], "native": None})
    brec = BridgeRecord("br-lab", "lab", True, uplink="eth1", uplink_attached=True,
                        uplink_vlans=[10, 20])
    br = link(2, "br-lab", "bridge", alias="vmnet:bridge:br-lab", vlan_filtering=True)
    tap_a = link(3, "a-0", "tun", master=2, alias="vmnet:a:0")
    tap_b = link(4, "b-0", "tun", master=2, alias="vmnet:b:0")
    host = Snapshot({"br-lab": br, "a-0": tap_a, "b-0": tap_b,
                     "eth1": link(5, "eth1", "veth", master=2)})
    plan = plan_down_many({"b": b}, HostView(None, snapshot=host),
                          BridgeUsers(records={"a": a}),
                          BridgeRecords(records={"br-lab": brec}), force=True)
    assert [ln for ln in lines(plan.steps) if "vlan" in ln] == [
        "bridge vlan del vid 20 dev eth1"]  # 10 is still a's
    assert plan.put_bridges[0].uplink_vlans == [10]
    plan = plan_down_many({"a": a}, HostView(None, snapshot=host),
                          BridgeUsers(records={"b": b}),
                          BridgeRecords(records={"br-lab": brec}), force=True)
    assert [ln for ln in lines(plan.steps) if "vlan" in ln] == []  # b still uses both


def test_vlans_on_a_bridge_that_is_not_vlan_aware_are_refused() -> None:
    br = link(2, "br0", "bridge", vlan_filtering=False)
    with pytest.raises(ConflictError) as e:
        plan_up(vm("x", vlan=10, network="plain"), HostView(None, snapshot=Snapshot(
            {"br0": br})), Claims(), BridgeRecords(records={}))
    assert "vlan_filtering off" in e.value.message
    assert "networks.plain.vlan_filtering = true" in (e.value.hint or "")


@pytest.mark.parametrize(("text", "says"), [
    ("vlan = 0", "outside 1..4094"), ("vlan = 4095", "outside 1..4094"),
    ("trunk = [10, 4095]", "trunk[1]"), ("vlan = 10\ntrunk = [20]", "not both"),
    ("native_vlan = 10", "give trunk"), ("trunk = 10", "list of VLAN ids")],
    ids=["zero", "4095", "trunk-4095", "both", "native-alone", "trunk-not-list"])
def test_bad_vlans_are_one_line(text: str, says: str) -> None:
    with pytest.raises((ConfigError, InputError)) as e:
        cfg = parse_config(f'[vms.v]\n[[vms.v.nics]]\n{text}\n', "t.toml")
        resolve_vm(cfg, "v", env={"SUDO_USER": "root"})
    assert says in e.value.one_line() and "\n" not in e.value.one_line()


# -- in a namespace -------------------------------------------------------------------------
CONFIG = ('[networks.lab]\nbridge = "br-lab"\nvlan_filtering = true\n'
          '[defaults]\nnetwork = "lab"\n')


def _vlan_filtering_works(ns: Netns) -> bool:
    r = ns.ip("link", "add", "vtest", "type", "bridge", "vlan_filtering", "1", check=False)
    if r.returncode == 0:
        ns.ip("link", "del", "vtest")
    return r.returncode == 0


def test_the_dry_run_prints_the_bridge_vlan_commands(ns: Netns, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    before = set(ns.links())
    r = vmnet(ns, str(tmp_path / "s"), "up", "d1", "--vlan", "42", "--dry-run",
              config=str(cfg), check=True)
    assert f"ip -n {ns.name} link add br-lab" in r.stdout and "vlan_filtering 1" in r.stdout
    assert f"bridge -n {ns.name} vlan del vid 1 dev d1-0" in r.stdout
    assert f"bridge -n {ns.name} vlan add vid 42 pvid untagged dev d1-0" in r.stdout
    assert set(ns.links()) == before


def test_live_vlans(ns: Netns, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    state = str(tmp_path / "s")
    before = set(ns.links())
    if not _vlan_filtering_works(ns):
        # this kernel: one clear line, nothing left behind
        r = vmnet(ns, state, "up", "l1", "--vlan", "42", config=str(cfg))
        assert r.returncode == 1 and "no bridge VLAN filtering" in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and set(ns.links()) == before
        pytest.skip("this kernel has no bridge vlan_filtering (EOPNOTSUPP): the live "
                    "VLAN table is not checked here")
    vmnet(ns, state, "up", "l1", "--vlan", "42", config=str(cfg), check=True)
    table = json.loads(subprocess.run(["bridge", "-n", ns.name, "-j", "vlan", "show",
                                       "dev", "l1-0"], capture_output=True, text=True,
                                      check=True).stdout)
    vlans = {v["vlan"]: v.get("flags", []) for v in table[0]["vlans"]}
    assert vlans == {42: ["PVID", "Egress Untagged"]}, vlans
    st = json.loads(vmnet(ns, state, "status", "--json", config=str(cfg), check=True).stdout)
    assert st["vms"][0]["nics"][0]["state"] == "ok"
    vmnet(ns, state, "down", "l1", config=str(cfg), check=True)
    assert set(ns.links()) == before
