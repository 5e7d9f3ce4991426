"""Interface addresses: struct ifaddrmsg messages (RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR).

Layouts and attribute numbers from include/uapi/linux/if_addr.h; built on the
hand-packed codec of vmnet.kernel.rtnl.
"""

from __future__ import annotations

import _socket  # not `socket`: its enum classes cost ~2 ms to import
import struct

from vmnet.kernel import rtnl
from vmnet.model.value import Value

_IFA = struct.Struct("=BBBBI")  # struct ifaddrmsg
_U32 = struct.Struct("=I")


class Addr(Value):
    """One interface address, as the kernel reports it.

    flags holds IFA_F_* bits: IFA_FLAGS (u32) when present, else ifa_flags
    (only the low 8 bits fit there).  address is IFA_ADDRESS; local is
    IFA_LOCAL or None.  For IPv4 both are sent and differ only on a
    point-to-point link (address is then the peer); IPv6 sends IFA_LOCAL only
    with a peer.  label is IFA_LABEL (IPv4 only) or None.
    """

    __slots__ = ("address", "family", "flags", "index", "label", "local",
                 "prefixlen", "scope")

    def __init__(self, family: int, prefixlen: int, flags: int, scope: int, index: int,
                 address: str, local: str | None = None, label: str | None = None) -> None:
        self.family = family
        self.prefixlen = prefixlen
        self.flags = flags
        self.scope = scope
        self.index = index
        self.address = address
        self.local = local
        self.label = label


def dump_body(family: int = 0, index: int = 0) -> bytes:
    """RTM_GETADDR dump body: all addresses of one family (0: every family).

    An index filter is applied by the kernel only on a socket with strict
    checking (Rtnl.set_strict_check(); inet_valid_dump_ifaddr_req() in
    net/ipv4/devinet.c); otherwise it answers with every link's addresses,
    so dump() filters again on our side.
    """
    return _IFA.pack(family, 0, 0, 0, index)


def parse(buf: bytes, off: int, end: int) -> Addr:
    """An RTM_NEWADDR/RTM_DELADDR message body (buf[off:end]) -> Addr."""
    family, prefixlen, flags, scope, index = _IFA.unpack_from(buf, off)
    address = local = label = None
    for t, s, e in rtnl.parse_attrs(buf, off + _IFA.size, end):
        if t == rtnl.IFA_ADDRESS:
            address = rtnl.ip_text(buf[s:e])
        elif t == rtnl.IFA_LOCAL:
            local = rtnl.ip_text(buf[s:e])
        elif t == rtnl.IFA_LABEL:
            label = buf[s:e].rstrip(b"\0").decode(errors="replace")
        elif t == rtnl.IFA_FLAGS:
            flags = _U32.unpack_from(buf, s)[0]
    return Addr(family, prefixlen, flags, scope, index, address or local or "", local, label)


def _body(index: int, address: str, prefixlen: int, flags: int, scope: int) -> bytes:
    fam = rtnl.inet_family(address)
    packed = _socket.inet_pton(fam, address)
    # IFA_LOCAL and IFA_ADDRESS both, as `ip addr add` sends them without a peer:
    # IPv4 matches a delete on both (inet_rtm_deladdr()), IPv6 on IFA_LOCAL first.
    return (_IFA.pack(fam, prefixlen, flags, scope, index)
            + rtnl.attr(rtnl.IFA_LOCAL, packed) + rtnl.attr(rtnl.IFA_ADDRESS, packed))


def add_body(index: int, address: str, prefixlen: int, *, nodad: bool = False,
             scope: int = rtnl.RT_SCOPE_UNIVERSE) -> bytes:
    """RTM_NEWADDR body (send with NLM_F_CREATE | NLM_F_EXCL) for address/prefixlen.

    The family comes from the address text.  nodad (IFA_F_NODAD) skips IPv6
    duplicate address detection, so the address is usable at once rather than
    tentative for about a second.  Bad address text raises OSError (inet_pton).
    """
    return _body(index, address, prefixlen, rtnl.IFA_F_NODAD if nodad else 0, scope)


def del_body(index: int, address: str, prefixlen: int) -> bytes:
    """RTM_DELADDR body for address/prefixlen on link `index`."""
    return _body(index, address, prefixlen, 0, 0)


def dump(nl: rtnl.Rtnl, family: int = 0, index: int = 0) -> list[Addr]:
    """All addresses (of one family, of one link if index) through socket nl."""
    out = [parse(b, s, e) for b, s, e in nl.dump(rtnl.RTM_GETADDR, dump_body(family, index))]
    return [a for a in out if a.index == index] if index else out
