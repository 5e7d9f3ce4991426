"""A small rtnetlink client for the operations vmnet does in bulk and on hot paths.

pyroute2 is complete but costs ~120 ms to import and ~0.3 ms of Python per
message; the few link messages vmnet sends are simple enough to pack by hand
(struct ifinfomsg + attributes, see include/uapi/linux/rtnetlink.h and
if_link.h).  Requests can be pipelined: many sent, their ACKs read together.
"""

from __future__ import annotations

import _socket  # not `socket`: its enum classes cost ~2 ms to import
import errno
import os
import struct

TYPE_CHECKING = False  # typing and collections cost milliseconds; mypy treats this as true
if TYPE_CHECKING:
    from collections.abc import Iterator

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR = 20
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLMSG_ERROR, NLMSG_DONE = 2, 3

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU = 1, 3, 4
IFLA_MASTER, IFLA_STATS64 = 10, 23
IFLA_LINKINFO, IFLA_IFALIAS, IFLA_GROUP = 18, 20, 27
IFLA_EXT_MASK, IFLA_CARRIER = 29, 33
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
IFLA_PROTINFO = 12
IFLA_BRPORT_LEARNING, IFLA_BRPORT_ISOLATED = 8, 33  # include/uapi/linux/if_link.h
IFLA_TUN_OWNER, IFLA_TUN_GROUP, IFLA_TUN_TYPE, IFLA_TUN_PI = 1, 2, 3, 4
IFLA_TUN_VNET_HDR, IFLA_TUN_PERSIST, IFLA_TUN_MULTI_QUEUE, IFLA_TUN_NUM_QUEUES = 5, 6, 7, 8
IFLA_BR_FORWARD_DELAY, IFLA_BR_STP_STATE, IFLA_BR_VLAN_FILTERING = 1, 5, 7
IFLA_AF_SPEC = 26
IFLA_BRIDGE_VLAN_INFO = 2  # include/uapi/linux/if_bridge.h
BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED = 0x2, 0x4
RTEXT_FILTER_BRVLAN = 0x2
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
NLA_F_NESTED = 0x8000

_HDR = struct.Struct("=IHHII")  # nlmsghdr
_IFI = struct.Struct("=BxHiII")  # ifinfomsg
_IFA = struct.Struct("=BBBBI")  # ifaddrmsg
_NLA = struct.Struct("=HH")
_ERR = struct.Struct("=i")


class NetlinkError(OSError):
    """A negative ACK: errno plus the kernel's extended message if any."""


def attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return _NLA.pack(n, kind) + payload + b"\0" * ((4 - n % 4) % 4)


def a_u32(kind: int, v: int) -> bytes:
    return attr(kind, struct.pack("=I", v))


def a_u8(kind: int, v: int) -> bytes:
    return attr(kind, struct.pack("=B", v))


def a_str(kind: int, s: str) -> bytes:
    return attr(kind, s.encode() + b"\0")


def a_mac(kind: int, mac: str) -> bytes:
    return attr(kind, bytes.fromhex(mac.replace(":", "")))


def a_nest(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return _IFI.pack(0, 0, index, flags, change)  # AF_UNSPEC


def ifaddr(family: int, prefixlen: int, index: int) -> bytes:
    return _IFA.pack(family, prefixlen, 0, 0, index)


def parse_attrs(buf: bytes, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in buf[off:end]."""
    while off + 4 <= end:
        n, kind = _NLA.unpack_from(buf, off)
        if n < 4:
            return
        yield kind & 0x3FFF, off + 4, off + n
        off += (n + 3) & ~3


class Rtnl:
    """One rtnetlink socket with sequence numbers and pipelined ACKs."""

    strict = False  # set_strict_check() was called

    def __init__(self) -> None:
        self.sock = _socket.socket(_socket.AF_NETLINK,
                                   _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 1 << 20)
        self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, 1 << 20)
        # NETLINK_EXT_ACK (11): the kernel's reason string with errors; NETLINK_CAP_ACK
        # (10): ACKs without the echoed request.
        for opt in (10, 11):
            try:  # noqa: SIM105 - contextlib costs an import on the hot path
                self.sock.setsockopt(270, opt, 1)
            except OSError:
                pass
        self.sock.bind((0, 0))
        self.seq = 0
        self.pending: dict[int, object] = {}

    def close(self) -> None:
        self.sock.close()

    def send(self, mtype: int, flags: int, body: bytes, tag: object = None) -> int:
        """Queue a request that wants an ACK; returns its sequence number."""
        self.seq += 1
        msg = _HDR.pack(_HDR.size + len(body), mtype, flags | NLM_F_REQUEST | NLM_F_ACK,
                        self.seq, 0) + body
        self.sock.send(msg)
        self.pending[self.seq] = tag
        return self.seq

    def wait(self) -> list[tuple[object, NetlinkError]]:
        """Read ACKs for everything pending; return (tag, error) of those that failed."""
        failed: list[tuple[object, NetlinkError]] = []
        while self.pending:
            data = self.sock.recv(1 << 16)
            off = 0
            while off + _HDR.size <= len(data):
                n, mtype, _flags, seq, _pid = _HDR.unpack_from(data, off)
                if mtype == NLMSG_ERROR and seq in self.pending:
                    (code,) = _ERR.unpack_from(data, off + _HDR.size)
                    tag = self.pending.pop(seq)
                    if code:
                        failed.append((tag, NetlinkError(-code, os.strerror(-code)
                                                         + _ext_msg(data, off, n))))
                if n <= 0:
                    break
                off += (n + 3) & ~3
        return failed

    def call(self, mtype: int, flags: int, body: bytes) -> None:
        """One request, synchronously; raises NetlinkError on a negative ACK."""
        if self.pending:
            raise RuntimeError("call() with requests pending")
        self.send(mtype, flags, body)
        failed = self.wait()
        if failed:
            raise failed[0][1]

    def get(self, mtype: int, body: bytes) -> tuple[bytes, int, int] | None:
        """One request answered by one message: (buffer, body offset, end), None on ENODEV."""
        if self.pending:
            raise RuntimeError("get() with requests pending")
        seq = self._request(mtype, NLM_F_REQUEST, body)
        for data, off, n, t in self._replies(seq, 1 << 16):
            if t == NLMSG_ERROR:
                (code,) = _ERR.unpack_from(data, off + _HDR.size)
                if code == -errno.ENODEV:
                    return None
                raise NetlinkError(-code, os.strerror(-code) + _ext_msg(data, off, n))
            return data, off + _HDR.size, off + n
        raise NetlinkError(errno.EIO, "malformed netlink reply")

    def settle(self, name: str) -> None:
        """Make the kernel apply a link's pending link events now.

        A tap's carrier goes on and off while it is made; the kernel applies that
        to the operational state up to a second later (linkwatch).  A port
        enslaved meanwhile counts as up: the bridge forwards to it and takes
        carrier (and an IPv6 link-local address) for nothing.  RTM_GETLINK of
        one link runs linkwatch_sync_dev() for it (rtnl_getlink(), like ethtool's
        get_link, which vmnet.kernel.tun.settle_operstate uses) and costs no
        ioctl socket and no ctypes; a link already gone is no error.
        """
        try:  # noqa: SIM105 - contextlib costs an import on the hot path
            self.get(RTM_GETLINK, ifinfo() + by_name(name))
        except OSError:
            pass  # best effort: only the operstate's timing is at stake

    def dump(self, mtype: int, body: bytes) -> Iterator[tuple[bytes, int, int]]:
        """Yield (buffer, body offset, message end) for each message of a dump."""
        seq = self._request(mtype, NLM_F_REQUEST | NLM_F_DUMP, body)
        for data, off, n, t in self._replies(seq, 1 << 20):
            if t == NLMSG_DONE:
                return
            if t == NLMSG_ERROR:
                (code,) = _ERR.unpack_from(data, off + _HDR.size)
                if code:
                    raise NetlinkError(-code, os.strerror(-code))
                return
            yield data, off + _HDR.size, off + n

    def _request(self, mtype: int, flags: int, body: bytes) -> int:
        self.seq += 1
        self.sock.send(_HDR.pack(_HDR.size + len(body), mtype, flags, self.seq, 0) + body)
        return self.seq

    def _replies(self, seq: int, bufsize: int) -> Iterator[tuple[bytes, int, int, int]]:
        """(buffer, offset, length, type) of each message answering `seq`; ends at a
        malformed one."""
        while True:
            data = self.sock.recv(bufsize)
            off = 0
            while off + _HDR.size <= len(data):
                n, t, _flags, s, _pid = _HDR.unpack_from(data, off)
                if n < _HDR.size:
                    return
                if s == seq:
                    yield data, off, n, t
                off += (n + 3) & ~3

    def set_strict_check(self) -> None:
        """Ask the kernel to check dump requests strictly (NETLINK_GET_STRICT_CHK, 4.20+).

        Without it the kernel ignores the filters of most dump requests (an
        ifaddrmsg's ifa_index, an fdb dump's NDA_MASTER) and answers with
        everything; with it, it applies them and rejects non-zero header
        fields it does not filter on (EINVAL with an extended message).  Every
        body vmnet packs is valid either way: link requests keep their zero
        headers (rtnl_valid_getlink_req() accepts IFLA_IFNAME).  Raises OSError
        (ENOPROTOOPT) on older kernels.  vmnet.kernel.addr.dump() filters on our
        side too; vmnet.kernel.fdb.dump() of one bridge turns this on.
        """
        self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        self.strict = True

    def get_or_none(self, mtype: int, body: bytes,
                    absent: tuple[int, ...] = (errno.ENODEV, errno.ENOENT),
                    ) -> tuple[bytes, int, int] | None:
        """Like get(), but None for each errno in `absent`.

        A single-entry RTM_GETNEIGH of a missing fdb entry answers ENOENT
        ("Fdb entry not found", br_fdb_get() in net/bridge/br_fdb.c), a
        missing device ENODEV.
        """
        if self.pending:
            raise RuntimeError("get_or_none() with requests pending")
        seq = self._request(mtype, NLM_F_REQUEST, body)
        for data, off, n, t in self._replies(seq, 1 << 16):
            if t == NLMSG_ERROR:
                (code,) = _ERR.unpack_from(data, off + _HDR.size)
                if -code in absent:
                    return None
                if not code:  # an ACK where a message was due
                    break
                raise NetlinkError(-code, os.strerror(-code) + _ext_msg(data, off, n))
            return data, off + _HDR.size, off + n
        raise NetlinkError(errno.EIO, "malformed netlink reply")


def _ext_msg(data: bytes, off: int, n: int) -> str:
    """The NLMSGERR_ATTR_MSG string of an extended ACK, if the kernel sent one."""
    start = off + _HDR.size + 4 + _HDR.size  # error code + the echoed header (capped)
    for kind, s, e in parse_attrs(data, start, off + n):
        if kind == 1:  # NLMSGERR_ATTR_MSG
            msg = data[s:e].rstrip(b"\0").decode(errors="replace")
            return f": {msg}" if msg else ""
    return ""


def errno_of(e: OSError) -> int:
    return e.errno or errno.EIO


# -- links ---------------------------------------------------------------
_U32 = struct.Struct("=I")
_STATS64 = struct.Struct("=QQQQ")  # rx_packets, tx_packets, rx_bytes, tx_bytes
USER_HZ = 100


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def link_fields(buf: bytes, off: int, end: int) -> dict[str, object]:
    """An RTM_NEWLINK message body -> the fields of vmnet.kernel.base.LinkInfo.

    Plain data (vmnet.kernel.linux.parse_link makes the LinkInfo of it); `tun` is a dict
    of TunInfo's fields or None.
    """
    _fam, _type, index, flags, _change = _IFI.unpack_from(buf, off)
    name = ""
    mac = alias = kind = None
    mtu = group = 0
    master = None
    carrier = None
    stats = (0, 0, 0, 0)
    tun_info: dict[str, object] | None = None
    stp = fwd = None
    isolated = learning = vlan_filtering = None
    for t, s, e in parse_attrs(buf, off + _IFI.size, end):
        if t == IFLA_IFNAME:
            name = buf[s:e].rstrip(b"\0").decode()
        elif t == IFLA_ADDRESS:
            mac = _mac(buf[s:e])
        elif t == IFLA_MTU:
            mtu = _U32.unpack_from(buf, s)[0]
        elif t == IFLA_MASTER:
            master = _U32.unpack_from(buf, s)[0]
        elif t == IFLA_IFALIAS:
            alias = buf[s:e].rstrip(b"\0").decode(errors="replace")
        elif t == IFLA_GROUP:
            group = _U32.unpack_from(buf, s)[0]
        elif t == IFLA_CARRIER:
            carrier = bool(buf[s])
        elif t == IFLA_STATS64:
            stats = _STATS64.unpack_from(buf, s)
        elif t == IFLA_LINKINFO:
            data_s = data_e = 0
            slave_kind = None
            for it, is_, ie in parse_attrs(buf, s, e):
                if it == IFLA_INFO_KIND:
                    kind = buf[is_:ie].rstrip(b"\0").decode()
                elif it == IFLA_INFO_DATA:
                    data_s, data_e = is_, ie
                elif it == IFLA_INFO_SLAVE_KIND:
                    slave_kind = buf[is_:ie].rstrip(b"\0").decode()
                elif it == IFLA_INFO_SLAVE_DATA and slave_kind == "bridge":
                    # a bridge port's settings (br_port_fill_attrs): the kernel puts the
                    # slave kind before its data
                    for pt, ps, _pe in parse_attrs(buf, is_, ie):
                        if pt == IFLA_BRPORT_ISOLATED:
                            isolated = bool(buf[ps])
                        elif pt == IFLA_BRPORT_LEARNING:
                            learning = bool(buf[ps])
            if kind == "tun" and data_e:
                d = {dt: buf[ds:de] for dt, ds, de in parse_attrs(buf, data_s, data_e)}

                def u32(k: int, d: dict[int, bytes] = d) -> int | None:
                    return _U32.unpack(d[k])[0] if k in d else None

                def u8(k: int, d: dict[int, bytes] = d) -> bool:
                    return bool(d[k][0]) if k in d else False

                tun_info = {"tap": d.get(IFLA_TUN_TYPE, b"\0")[:1] == b"\x02",
                            "owner": u32(IFLA_TUN_OWNER), "group": u32(IFLA_TUN_GROUP),
                            "multi_queue": u8(IFLA_TUN_MULTI_QUEUE),
                            "persist": u8(IFLA_TUN_PERSIST), "vnet_hdr": u8(IFLA_TUN_VNET_HDR),
                            "pi": u8(IFLA_TUN_PI), "num_queues": u32(IFLA_TUN_NUM_QUEUES) or 0}
            elif kind == "bridge" and data_e:
                for dt, ds, _de in parse_attrs(buf, data_s, data_e):
                    if dt == IFLA_BR_STP_STATE:
                        stp = bool(_U32.unpack_from(buf, ds)[0])
                    elif dt == IFLA_BR_FORWARD_DELAY:
                        fwd = _U32.unpack_from(buf, ds)[0] // USER_HZ
                    elif dt == IFLA_BR_VLAN_FILTERING:
                        vlan_filtering = bool(buf[ds])
    return {"index": index, "name": name, "kind": kind, "mac": mac, "mtu": mtu,
            "up": bool(flags & IFF_UP),
            "carrier": carrier if carrier is not None else bool(flags & IFF_LOWER_UP),
            "master": master, "alias": alias, "group": group, "tun": tun_info,
            "rx_packets": stats[0], "tx_packets": stats[1], "rx_bytes": stats[2],
            "tx_bytes": stats[3], "stp": stp, "forward_delay": fwd,
            "port_isolated": isolated, "port_learning": learning,
            "vlan_filtering": vlan_filtering if kind == "bridge" else None}


def by_name(name: str) -> bytes:
    return a_str(IFLA_IFNAME, name)


def tap_config(name: str, *, mac: str, alias: str, mtu: int | None) -> bytes:
    """RTM_SETLINK body that gives a new tap its MAC, mark and MTU and brings it up."""
    body = ifinfo(0, IFF_UP, IFF_UP) + by_name(name) + a_mac(IFLA_ADDRESS, mac) + \
        a_str(IFLA_IFALIAS, alias)
    if mtu:
        body += a_u32(IFLA_MTU, mtu)
    return body


def set_link(name: str, *, master: int | None = None, up: bool | None = None,
             mtu: int | None = None, alias: str | None = None, group: int | None = None,
             mac: str | None = None) -> bytes:
    """RTM_SETLINK body; master is an ifindex (0: no master)."""
    body = by_name(name)
    if mac is not None:
        body += a_mac(IFLA_ADDRESS, mac)
    if mtu is not None:
        body += a_u32(IFLA_MTU, mtu)
    if alias is not None:
        body += a_str(IFLA_IFALIAS, alias)
    if group is not None:
        body += a_u32(IFLA_GROUP, group)
    if master is not None:
        body += a_u32(IFLA_MASTER, master)
    head = ifinfo() if up is None else ifinfo(0, IFF_UP if up else 0, IFF_UP)
    return head + body


def bridge_port_body(index: int, *, isolated: bool | None = None,
                     learning: bool | None = None) -> bytes:
    """RTM_SETLINK body of family AF_BRIDGE: a bridge port's settings in IFLA_PROTINFO,
    `bridge link set dev PORT isolated on learning off` (br_setport())."""
    attrs = b""
    if isolated is not None:
        attrs += a_u8(IFLA_BRPORT_ISOLATED, int(isolated))
    if learning is not None:
        attrs += a_u8(IFLA_BRPORT_LEARNING, int(learning))
    return _IFI.pack(AF_BRIDGE, 0, index, 0, 0) + a_nest(IFLA_PROTINFO, attrs)


_VLAN_INFO = struct.Struct("=HH")  # struct bridge_vlan_info: flags, vid


def bridge_vlan_body(index: int, vid: int, *, pvid: bool = False,
                     untagged: bool = False) -> bytes:
    """AF_BRIDGE body for RTM_SETLINK (`bridge vlan add vid V dev PORT [pvid] [untagged]`)
    or RTM_DELLINK (`bridge vlan del vid V dev PORT`): IFLA_AF_SPEC holding one
    IFLA_BRIDGE_VLAN_INFO (br_afspec() in net/bridge/br_netlink.c)."""
    flags = (BRIDGE_VLAN_INFO_PVID if pvid else 0) | \
        (BRIDGE_VLAN_INFO_UNTAGGED if untagged else 0)
    return _IFI.pack(AF_BRIDGE, 0, index, 0, 0) + a_nest(
        IFLA_AF_SPEC, attr(IFLA_BRIDGE_VLAN_INFO, _VLAN_INFO.pack(flags, vid)))


def bridge_vlans_dump_body() -> bytes:
    """RTM_GETLINK dump of family AF_BRIDGE asking for each port's VLANs."""
    return _IFI.pack(AF_BRIDGE, 0, 0, 0, 0) + a_u32(IFLA_EXT_MASK, RTEXT_FILTER_BRVLAN)


def port_vlans(buf: bytes, off: int, end: int) -> tuple[int, list[tuple[int, int]]]:
    """(ifindex, [(vid, flags)]) of one AF_BRIDGE RTM_NEWLINK message."""
    _fam, _type, index, _flags, _change = _IFI.unpack_from(buf, off)
    out = []
    for t, s, e in parse_attrs(buf, off + _IFI.size, end):
        if t == IFLA_AF_SPEC:
            for it, is_, _ie in parse_attrs(buf, s, e):
                if it == IFLA_BRIDGE_VLAN_INFO:
                    flags, vid = _VLAN_INFO.unpack_from(buf, is_)
                    out.append((vid, flags))
    return index, out


def bridge_create_body(name: str, mac: str, mtu: int | None, stp: bool,
                       forward_delay: int, vlan_filtering: bool = False) -> bytes:
    """RTM_NEWLINK body (with NLM_F_CREATE | NLM_F_EXCL) that makes a bridge.

    forward_delay is in seconds; IFLA_BR_FORWARD_DELAY is in clock_t (USER_HZ,
    br_set_forward_delay() in net/bridge/br_stp.c).  IFLA_IFALIAS is ignored on
    creation: the caller sets it in a second request (set_link).
    """
    info = a_nest(IFLA_LINKINFO, a_str(IFLA_INFO_KIND, "bridge"),
                  a_nest(IFLA_INFO_DATA,
                         a_u32(IFLA_BR_STP_STATE, int(stp)),
                         a_u32(IFLA_BR_FORWARD_DELAY, forward_delay * USER_HZ),
                         *([a_u8(IFLA_BR_VLAN_FILTERING, 1)] if vlan_filtering else [])))
    body = ifinfo() + by_name(name) + a_mac(IFLA_ADDRESS, mac) + info
    if mtu:
        body += a_u32(IFLA_MTU, mtu)
    return body


# -- shared by the other message families (vmnet.kernel.addr, route, rule, nexthop,
# fdb, events): numbers from include/uapi/linux/{rtnetlink,netlink,if_addr,neighbour,
# fib_rules,nexthop}.h ------------------------------------------------------------
SOL_NETLINK, NETLINK_GET_STRICT_CHK = 270, 12
RTNLGRP_LINK = 1
AF_BRIDGE = 7  # PF_BRIDGE (include/linux/socket.h)
RTM_DELADDR, RTM_GETADDR = 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
RTM_NEWNEXTHOP, RTM_DELNEXTHOP, RTM_GETNEXTHOP = 104, 105, 106
NLM_F_REPLACE = 0x100
IFA_LABEL, IFA_FLAGS = 3, 8
IFA_F_NODAD = 0x02
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY = 1, 4, 5, 6
RTA_MULTIPATH, RTA_TABLE, RTA_VIA, RTA_NH_ID = 9, 15, 18, 30
RT_TABLE_UNSPEC, RT_TABLE_COMPAT, RT_TABLE_MAIN, RT_TABLE_LOCAL = 0, 252, 254, 255
RTN_UNSPEC, RTN_UNICAST, RTN_LOCAL, RTN_BLACKHOLE = 0, 1, 2, 6
RTPROT_UNSPEC, RTPROT_KERNEL, RTPROT_BOOT, RTPROT_STATIC = 0, 2, 3, 4
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST, RT_SCOPE_NOWHERE = 0, 253, 254, 255
FRA_DST, FRA_SRC, FRA_IIFNAME, FRA_PRIORITY, FRA_TABLE, FRA_OIFNAME = 1, 2, 3, 6, 15, 17
FR_ACT_TO_TBL = 1
NHA_ID, NHA_GROUP, NHA_BLACKHOLE, NHA_OIF, NHA_GATEWAY = 1, 2, 4, 5, 6
NDA_LLADDR, NDA_VLAN, NDA_MASTER = 2, 5, 9
NTF_SELF, NTF_MASTER = 0x02, 0x04
NUD_REACHABLE, NUD_NOARP, NUD_PERMANENT = 0x02, 0x40, 0x80

mac_text = _mac


def a_u16(kind: int, v: int) -> bytes:
    return attr(kind, struct.pack("=H", v))


def inet_family(text: str) -> int:
    """AF_INET6 for an address with a colon, else AF_INET (the text is not checked here:
    inet_pton() raises OSError for a bad one)."""
    return _socket.AF_INET6 if ":" in text else _socket.AF_INET


def a_ip(kind: int, text: str) -> bytes:
    """An attribute holding an IPv4/IPv6 address in network order (in_addr / in6_addr)."""
    return attr(kind, _socket.inet_pton(inet_family(text), text))


def ip_text(b: bytes) -> str:
    """An address attribute's payload as text, its family told by its length.

    The length, not the message's family: an AF_UNSPEC dump mixes families, and
    an IPv4 route may have an IPv6 gateway (RTA_VIA).  Other lengths (AF_MPLS
    labels, AF_BRIDGE) come back as hex.
    """
    if len(b) == 4:
        return _socket.inet_ntop(_socket.AF_INET, b)
    if len(b) == 16:
        return _socket.inet_ntop(_socket.AF_INET6, b)
    return b.hex()
