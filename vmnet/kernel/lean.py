"""The default kernel seam: hand-packed rtnetlink (vmnet.kernel.rtnl) and tun ioctls.

Behaves like the pyroute2 implementation (vmnet.kernel.netlink), which the
test suite runs against too (VMNET_KERNEL=pyroute2).  Address and route
dumps, needed only to vet an uplink, are delegated to pyroute2.
"""

from __future__ import annotations

import _socket  # not `socket`: its enum classes cost ~2 ms to import
import contextlib
import errno
import fcntl

from vmnet.errors import NotFoundError, VmnetError, kernel_error
from vmnet.kernel import rtnl, tun
from vmnet.kernel.base import LinkInfo, Snapshot, TapSpec, TunInfo, disable_ipv6, fresh_group
from vmnet.kernel.rtnl import (
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
)

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from typing import Any

USER_HZ = rtnl.USER_HZ


def parse_link(buf: bytes, off: int, end: int) -> LinkInfo:
    """An RTM_NEWLINK message body -> LinkInfo."""
    f = rtnl.link_fields(buf, off, end)
    tun_info = f.pop("tun")
    return LinkInfo(**f, tun=None if tun_info is None else TunInfo(**tun_info))  # type: ignore[arg-type]


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

    def close(self) -> None:
        self.nl.close()
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
                idx = _socket.if_nametoindex(name)
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
        tun.create_configured_tap(self.nl, spec.name, owner=spec.owner, group=spec.group,
                                  multi_queue=spec.multi_queue, mac=spec.mac, alias=spec.alias,
                                  mtu=spec.mtu, path=self._tun_path, ioctl=self._ioctl)

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
        idx = self._idx(master) if master is not None else (0 if nomaster else None)
        body = rtnl.set_link(name, master=idx, up=up, mtu=mtu, alias=alias, group=group,
                             mac=mac)
        self._call("set link", name, RTM_SETLINK, 0, body)

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
        import ipaddress  # only here: it costs ~1 ms to import

        iface = ipaddress.ip_interface(cidr)
        fam = _socket.AF_INET if iface.version == 4 else _socket.AF_INET6
        packed = iface.ip.packed
        body = rtnl.ifaddr(fam, iface.network.prefixlen, self._idx(name)) + \
            rtnl.attr(rtnl.IFA_LOCAL, packed) + rtnl.attr(rtnl.IFA_ADDRESS, packed)
        self._call("add address", name, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def disable_ipv6(self, name: str) -> None:
        disable_ipv6(name)
