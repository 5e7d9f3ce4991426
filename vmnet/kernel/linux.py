"""The kernel seam: one implementation, hand-packed rtnetlink (vmnet.kernel.rtnl and the
per-family codecs beside it) and tun ioctls.

Every netlink message family vmnet uses is packed and parsed by vmnet's own
codec: links and taps here, addresses (addr), routes (route), policy rules
(rule), nexthop objects (nexthop), bridge FDB entries (fdb), link events
(events).  pyroute2 (~150 ms to import, ~0.3 ms of Python per message) is the
test-time reference these codecs are checked against (tests/test_codec.py).

Reads are scoped: one link by name or index, the ports of one bridge, one FDB
entry, so a single-VM operation costs the same next to 1,000 VMs as next to
none; `snapshot()` (one dump of every link) is for bulk runs, status and gc.
"""

from __future__ import annotations

import _socket  # not `socket`: its enum classes cost ~2 ms to import
import errno
import fcntl

from vmnet.errors import NotFoundError, VmnetError, kernel_error
from vmnet.kernel import rtnl, tun
from vmnet.kernel.base import LinkInfo, Snapshot, TapSpec, TunInfo, fresh_group
from vmnet.kernel.rtnl import (
    NLM_F_CREATE,
    NLM_F_EXCL,
    RTM_DELLINK,
    RTM_GETLINK,
    RTM_NEWLINK,
    RTM_SETLINK,
    NetlinkError,
    a_str,
    a_u32,
    ifinfo,
)

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from vmnet.kernel.addr import Addr
    from vmnet.kernel.fdb import FdbEntry
    from vmnet.kernel.nexthop import Nexthop
    from vmnet.kernel.route import Route
    from vmnet.kernel.rule import Rule


def parse_link(buf: bytes, off: int, end: int) -> LinkInfo:
    """An RTM_NEWLINK message body -> LinkInfo."""
    f = rtnl.link_fields(buf, off, end)
    tun_info = f.pop("tun")
    return LinkInfo(**f, tun=None if tun_info is None else TunInfo(**tun_info))  # type: ignore[arg-type]


def _by_name(name: str) -> bytes:
    return a_str(rtnl.IFLA_IFNAME, name)


class LinuxKernel:
    """Kernel seam over one rtnetlink socket of the caller's network namespace."""

    def __init__(self, *, ioctl: tun.Ioctl = fcntl.ioctl, tun_path: str = tun.TUN_PATH) -> None:
        self.nl = rtnl.Rtnl()
        self._ioctl = ioctl
        self._tun_path = tun_path
        self._index: dict[str, int] = {}
        self._groups: set[int] | None = None

    def close(self) -> None:
        self.nl.close()

    def _call(self, op: str, ifname: str | None, mtype: int, flags: int, body: bytes) -> None:
        try:
            self.nl.call(mtype, flags, body)
        except NetlinkError as e:
            raise kernel_error(op, ifname, rtnl.errno_of(e), e.strerror or "") from None

    # -- reading links -------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Every link of the namespace, from one dump."""
        links: dict[str, LinkInfo] = {}
        try:
            for buf, s, e in self.nl.dump(RTM_GETLINK, ifinfo()):
                lk = parse_link(buf, s, e)
                links[lk.name] = lk
        except NetlinkError as e:
            raise kernel_error("list links", None, rtnl.errno_of(e)) from None
        self._index = {n: lk.index for n, lk in links.items()}
        self._groups = {lk.group for lk in links.values()}
        return Snapshot(links)

    def link(self, name: str) -> LinkInfo | None:
        """One link by name (RTM_GETLINK), None if there is none."""
        try:
            got = self.nl.get(RTM_GETLINK, ifinfo() + _by_name(name))
        except NetlinkError as e:
            raise kernel_error("get link", name, rtnl.errno_of(e)) from None
        if got is None:
            return None
        lk = parse_link(*got)
        self._index[lk.name] = lk.index
        return lk

    def link_by_index(self, index: int) -> LinkInfo | None:
        try:
            got = self.nl.get(RTM_GETLINK, ifinfo(index))
        except NetlinkError as e:
            raise kernel_error("get link", str(index), rtnl.errno_of(e)) from None
        return None if got is None else parse_link(*got)

    def ports(self, bridge_index: int) -> list[LinkInfo]:
        """The ports of one bridge (a link dump the kernel filters by IFLA_MASTER)."""
        try:
            return [lk for lk in (parse_link(b, s, e) for b, s, e in self.nl.dump(
                RTM_GETLINK, ifinfo() + a_u32(rtnl.IFLA_MASTER, bridge_index)))
                if lk.master == bridge_index]
        except NetlinkError as e:
            raise kernel_error("list bridge ports", str(bridge_index), rtnl.errno_of(e)) \
                from None

    def _idx(self, name: str) -> int:
        idx = self._index.get(name)
        if idx is None:
            try:
                idx = _socket.if_nametoindex(name)
            except OSError:
                raise NotFoundError(f"interface {name} does not exist", ifname=name) from None
            self._index[name] = idx
        return idx

    # -- reading the rest ------------------------------------------------------
    def addresses(self, index: int = 0) -> list[Addr]:
        from vmnet.kernel import addr

        try:
            return addr.dump(self.nl, 0, index)
        except NetlinkError as e:
            raise kernel_error("list addresses", None, rtnl.errno_of(e)) from None

    def routes(self) -> list[Route]:
        """Every route of every table, both families."""
        from vmnet.kernel import route

        try:
            return route.dump(self.nl, 0)
        except NetlinkError as e:
            raise kernel_error("list routes", None, rtnl.errno_of(e)) from None

    def rules(self) -> list[Rule]:
        from vmnet.kernel import rule

        try:
            return rule.dump(self.nl, 0)
        except NetlinkError as e:
            raise kernel_error("list policy rules", None, rtnl.errno_of(e)) from None

    def nexthops(self) -> list[Nexthop]:
        """Nexthop objects; none on a kernel that has no such objects."""
        from vmnet.kernel import nexthop

        try:
            return nexthop.dump(self.nl)
        except NetlinkError as e:
            if nexthop.unsupported(e):
                return []
            raise kernel_error("list nexthops", None, rtnl.errno_of(e)) from None

    def fdb_get(self, bridge_index: int, mac: str) -> FdbEntry | None:
        """The bridge's FDB entry for `mac` (`bridge fdb get MAC br BR`), None if none."""
        from vmnet.kernel import fdb

        try:
            return fdb.get(self.nl, mac, master_index=bridge_index)
        except NetlinkError as e:
            raise kernel_error("get fdb entry", mac, rtnl.errno_of(e)) from None

    def set_bridge_port(self, name: str, *, isolated: bool | None = None,
                        learning: bool | None = None) -> None:
        self._call("set bridge port", name, RTM_SETLINK, 0,
                   rtnl.bridge_port_body(self._idx(name), isolated=isolated,
                                         learning=learning))

    def fdb_add(self, port: str, mac: str) -> None:
        """A static entry for `mac` on bridge port `port` (replaced if there)."""
        from vmnet.kernel import fdb

        self._call("add fdb entry", port, rtnl.RTM_NEWNEIGH,
                   NLM_F_CREATE | rtnl.NLM_F_REPLACE, fdb.add_body(self._idx(port), mac))

    def fdb_del(self, port: str, mac: str) -> None:
        from vmnet.kernel import fdb

        try:
            self._call("delete fdb entry", port, rtnl.RTM_DELNEIGH, 0,
                       fdb.del_body(self._idx(port), mac))
        except VmnetError as e:
            if not isinstance(e, NotFoundError) and e.errno != errno.ENOENT:
                raise  # (none there, or no such port: nothing to delete)

    def vlan_add(self, port: str, vid: int, *, pvid: bool = False,
                 untagged: bool = False) -> None:
        self._call(f"add vlan {vid}", port, RTM_SETLINK, 0,
                   rtnl.bridge_vlan_body(self._idx(port), vid, pvid=pvid, untagged=untagged))

    def vlan_del(self, port: str, vid: int) -> None:
        try:
            self._call(f"delete vlan {vid}", port, RTM_DELLINK, 0,
                       rtnl.bridge_vlan_body(self._idx(port), vid))
        except VmnetError as e:
            if not isinstance(e, NotFoundError) and e.errno != errno.ENOENT:
                raise

    def port_vlans(self, port: str) -> list[tuple[int, int]]:
        """(vid, BRIDGE_VLAN_INFO_* flags) of a bridge port's VLANs."""
        index = self._idx(port)
        for b, s, e in self.nl.dump(RTM_GETLINK, rtnl.bridge_vlans_dump_body()):
            got, vlans = rtnl.port_vlans(b, s, e)
            if got == index:
                return vlans
        return []

    def fdb_dump(self, bridge_index: int) -> list[FdbEntry]:
        from vmnet.kernel import fdb

        try:
            return fdb.dump(self.nl, bridge_index)
        except NetlinkError as e:
            raise kernel_error("list fdb", str(bridge_index), rtnl.errno_of(e)) from None

    # -- changing --------------------------------------------------------
    def create_tap(self, spec: TapSpec) -> None:
        tun.create_configured_tap(self.nl, spec.name, owner=spec.owner, group=spec.group,
                                  multi_queue=spec.multi_queue, mac=spec.mac, alias=spec.alias,
                                  mtu=spec.mtu, path=self._tun_path, ioctl=self._ioctl)

    def create_bridge(self, name: str, *, mac: str, mtu: int | None, stp: bool,
                      forward_delay: int, alias: str, vlan_filtering: bool = False) -> None:
        try:
            self._call("create bridge", name, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL,
                       rtnl.bridge_create_body(name, mac, mtu, stp, forward_delay,
                                               vlan_filtering))
        except VmnetError as e:
            if vlan_filtering and e.errno == errno.EOPNOTSUPP:
                e.hint = ("this kernel has no bridge VLAN filtering "
                          "(CONFIG_BRIDGE_VLAN_FILTERING): drop vlan_filtering and the "
                          "NICs' vlan/trunk settings")
            raise
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
        op = f"enslave to {master}" if master is not None else "set link"
        self._call(op, name, RTM_SETLINK, 0, body)

    def _delete_one(self, name: str) -> None:
        try:  # noqa: SIM105 - contextlib costs an import on this path
            self._call("delete link", name, RTM_DELLINK, 0, ifinfo() + _by_name(name))
        except NotFoundError:
            pass
        self._index.pop(name, None)

    def delete_links(self, names: list[str]) -> None:
        """Delete links; several at once through a fresh netdev group.

        One RTM_DELLINK per link waits for an RCU grace period each time; a
        group delete pays it once.  The group is fresh (no link is in it) and
        never 0; only the named links, already verified as vmnet's by the
        caller, are moved into it, just before the delete.
        """
        names = [n for n in names if n]
        if len(names) <= 1:
            for n in names:
                self._delete_one(n)
            return
        used = self._groups if self._groups is not None else {
            lk.group for lk in self.snapshot().links.values()}
        group = fresh_group(used)
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
        self._groups = None

    def add_address(self, name: str, cidr: str) -> None:
        from vmnet.kernel import addr

        address, _, plen = cidr.partition("/")
        self._call("add address", name, rtnl.RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                   addr.add_body(self._idx(name), address, int(plen)))

    def del_address(self, name: str, cidr: str) -> None:
        from vmnet.kernel import addr

        address, _, plen = cidr.partition("/")
        try:
            self._call("delete address", name, rtnl.RTM_DELADDR, 0,
                       addr.del_body(self._idx(name), address, int(plen)))
        except VmnetError as e:
            if e.errno not in (errno.EADDRNOTAVAIL, errno.ENODEV):
                raise

    def disable_ipv6(self, name: str) -> None:
        tun.disable_ipv6(name)

    # -- sysctls and nftables (nat and isolated networks) -------------------
    def sysctl(self, path: str) -> str | None:
        from vmnet.kernel import sysctl

        return sysctl.read(path)

    def set_sysctl(self, path: str, value: str) -> None:
        from vmnet.kernel import sysctl

        sysctl.write(path, value)

    def nft_apply(self, script: str) -> None:
        from vmnet.kernel import nft

        nft.apply(script)

    def nft(self, *args: str) -> str:
        from vmnet.kernel import nft

        return nft.run(*args)

    def nft_ruleset(self) -> dict[str, object]:
        from vmnet.kernel import nft

        return nft.ruleset()
