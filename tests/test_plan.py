"""Pure planning tests: desired model + observed host -> steps, no kernel."""

from __future__ import annotations

import pytest

from vmnet.config import Config, Overrides, resolve_vm
from vmnet.engine.observe import HostView
from vmnet.engine.plan import (
    BridgeRecords,
    BridgeUsers,
    Claims,
    DownPlan,
    UpPlan,
    plan_down_many,
    plan_up,
    plan_up_many,
)
from vmnet.engine.steps import AttachTap, AttachUplink, CreateBridge, CreateTap, DeleteLinks
from vmnet.errors import ConflictError
from vmnet.kernel.base import LinkInfo, Snapshot, TunInfo
from vmnet.model import Network
from vmnet.state.store import BridgeRecord, Proc, VmRecord

CFG = Config(path=None, networks={"default": Network(name="default", bridge="vmnet0")},
             vms={})


def vm(name: str = "vm1", **kw: object):  # type: ignore[no-untyped-def]
    return resolve_vm(CFG, name, Overrides(user="0", **kw), env={})  # type: ignore[arg-type]


def link(index: int, name: str, kind: str | None = None, **kw: object) -> LinkInfo:
    base = dict(index=index, name=name, kind=kind, mac=f"02:00:00:00:00:{index:02x}",
                mtu=1500, up=True, carrier=False, master=None, alias=None)
    base.update(kw)
    return LinkInfo(**base)  # type: ignore[arg-type]


def snap(*links: LinkInfo) -> Snapshot:
    return Snapshot({lk.name: lk for lk in links})


def up(v: object, s: Snapshot, records: dict[str, VmRecord] | None = None,
       bridges: dict[str, BridgeRecord] | None = None) -> UpPlan:
    """plan_up over a made-up host (a view of `s`, no kernel) and records in memory."""
    assert hasattr(v, "name")
    return plan_up(v, HostView(None, snapshot=s),  # type: ignore[arg-type]
                   Claims(records=records or {}, exclude=[v.name]),
                   BridgeRecords(records=bridges or {}))


def down(name: str, rec: VmRecord | None, s: Snapshot, records: dict[str, VmRecord],
         bridges: dict[str, BridgeRecord], *, force: bool = False,
         holders: dict[str, list[str]] | None = None) -> DownPlan:
    others = {k: r for k, r in records.items() if k != name}
    return plan_down_many({name: rec}, HostView(None, snapshot=s),
                          BridgeUsers(records=others), BridgeRecords(records=bridges),
                          force=force, holders=holders)


def test_fresh_host_plan_order() -> None:
    p = up(vm(), snap(link(1, "lo")), {}, {})
    kinds = [type(s).__name__ for s in p.steps]
    assert kinds == ["CreateBridge", "SetUp", "CreateTap", "AttachTap"]
    create = p.steps[2]
    assert isinstance(create, CreateTap)
    assert create.spec.mac.startswith("fe:54:00") and create.spec.owner == 0
    assert p.new_bridges[0].created


def test_existing_own_tap_is_noop() -> None:
    v = vm()
    br = link(2, "vmnet0", "bridge", alias="vmnet:bridge:vmnet0")
    tap = link(3, "vm1-0", "tun", master=2, alias="vmnet:vm1:0", mac=v.nics[0].tap_mac,
               tun=TunInfo(True, 0, None, False, True, False, False, 0))
    rec = BridgeRecord(bridge="vmnet0", network="default", created=True)
    p = up(v, snap(br, tap), {}, {"vmnet0": rec})
    assert p.noop


def test_detached_own_tap_is_reattached() -> None:
    br = link(2, "vmnet0", "bridge", alias="vmnet:bridge:vmnet0")
    tap = link(3, "vm1-0", "tun", alias="vmnet:vm1:0", mac=vm().nics[0].tap_mac,
               tun=TunInfo(True, 0, None, False, True, False, False, 0))
    p = up(vm(), snap(br, tap), {}, {})
    assert p.steps == [AttachTap("vm1-0", "vmnet0")]


def test_queue_mismatch_refused() -> None:
    tap = link(3, "vm1-0", "tun", alias="vmnet:vm1:0",
               tun=TunInfo(True, 0, None, False, True, False, False, 0))
    with pytest.raises(ConflictError, match="multi_queue"):
        up(vm(queues=2), snap(tap), {}, {})


def test_port_limit() -> None:
    br = link(2, "vmnet0", "bridge")
    ports = [link(10 + i, f"p{i}", "veth", master=2) for i in range(1023)]
    with pytest.raises(ConflictError, match="at most 1023"):
        up(vm(), snap(br, *ports), {}, {})


def test_uplink_attached_with_bring_up() -> None:
    uplink = link(5, "eth1", "veth", up=False)
    p = up(vm(uplink="eth1"), snap(uplink), {}, {})
    assert AttachUplink("eth1", "vmnet0", bring_up=True) in p.steps
    assert p.new_bridges[0].uplink_attached and p.new_bridges[0].uplink_was_down
    assert isinstance(p.steps[0], CreateBridge)


def test_mac_collision_with_other_record() -> None:
    other = vm("other")
    rec = VmRecord(vm="other", mode="up", phase="ready", writer=Proc(1, 1),
                   nics=[type(n)(**{**n.__dict__}) for n in []])
    p_other = up(other, snap(), {}, {})
    rec.nics = p_other.nics
    mine = vm("vm1", macs=(other.nics[0].mac,))
    with pytest.raises(ConflictError, match="already used by VM 'other'"):
        up(mine, snap(), {"other": rec}, {})


def test_down_keeps_shared_bridge_and_foreign_ports() -> None:
    br = link(2, "vmnet0", "bridge", alias="vmnet:bridge:vmnet0")
    t1 = link(3, "vm1-0", "tun", master=2, alias="vmnet:vm1:0",
              tun=TunInfo(True, 0, None, False, True, False, False, 0))
    foreign = link(4, "admin0", "veth", master=2)
    rec1 = VmRecord(vm="vm1", mode="up", phase="ready", writer=Proc(1, 1),
                    nics=up(vm(), snap(), {}, {}).nics)
    brec = BridgeRecord(bridge="vmnet0", network="default", created=True)
    p = down("vm1", rec1, snap(br, t1, foreign), {"vm1": rec1}, {"vmnet0": brec})
    assert p.steps == [DeleteLinks(("vm1-0",))]
    assert "vmnet0" in p.kept_bridges
    p = down("vm1", rec1, snap(br, t1), {"vm1": rec1}, {"vmnet0": brec})
    assert p.steps == [DeleteLinks(("vm1-0",)), DeleteLinks(("vmnet0",))]


def test_down_never_deletes_unmarked_or_foreign_owner() -> None:
    t1 = link(3, "vm1-0", "tun", alias="vmnet:vm1:0",
              tun=TunInfo(True, 1234, None, False, True, False, False, 0))
    rec1 = VmRecord(vm="vm1", mode="up", phase="ready", writer=Proc(1, 1),
                    nics=up(vm(), snap(), {}, {}).nics)
    p = down("vm1", rec1, snap(t1), {"vm1": rec1}, {})
    assert p.steps == [] and p.skipped


def test_down_refuses_held_tap() -> None:
    t1 = link(3, "vm1-0", "tun", alias="vmnet:vm1:0", carrier=True,
              tun=TunInfo(True, 0, None, False, True, False, False, 1))
    rec1 = VmRecord(vm="vm1", mode="up", phase="ready", writer=Proc(1, 1),
                    nics=up(vm(), snap(), {}, {}).nics)
    with pytest.raises(ConflictError, match="pid 42"):
        down("vm1", rec1, snap(t1), {}, {}, holders={"vm1-0": ["pid 42 (qemu)"]})
    assert down("vm1", rec1, snap(t1), {}, {}, force=True).taps == ["vm1-0"]


def test_bulk_plan_attaches_a_shared_uplink_once() -> None:
    uplink = link(5, "eth1", "veth")
    plans = plan_up_many([vm("a", uplink="eth1"), vm("b", uplink="eth1")],
                         HostView(None, snapshot=snap(uplink)), Claims(), BridgeRecords())
    attaches = [s for p in plans for s in p.steps if isinstance(s, AttachUplink)]
    creates = [s for p in plans for s in p.steps if isinstance(s, CreateBridge)]
    assert len(attaches) == 1 and len(creates) == 1


def test_existing_tap_is_brought_to_the_settings_asked_for() -> None:
    """A tap with another MAC or MTU than asked: one ConfigureTap (its down twin puts the old
    values back); while a guest holds it, the MAC is refused, the MTU is not."""
    from vmnet.engine.steps import ConfigureTap
    from vmnet.errors import BusyError

    v = vm(mtu=1400)
    br = link(2, "vmnet0", "bridge", alias="vmnet:bridge:vmnet0")
    tap = link(3, "vm1-0", "tun", master=2, alias="vmnet:vm1:0", mac="fe:00:00:00:00:01",
               tun=TunInfo(True, 0, None, False, True, False, False, 0))
    p = up(v, snap(br, tap), {}, {"vmnet0": BridgeRecord("vmnet0", "default", True)})
    assert p.steps == [ConfigureTap("vm1-0", v.nics[0].tap_mac, 1400, "fe:00:00:00:00:01",
                                    1500)]
    assert p.steps[0].undo() == ConfigureTap("vm1-0", "fe:00:00:00:00:01", 1500,
                                             v.nics[0].tap_mac, 1400)
    held = link(3, "vm1-0", "tun", master=2, alias="vmnet:vm1:0", mac="fe:00:00:00:00:01",
                carrier=True, tun=TunInfo(True, 0, None, False, True, False, False, 1))
    with pytest.raises(BusyError, match=r"MAC .* would not reach it"):
        up(v, snap(br, held), {}, {"vmnet0": BridgeRecord("vmnet0", "default", True)})
    fine = link(3, "vm1-0", "tun", master=2, alias="vmnet:vm1:0", mac=v.nics[0].tap_mac,
                carrier=True, tun=TunInfo(True, 0, None, False, True, False, False, 1))
    p = up(v, snap(br, fine), {}, {"vmnet0": BridgeRecord("vmnet0", "default", True)})
    assert p.steps == [ConfigureTap("vm1-0", None, 1400, v.nics[0].tap_mac, 1500)]
