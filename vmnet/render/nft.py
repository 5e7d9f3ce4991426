"""The nftables ruleset of vmnet's nat and isolated networks: one table, `ip vmnet`,
with one chain set per network, rendered whole from the networks that are up.

Applying it replaces the table in one transaction (`nft -f -`: declare, delete,
declare again), so removing a network removes exactly its chains and every
other table of the host is left as it is.  What the table does:

- each network's `fwd_<bridge>` chain: guests to guests on the bridge (bridged
  frames reach this hook when br_netfilter is on), a nat network's guests out
  of its outbound interface, replies back in; anything else in or out of the
  bridge is dropped (an isolated network forwards nothing);
- `postrouting`: a nat network's subnet masqueraded out of its outbound interface;
- the guard: where vmnet switched forwarding on for an outbound interface,
  traffic forwarded in from it is dropped unless it is a reply (or was
  accepted by a network's chain above, being headed to a vmnet network).
"""

from __future__ import annotations

from vmnet.model.names import sha256

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Iterable

    from vmnet.kinds.l3 import L3

TABLE = "vmnet"
FAMILY = "ip"
_IDENT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def chain_name(bridge: str) -> str:
    """`fwd_<bridge>`, or `fwd_h<hash>` when the bridge name is not an nft identifier."""
    if all(c in _IDENT for c in bridge):
        return f"fwd_{bridge}"
    return f"fwd_h{sha256(bridge.encode()).hexdigest()[:10]}"


def _q(ifname: str) -> str:
    return f'"{ifname}"'  # names of nat/isolated networks are [A-Za-z0-9_.-] (the model)


def table(nets: Iterable[L3], guarded: Iterable[str] = ()) -> str:
    """The script that makes `ip vmnet` hold exactly `nets` (none: removes it)."""
    nets = sorted(nets, key=lambda n: n.bridge)
    head = f"table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n"
    if not nets:
        return head
    lines = [f"table {FAMILY} {TABLE} {{"]
    for n in nets:
        br = _q(n.bridge)
        lines.append(f"\tchain {chain_name(n.bridge)} {{")
        lines.append(f"\t\tiifname {br} oifname {br} accept")
        if n.kind == "nat" and n.outbound:
            out = _q(n.outbound)
            lines.append(f"\t\tiifname {br} ip saddr {n.subnet} oifname {out} accept")
            lines.append(f"\t\tiifname {out} oifname {br} ip daddr {n.subnet} "
                         "ct state established,related accept")
        lines.append(f"\t\tiifname {br} drop")
        lines.append(f"\t\toifname {br} drop")
        lines.append("\t}")
    lines.append("\tchain forward {")
    lines.append("\t\ttype filter hook forward priority filter; policy accept;")
    for n in nets:
        lines.append(f"\t\tiifname {_q(n.bridge)} jump {chain_name(n.bridge)}")
        lines.append(f"\t\toifname {_q(n.bridge)} jump {chain_name(n.bridge)}")
    for out in sorted(set(guarded)):
        lines.append(f"\t\tiifname {_q(out)} ct state established,related accept")
        lines.append(f"\t\tiifname {_q(out)} drop")
    lines.append("\t}")
    masq = [n for n in nets if n.kind == "nat" and n.outbound]
    if masq:
        lines.append("\tchain postrouting {")
        lines.append("\t\ttype nat hook postrouting priority srcnat; policy accept;")
        for n in masq:
            lines.append(f"\t\tip saddr {n.subnet} ip daddr != {n.subnet} "
                         f"oifname {_q(n.outbound or '')} masquerade")
        lines.append("\t}")
    lines.append("}")
    return head + "\n".join(lines) + "\n"
