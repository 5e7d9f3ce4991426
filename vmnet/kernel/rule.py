"""Policy routing rules: struct fib_rule_hdr messages (RTM_GETRULE).

Layout and attribute numbers from include/uapi/linux/fib_rules.h; built on
the hand-packed codec of vmnet.kernel.rtnl.
"""

from __future__ import annotations

import struct

from vmnet.kernel import rtnl
from vmnet.model.value import Value

_FRH = struct.Struct("=BBBBBBBBI")  # struct fib_rule_hdr
_U32 = struct.Struct("=I")


class Rule(Value):
    """One policy rule, as the kernel reports it.

    table is FRA_TABLE (u32) when present: the header's byte holds only ids
    below 256.  priority is FRA_PRIORITY, which the kernel leaves out for
    priority 0 (the "local" rule).  iifname/oifname are FRA_IIFNAME/FRA_OIFNAME
    or None; action is FR_ACT_* (1: lookup the table).  src/dst are FRA_SRC/
    FRA_DST (None: any, with src_len/dst_len 0).
    """

    __slots__ = ("action", "dst", "dst_len", "family", "iifname", "oifname", "priority",
                 "src", "src_len", "table")

    def __init__(self, family: int, table: int, priority: int = 0,
                 iifname: str | None = None, oifname: str | None = None,
                 action: int = rtnl.FR_ACT_TO_TBL, src: str | None = None, src_len: int = 0,
                 dst: str | None = None, dst_len: int = 0) -> None:
        self.family = family
        self.table = table
        self.priority = priority
        self.iifname = iifname
        self.oifname = oifname
        self.action = action
        self.src = src
        self.src_len = src_len
        self.dst = dst
        self.dst_len = dst_len


def dump_body(family: int = 0) -> bytes:
    """RTM_GETRULE dump body; family 0 dumps the rules of every family.

    The header is all zeros: strict checking rejects any other value
    (fib_valid_dumprule_req() in net/core/fib_rules.c).
    """
    return _FRH.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)


def parse(buf: bytes, off: int, end: int) -> Rule:
    """An RTM_NEWRULE/RTM_DELRULE message body (buf[off:end]) -> Rule."""
    family, dst_len, src_len, _tos, table, _r1, _r2, action, _flags = \
        _FRH.unpack_from(buf, off)
    priority = 0
    iif = oif = src = dst = None
    for t, s, e in rtnl.parse_attrs(buf, off + _FRH.size, end):
        if t == rtnl.FRA_TABLE:
            table = _U32.unpack_from(buf, s)[0]
        elif t == rtnl.FRA_PRIORITY:
            priority = _U32.unpack_from(buf, s)[0]
        elif t == rtnl.FRA_IIFNAME:
            iif = buf[s:e].rstrip(b"\0").decode(errors="replace")
        elif t == rtnl.FRA_OIFNAME:
            oif = buf[s:e].rstrip(b"\0").decode(errors="replace")
        elif t == rtnl.FRA_SRC:
            src = rtnl.ip_text(buf[s:e])
        elif t == rtnl.FRA_DST:
            dst = rtnl.ip_text(buf[s:e])
    return Rule(family, table, priority, iif, oif, action, src, src_len, dst, dst_len)


def dump(nl: rtnl.Rtnl, family: int = 0) -> list[Rule]:
    """Every rule (of one family if given) through socket nl."""
    return [parse(b, s, e) for b, s, e in nl.dump(rtnl.RTM_GETRULE, dump_body(family))]
