"""The default kernel seam: hand-packed rtnetlink (vmnet.kernel.rtnl) and tun ioctls.

Behaves like the pyroute2 implementation (vmnet.kernel.netlink), which the
test suite runs against too (VMNET_KERNEL=pyroute2).  Address and route
dumps, needed only to vet an uplink, are delegated to pyroute2.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import socket
import struct

from vmnet.errors import NotFoundError, VmnetError, kernel_error
from vmnet.kernel import rtnl, tun
from vmnet.kernel.base import LinkInfo, Snapshot, TapSpec, TunInfo, disable_ipv6, fresh_group
from vmnet.kernel.rtnl import (
    IFF_LOWER_UP,
    IFF_UP,
    NLM_F_CREATE,
    NLM_F_EXCL,
    RTM_DELLINK,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_SETLINK,
    NetlinkError,
    a_mac,
    a_nest,
    a_str,
    a_u32,
    ifinfo,
    parse_attrs,
)

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from typing import Any

_U32 = struct.Struct("=I")
_STATS64 = struct.Struct("=QQQQ")  # rx_packets, tx_packets, rx_bytes, tx_bytes
USER_HZ = 100


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def parse_link(buf: bytes, off: int, end: int) -> LinkInfo:
    """An RTM_NEWLINK message body -> LinkInfo."""
    _fam, _type, index, flags, _change = rtnl._IFI.unpack_from(buf, off)
    name = ""
    mac = alias = kind = None
    mtu = group = 0
    master = None
    carrier = None
    stats = (0, 0, 0, 0)
    tun_info = None
    stp = fwd = None
    for t, s, e in parse_attrs(buf, off + rtnl._IFI.size, end):
        if t == rtnl.IFLA_IFNAME:
            name = buf[s:e].rstrip(b"\0").decode()
        elif t == rtnl.IFLA_ADDRESS:
            mac = _mac(buf[s:e])
        elif t == rtnl.IFLA_MTU:
            mtu = _U32.unpack_from(buf, s)[0]
        elif t == rtnl.IFLA_MASTER:
            master = _U32.unpack_from(buf, s)[0]
        elif t == rtnl.IFLA_IFALIAS:
            alias = buf[s:e].rstrip(b"\0").decode(errors="replace")
        elif t == rtnl.IFLA_GROUP:
            group = _U32.unpack_from(buf, s)[0]
        elif t == rtnl.IFLA_CARRIER:
            carrier = bool(buf[s])
        elif t == rtnl.IFLA_STATS64:
            stats = _STATS64.unpack_from(buf, s)
        elif t == rtnl.IFLA_LINKINFO:
            data_s = data_e = 0
            for it, is_, ie in parse_attrs(buf, s, e):
                if it == rtnl.IFLA_INFO_KIND:
                    kind = buf[is_:ie].rstrip(b"\0").decode()
                elif it == rtnl.IFLA_INFO_DATA:
                    data_s, data_e = is_, ie
            if kind == "tun" and data_e:
                d = {dt: buf[ds:de] for dt, ds, de in parse_attrs(buf, data_s, data_e)}

                def u32(k: int, d: dict[int, bytes] = d) -> int | None:
                    return _U32.unpack(d[k])[0] if k in d else None

                def u8(k: int, d: dict[int, bytes] = d) -> bool:
                    return bool(d[k][0]) if k in d else False

                tun_info = TunInfo(tap=d.get(rtnl.IFLA_TUN_TYPE, b"\0")[:1] == b"\x02",
                                   owner=u32(rtnl.IFLA_TUN_OWNER),
                                   group=u32(rtnl.IFLA_TUN_GROUP),
                                   multi_queue=u8(rtnl.IFLA_TUN_MULTI_QUEUE),
                                   persist=u8(rtnl.IFLA_TUN_PERSIST),
                                   vnet_hdr=u8(rtnl.IFLA_TUN_VNET_HDR),
                                   pi=u8(rtnl.IFLA_TUN_PI),
                                   num_queues=u32(rtnl.IFLA_TUN_NUM_QUEUES) or 0)
            elif kind == "bridge" and data_e:
                for dt, ds, _de in parse_attrs(buf, data_s, data_e):
                    if dt == rtnl.IFLA_BR_STP_STATE:
                        stp = bool(_U32.unpack_from(buf, ds)[0])
                    elif dt == rtnl.IFLA_BR_FORWARD_DELAY:
                        fwd = _U32.unpack_from(buf, ds)[0] // USER_HZ
    return LinkInfo(index=index, name=name, kind=kind, mac=mac, mtu=mtu, up=bool(flags & IFF_UP),
                    carrier=carrier if carrier is not None else bool(flags & IFF_LOWER_UP),
                    master=master, alias=alias, group=group, tun=tun_info,
                    rx_packets=stats[0], tx_packets=stats[1], rx_bytes=stats[2],
                    tx_bytes=stats[3], stp=stp, forward_delay=fwd)


def _by_name(name: str) -> bytes:
    return a_str(rtnl.IFLA_IFNAME, name)


class LeanKernel:
    """Kernel seam over one hand-driven rtnetlink socket."""

    def __init__(self, *, ioctl: tun.Ioctl = fcntl.ioctl, tun_path: str = tun.TUN_PATH) -> None:
        self.nl = rtnl.Rtnl()
        self._ioctl = ioctl
        self._tun_path = tun_path
        self._index: dict[str, int] = {}
        self._full: Any = None
        self._last: Snapshot | None = None
        self._ioctl_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def close(self) -> None:
        self.nl.close()
        self._ioctl_sock.close()
        if self._full is not None:
            self._full.close()

    def _call(self, op: str, ifname: str | None, mtype: int, flags: int, body: bytes) -> None:
        try:
            self.nl.call(mtype, flags, body)
        except NetlinkError as e:
            raise kernel_error(op, ifname, rtnl.errno_of(e), e.strerror or "") from None

    # -- reading ---------------------------------------------------------
    def snapshot(self) -> Snapshot:
        links: dict[str, LinkInfo] = {}
        try:
            for buf, s, e in self.nl.dump(RTM_GETLINK, ifinfo()):
                lk = parse_link(buf, s, e)
                links[lk.name] = lk
        except NetlinkError as e:
            raise kernel_error("list links", None, rtnl.errno_of(e)) from None
        self._index = {n: lk.index for n, lk in links.items()}
        self._last = Snapshot(links)
        return self._last

    def _idx(self, name: str) -> int:
        idx = self._index.get(name)
        if idx is None:
            try:
                idx = socket.if_nametoindex(name)
            except OSError:
                raise NotFoundError(f"interface {name} does not exist", ifname=name) from None
            self._index[name] = idx
        return idx

    def _pyroute2(self) -> Any:
        if self._full is None:
            from vmnet.kernel.netlink import NetlinkKernel

            self._full = NetlinkKernel(ioctl=self._ioctl, tun_path=self._tun_path)
        return self._full

    def global_addresses(self, name: str) -> list[str]:
        return list(self._pyroute2().global_addresses(name))

    def default_route_devices(self) -> set[str]:
        return set(self._pyroute2().default_route_devices())

    # -- changing --------------------------------------------------------
    def create_tap(self, spec: TapSpec) -> None:
        body = ifinfo(0, IFF_UP, IFF_UP) + _by_name(spec.name) + \
            a_mac(rtnl.IFLA_ADDRESS, spec.mac) + a_str(rtnl.IFLA_IFALIAS, spec.alias)
        if spec.mtu:
            body += a_u32(rtnl.IFLA_MTU, spec.mtu)

        def configure() -> None:  # before persist: see tun.create_persistent_tap
            # IPv6 off before the tap goes up, so it never gets a link-local address.
            self.disable_ipv6(spec.name)
            self._call("configure tap", spec.name, RTM_SETLINK, 0, body)

        tun.create_persistent_tap(spec.name, owner=spec.owner, group=spec.group,
                                  multi_queue=spec.multi_queue, path=self._tun_path,
                                  ioctl=self._ioctl, configure=configure)
        tun.settle_operstate(self._ioctl_sock.fileno(), spec.name, self._ioctl)

    def create_bridge(self, name: str, *, mac: str, mtu: int | None, stp: bool,
                      forward_delay: int, alias: str) -> None:
        info = a_nest(rtnl.IFLA_LINKINFO, a_str(rtnl.IFLA_INFO_KIND, "bridge"),
                      a_nest(rtnl.IFLA_INFO_DATA,
                             a_u32(rtnl.IFLA_BR_STP_STATE, int(stp)),
                             a_u32(rtnl.IFLA_BR_FORWARD_DELAY, forward_delay * USER_HZ)))
        body = ifinfo() + _by_name(name) + a_mac(rtnl.IFLA_ADDRESS, mac) + info
        if mtu:
            body += a_u32(rtnl.IFLA_MTU, mtu)
        self._call("create bridge", name, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)
        try:
            # IFLA_IFALIAS is ignored on creation: set it in a second request.
            self._call("mark bridge", name, RTM_SETLINK, 0,
                       ifinfo() + _by_name(name) + a_str(rtnl.IFLA_IFALIAS, alias))
        except VmnetError:
            self._delete_one(name)
            raise

    def set_link(self, name: str, *, master: str | None = None, nomaster: bool = False,
                 up: bool | None = None, mtu: int | None = None,
                 alias: str | None = None, group: int | None = None,
                 mac: str | None = None) -> None:
        body = _by_name(name)
        if mac is not None:
            body += a_mac(rtnl.IFLA_ADDRESS, mac)
        if mtu is not None:
            body += a_u32(rtnl.IFLA_MTU, mtu)
        if alias is not None:
            body += a_str(rtnl.IFLA_IFALIAS, alias)
        if group is not None:
            body += a_u32(rtnl.IFLA_GROUP, group)
        if master is not None:
            body += a_u32(rtnl.IFLA_MASTER, self._idx(master))
        if nomaster:
            body += a_u32(rtnl.IFLA_MASTER, 0)
        head = ifinfo() if up is None else ifinfo(0, IFF_UP if up else 0, IFF_UP)
        self._call("set link", name, RTM_SETLINK, 0, head + body)

    def _delete_one(self, name: str) -> None:
        with contextlib.suppress(NotFoundError):
            self._call("delete link", name, RTM_DELLINK, 0, ifinfo() + _by_name(name))
        self._index.pop(name, None)

    def delete_links(self, names: list[str]) -> None:
        """Delete links; several at once through a fresh netdev group.

        One RTM_DELLINK per link waits for an RCU grace period each time; a
        group delete pays it once.  The group is fresh (no link is in it) and
        never 0; only the named links, already verified as vmnet's by the
        caller, are moved into it, just before the delete.  The caller's last
        dump (from which it verified them) supplies the groups in use.
        """
        names = [n for n in names if n]
        if len(names) <= 1:
            for n in names:
                self._delete_one(n)
            return
        snap = self._last or self.snapshot()
        group = fresh_group({lk.group for lk in snap.links.values()})
        for n in names:
            self.nl.send(RTM_SETLINK, 0, ifinfo() + _by_name(n)
                         + a_u32(rtnl.IFLA_GROUP, group), tag=n)
        failed = self.nl.wait()
        for tag, err in failed:
            if err.errno != errno.ENODEV:
                raise kernel_error("set group", str(tag), rtnl.errno_of(err))
        self._call("delete link group", ",".join(names[:3]), RTM_DELLINK, 0,
                   ifinfo() + a_u32(rtnl.IFLA_GROUP, group))
        for n in names:
            self._index.pop(n, None)
        self._last = None

    def add_address(self, name: str, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        fam = socket.AF_INET if iface.version == 4 else socket.AF_INET6
        packed = iface.ip.packed
        body = rtnl.ifaddr(fam, iface.network.prefixlen, self._idx(name)) + \
            rtnl.attr(rtnl.IFA_LOCAL, packed) + rtnl.attr(rtnl.IFA_ADDRESS, packed)
        self._call("add address", name, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def disable_ipv6(self, name: str) -> None:
        disable_ipv6(name)
