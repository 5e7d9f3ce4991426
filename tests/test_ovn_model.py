"""Kind "ovn" without a deployment: the overlay's MTU, the record's `ovn` field, the
network's OVN keys as a model (the live tests are tests/test_ovn.py's)."""

from __future__ import annotations

import pytest

from vmnet.errors import InputError
from vmnet.kernel.base import LinkInfo
from vmnet.kinds.ovn import Chassis, overlay_mtu
from vmnet.model import Network, Nic, Ovn, Vm
from vmnet.state.records import Corrupt, NicRecord, Proc, VmRecord, vm_from_json


class View:
    """The one HostView question overlay_mtu asks: which link holds an address."""

    def __init__(self, links: dict[str, LinkInfo]) -> None:
        self.links = links

    def link_with_address(self, ip: str) -> LinkInfo | None:
        return self.links.get(ip)


def _link(mtu: int) -> LinkInfo:
    return LinkInfo(5, "br-phy", "tun", "02:00:00:00:00:01", mtu, True, True, None, None)


@pytest.mark.parametrize(("encap", "ip", "under", "want"), [
    ("geneve", "192.0.2.1", 1500, 1442),
    ("geneve", "2001:db8::1", 1500, 1422),
    ("geneve", "192.0.2.1", 9000, 8942),
    ("vxlan", "192.0.2.1", 1500, 1450),
    ("geneve", "192.0.2.9", None, 1442),  # on no interface here: a 1500-byte underlay
    ("geneve", None, None, 1442),
], ids=["geneve4", "geneve6", "jumbo", "vxlan4", "elsewhere", "no-encap-ip"])
def test_the_nic_mtu_is_what_the_overlay_leaves(encap: str, ip: str | None,
                                                under: int | None, want: int) -> None:
    ch = Chassis("a", "br-int", None, encap, ip, userspace=True)
    view = View({} if under is None or ip is None else {ip: _link(under)})
    assert overlay_mtu(ch, view) == want  # type: ignore[arg-type]


def _ovn_net() -> Network:
    return Network(name="o", bridge="br-int", kind="ovn",
                   ovn=Ovn("ls0", nb="tcp:192.0.2.10:6641", ovs="unix:/run/ovs/db.sock"))


def test_the_ovn_record_round_trips_and_a_bad_one_is_corrupt() -> None:
    net = _ovn_net()
    assert net.ovn is not None
    ovn = {"switch": "ls0", "port": "vmnet-v-0", "chassis": "a", "net": net.ovn.to_json()}
    nic = NicRecord(index=0, tap="v-0", bridge="br-int", network="o", mac="52:54:00:00:00:01",
                    tap_mac="fe:54:00:00:00:01", mtu=1442, queues=1, vnet_hdr=False, owner=0,
                    group=None, ip="10.0.0.5", ovn=ovn)
    rec = VmRecord(vm="v", mode="up", phase="ready", writer=Proc.me(), nics=[nic])
    back = vm_from_json(rec.to_json())
    assert back.nics[0].ovn == ovn and back.nics[0] == nic
    for bad in ({**ovn, "port": 5}, {**ovn, "net": {"switch": "ls0", "nb": "tcp:nohost"}},
                {**ovn, "net": {"switch": "ls0", "bogus": 1}}):
        d = rec.to_json()
        d["nics"][0]["ovn"] = bad  # type: ignore[index]
        with pytest.raises(Corrupt):
            vm_from_json(d)


@pytest.mark.parametrize(("kw", "want"), [
    ({"nb": "unix:relative.sock"}, "is not unix:/ABSOLUTE/PATH"),
    ({"nb": "tcp:h:99999"}, "is not unix:/ABSOLUTE/PATH"),
    ({"ovs": "ssl:h:1"}, None),  # an ssl Open vSwitch remote is fine (keys are the NB's)
    ({"nb": "ssl:h:1", "ssl_key": "/k", "ssl_cert": "/c"}, "needs ssl_key, ssl_cert and ssl_ca"),
    ({"nb": "ssl:h:1,ssl:h2:2", "ssl_key": "/k", "ssl_cert": "/c", "ssl_ca": "/a"}, None),
    ({"rundir": "run/ovn"}, "not an absolute path"),
    ({"bind_timeout": 0.0}, "outside"),
], ids=["unix-relative", "bad-port", "ssl-ovs", "ssl-incomplete", "cluster", "rundir",
        "timeout"])
def test_ovn_keys_are_checked_once(kw: dict[str, object], want: str | None) -> None:
    def make() -> Network:
        return Network(name="o", bridge="br-int", kind="ovn",
                       ovn=Ovn("ls0", **kw))  # type: ignore[arg-type]
    if want is None:
        assert make().ovn is not None
        return
    with pytest.raises(InputError, match=want):
        make()


def test_an_ovn_nic_names_its_port_and_may_have_an_address() -> None:
    net = _ovn_net()
    nic = Nic(index=0, network=net, tap="v-0", mac="52:54:00:00:00:01", ip="10.0.0.5")
    vm = Vm("v", 0, None, (nic,))
    assert vm.lsp(nic) == "vmnet-v-0"
    named = Nic(index=1, network=net, tap="v-1", mac="52:54:00:00:00:02", port="v-eth1")
    assert vm.lsp(named) == "v-eth1"
    plain = Network(name="p", bridge="br0")
    with pytest.raises(InputError, match="a logical switch port is for an ovn network"):
        Nic(index=0, network=plain, tap="v-0", mac="52:54:00:00:00:01", port="x")
    with pytest.raises(InputError, match="is not a logical name"):
        Nic(index=0, network=net, tap="v-0", mac="52:54:00:00:00:01", port="a b")
