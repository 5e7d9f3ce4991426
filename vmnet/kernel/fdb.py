"""Bridge forwarding database: struct ndmsg messages of family AF_BRIDGE
(RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH), as `bridge fdb` sends them.

Layout and attribute numbers from include/uapi/linux/neighbour.h; the kernel
side is rtnl_fdb_add/del/dump/get() in net/core/rtnetlink.c and
net/bridge/br_fdb.c.  Built on the hand-packed codec of vmnet.kernel.rtnl.
"""

from __future__ import annotations

import struct

from vmnet.kernel import rtnl
from vmnet.model.value import Value

_NDM = struct.Struct("=BxxxiHBB")  # struct ndmsg: family, pad, ifindex, state, flags, type
_U32 = struct.Struct("=I")
_U16 = struct.Struct("=H")


class FdbEntry(Value):
    """One fdb entry.

    ifindex is the port (or the bridge itself); master is NDA_MASTER, the
    bridge, on the bridge's own entries and None on a device's "self" entries
    (its unicast/multicast address lists, flag NTF_SELF).  vlan is NDA_VLAN or
    None; state holds NUD_* bits, flags NTF_* bits.
    """

    __slots__ = ("flags", "ifindex", "mac", "master", "state", "vlan")

    def __init__(self, mac: str, ifindex: int, master: int | None = None,
                 vlan: int | None = None, state: int = 0, flags: int = 0) -> None:
        self.mac = mac
        self.ifindex = ifindex
        self.master = master
        self.vlan = vlan
        self.state = state
        self.flags = flags

    @property
    def permanent(self) -> bool:
        """NUD_PERMANENT: `bridge fdb` prints "permanent" (never ages)."""
        return bool(self.state & rtnl.NUD_PERMANENT)

    @property
    def static(self) -> bool:
        """NUD_NOARP: added as static (`bridge fdb add ... static`); never ages."""
        return bool(self.state & rtnl.NUD_NOARP)

    @property
    def local(self) -> bool:
        """A bridge's local entry (frames to it go up to the host, not out of a
        port): the bridge reports BR_FDB_LOCAL entries as NUD_PERMANENT
        (fdb_to_nud()); a device's own "self" addresses are permanent, not local."""
        return self.permanent and self.master is not None


def _ndm(ifindex: int, state: int, flags: int) -> bytes:
    return _NDM.pack(rtnl.AF_BRIDGE, ifindex, state, flags, 0)


def dump_body(master_index: int = 0) -> bytes:
    """RTM_GETNEIGH dump body: the fdb of one bridge (NDA_MASTER), or every fdb.

    The kernel applies NDA_MASTER only on a socket with strict checking
    (Rtnl.set_strict_check(); valid_fdb_dump_strict()): a legacy request of
    this size is taken as unfiltered (valid_fdb_dump_legacy()).
    """
    body = _ndm(0, 0, 0)
    if master_index:
        body += rtnl.a_u32(rtnl.NDA_MASTER, master_index)
    return body


def get_body(mac: str, *, master_index: int = 0, ifindex: int = 0,
             vlan: int | None = None) -> bytes:
    """Single-entry RTM_GETNEIGH body (Linux 5.2+), `bridge fdb get MAC br BR [vlan V]`
    with master_index, `... dev PORT` with ifindex: the kernel wants exactly one
    of them (rtnl_fdb_get()).  A missing entry answers ENOENT (Rtnl.get_or_none)."""
    if bool(master_index) == bool(ifindex):
        raise ValueError("fdb get: give exactly one of master_index and ifindex")
    body = _ndm(ifindex, 0, 0)
    if master_index:
        body += rtnl.a_u32(rtnl.NDA_MASTER, master_index)
    body += rtnl.a_mac(rtnl.NDA_LLADDR, mac)
    if vlan is not None:
        body += rtnl.a_u16(rtnl.NDA_VLAN, vlan)
    return body


def add_body(ifindex: int, mac: str, *, master: bool = True, static: bool = True,
             vlan: int | None = None) -> bytes:
    """RTM_NEWNEIGH body, `bridge fdb add MAC dev PORT master static [vlan V]`.

    Send with NLM_F_CREATE | NLM_F_EXCL (EEXIST if present) or NLM_F_CREATE |
    NLM_F_REPLACE.  master: the entry goes into the fdb of the port's bridge
    (NTF_MASTER), else into the device's own (NTF_SELF).  static: NUD_NOARP,
    never ages; else NUD_REACHABLE, a dynamic entry (the bridge rejects a state
    without one of NUD_PERMANENT/NOARP/REACHABLE: br_fdb_add()).  A vlan needs
    a VLAN-filtering bridge with that vlan on the port, else EINVAL.
    """
    state = rtnl.NUD_NOARP if static else rtnl.NUD_REACHABLE
    body = _ndm(ifindex, state, rtnl.NTF_MASTER if master else rtnl.NTF_SELF)
    body += rtnl.a_mac(rtnl.NDA_LLADDR, mac)
    if vlan is not None:
        body += rtnl.a_u16(rtnl.NDA_VLAN, vlan)
    return body


def del_body(ifindex: int, mac: str, *, master: bool = True, vlan: int | None = None) -> bytes:
    """RTM_DELNEIGH body, `bridge fdb del MAC dev PORT master [vlan V]`."""
    body = _ndm(ifindex, 0, rtnl.NTF_MASTER if master else rtnl.NTF_SELF)
    body += rtnl.a_mac(rtnl.NDA_LLADDR, mac)
    if vlan is not None:
        body += rtnl.a_u16(rtnl.NDA_VLAN, vlan)
    return body


def parse(buf: bytes, off: int, end: int) -> FdbEntry:
    """An AF_BRIDGE RTM_NEWNEIGH/RTM_DELNEIGH message body (buf[off:end]) -> FdbEntry."""
    _fam, ifindex, state, flags, _type = _NDM.unpack_from(buf, off)
    mac = ""
    master = vlan = None
    for t, s, e in rtnl.parse_attrs(buf, off + _NDM.size, end):
        if t == rtnl.NDA_LLADDR:
            mac = rtnl.mac_text(buf[s:e])
        elif t == rtnl.NDA_MASTER:
            master = _U32.unpack_from(buf, s)[0]
        elif t == rtnl.NDA_VLAN:
            vlan = _U16.unpack_from(buf, s)[0]
    return FdbEntry(mac, ifindex, master, vlan, state, flags)


def dump(nl: rtnl.Rtnl, master_index: int = 0) -> list[FdbEntry]:
    """The fdb of bridge master_index, or every fdb, through socket nl.

    A bridge's fdb as `bridge fdb show br BR` lists it: the bridge's entries
    (master set) and the own "self" entries of the bridge and its ports.  The
    filter needs strict checking (see dump_body), so this turns it on for nl
    (every vmnet request is valid on a strict socket).
    """
    if master_index and not nl.strict:
        nl.set_strict_check()
    return [parse(b, s, e) for b, s, e in nl.dump(rtnl.RTM_GETNEIGH, dump_body(master_index))]


def get(nl: rtnl.Rtnl, mac: str, *, master_index: int = 0, ifindex: int = 0,
        vlan: int | None = None) -> FdbEntry | None:
    """One fdb entry (see get_body), None if there is none."""
    got = nl.get_or_none(rtnl.RTM_GETNEIGH, get_body(mac, master_index=master_index,
                                                     ifindex=ifindex, vlan=vlan))
    return None if got is None else parse(*got)
