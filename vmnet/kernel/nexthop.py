"""Nexthop objects: struct nhmsg messages (RTM_GETNEXTHOP, Linux 5.3+).

Layout and attribute numbers from include/uapi/linux/nexthop.h; built on the
hand-packed codec of vmnet.kernel.rtnl.  Routes name a nexthop object by
RTA_NH_ID (vmnet.kernel.route.Route.nh_id).

A kernel without nexthop objects refuses the dump: RTM_GETNEXTHOP has no
handler before 5.3 and rtnetlink_rcv_msg() answers EOPNOTSUPP; EINVAL is
taken the same way (a kernel that rejects the request as it stands).  Rtnl.dump
raises that as NetlinkError; unsupported(err) tells a caller, which then has
no nexthops to consider.
"""

from __future__ import annotations

import errno
import struct

from vmnet.kernel import rtnl
from vmnet.model.value import Value

_NHM = struct.Struct("=BBBBI")  # struct nhmsg: family, scope, protocol, resvd, flags
_GRP = struct.Struct("=IBBH")  # struct nexthop_grp: id, weight - 1, weight_high, resvd2
_U32 = struct.Struct("=I")

UNSUPPORTED_ERRNOS = (errno.EOPNOTSUPP, errno.EINVAL)


class Nexthop(Value):
    """One nexthop object.

    oif is NHA_OIF (None for a group or a blackhole); gateway is NHA_GATEWAY or
    None; blackhole is NHA_BLACKHOLE (a flag attribute); group holds the member
    ids of a group (NHA_GROUP, an array of struct nexthop_grp), () otherwise.
    """

    __slots__ = ("blackhole", "family", "gateway", "group", "id", "oif")

    def __init__(self, id: int, family: int, oif: int | None = None, blackhole: bool = False,
                 group: tuple[int, ...] = (), gateway: str | None = None) -> None:
        self.id = id
        self.family = family
        self.oif = oif
        self.blackhole = blackhole
        self.group = group
        self.gateway = gateway


def dump_body() -> bytes:
    """RTM_GETNEXTHOP dump body: every nexthop object.

    All zeros: strict checking rejects a non-zero header (nh_valid_dump_req()
    in net/ipv4/nexthop.c).
    """
    return _NHM.pack(0, 0, 0, 0, 0)


def parse(buf: bytes, off: int, end: int) -> Nexthop:
    """An RTM_NEWNEXTHOP message body (buf[off:end]) -> Nexthop."""
    family = buf[off]
    nh_id = 0
    oif = gateway = None
    blackhole = False
    group: tuple[int, ...] = ()
    for t, s, e in rtnl.parse_attrs(buf, off + _NHM.size, end):
        if t == rtnl.NHA_ID:
            nh_id = _U32.unpack_from(buf, s)[0]
        elif t == rtnl.NHA_OIF:
            oif = _U32.unpack_from(buf, s)[0]
        elif t == rtnl.NHA_GATEWAY:
            gateway = rtnl.ip_text(buf[s:e])
        elif t == rtnl.NHA_BLACKHOLE:
            blackhole = True
        elif t == rtnl.NHA_GROUP:
            group = tuple(g[0] for g in _GRP.iter_unpack(buf[s:s + (e - s) // 8 * 8]))
    return Nexthop(nh_id, family, oif, blackhole, group, gateway)


def unsupported(err: OSError) -> bool:
    """True if err is how a kernel without nexthop objects answers the dump."""
    return err.errno in UNSUPPORTED_ERRNOS


def dump(nl: rtnl.Rtnl) -> list[Nexthop]:
    """Every nexthop object through socket nl; raises NetlinkError, which
    unsupported() tells apart when the kernel has no nexthop objects."""
    return [parse(b, s, e) for b, s, e in nl.dump(rtnl.RTM_GETNEXTHOP, dump_body())]
