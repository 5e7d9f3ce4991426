"""Port filters: `mac_filter`, `ip_filter` and `guard`, in vmnet's nftables table of the
bridge family (`bridge vmnet`), which sees bridged frames without br_netfilter.

One base chain at the bridge prerouting hook sends each frame through a verdict
map keyed by its input port (`iifname vmap @ports`): a hash lookup, so the
per-frame cost does not grow with the number of protected NICs, and only the
frame's own port's chain (`p_<tap>`) is walked.  What a port's chain lets
through:

- mac_filter: frames whose source MAC is the VM's, ARP whose sender MAC is too;
  ethertypes other than IPv4, IPv6 and ARP are dropped (an access port sends no
  VLAN tags, no LLDP, no STP).
- ip_filter: IPv4 sources and ARP sender addresses only from the VM's addresses
  (its fixed address on a nat/isolated network, known before boot, and those
  listed in `addresses`; nothing is learned), but DHCP discovery and ARP probes
  from 0.0.0.0; IPv6 sources only from its listed addresses, `::` (DAD, MLD) and
  fe80::/10 (stable-privacy link-local addresses are not EUI-64).
- guard (on by default with either filter): no router advertisements or
  redirects, no DHCP or DHCPv6 server replies from the VM.
- rate.from_vm / rate.to_vm: a policer (`limit rate over`) in the port's chain,
  and in its `q_<tap>` chain at the bridge's postrouting hook (a second map,
  keyed by output port), for frames toward the VM; see `limit` for why.

Every operation's filters go to the kernel in one `nft -f` transaction
(`merge`), before its taps join their bridges, so a port is never on the bridge
unfiltered.  Not in this bridge family on this kernel: `ct state`, `reject`.
"""

from __future__ import annotations

from vmnet.engine.steps import Step
from vmnet.model.names import sha256
from vmnet.model.value import Value

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Iterable

    from vmnet.engine.observe import HostView
    from vmnet.kernel.protocol import Kernel
    from vmnet.model import Nic, Vm
    from vmnet.state.records import NicRecord

FAMILY = "bridge"
TABLE = "vmnet"
# what nft takes, unquoted, in a chain name after its first character
_IDENT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


class PortFilter(Value):
    """What one tap's chain enforces (the NIC's MAC and addresses included)."""

    __slots__ = ("from_vm", "guard", "ip_filter", "ipv4", "ipv6", "mac", "mac_filter", "tap",
                 "to_vm")

    def __init__(self, tap: str, mac: str, mac_filter: bool, ip_filter: bool, guard: bool,
                 ipv4: tuple[str, ...] = (), ipv6: tuple[str, ...] = (),
                 to_vm: tuple[int, int] | None = None,
                 from_vm: tuple[int, int] | None = None) -> None:
        self.to_vm = to_vm  # (bits per second, burst bytes) toward the guest
        self.from_vm = from_vm  # ... from the guest
        self.tap = tap
        self.mac = mac
        self.mac_filter = mac_filter
        self.ip_filter = ip_filter
        self.guard = guard
        self.ipv4 = tuple(ipv4)
        self.ipv6 = tuple(ipv6)

    @property
    def active(self) -> bool:
        return self.mac_filter or self.ip_filter or self.guard or bool(self.to_vm) or \
            bool(self.from_vm)


def chain_name(tap: str, prefix: str = "p") -> str:
    """`p_<tap>` (frames from the VM), `q_<tap>` (frames to it); hashed when the tap's
    name is no nft identifier."""
    if all(c in _IDENT for c in tap):
        return f"{prefix}_{tap}"
    return f"{prefix}_h{sha256(tap.encode()).hexdigest()[:12]}"


def limit(rate: tuple[int, int]) -> str:
    """A policer: nft's limit (tc's police action is missing on this kernel, and an htb
    on the tap, the to-VM direction, is replaced when libvirt sets the tap's qdisc to
    noqueue after its prepare hook; nft's limit needs no ifb, no qdisc, and goes in the
    same transaction as the filters)."""
    bits, burst = rate
    return f"limit rate over {bits // 8} bytes/second burst {burst} bytes drop"


def _v6hex(addr: str) -> str:
    import ipaddress

    return f"{int(ipaddress.IPv6Address(addr)):032x}"


def _q(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _set(items: Iterable[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def rules(f: PortFilter) -> list[str]:
    """The rules of the tap's chain, in order (every one ends in drop or accept)."""
    out = []
    if f.from_vm:
        out.append(limit(f.from_vm))
    if f.mac_filter:
        hexmac = "0x" + f.mac.replace(":", "")
        out.append(f"ether saddr != {f.mac} drop")
        out.append(f"ether type arp arp saddr ether != {f.mac} drop")
        # NDP's own link-layer addresses: nft has no ND option match, so the raw offsets
        # of RFC 4861 (4.3, 4.4): the first option after the 24 bytes of ICMPv6 header,
        # reserved/flags and target; type 1 = source, 2 = target link-layer address
        for icmp_type, option in (("nd-neighbor-solicit", 1), ("nd-neighbor-advert", 2),
                                  ("nd-router-solicit", 1)):
            at = 64 if icmp_type == "nd-router-solicit" else 192  # an RS has no target
            out.append(f"ether type ip6 icmpv6 type {icmp_type} @th,{at},8 {option} "
                       f"@th,{at + 16},48 != {hexmac} drop")
    if f.guard:
        out.append("ether type ip6 icmpv6 type @router_types drop")
        out.append("ether type ip icmp type redirect drop")
        out.append("ether type ip udp sport 67 drop")
        out.append("ether type ip6 udp sport 547 drop")
    if f.ip_filter:
        if len(f.ipv4) == 1:  # two compares, no set (each anonymous set costs the kernel)
            out.append(f"ether type arp arp saddr ip != 0.0.0.0 arp saddr ip != {f.ipv4[0]} "
                       "drop")
        else:
            out.append(f"ether type arp arp saddr ip != {_set(('0.0.0.0', *f.ipv4))} drop")
        out.append("ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept")
        if f.ipv4:
            out.append(f"ether type ip ip saddr != {_set(f.ipv4)} drop")
        else:
            out.append("ether type ip drop")
        if f.ipv6:
            out.append(f"ether type ip6 ip6 saddr != {_set(('::', 'fe80::/10', *f.ipv6))} "
                       "drop")
        else:
            out.append("ether type ip6 ip6 saddr != @link_local6 drop")
        # a neighbour advertisement claims its target address: only link-local ones (not
        # known in advance) and the VM's own
        targets = " ".join(f"@th,64,128 != 0x{_v6hex(a)}" for a in f.ipv6)
        out.append(f"ether type ip6 icmpv6 type nd-neighbor-advert @th,64,10 != 0x3fa "
                   f"{targets} drop".replace("  ", " "))
    if f.mac_filter or f.ip_filter:
        out.append("ether type != @l3_types drop")
    return out


# Declared (made if missing, kept if there), then the base chain's one rule set anew: a
# declaration with rules would append them again each time.
# The constant sets every port's chain uses are named, made once: an anonymous set per
# rule and port costs the kernel a set each (an `up` of 1,000 filtered NICs: 2.7 s of
# nft against 0.6 s with these shared; bench/policy.py).
_BASE = (f"table {FAMILY} {TABLE} {{\n"
         "\tmap ports { type ifname : verdict; }\n"
         "\tmap ports_out { type ifname : verdict; }\n"
         "\tset router_types { type icmpv6_type; elements = { nd-router-advert, "
         "nd-redirect }; }\n"
         "\tset l3_types { type ether_type; elements = { ip, ip6, arp }; }\n"
         "\tset link_local6 { type ipv6_addr; flags interval; elements = { ::, "
         "fe80::/10 }; }\n"
         "\tchain prerouting {\n"
         "\t\ttype filter hook prerouting priority -200; policy accept;\n"
         "\t}\n"
         "\tchain postrouting {\n"
         "\t\ttype filter hook postrouting priority -200; policy accept;\n"
         "\t}\n"
         "}\n"
         f"flush chain {FAMILY} {TABLE} prerouting\n"
         f"add rule {FAMILY} {TABLE} prerouting iifname vmap @ports\n"
         f"flush chain {FAMILY} {TABLE} postrouting\n"
         f"add rule {FAMILY} {TABLE} postrouting oifname vmap @ports_out\n")


def protect_script(filters: Iterable[PortFilter]) -> str:
    """The nft script that puts `filters` in force (the table made if missing; each
    port's chain replaced whole, then its map entry)."""
    out = [_BASE]
    for f in filters:
        c = chain_name(f.tap)
        out.append(f"add chain {FAMILY} {TABLE} {c}\n")
        out.append(f"flush chain {FAMILY} {TABLE} {c}\n")
        out += [f"add rule {FAMILY} {TABLE} {c} {r}\n" for r in rules(f)]
        out.append(f"add element {FAMILY} {TABLE} ports {{ {_q(f.tap)} : jump {c} }}\n")
        q = chain_name(f.tap, "q")  # frames to the VM (its rate); empty without one
        out.append(f"add chain {FAMILY} {TABLE} {q}\n")
        out.append(f"flush chain {FAMILY} {TABLE} {q}\n")
        if f.to_vm:
            out.append(f"add rule {FAMILY} {TABLE} {q} {limit(f.to_vm)}\n")
        out.append(f"add element {FAMILY} {TABLE} ports_out {{ {_q(f.tap)} : jump {q} }}\n")
    return "".join(out)


def _listed(k: Kernel) -> str | None:
    """`nft list table bridge vmnet`, None when there is none."""
    from vmnet.errors import VmnetError

    try:
        return k.nft("list", "table", FAMILY, TABLE)
    except VmnetError:
        return None


def _mapped(text: str, tap: str, prefix: str = "p") -> bool:
    return f"{_q(tap)} : jump {chain_name(tap, prefix)}" in text


def _body(text: str, chain: str) -> str:
    return text.split(f"chain {chain} {{", 1)[1].split("}", 1)[0] \
        if f"chain {chain} {{" in text else ""


class ProtectPorts(Step):
    """Put these ports' filters in force, in one nft transaction."""

    __slots__ = ("filters",)

    def __init__(self, filters: tuple[PortFilter, ...]) -> None:
        self.filters = filters

    def ip(self, netns: str | None = None) -> str:
        head = f"ip netns exec {netns} " if netns else ""
        return f"{head}nft -f - <<'EOF'\n" + protect_script(self.filters) + "EOF"

    def run(self, k: Kernel) -> None:
        k.nft_apply(protect_script(self.filters))

    def undo(self) -> Step:
        return UnprotectPorts(tuple(f.tap for f in self.filters))

    def check(self, view: HostView) -> str | None:
        if view.k is None:
            return None
        text = _listed(view.k)
        missing = [f.tap for f in self.filters if text is None or not _mapped(text, f.tap)
                   or f"chain {chain_name(f.tap)} {{" not in text]
        if missing:
            return f"filter missing ({', '.join(missing)})"
        assert text is not None
        for f in self.filters:
            body = _body(text, chain_name(f.tap))
            if f.mac_filter and f"ether saddr != {f.mac} drop" not in body:
                return f"filter of {f.tap} differs"
            if f.from_vm and "limit rate over" not in body:
                return f"rate from {f.tap} missing"
            if f.to_vm and (not _mapped(text, f.tap, "q") or
                            "limit rate over" not in _body(text, chain_name(f.tap, "q"))):
                return f"rate to {f.tap} missing"
        return None


class UnprotectPorts(Step):
    """Remove these ports' filters (only the entries and chains vmnet's names say are
    theirs, re-read now); the table goes with its last port."""

    __slots__ = ("taps",)

    def __init__(self, taps: tuple[str, ...]) -> None:
        self.taps = taps

    def ip(self, netns: str | None = None) -> str:
        head = f"ip netns exec {netns} " if netns else ""
        return f"{head}nft -f - <<'EOF'\n" + "".join(
            f"delete element {FAMILY} {TABLE} {m} {{ {_q(t)} : jump {chain_name(t, p)} }}\n"
            f"delete chain {FAMILY} {TABLE} {chain_name(t, p)}\n"
            for t in self.taps for p, m in (("p", "ports"), ("q", "ports_out"))) + "EOF"

    def run(self, k: Kernel) -> None:
        text = _listed(k)
        if text is None:
            return
        script = []
        for t in self.taps:
            for prefix, table_map in (("p", "ports"), ("q", "ports_out")):
                c = chain_name(t, prefix)
                if _mapped(text, t, prefix):
                    script.append(f"delete element {FAMILY} {TABLE} {table_map} {{ {_q(t)} : "
                                  f"jump {c} }}\n")
                if f"chain {c} {{" in text:
                    script.append(f"delete chain {FAMILY} {TABLE} {c}\n")
        if script:
            k.nft_apply("".join(script))
        left = _listed(k)
        if left is not None and " : jump p_" not in left and " : jump q_" not in left:
            k.nft_apply(f"delete table {FAMILY} {TABLE}\n")

    def check(self, view: HostView) -> str | None:
        if view.k is None:
            return None
        text = _listed(view.k)
        left = [t for t in self.taps if text is not None and _mapped(text, t)]
        return f"filter present ({', '.join(left)})" if left else None


def merge(steps: list[Step]) -> list[Step]:
    """One ProtectPorts (and one UnprotectPorts) for a whole operation, where the first
    of them stood: one nft transaction, whatever the number of NICs."""
    out: list[Step] = []
    protect: list[PortFilter] = []
    unprotect: list[str] = []
    at_p = at_u = None
    for s in steps:
        if isinstance(s, ProtectPorts):
            protect += s.filters
            if at_p is None:
                at_p = len(out)
                out.append(s)
            continue
        if isinstance(s, UnprotectPorts):
            unprotect += s.taps
            if at_u is None:
                at_u = len(out)
                out.append(s)
            continue
        out.append(s)
    if at_p is not None:
        out[at_p] = ProtectPorts(tuple(protect))
    if at_u is not None:
        out[at_u] = UnprotectPorts(tuple(unprotect))
    return out


# -- from a NIC, to its record, back -------------------------------------------------------
def for_nic(vm: Vm, nic: Nic, ip: str | None, subnet: str | None = None
            ) -> PortFilter | None:
    """What the NIC's settings put in force (None: nothing); `ip`: its fixed address on a
    nat/isolated network of `subnet`.  Refuses addresses outside that subnet, and
    ip_filter where no address of the NIC is known."""
    from vmnet.errors import InputError

    if not (nic.mac_filter or nic.ip_filter or nic.guarded or nic.to_vm or nic.from_vm):
        return None
    v4 = tuple(a for a in ((ip,) if ip else ()) + nic.addresses if ":" not in a)
    v6 = tuple(a for a in nic.addresses if ":" in a)
    if subnet is not None:
        from vmnet.kinds import subnets

        first, last = subnets.span(subnet)
        outside = [a for a in v4 if not first < subnets.as_int(a) < last]
        if outside:
            raise InputError(f"VM {vm.name!r} NIC {nic.index}: address {outside[0]} (its "
                             f"addresses) is outside network {nic.network.name!r} ({subnet})",
                             hint="list addresses of the network's subnet, or none (its "
                                  "DHCP address is allowed anyway)")
    if nic.ip_filter and not (v4 or v6):
        raise InputError(f"VM {vm.name!r} NIC {nic.index}: ip_filter, but no address of it is "
                         f"known (network {nic.network.name!r} is a {nic.network.kind} "
                         "network, which hands out none)",
                         hint=f"list its addresses (vms.{vm.name}.nics[{nic.index}].addresses), "
                              "or put it on a nat/isolated network")
    return PortFilter(nic.tap, nic.mac, nic.mac_filter, nic.ip_filter, nic.guarded, v4, v6,
                      nic.to_vm, nic.from_vm)


def record_of(nic: Nic, f: PortFilter | None) -> dict[str, object] | None:
    """The NIC record's `filter` (its rates are the record's `rate`: rates_of)."""
    if f is None:
        return None
    return {"mac": nic.mac_filter, "ip": nic.ip_filter, "guard": nic.guarded,
            "addresses": list(nic.addresses)}


def rates_of(nic: Nic) -> dict[str, list[int]] | None:
    return {k: list(r) for k, r in (("to_vm", nic.to_vm), ("from_vm", nic.from_vm))
            if r} or None


def recorded(n: NicRecord) -> PortFilter | None:
    """The filter a NIC's record says `up` put in force."""
    f = n.filter
    if not f:
        return None
    addrs = [str(a) for a in f.get("addresses") or []]  # type: ignore[attr-defined]
    v4 = tuple(a for a in ([n.ip] if n.ip else []) + addrs if ":" not in a)
    return PortFilter(n.tap, n.mac, bool(f.get("mac")), bool(f.get("ip")),
                      bool(f.get("guard")), v4, tuple(a for a in addrs if ":" in a),
                      n.rate_of("to_vm"), n.rate_of("from_vm"))
