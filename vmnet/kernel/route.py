"""Routes: struct rtmsg messages (RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE).

Layouts and attribute numbers from include/uapi/linux/rtnetlink.h; built on
the hand-packed codec of vmnet.kernel.rtnl.  Dumps cover every table: the
kernel reports the real table id in RTA_TABLE (u32), rtm_table holds only
ids below 256 (RT_TABLE_COMPAT, 252, for the others).
"""

from __future__ import annotations

import struct

from vmnet.kernel import rtnl
from vmnet.model.value import Value

_RTM = struct.Struct("=BBBBBBBBI")  # struct rtmsg
_RTNH = struct.Struct("=HBBi")  # struct rtnexthop: one leg of RTA_MULTIPATH
_U32 = struct.Struct("=I")


class Route(Value):
    """One route, as the kernel reports it.

    dst is None for a default route (no RTA_DST, dst_len 0).  oif is RTA_OIF
    (None for a multipath route: its legs' ifindexes are multipath_oifs, from
    the struct rtnexthop array of RTA_MULTIPATH).  gateway is RTA_GATEWAY or
    the address of RTA_VIA (an IPv4 route through an IPv6 gateway), else None.
    nh_id is RTA_NH_ID for a route through a nexthop object (5.3+); the kernel
    also reports that nexthop's oif/gateway/legs unless
    net.ipv4.nexthop_compat_mode is 0, in which case only vmnet.kernel.nexthop
    resolves them.  priority is RTA_PRIORITY (0 when absent).
    """

    __slots__ = ("dst", "dst_len", "family", "gateway", "multipath_oifs", "nh_id", "oif",
                 "priority", "protocol", "scope", "table", "type")

    def __init__(self, family: int, table: int, dst: str | None, dst_len: int, type: int,
                 protocol: int, scope: int, oif: int | None = None,
                 gateway: str | None = None, priority: int = 0, nh_id: int | None = None,
                 multipath_oifs: tuple[int, ...] = ()) -> None:
        self.family = family
        self.table = table
        self.dst = dst
        self.dst_len = dst_len
        self.type = type
        self.protocol = protocol
        self.scope = scope
        self.oif = oif
        self.gateway = gateway
        self.priority = priority
        self.nh_id = nh_id
        self.multipath_oifs = multipath_oifs

    @property
    def oifs(self) -> tuple[int, ...]:
        """Every ifindex the route sends through: oif, then the multipath legs (a
        device may repeat: two legs through one link)."""
        return self.multipath_oifs if self.oif is None else (self.oif, *self.multipath_oifs)


def dump_body(family: int = 0) -> bytes:
    """RTM_GETROUTE dump body over all tables (rtm_table RT_TABLE_UNSPEC).

    family 0 dumps every family that has routes (IPv4, IPv6, and MPLS or
    multicast routing where configured); the header is all zeros, valid with or
    without strict checking (ip_valid_fib_dump_req() in net/ipv4/fib_frontend.c).
    """
    return _RTM.pack(family, 0, 0, 0, rtnl.RT_TABLE_UNSPEC, 0, 0, 0, 0)


def _legs(buf: bytes, off: int, end: int) -> tuple[int, ...]:
    """The rtnh_ifindex of each struct rtnexthop in an RTA_MULTIPATH payload."""
    oifs = []
    while off + _RTNH.size <= end:
        n, _flags, _hops, ifindex = _RTNH.unpack_from(buf, off)
        if n < _RTNH.size:
            break
        oifs.append(ifindex)
        off += (n + 3) & ~3  # RTNH_ALIGN; the leg's own attributes (gateway) follow
    return tuple(oifs)


def parse(buf: bytes, off: int, end: int) -> Route:
    """An RTM_NEWROUTE/RTM_DELROUTE message body (buf[off:end]) -> Route."""
    family, dst_len, _src_len, _tos, table, protocol, scope, rtype, _flags = \
        _RTM.unpack_from(buf, off)
    dst = gateway = None
    oif = nh_id = None
    priority = 0
    legs: tuple[int, ...] = ()
    for t, s, e in rtnl.parse_attrs(buf, off + _RTM.size, end):
        if t == rtnl.RTA_DST:
            dst = rtnl.ip_text(buf[s:e])
        elif t == rtnl.RTA_OIF:
            oif = _U32.unpack_from(buf, s)[0]
        elif t == rtnl.RTA_GATEWAY:
            gateway = rtnl.ip_text(buf[s:e])
        elif t == rtnl.RTA_PRIORITY:
            priority = _U32.unpack_from(buf, s)[0]
        elif t == rtnl.RTA_TABLE:
            table = _U32.unpack_from(buf, s)[0]
        elif t == rtnl.RTA_MULTIPATH:
            legs = _legs(buf, s, e)
        elif t == rtnl.RTA_NH_ID:
            nh_id = _U32.unpack_from(buf, s)[0]
        elif t == rtnl.RTA_VIA:  # struct rtvia: __kernel_sa_family_t (u16), then the address
            gateway = rtnl.ip_text(buf[s + 2:e])
    return Route(family, table, dst, dst_len, rtype, protocol, scope, oif, gateway, priority,
                 nh_id, legs)


def _body(dst: str, dst_len: int, *, oif: int | None, gateway: str | None, table: int,
          protocol: int, scope: int, rtype: int, priority: int | None) -> bytes:
    fam = rtnl.inet_family(dst)
    if gateway is not None and rtnl.inet_family(gateway) != fam:
        raise ValueError(f"gateway {gateway} is not of the family of {dst}/{dst_len}")
    # Tables from 256 up go in RTA_TABLE only (rtm_table is one byte), as `ip route` does.
    body = _RTM.pack(fam, dst_len, 0, 0, table if table < 256 else rtnl.RT_TABLE_UNSPEC,
                     protocol, scope, rtype, 0)
    if table >= 256:
        body += rtnl.a_u32(rtnl.RTA_TABLE, table)
    if dst_len:  # a default route has no RTA_DST
        body += rtnl.a_ip(rtnl.RTA_DST, dst)
    if gateway is not None:
        body += rtnl.a_ip(rtnl.RTA_GATEWAY, gateway)
    if oif is not None:
        body += rtnl.a_u32(rtnl.RTA_OIF, oif)
    if priority is not None:
        body += rtnl.a_u32(rtnl.RTA_PRIORITY, priority)
    return body


def add_body(dst: str, dst_len: int, *, oif: int, gateway: str | None = None,
             table: int = rtnl.RT_TABLE_MAIN, scope: int | None = None,
             protocol: int = rtnl.RTPROT_BOOT, priority: int | None = None) -> bytes:
    """RTM_NEWROUTE body (send with NLM_F_CREATE | NLM_F_EXCL) for a unicast route.

    dst is the network address ("0.0.0.0" or "::" with dst_len 0 for a default
    route; its text gives the family).  scope defaults as `ip route add` does:
    link without a gateway, universe with one.  protocol (RTPROT_*, ip's
    "proto") is any byte: a number of one's own marks the routes one owns, and
    del_body(protocol=...) then deletes only those.
    """
    if scope is None:
        scope = rtnl.RT_SCOPE_LINK if gateway is None else rtnl.RT_SCOPE_UNIVERSE
    return _body(dst, dst_len, oif=oif, gateway=gateway, table=table, protocol=protocol,
                 scope=scope, rtype=rtnl.RTN_UNICAST, priority=priority)


def del_body(dst: str, dst_len: int, *, oif: int | None = None, gateway: str | None = None,
             table: int = rtnl.RT_TABLE_MAIN, protocol: int = rtnl.RTPROT_UNSPEC,
             priority: int | None = None) -> bytes:
    """RTM_DELROUTE body; what is left out matches any route (scope RT_SCOPE_NOWHERE,
    type and protocol 0 are wildcards: fib_table_delete(), ip6_route_del())."""
    return _body(dst, dst_len, oif=oif, gateway=gateway, table=table, protocol=protocol,
                 scope=rtnl.RT_SCOPE_NOWHERE, rtype=rtnl.RTN_UNSPEC, priority=priority)


def dump(nl: rtnl.Rtnl, family: int = 0) -> list[Route]:
    """Every route of every table (of one family if given) through socket nl."""
    return [parse(b, s, e) for b, s, e in nl.dump(rtnl.RTM_GETROUTE, dump_body(family))]
