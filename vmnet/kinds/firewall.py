"""Other firewalls on the host that would still drop a nat/isolated network's traffic.

nftables runs every base chain of a hook, and a packet passes only if every
one of them accepts it: vmnet's own accept rules are not enough beside
Docker's FORWARD (policy drop), a strict input chain, or br_netfilter (which
sends frames bridged between two guests through the IP forward hook too).
vmnet reports what it finds, naming the table and chain; with the network's
`firewall_fix = true` it inserts commented accepts for its bridge alone into
the dropping chain (Docker's DOCKER-USER where it exists, which Docker keeps
first in FORWARD) and removes exactly those rules, found by their comment,
when the network goes.
"""

from __future__ import annotations

from vmnet.engine.steps import Step
from vmnet.model.value import Value
from vmnet.render import nft as render_nft

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from vmnet.engine.observe import HostView
    from vmnet.kernel.protocol import Kernel
    from vmnet.kinds.l3 import L3

BR_NF = "/proc/sys/net/bridge/bridge-nf-call-iptables"


def comment(bridge: str) -> str:
    return f"vmnet:{bridge}"


class Finding(Value):
    """A foreign chain that drops the network's traffic (chain None: nothing to fix)."""

    __slots__ = ("chain", "family", "hook", "table", "text")

    def __init__(self, text: str, family: str, table: str, chain: str | None,
                 hook: str) -> None:
        self.text = text
        self.family = family
        self.table = table
        self.chain = chain  # where the fix goes
        self.hook = hook

    def record(self) -> dict[str, object]:
        return {"family": self.family, "table": self.table, "chain": self.chain or "",
                "hook": self.hook}


def _objects(ruleset: dict[str, object], kind: str) -> list[dict[str, object]]:
    items = ruleset.get("nftables")
    if not isinstance(items, list):
        return []
    return [o[kind] for o in items if isinstance(o, dict) and isinstance(o.get(kind), dict)]


def _accepts_bridge(rules: list[dict[str, object]], family: str, table: str, chain: str,
                    bridge: str) -> bool:
    import json

    for r in rules:
        if (r.get("family"), r.get("table"), r.get("chain")) != (family, table, chain):
            continue
        text = json.dumps(r.get("expr"))
        if f'"{bridge}"' in text and '"accept"' in text:
            return True
    return False


def scan(ruleset: dict[str, object], l3: L3, br_netfilter: bool) -> list[Finding]:
    """What in `ruleset` (nft's JSON) drops this network's traffic."""
    chains = _objects(ruleset, "chain")
    rules = _objects(ruleset, "rule")
    names = {(c.get("family"), c.get("table"), c.get("name")) for c in chains}
    out = []
    for c in chains:
        family, table, name = str(c.get("family")), str(c.get("table")), str(c.get("name"))
        if (family, table) == (render_nft.FAMILY, render_nft.TABLE) or \
                c.get("policy") != "drop" or family not in ("ip", "inet"):
            continue
        hook = c.get("hook")
        where = f"table {family} {table} chain {name}"
        if hook == "forward":
            if l3.kind == "isolated" and not br_netfilter:
                continue  # an isolated network forwards nothing through IP
            target = "DOCKER-USER" if (family, table, "DOCKER-USER") in names else name
            if _accepts_bridge(rules, family, table, target, l3.bridge):
                continue
            why = "its guests' traffic to the outside" if l3.kind == "nat" else ""
            if br_netfilter:
                why = (why + " and " if why else "") + \
                    "guest-to-guest frames on the bridge (br_netfilter is on: " \
                    "net.bridge.bridge-nf-call-iptables = 1)"
            out.append(Finding(f"{where} drops forwarded traffic by default (policy drop), "
                               f"so {why} through {l3.bridge} is dropped there",
                               family, table, target, "forward"))
        elif hook == "input":
            if _accepts_bridge(rules, family, table, name, l3.bridge):
                continue
            out.append(Finding(f"{where} drops input by default (policy drop), so its "
                               f"guests' DHCP and DNS on {l3.bridge} are dropped there",
                               family, table, name, "input"))
    return out


def findings(view: HostView, l3: L3) -> list[Finding]:
    """scan() of the namespace's ruleset (nothing when nft cannot list it)."""
    if view.k is None:
        return []
    from vmnet.errors import VmnetError

    try:
        ruleset = view.k.nft_ruleset()
    except VmnetError:
        return []
    return scan(ruleset, l3, view.k.sysctl(BR_NF) == "1")


def fix_rules(hook: str, bridge: str) -> list[str]:
    c = f'comment "{comment(bridge)}"'
    if hook == "input":
        return [f'iifname "{bridge}" udp dport {{ 53, 67 }} accept {c}',
                f'iifname "{bridge}" tcp dport 53 accept {c}']
    return [f'iifname "{bridge}" accept {c}', f'oifname "{bridge}" accept {c}']


class InsertFix(Step):
    __slots__ = ("bridge", "chain", "family", "hook", "table")

    def __init__(self, family: str, table: str, chain: str, hook: str, bridge: str) -> None:
        self.family = family
        self.table = table
        self.chain = chain
        self.hook = hook
        self.bridge = bridge

    def script(self) -> str:
        return "".join(f"insert rule {self.family} {self.table} {self.chain} {r}\n"
                       for r in fix_rules(self.hook, self.bridge))

    def ip(self, netns: str | None = None) -> str:
        return "nft -f - <<'EOF'\n" + self.script() + "EOF"

    def run(self, k: Kernel) -> None:
        k.nft_apply(self.script())

    def undo(self) -> Step:
        return RemoveFix(self.family, self.table, self.chain, self.bridge)

    def check(self, view: HostView) -> str | None:
        if view.k is None:
            return None
        return None if _handles(view.k, self.family, self.table, self.chain,
                                self.bridge) else "missing"


def _handles(k: Kernel, family: str, table: str, chain: str, bridge: str) -> list[int]:
    """Handles of the rules in that chain that carry this bridge's vmnet comment."""
    from vmnet.errors import VmnetError

    try:
        text = k.nft("-a", "list", "chain", family, table, chain)
    except VmnetError:
        return []
    mark = f'comment "{comment(bridge)}"'
    out = []
    for line in text.splitlines():
        if mark in line and "# handle " in line:
            tail = line.rpartition("# handle ")[2].strip()
            if tail.isdigit():
                out.append(int(tail))
    return out


class RemoveFix(Step):
    """Delete the rules vmnet inserted for this bridge, found by their comment now (a rule
    without vmnet's comment is never touched)."""

    __slots__ = ("bridge", "chain", "family", "table")

    def __init__(self, family: str, table: str, chain: str, bridge: str) -> None:
        self.family = family
        self.table = table
        self.chain = chain
        self.bridge = bridge

    def ip(self, netns: str | None = None) -> str:
        return (f"nft -a list chain {self.family} {self.table} {self.chain}  # then delete "
                f"rule ... handle N for each rule with comment \"{comment(self.bridge)}\"")

    def run(self, k: Kernel) -> None:
        handles = _handles(k, self.family, self.table, self.chain, self.bridge)
        if handles:
            k.nft_apply("".join(f"delete rule {self.family} {self.table} {self.chain} "
                                f"handle {h}\n" for h in handles))

    def check(self, view: HostView) -> str | None:
        if view.k is None:
            return None
        return "present" if _handles(view.k, self.family, self.table, self.chain,
                                     self.bridge) else None


def fix_steps(f: Finding, l3: L3) -> list[Step]:
    assert f.chain is not None
    return [InsertFix(f.family, f.table, f.chain, f.hook, l3.bridge)]


def unfix_step(fix: dict[str, object], bridge: str) -> Step:
    return RemoveFix(str(fix["family"]), str(fix["table"]), str(fix["chain"]), bridge)
