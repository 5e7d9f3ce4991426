"""vmnet's netlink codec against the real kernel, each test in a throwaway namespace.

The objects are made with `ip` and `bridge`; our dumps (through an Rtnl socket
opened inside the namespace) must say what `ip -j` / `bridge -j` say.  Our
request bodies are sent too, and `ip` must then show what they asked for.
Nothing here touches the host's own namespace, and no traffic leaves the
namespace (the veth pairs only talk to each other).
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, TypeVar

import pytest

from tests.nsutil import Netns
from vmnet.kernel import addr, fdb, nexthop, route, rtnl, rule
from vmnet.kernel.events import OVERRUN, LinkEvents

pytestmark = pytest.mark.kernel

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
FAMILY = {2: "inet", 10: "inet6"}


def in_netns(ns: Netns, factory: Callable[[], T]) -> T:
    """factory() run by a thread that entered ns: the sockets it opens belong to ns.

    setns() moves only the calling thread, and that thread ends here, so the
    test process itself never leaves the host's namespace.
    """
    out: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out.append(factory())
        except BaseException as e:  # handed to the test below
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


@pytest.fixture
def nl(ns: Netns) -> Iterator[rtnl.Rtnl]:
    sock = in_netns(ns, rtnl.Rtnl)
    sock.set_strict_check()
    yield sock
    sock.close()


def ipj(ns: Netns, *args: str) -> Any:
    """`ip -N -j ARGS` in ns: JSON, numbers as numbers (-N: no names from rt_tables)."""
    return json.loads(ns.ip("-N", "-j", *args).stdout or "[]")


def bridge_j(ns: Netns, *args: str) -> Any:
    return json.loads(ns.run("bridge", "-j", *args).stdout or "[]")


def stable(read_ip: Callable[[], T], read_ours: Callable[[], Any]) -> tuple[T, Any]:
    """(ip's view, ours) taken while ip's view did not change around ours: addrconf
    and the bridge finish some work asynchronously after `ip` returns."""
    for _ in range(50):
        before = read_ip()
        ours = read_ours()
        if read_ip() == before:
            return before, ours
        time.sleep(0.1)
    raise AssertionError("the namespace did not settle")


def sysctl(ns: Netns, key: str, value: str) -> None:
    """A sysctl of ns (net.* is per namespace: `ip netns exec` sees ns's /proc/sys/net)."""
    ns.run("sysctl", "-qw", f"{key}={value}")


def wait_oper_up(ns: Netns, names: list[str]) -> None:
    """Until linkwatch has applied carrier (operstate UP) to every named link: only
    then does addrconf add the link-local addresses and routes."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        links = ns.links()
        if all(links[n]["operstate"] == "UP" for n in names):
            return
        time.sleep(0.05)
    raise AssertionError(f"links not up: {names}")


def build(ns: Netns) -> dict[str, int]:
    """Two veth pairs, a bridge with one of them as a port, addresses, routes in
    main/100/100000, rules; returns name -> ifindex."""
    sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")  # no tentative addresses flipping
    sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")
    ip = ns.ip
    ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")  # no CONFIG_DUMMY here
    ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ip("link", "add", "br0", "type", "bridge")
    ip("link", "set", "v0", "master", "br0")
    ip("link", "set", "v0", "type", "bridge_slave", "learning", "off")  # no learned entries
    for n in ("d0", "d1", "v0", "v1", "br0"):
        ip("link", "set", n, "up")
    ip("addr", "add", "10.1.0.1/24", "dev", "d0")
    ip("addr", "add", "169.254.5.1/16", "scope", "link", "dev", "d0")
    ip("addr", "add", "10.3.0.1", "peer", "10.3.0.2", "dev", "d0")
    ip("addr", "add", "fd00::1/64", "dev", "d0", "nodad")
    ip("addr", "add", "fd02::1/64", "dev", "d0", "nodad", "noprefixroute")  # IFA_FLAGS > 0xff
    ip("addr", "add", "10.2.0.1/24", "dev", "v1")
    ip("route", "add", "192.168.5.0/24", "via", "10.1.0.2", "table", "100")
    ip("route", "add", "192.168.9.0/24", "dev", "d0", "table", "100000", "metric", "7")
    ip("route", "add", "192.168.6.0/24", "nexthop", "via", "10.1.0.2", "dev", "d0",
       "nexthop", "via", "10.2.0.2", "dev", "v1", "weight", "3")
    ip("-6", "route", "add", "fd01::/64", "via", "fd00::2", "dev", "d0", "table", "100")
    ip("-6", "route", "add", "default", "nexthop", "via", "fd00::2", "dev", "d0",
       "nexthop", "via", "fd00::3", "dev", "d0")
    ip("rule", "add", "iif", "d0", "table", "100", "pref", "100")
    ip("rule", "add", "oif", "v1", "table", "100000", "pref", "101")
    ip("rule", "add", "from", "10.1.0.0/24", "to", "10.9.0.0/16", "table", "100", "pref", "103")
    # a selector no lookup here matches: an unconditional blackhole would fail every
    # gateway check that follows (the kernel resolves gateways through the rules)
    ip("rule", "add", "from", "192.0.2.0/24", "pref", "104", "blackhole")
    ip("-6", "rule", "add", "from", "fd00::/64", "iif", "d0", "table", "100", "pref", "102")
    wait_oper_up(ns, ["d0", "d1", "v0", "v1", "br0"])
    return {n: lk["ifindex"] for n, lk in ns.links().items()}


def nexthops_or_skip(ns: Netns) -> None:
    """Nexthop objects and routes through them, or skip saying what the kernel said."""
    r = ns.ip("nexthop", "add", "id", "1", "via", "10.1.0.3", "dev", "d0", check=False)
    if r.returncode:
        pytest.skip(f"the kernel refuses nexthop objects: {r.stderr.strip()}")
    ns.ip("nexthop", "add", "id", "2", "via", "10.2.0.3", "dev", "v1")
    ns.ip("-4", "nexthop", "add", "id", "3", "blackhole")
    ns.ip("nexthop", "add", "id", "10", "group", "1/2,4")
    ns.ip("-6", "nexthop", "add", "id", "20", "via", "fd00::3", "dev", "d0")
    ns.ip("route", "add", "192.168.7.0/24", "nhid", "10")
    ns.ip("route", "add", "192.168.8.0/24", "nhid", "1", "table", "100000")
    ns.ip("-6", "route", "add", "fd03::/64", "nhid", "20", "table", "100")


# -- what ip says, in our fields --------------------------------------------------------
IFA_FLAG_NAMES = {0x01: "secondary", 0x02: "nodad", 0x04: "optimistic", 0x08: "dadfailed",
                  0x10: "home", 0x20: "deprecated", 0x40: "tentative", 0x100: "mngtmpaddr",
                  0x200: "noprefixroute", 0x400: "autojoin", 0x800: "stable-privacy"}


def ip_addr_flags(family: int, flags: int) -> dict[str, bool]:
    """The booleans `ip -j addr` prints for IFA_F_* flags (print_ifa_flags())."""
    out = {"dynamic": True} if not flags & 0x80 else {}
    for bit, name in IFA_FLAG_NAMES.items():
        if flags & bit:
            out["temporary" if bit == 0x01 and family == 10 else name] = True
    return out


def ip_addrs(ns: Netns) -> list[tuple[Any, ...]]:
    out = []
    for link in ipj(ns, "addr", "show"):
        for a in link["addr_info"]:
            flags = {k: v for k, v in a.items() if v is True}
            out.append((link["ifindex"], a["family"], a["local"], a.get("address"),
                        a["prefixlen"], int(a["scope"]), a.get("label"), flags))
    return sorted(out, key=repr)


def our_addrs(nl: rtnl.Rtnl, index: int = 0) -> list[tuple[Any, ...]]:
    out = []
    for a in addr.dump(nl, 0, index):
        local = a.local or a.address
        peer = a.address if a.local and a.address != a.local else None
        out.append((a.index, FAMILY[a.family], local, peer, a.prefixlen, a.scope, a.label,
                    ip_addr_flags(a.family, a.flags)))
    return sorted(out, key=repr)


def ip_dst(r: route.Route) -> str:
    """How `ip route` spells a destination: a host route without its /32 or /128."""
    if r.dst is None:
        return "default"
    full = 32 if r.family == 2 else 128
    return r.dst if r.dst_len == full else f"{r.dst}/{r.dst_len}"


def ip_routes(ns: Netns, family: str) -> list[tuple[Any, ...]]:
    out = []
    for r in ipj(ns, family, "-d", "route", "show", "table", "all"):
        legs = tuple(h["dev"] for h in r.get("nexthops", ()))
        out.append((r["dst"], int(r["table"]), int(r["type"]), int(r["protocol"]),
                    int(r["scope"]), r.get("dev"), r.get("gateway"), r.get("metric", 0),
                    r.get("nhid"), legs))
    return sorted(out, key=repr)


def our_routes(nl: rtnl.Rtnl, family: int, names: dict[int, str]) -> list[tuple[Any, ...]]:
    out = []
    for r in route.dump(nl, family):
        out.append((ip_dst(r), r.table, r.type, r.protocol, r.scope,
                    None if r.oif is None else names[r.oif], r.gateway, r.priority, r.nh_id,
                    tuple(names[i] for i in r.multipath_oifs)))
    return sorted(out, key=repr)


def ip_rules(ns: Netns, family: str) -> list[tuple[Any, ...]]:
    """`ip rule` in our fields: "all" is no prefix, a host prefix has no length."""
    host = 32 if family == "-4" else 128
    out = []
    for r in ipj(ns, family, "rule", "show"):
        src = None if r["src"] == "all" else r["src"]
        dst = r.get("dst")
        out.append((r["priority"], int(r.get("table", 0)), int(r.get("action", 1)),
                    r.get("iif"), r.get("oif"), src, r.get("srclen", host if src else 0),
                    dst, r.get("dstlen", host if dst else 0)))
    return out


def our_rules(nl: rtnl.Rtnl, family: int) -> list[tuple[Any, ...]]:
    return [(r.priority, r.table, r.action, r.iifname, r.oifname, r.src, r.src_len, r.dst,
             r.dst_len) for r in rule.dump(nl, family)]


FDB_STATE = ((0x80, "permanent"), (0x40, "static"), (0x04, "stale"))
NTF_NAMES = {0x02: "self", 0x04: "master", 0x10: "extern_learn", 0x20: "offload",
             0x40: "sticky", 0x80: "router"}


def fdb_state_text(state: int) -> str:
    """`bridge fdb`'s word for NUD_* state (state_n2a() in bridge/fdb.c)."""
    return next((text for bit, text in FDB_STATE if state & bit), "")


def ip_fdb(ns: Netns, br: str) -> list[tuple[Any, ...]]:
    return sorted(((e["mac"], e["ifname"], e.get("master"), e.get("vlan"), e["state"],
                    sorted(e["flags"])) for e in bridge_j(ns, "fdb", "show", "br", br)),
                  key=repr)


def fdb_row(e: fdb.FdbEntry, names: dict[int, str]) -> tuple[Any, ...]:
    return (e.mac, names[e.ifindex], None if e.master is None else names[e.master], e.vlan,
            fdb_state_text(e.state), sorted(n for b, n in NTF_NAMES.items() if e.flags & b))


def our_fdb(nl: rtnl.Rtnl, br_index: int, names: dict[int, str]) -> list[tuple[Any, ...]]:
    return sorted((fdb_row(e, names) for e in fdb.dump(nl, br_index)), key=repr)


def by_index(idx: dict[str, int]) -> dict[int, str]:
    return {i: n for n, i in idx.items()}


# -- dumps ------------------------------------------------------------------------------
def test_addresses_match_ip(ns: Netns, nl: rtnl.Rtnl) -> None:
    idx = build(ns)
    want, got = stable(lambda: ip_addrs(ns), lambda: our_addrs(nl))
    assert got == want
    kinds = {(a[1], a[5]) for a in want}
    assert {("inet", 0), ("inet", 253), ("inet6", 0), ("inet6", 253)} <= kinds
    # the index filter (strict socket) and the IFA_FLAGS-only bit (noprefixroute, 0x200)
    d0 = our_addrs(nl, idx["d0"])
    assert d0 and {a[0] for a in d0} == {idx["d0"]}
    assert [a[7] for a in d0 if a[2] == "fd02::1"] == [{"nodad": True, "noprefixroute": True}]
    assert [a[3] for a in d0 if a[2] == "10.3.0.1"] == ["10.3.0.2"]
    # a socket without strict checking: the kernel ignores ifa_index, addr.dump() does not
    lax = in_netns(ns, rtnl.Rtnl)
    try:
        assert not lax.strict
        assert {a.index for a in addr.dump(lax, 0, idx["d0"])} == {idx["d0"]}
    finally:
        lax.close()


def test_routes_of_all_tables_match_ip(ns: Netns, nl: rtnl.Rtnl) -> None:
    idx = build(ns)
    names = by_index(idx)
    for fam, opt in ((2, "-4"), (10, "-6")):
        want, got = stable(partial(ip_routes, ns, opt), partial(our_routes, nl, fam, names))
        assert got == want
    routes = route.dump(nl)
    mp = next(r for r in routes if r.dst == "192.168.6.0")
    assert mp.oif is None and mp.oifs == (idx["d0"], idx["v1"])
    assert next(r for r in routes if r.dst == "192.168.9.0").table == 100000
    v6_default = next(r for r in routes if r.family == 10 and r.dst is None)
    assert v6_default.oifs == (idx["d0"], idx["d0"])
    assert {r.table for r in routes} >= {100, 100000, 254, 255}


def test_routes_and_nexthop_objects_match_ip(ns: Netns, nl: rtnl.Rtnl) -> None:
    idx = build(ns)
    nexthops_or_skip(ns)
    names = by_index(idx)
    for fam, opt in ((2, "-4"), (10, "-6")):
        want, got = stable(partial(ip_routes, ns, opt), partial(our_routes, nl, fam, names))
        assert got == want
    via_group = next(r for r in route.dump(nl) if r.dst == "192.168.7.0")
    assert via_group.nh_id == 10 and via_group.oifs == (idx["d0"], idx["v1"])

    ours = {n.id: n for n in nexthop.dump(nl)}
    shown = {n["id"]: (idx.get(n.get("dev", "")), n.get("gateway"), "blackhole" in n,
                       tuple(g["id"] for g in n.get("group", ())))
             for n in ipj(ns, "-d", "nexthop", "show")}
    assert {i: (n.oif, n.gateway, n.blackhole, n.group) for i, n in ours.items()} == shown
    for opt, fam in (("-4", 2), ("-6", 10)):
        assert {n["id"] for n in ipj(ns, opt, "nexthop", "show")} == {
            i for i, n in ours.items() if n.family == fam}
    assert ours[10].family == 0 and ours[10].group == (1, 2)


def test_rules_match_ip(ns: Netns, nl: rtnl.Rtnl) -> None:
    build(ns)
    for fam, opt in ((2, "-4"), (10, "-6")):
        assert our_rules(nl, fam) == ip_rules(ns, opt)
    r101 = next(r for r in rule.dump(nl, 2) if r.priority == 101)
    assert (r101.table, r101.oifname) == (100000, "v1")


def test_links_match_ip(ns: Netns, nl: rtnl.Rtnl) -> None:
    build(ns)
    ours = {f["name"]: f for f in (rtnl.link_fields(*m)
                                   for m in nl.dump(rtnl.RTM_GETLINK, rtnl.ifinfo()))}
    links = ns.links()
    assert set(ours) == set(links)
    for name, lk in links.items():
        f = ours[name]
        assert (f["index"], f["mtu"], f["up"], f["carrier"]) == (
            lk["ifindex"], lk["mtu"], "UP" in lk["flags"], "LOWER_UP" in lk["flags"])
        assert f["kind"] == lk.get("linkinfo", {}).get("info_kind")
        assert f["master"] == (links[lk["master"]]["ifindex"] if "master" in lk else None)
    # the link requests the seam sends stay valid on a strict socket: get by name, a
    # missing name (ENODEV: None), a dump filtered by IFLA_MASTER
    got = nl.get(rtnl.RTM_GETLINK, rtnl.ifinfo() + rtnl.by_name("v0"))
    assert got is not None and rtnl.link_fields(*got)["index"] == links["v0"]["ifindex"]
    assert nl.get(rtnl.RTM_GETLINK, rtnl.ifinfo() + rtnl.by_name("nonesuch")) is None
    br = links["br0"]["ifindex"]
    ports = [rtnl.link_fields(*m)["name"] for m in nl.dump(
        rtnl.RTM_GETLINK, rtnl.ifinfo() + rtnl.a_u32(rtnl.IFLA_MASTER, br))]
    assert ports == ["v0"]


def test_fdb_matches_bridge_and_filters_by_bridge(ns: Netns, nl: rtnl.Rtnl) -> None:
    idx = build(ns)
    # a second bridge whose entries must not show up in br0's dump
    ns.ip("link", "add", "w0", "type", "veth", "peer", "name", "w1")
    ns.ip("link", "add", "br1", "type", "bridge")
    ns.ip("link", "set", "w0", "master", "br1")
    ns.run("bridge", "fdb", "add", "52:54:00:00:00:02", "dev", "w0", "master", "static")
    ns.run("bridge", "fdb", "add", "52:54:00:00:00:01", "dev", "v0", "master", "static")
    idx = {n: lk["ifindex"] for n, lk in ns.links().items()}
    names = by_index(idx)
    for br in ("br0", "br1"):
        want, got = stable(partial(ip_fdb, ns, br), partial(our_fdb, nl, idx[br], names))
        assert got == want
    # fdb.dump() of one bridge turns strict checking on (the kernel ignores NDA_MASTER
    # without it)
    lax = in_netns(ns, rtnl.Rtnl)
    try:
        assert our_fdb(lax, idx["br1"], names) == ip_fdb(ns, "br1") and lax.strict
    finally:
        lax.close()
    static = [e for e in fdb.dump(nl, idx["br0"]) if e.mac == "52:54:00:00:00:01"]
    assert len(static) == 1 and static[0].static and not static[0].local
    assert static[0].ifindex == idx["v0"] and static[0].master == idx["br0"]
    own = [e for e in fdb.dump(nl, idx["br0"]) if e.mac == ns.links()["v0"]["address"]
           and e.master is not None]
    assert own and all(e.local and e.permanent for e in own)


def test_fdb_vlan_entries(ns: Netns, nl: rtnl.Rtnl) -> None:
    build(ns)
    r = ns.ip("link", "set", "br0", "type", "bridge", "vlan_filtering", "1", check=False)
    if r.returncode:
        pytest.skip(f"the kernel refuses VLAN filtering, so fdb entries with a vlan: "
                    f"{r.stderr.strip()}")
    ns.run("bridge", "vlan", "add", "vid", "5", "dev", "v0")
    ns.run("bridge", "fdb", "add", "52:54:00:00:00:05", "dev", "v0", "master", "static",
           "vlan", "5")
    idx = {n: lk["ifindex"] for n, lk in ns.links().items()}
    got = [e for e in fdb.dump(nl, idx["br0"]) if e.mac == "52:54:00:00:00:05"]
    assert [(e.vlan, e.static) for e in got] == [(5, True)]
    e = fdb.get(nl, "52:54:00:00:00:05", master_index=idx["br0"], vlan=5)
    assert e is not None and e.vlan == 5


# -- our requests, checked with ip -------------------------------------------------------
def test_address_add_and_delete(ns: Netns, nl: rtnl.Rtnl) -> None:
    idx = build(ns)
    flags = rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL
    nl.call(rtnl.RTM_NEWADDR, flags, addr.add_body(idx["v1"], "10.20.0.1", 24))
    nl.call(rtnl.RTM_NEWADDR, flags, addr.add_body(idx["v1"], "fd20::1", 64, nodad=True))
    nl.call(rtnl.RTM_NEWADDR, flags, addr.add_body(idx["v1"], "169.254.20.1", 16,
                                                   scope=rtnl.RT_SCOPE_LINK))
    shown = {(a["local"], a["prefixlen"], a["scope"], a.get("nodad", False))
             for a in ipj(ns, "addr", "show", "dev", "v1")[0]["addr_info"]}
    assert {("10.20.0.1", 24, "0", False), ("fd20::1", 64, "0", True),
            ("169.254.20.1", 16, "253", False)} <= shown
    with pytest.raises(rtnl.NetlinkError) as e:
        nl.call(rtnl.RTM_NEWADDR, flags, addr.add_body(idx["v1"], "10.20.0.1", 24))
    assert e.value.errno == 17  # EEXIST
    for text, plen in (("10.20.0.1", 24), ("fd20::1", 64), ("169.254.20.1", 16)):
        nl.call(rtnl.RTM_DELADDR, 0, addr.del_body(idx["v1"], text, plen))
    left = {a["local"] for a in ipj(ns, "addr", "show", "dev", "v1")[0]["addr_info"]}
    assert not left & {"10.20.0.1", "fd20::1", "169.254.20.1"}


def test_route_add_and_delete(ns: Netns, nl: rtnl.Rtnl) -> None:
    idx = build(ns)
    flags = rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL
    nl.call(rtnl.RTM_NEWROUTE, flags, route.add_body("10.50.0.0", 16, oif=idx["d0"],
                                                      gateway="10.1.0.9"))
    nl.call(rtnl.RTM_NEWROUTE, flags, route.add_body("10.51.0.0", 16, oif=idx["d0"],
                                                      table=100000, protocol=99))
    nl.call(rtnl.RTM_NEWROUTE, flags, route.add_body("fd50::", 64, oif=idx["d0"],
                                                      gateway="fd00::9", table=100,
                                                      priority=77))
    nl.call(rtnl.RTM_NEWROUTE, flags, route.add_body("0.0.0.0", 0, oif=idx["v1"],
                                                      gateway="10.2.0.254", table=100))

    def show(*args: str) -> list[Any]:
        return [{k: r.get(k) for k in ("dst", "gateway", "dev", "protocol", "scope",
                                       "metric")}
                for r in ipj(ns, "-d", *args)]

    assert show("route", "show", "10.50.0.0/16") == [
        {"dst": "10.50.0.0/16", "gateway": "10.1.0.9", "dev": "d0", "protocol": "3",
         "scope": "0", "metric": None}]
    assert show("route", "show", "table", "100000", "10.51.0.0/16") == [
        {"dst": "10.51.0.0/16", "gateway": None, "dev": "d0", "protocol": "99",
         "scope": "253", "metric": None}]
    assert show("-6", "route", "show", "table", "100", "fd50::/64") == [
        {"dst": "fd50::/64", "gateway": "fd00::9", "dev": "d0", "protocol": "3",
         "scope": "0", "metric": 77}]
    assert show("route", "show", "table", "100", "default") == [
        {"dst": "default", "gateway": "10.2.0.254", "dev": "v1", "protocol": "3",
         "scope": "0", "metric": None}]
    # a delete that names another protocol matches nothing; the owner's does
    with pytest.raises(rtnl.NetlinkError) as e:
        nl.call(rtnl.RTM_DELROUTE, 0, route.del_body("10.51.0.0", 16, table=100000,
                                                      protocol=98))
    assert e.value.errno == 3  # ESRCH
    nl.call(rtnl.RTM_DELROUTE, 0, route.del_body("10.51.0.0", 16, table=100000, protocol=99))
    nl.call(rtnl.RTM_DELROUTE, 0, route.del_body("10.50.0.0", 16, oif=idx["d0"]))
    nl.call(rtnl.RTM_DELROUTE, 0, route.del_body("fd50::", 64, table=100))
    nl.call(rtnl.RTM_DELROUTE, 0, route.del_body("0.0.0.0", 0, table=100))
    assert show("route", "show", "10.50.0.0/16") == []
    assert show("route", "show", "table", "100000", "10.51.0.0/16") == []
    assert show("-6", "route", "show", "table", "100", "fd50::/64") == []
    assert show("route", "show", "table", "100", "default") == []


def test_fdb_add_get_delete(ns: Netns, nl: rtnl.Rtnl) -> None:
    idx = build(ns)
    mac = "52:54:00:aa:bb:cc"
    nl.call(rtnl.RTM_NEWNEIGH, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, fdb.add_body(idx["v0"], mac))
    shown = [e for e in bridge_j(ns, "fdb", "show", "br", "br0") if e["mac"] == mac]
    assert [(e["ifname"], e.get("master"), e["state"]) for e in shown] == [
        ("v0", "br0", "static")]
    got = fdb.get(nl, mac, master_index=idx["br0"])
    assert got is not None and (got.ifindex, got.master, got.static) == (
        idx["v0"], idx["br0"], True)
    by_port = fdb.get(nl, mac, ifindex=idx["v0"])
    assert by_port == got
    nl.call(rtnl.RTM_DELNEIGH, 0, fdb.del_body(idx["v0"], mac))
    assert [e for e in bridge_j(ns, "fdb", "show", "br", "br0") if e["mac"] == mac] == []
    assert fdb.get(nl, mac, master_index=idx["br0"]) is None  # ENOENT
    # a dynamic entry (NUD_REACHABLE) into the bridge's fdb
    nl.call(rtnl.RTM_NEWNEIGH, rtnl.NLM_F_CREATE, fdb.add_body(idx["v0"], mac, static=False))
    dyn = fdb.get(nl, mac, master_index=idx["br0"])
    assert dyn is not None and not dyn.static and not dyn.permanent


# -- link events ---------------------------------------------------------------------------
def until(ev: LinkEvents, seen: list[tuple[int, dict[str, Any]]],
          pred: Callable[[int, dict[str, Any]], bool], timeout: float = 5.0) -> None:
    """Read events into seen until one satisfies pred."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = ev.read(max(0.0, deadline - time.monotonic()))
        assert (OVERRUN, {}) not in got
        seen += got
        if any(pred(t, f) for t, f in got):
            return
    raise AssertionError(f"no such event; saw {[(t, f['name']) for t, f in seen]}")


def test_link_events(ns: Netns) -> None:
    ns.ip("link", "add", "br0", "type", "bridge")
    with in_netns(ns, LinkEvents) as ev:
        assert ev.read(0) == []
        seen: list[tuple[int, dict[str, Any]]] = []
        new, gone = rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK
        ns.ip("link", "add", "e0", "type", "veth", "peer", "name", "e1")
        until(ev, seen, lambda t, f: t == new and f["name"] == "e1")
        assert any(t == new and f["name"] == "e0" and not f["up"] for t, f in seen)
        ns.ip("link", "set", "e0", "up")
        until(ev, seen, lambda t, f: t == new and f["name"] == "e0" and f["up"])
        assert not seen[-1][1]["carrier"]  # its peer is down
        ns.ip("link", "set", "e1", "up")
        until(ev, seen, lambda t, f: t == new and f["name"] == "e0" and f["up"]
              and f["carrier"])
        br = ns.links()["br0"]["ifindex"]
        ns.ip("link", "set", "e0", "master", "br0")
        until(ev, seen, lambda t, f: t == new and f["name"] == "e0" and f["master"] == br)
        # leaving the bridge: the bridge's AF_BRIDGE RTM_DELLINK must not pass as a deletion
        ns.ip("link", "set", "e0", "nomaster")
        until(ev, seen, lambda t, f: t == new and f["name"] == "e0" and f["master"] is None)
        ns.ip("link", "set", "e0", "down")
        until(ev, seen, lambda t, f: t == new and f["name"] == "e0" and not f["up"]
              and not f["carrier"])
        assert not any(t == gone for t, _ in seen)
        ns.ip("link", "del", "e0")
        until(ev, seen, lambda t, f: t == gone and f["name"] == "e1")
        assert any(t == gone and f["name"] == "e0" for t, f in seen)
        assert all(f["kind"] == "veth" for t, f in seen if f["name"] in ("e0", "e1"))


def test_link_events_overrun_asks_for_a_new_dump(ns: Netns) -> None:
    ns.ip("link", "add", "e0", "type", "veth", "peer", "name", "e1")
    with in_netns(ns, lambda: LinkEvents(rcvbuf=4096)) as ev:
        batch = "".join(f"link set e0 mtu {1280 + i % 200}\n" for i in range(400))
        ns.run("ip", "-batch", "-", input=batch)
        assert ev.read(1.0) == [(OVERRUN, {})]
        assert ev.read(0) == []  # what was queued is gone with the overrun
        ns.ip("link", "set", "e0", "mtu", "1500")
        seen: list[tuple[int, dict[str, Any]]] = []
        until(ev, seen, lambda t, f: f["name"] == "e0" and f["mtu"] == 1500)
    # the re-dump the caller does after the overrun
    nl = in_netns(ns, rtnl.Rtnl)
    try:
        mtus = {f["name"]: f["mtu"] for f in (rtnl.link_fields(*m) for m in nl.dump(
            rtnl.RTM_GETLINK, rtnl.ifinfo()))}
    finally:
        nl.close()
    assert mtus["e0"] == 1500

