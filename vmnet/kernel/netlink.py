"""The netlink implementation of the kernel seam (pyroute2).

NetlinkError is wrapped here, with the interface name and operation, so
nothing above this layer sees pyroute2.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vmnet.errors import NotFoundError, VmnetError, kernel_error
from vmnet.kernel import tun
from vmnet.kernel.base import LinkInfo, Snapshot, TapSpec, TunInfo, disable_ipv6, fresh_group

RT_SCOPE_UNIVERSE = 0
USER_HZ = 100  # bridge timers are in clock_t over netlink


@contextmanager
def _wrap(op: str, ifname: str | None) -> Iterator[None]:
    try:
        yield
    except NetlinkError as e:
        raise kernel_error(op, ifname, e.code, str(e.args[1]) if len(e.args) > 1 else "") \
            from None
    except OSError as e:
        raise kernel_error(op, ifname, e.errno or errno.EIO) from None


def _attrs(msg: Any, name: str) -> dict[str, Any]:
    nested = msg.get(name)
    if not nested:
        return {}
    return {k: v for k, v in nested.get("attrs", [])}


def link_from_msg(msg: Any) -> LinkInfo:
    info = _attrs(msg, "IFLA_LINKINFO")
    kind = info.get("IFLA_INFO_KIND")
    data = {}
    data_msg = info.get("IFLA_INFO_DATA")
    if data_msg is not None and hasattr(data_msg, "get"):
        data = {k: v for k, v in data_msg.get("attrs", [])}
    tun_info = None
    stp = fwd = None
    if kind == "tun":
        tun_info = TunInfo(
            tap=data.get("IFLA_TUN_TYPE") == 2,
            owner=data.get("IFLA_TUN_OWNER"),
            group=data.get("IFLA_TUN_GROUP"),
            multi_queue=bool(data.get("IFLA_TUN_MULTI_QUEUE")),
            persist=bool(data.get("IFLA_TUN_PERSIST")),
            vnet_hdr=bool(data.get("IFLA_TUN_VNET_HDR")),
            pi=bool(data.get("IFLA_TUN_PI")),
            num_queues=int(data.get("IFLA_TUN_NUM_QUEUES") or 0),
        )
    elif kind == "bridge":
        stp = bool(data.get("IFLA_BR_STP_STATE"))
        fd = data.get("IFLA_BR_FORWARD_DELAY")
        fwd = None if fd is None else int(fd) // USER_HZ
    stats = msg.get("IFLA_STATS64") or msg.get("IFLA_STATS")
    flags = int(msg["flags"])
    return LinkInfo(
        index=int(msg["index"]),
        name=msg.get("IFLA_IFNAME"),
        kind=kind,
        mac=msg.get("IFLA_ADDRESS"),
        mtu=int(msg.get("IFLA_MTU") or 0),
        up=bool(flags & 0x1),
        carrier=bool(msg.get("IFLA_CARRIER")) if msg.get("IFLA_CARRIER") is not None
        else bool(flags & 0x10000),
        master=msg.get("IFLA_MASTER"),
        alias=msg.get("IFLA_IFALIAS"),
        group=int(msg.get("IFLA_GROUP") or 0),
        tun=tun_info,
        rx_bytes=int(stats["rx_bytes"]) if stats else 0,
        tx_bytes=int(stats["tx_bytes"]) if stats else 0,
        rx_packets=int(stats["rx_packets"]) if stats else 0,
        tx_packets=int(stats["tx_packets"]) if stats else 0,
        stp=stp,
        forward_delay=fwd,
    )


class NetlinkKernel:
    """Kernel seam over one rtnetlink socket."""

    def __init__(self, *, ioctl: tun.Ioctl | None = None,
                 tun_path: str = tun.TUN_PATH) -> None:
        self._ipr: Any = IPRoute()
        self._ioctl: tun.Ioctl = ioctl or __import__("fcntl").ioctl
        self._tun_path = tun_path
        self._index: dict[str, int] = {}

    def close(self) -> None:
        self._ipr.close()

    # -- reading ---------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with _wrap("list links", None):
            msgs = self._ipr.get_links()
        links = {}
        for m in msgs:
            lk = link_from_msg(m)
            links[lk.name] = lk
        self._index = {n: lk.index for n, lk in links.items()}
        return Snapshot(links)

    def _idx(self, name: str) -> int:
        idx = self._index.get(name)
        if idx is not None:
            return idx
        with _wrap("look up link", name):
            found = self._ipr.link_lookup(ifname=name)
        if not found:
            raise NotFoundError(f"interface {name} does not exist", ifname=name)
        self._index[name] = int(found[0])
        return int(found[0])

    def global_addresses(self, name: str) -> list[str]:
        idx = self._idx(name)
        with _wrap("list addresses", name):
            msgs = self._ipr.get_addr(index=idx)
        out = []
        for m in msgs:
            if m["scope"] == RT_SCOPE_UNIVERSE:
                out.append(f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}")
        return out

    def default_route_devices(self) -> set[str]:
        devs: set[int] = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            with _wrap("list routes", None):
                routes = self._ipr.route("dump", family=family)
            for r in routes:
                if r["dst_len"] != 0 or r.get("RTA_TABLE", r["table"]) not in (254, 255):
                    continue
                if r["type"] != 1:  # RTN_UNICAST only
                    continue
                if r.get("RTA_OIF") is not None:
                    devs.add(int(r.get("RTA_OIF")))
                for hop in r.get("RTA_MULTIPATH") or []:
                    devs.add(int(hop["oif"]))
        names = {n for n, i in self._index.items() if i in devs}
        if len(names) < len(devs):
            snap = self.snapshot()
            names = {lk.name for lk in snap.links.values() if lk.index in devs}
        return names

    # -- changing --------------------------------------------------------
    def create_tap(self, spec: TapSpec) -> None:
        def configure() -> None:  # before persist: see tun.create_persistent_tap
            with _wrap("configure tap", spec.name):
                idx = self._ipr.link_lookup(ifname=spec.name)[0]
                # IPv6 off before the tap goes up: no link-local address.
                self.disable_ipv6(spec.name)
                kw: dict[str, Any] = {"address": spec.mac, "ifalias": spec.alias,
                                      "state": "up"}
                if spec.mtu:
                    kw["mtu"] = spec.mtu
                self._ipr.link("set", index=idx, **kw)
                self._index[spec.name] = idx

        tun.create_persistent_tap(spec.name, owner=spec.owner, group=spec.group,
                                  multi_queue=spec.multi_queue, path=self._tun_path,
                                  ioctl=self._ioctl, configure=configure)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            tun.settle_operstate(s.fileno(), spec.name, self._ioctl)

    def create_bridge(self, name: str, *, mac: str, mtu: int | None, stp: bool,
                      forward_delay: int, alias: str) -> None:
        kw: dict[str, Any] = {"address": mac, "br_stp_state": int(stp),
                              "br_forward_delay": forward_delay * USER_HZ}
        if mtu:
            kw["mtu"] = mtu
        with _wrap("create bridge", name):
            self._ipr.link("add", ifname=name, kind="bridge", **kw)
        try:
            # IFLA_IFALIAS is ignored on creation: set it in a second request.
            with _wrap("mark bridge", name):
                idx = self._ipr.link_lookup(ifname=name)[0]
                self._index[name] = idx
                self._ipr.link("set", index=idx, ifalias=alias)
        except VmnetError:
            self._delete_one(name)
            raise

    def set_link(self, name: str, *, master: str | None = None, nomaster: bool = False,
                 up: bool | None = None, mtu: int | None = None,
                 alias: str | None = None, group: int | None = None,
                 mac: str | None = None) -> None:
        kw: dict[str, Any] = {}
        if master is not None:
            kw["master"] = self._idx(master)
        if nomaster:
            kw["master"] = 0
        if mtu is not None:
            kw["mtu"] = mtu
        if alias is not None:
            kw["ifalias"] = alias
        if group is not None:
            kw["group"] = group
        if mac is not None:
            kw["address"] = mac
        if up is not None:
            kw["state"] = "up" if up else "down"
        with _wrap("set link", name):
            self._ipr.link("set", index=self._idx(name), **kw)

    def _delete_one(self, name: str) -> None:
        try:
            with _wrap("delete link", name):
                self._ipr.link("del", index=self._idx(name))
        except NotFoundError:
            pass
        self._index.pop(name, None)

    def delete_links(self, names: list[str]) -> None:
        """Delete links; several at once through a fresh netdev group.

        One RTM_DELLINK per link waits for an RCU grace period each time;
        a group delete pays it once.  The group number is fresh (unused by
        any link) and never 0, so no foreign link is caught.
        """
        names = [n for n in names if n]
        if len(names) <= 1:
            for n in names:
                self._delete_one(n)
            return
        snap = self.snapshot()
        present = [n for n in names if n in snap.links]
        group = fresh_group({lk.group for lk in snap.links.values()})
        for n in present:
            with _wrap("set group", n):
                self._ipr.link("set", index=snap.links[n].index, group=group)
        with _wrap("delete link group", ",".join(present[:3])):
            self._ipr.link("del", group=group)
        for n in present:
            self._index.pop(n, None)

    def add_address(self, name: str, cidr: str) -> None:
        addr, _, plen = cidr.partition("/")
        with _wrap("add address", name):
            self._ipr.addr("add", index=self._idx(name), address=addr, prefixlen=int(plen))

    def disable_ipv6(self, name: str) -> None:
        disable_ipv6(name)

