"""Kinds `nat` and `isolated`: a bridge vmnet creates, with a host address, DHCP and DNS
(one dnsmasq), and for `nat` IPv4 masquerade out of the outbound interface.

This module owns their steps (each with its down and check twins) and their
planning: what a network needs when its bridge is made, kept while it is up,
and undone when it goes; and each NIC's fixed address.  What a nat network may
change on the host, and nothing more: IPv4 forwarding on its bridge and its
outbound interface (the per-interface switches, old values recorded and put
back), rules in vmnet's own table `ip vmnet` (vmnet.render.nft), one dnsmasq,
and only when asked (`firewall_fix`), one commented accept per direction in a
foreign chain that would drop its guests' traffic (vmnet.kinds.firewall).
"""

from __future__ import annotations

import os

from vmnet.engine.steps import AddAddress, CreateBridge, SetUp, Step, sysctl_line
from vmnet.errors import ConflictError, NotFoundError, StateError
from vmnet.kernel.base import LinkInfo
from vmnet.kernel.sysctl import forwarding_path
from vmnet.kinds import dnsmasq, subnets
from vmnet.kinds.site import Site
from vmnet.model import L3_KINDS, Network
from vmnet.model.names import sha256
from vmnet.model.value import Value
from vmnet.render import dnsmasq as render_dnsmasq
from vmnet.render import nft as render_nft
from vmnet.render.shell import command
from vmnet.state.files import fname
from vmnet.state.records import BridgeRecord

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from vmnet.config import Config
    from vmnet.engine.observe import HostView
    from vmnet.engine.plan import Claims
    from vmnet.kernel.protocol import Kernel
    from vmnet.model import Nic, Vm


class L3(Value):
    """A nat/isolated network as applied: what its rules and its dnsmasq are made from."""

    __slots__ = ("address", "bridge", "domain", "kind", "outbound")

    def __init__(self, bridge: str, kind: str, address: str, outbound: str | None,
                 domain: str) -> None:
        self.bridge = bridge
        self.kind = kind
        self.address = address
        self.outbound = outbound
        self.domain = domain

    @classmethod
    def of(cls, rec: BridgeRecord) -> L3 | None:
        if rec.kind not in L3_KINDS or rec.address is None:
            return None
        from vmnet.model import DEFAULT_DOMAIN

        return cls(rec.bridge, rec.kind, rec.address, rec.outbound, rec.domain or DEFAULT_DOMAIN)

    @property
    def gateway(self) -> str:
        return self.address.partition("/")[0]

    @property
    def prefixlen(self) -> int:
        return int(self.address.partition("/")[2])

    @property
    def network_address(self) -> str:
        return subnets.as_ip(subnets.span(self.address)[0])

    @property
    def netmask(self) -> str:
        return subnets.as_ip((0xFFFFFFFF << (32 - self.prefixlen)) & 0xFFFFFFFF)

    @property
    def subnet(self) -> str:
        return f"{self.network_address}/{self.prefixlen}"


# -- steps -------------------------------------------------------------------------
class KeepSubnet(Step):
    """Remember the subnet chosen for a network (DATA_DIR/networks/<name>.json)."""

    __slots__ = ("address", "data_dir", "network")

    def __init__(self, data_dir: str, network: str, address: str) -> None:
        self.data_dir = data_dir
        self.network = network
        self.address = address

    def ip(self, netns: str | None = None) -> str:
        return f"# keep {self.address} for network {self.network} in " \
               f"{subnets.path(self.data_dir, self.network)}"

    def run(self, k: Kernel) -> None:
        subnets.keep(self.data_dir, self.network, self.address)

    def undo(self) -> Step:
        return ForgetSubnet(self.data_dir, self.network)

    def check(self, view: HostView) -> str | None:
        return None if subnets.recall(self.data_dir, self.network) == self.address else "missing"


class ForgetSubnet(Step):
    __slots__ = ("data_dir", "network")

    def __init__(self, data_dir: str, network: str) -> None:
        self.data_dir = data_dir
        self.network = network

    def ip(self, netns: str | None = None) -> str:
        return command("rm", "-f", subnets.path(self.data_dir, self.network))

    def run(self, k: Kernel) -> None:
        subnets.forget(self.data_dir, self.network)


class SetSysctl(Step):
    """Set a /proc/sys/net value; the down twin puts `old` back (None: nothing to put back,
    e.g. the switch of a bridge this plan creates, which goes with the bridge)."""

    __slots__ = ("old", "path", "value")

    def __init__(self, path: str, value: str, old: str | None) -> None:
        self.path = path
        self.value = value
        self.old = old

    def ip(self, netns: str | None = None) -> str:
        return sysctl_line(netns, self.path[len("/proc/sys/"):], self.value)

    def run(self, k: Kernel) -> None:
        k.set_sysctl(self.path, self.value)

    def undo(self) -> Step | None:
        return None if self.old is None else RestoreSysctl(self.path, self.old, self.value)

    def check(self, view: HostView) -> str | None:
        if view.k is None:
            return None
        now = view.k.sysctl(self.path)
        return None if now == self.value else ("missing" if now is None else f"is {now}")


class RestoreSysctl(Step):
    """Put a value vmnet changed back, only if it still holds what vmnet set (re-checked at
    the moment of removal: an admin's later change stays)."""

    __slots__ = ("expect", "old", "path")

    def __init__(self, path: str, old: str, expect: str) -> None:
        self.path = path
        self.old = old
        self.expect = expect

    def ip(self, netns: str | None = None) -> str:
        return sysctl_line(netns, self.path[len("/proc/sys/"):], self.old)

    def run(self, k: Kernel) -> None:
        if k.sysctl(self.path) == self.expect:
            k.set_sysctl(self.path, self.old)


class ApplyTable(Step):
    """Replace vmnet's table `ip vmnet` with `script` in one nft transaction."""

    __slots__ = ("bridge", "previous", "script")

    def __init__(self, script: str, previous: str, bridge: str) -> None:
        self.script = script
        self.previous = previous
        self.bridge = bridge  # the network this change is for (its chain: the check)

    def ip(self, netns: str | None = None) -> str:
        head = ("ip", "netns", "exec", netns) if netns else ()
        return command(*head, "nft", "-f", "-") + " <<'EOF'\n" + self.script + "EOF"

    def run(self, k: Kernel) -> None:
        k.nft_apply(self.script)

    def undo(self) -> Step:
        return ApplyTable(self.previous, self.script, self.bridge)

    def check(self, view: HostView) -> str | None:
        if view.k is None:
            return None
        return None if table_has(view.k, self.bridge) else "missing"


def table_has(k: Kernel, bridge: str) -> bool:
    """vmnet's table holds the chain of this bridge's network."""
    try:
        text = k.nft("list", "table", render_nft.FAMILY, render_nft.TABLE)
    except Exception:
        return False
    return f"chain {render_nft.chain_name(bridge)} {{" in text


class StartDnsmasq(Step):
    """Start the network's dnsmasq; `restart`: its host files are the NICs' that are up,
    so the down twin leaves them."""

    __slots__ = ("argv", "bridge", "dir", "gateway", "restart")

    def __init__(self, argv: list[str], directory: str, bridge: str, gateway: str,
                 restart: bool = False) -> None:
        self.argv = argv
        self.dir = directory
        self.bridge = bridge
        self.gateway = gateway
        self.restart = restart

    def ip(self, netns: str | None = None) -> str:
        head = ("ip", "netns", "exec", netns) if netns else ()
        paths = render_dnsmasq.Paths(self.dir)
        return (command("mkdir", "-p", "-m", "755", paths.hosts, paths.names) + "\n" +
                command(*head, *self.argv))

    def run(self, k: Kernel) -> None:
        dnsmasq.start(self.argv, render_dnsmasq.Paths(self.dir), self.bridge, self.gateway)

    def undo(self) -> Step:
        return StopDnsmasq(self.dir, keep_files=self.restart)

    def check(self, view: HostView) -> str | None:
        return None if dnsmasq.running(render_dnsmasq.Paths(self.dir)) else "dnsmasq not running"


class StopDnsmasq(Step):
    """Stop the network's dnsmasq (only the one its pid file and /proc agree on) and remove
    its files (`keep_files`: a restart, the NICs' host files stay)."""

    __slots__ = ("dir", "keep_files")

    def __init__(self, directory: str, keep_files: bool = False) -> None:
        self.dir = directory
        self.keep_files = keep_files

    def ip(self, netns: str | None = None) -> str:
        pid = f"kill $(cat {command(self.dir + '/pid')})"
        return pid if self.keep_files else f"{pid}; rm -r {command(self.dir)}"

    def run(self, k: Kernel) -> None:
        dnsmasq.stop(render_dnsmasq.Paths(self.dir), remove=not self.keep_files)

    def check(self, view: HostView) -> str | None:
        return "running" if dnsmasq.running(render_dnsmasq.Paths(self.dir)) else None


def _host_key(tap: str) -> str:
    return fname(tap)[: -len(".json")]


class PutHost(Step):
    """One NIC's static lease and DNS name, as files dnsmasq reads by inotify."""

    __slots__ = ("dhcp", "dir", "names", "tap")

    def __init__(self, directory: str, tap: str, dhcp: str, names: str | None) -> None:
        self.dir = directory
        self.tap = tap
        self.dhcp = dhcp
        self.names = names

    def _files(self) -> list[tuple[str, str | None]]:
        key = _host_key(self.tap)
        return [(f"{self.dir}/hosts/{key}", self.dhcp), (f"{self.dir}/names/{key}", self.names)]

    def ip(self, netns: str | None = None) -> str:
        return "\n".join(f"echo {command(text.strip())} > {command(p)}"
                         for p, text in self._files() if text is not None)

    def run(self, k: Kernel) -> None:
        from vmnet.state.files import write_file

        for p, text in self._files():
            if text is None:
                dnsmasq.unlink_quietly(p)
                continue
            try:
                os.makedirs(os.path.dirname(p), mode=0o755, exist_ok=True)
            except OSError as e:
                raise StateError(f"cannot create {os.path.dirname(p)}: {e.strerror}",
                                 errno=e.errno) from None
            # dnsmasq sees one complete file: written whole beside the directory it watches
            # (a temp file in it would be read too), then moved in (inotify's IN_MOVED_TO)
            tmp = os.path.join(self.dir, "." + os.path.basename(os.path.dirname(p)) + "-" +
                               os.path.basename(p))
            write_file(tmp, text.encode(), mode=0o644)
            try:
                os.replace(tmp, p)
            except OSError as e:
                dnsmasq.unlink_quietly(tmp)
                raise StateError(f"cannot write {p}: {e.strerror}", errno=e.errno) from None

    def undo(self) -> Step:
        return DropHost(self.dir, self.tap)  # (a rollback: no lease was handed out yet)

    def check(self, view: HostView) -> str | None:
        for p, text in self._files():
            try:
                with open(p) as f:
                    if text is not None and f.read() != text:
                        return "differs"
            except OSError:
                if text is not None:
                    return "missing"
        return None


class DropHost(Step):
    """A NIC's static lease and name gone: its files, then dnsmasq told (SIGHUP: it keeps a
    deleted file's hosts otherwise), and its lease released (a DHCPRELEASE: a new NIC
    given the address would get none while the old lease lasts)."""

    __slots__ = ("bridge", "dir", "gateway", "ip_", "mac", "tap")

    def __init__(self, directory: str, tap: str, bridge: str = "", mac: str = "",
                 ip: str = "", gateway: str = "") -> None:
        self.dir = directory
        self.tap = tap
        self.bridge = bridge
        self.mac = mac
        self.ip_ = ip
        self.gateway = gateway

    def ip(self, netns: str | None = None) -> str:
        key = _host_key(self.tap)
        head = ("ip", "netns", "exec", netns) if netns else ()
        out = command("rm", "-f", f"{self.dir}/hosts/{key}", f"{self.dir}/names/{key}") + \
            f"\nkill -HUP $(cat {command(self.dir + '/pid')})"
        if self.mac and self.ip_:
            out += "\n" + command(*head, "dhcp_release", self.bridge, self.ip_, self.mac)
        return out

    def run(self, k: Kernel) -> None:
        key = _host_key(self.tap)
        paths = render_dnsmasq.Paths(self.dir)
        if self.mac and self.ip_ and self.gateway:
            dnsmasq.release(paths, self.bridge, self.gateway, self.ip_, self.mac)
        dnsmasq.unlink_quietly(f"{self.dir}/hosts/{key}")
        dnsmasq.unlink_quietly(f"{self.dir}/names/{key}")
        dnsmasq.reload(paths)


# -- planning ------------------------------------------------------------------
def default_outbound(view: HostView) -> str | None:
    """The interface of the main table's IPv4 default route (lowest metric), if any."""
    if view.k is None:
        return None
    best = None
    for r in view.k.routes():
        if r.family == 2 and r.dst is None and r.table == 254 and r.type == 1 and r.oifs \
                and (best is None or r.priority < best.priority):
            best = r
    if best is None:
        return None
    link = view.by_index(best.oifs[0])
    return None if link is None else link.name


def taken_spans(view: HostView, bridge: str, others: Iterable[BridgeRecord]
                ) -> list[tuple[str, tuple[int, int]]]:
    """What a nat/isolated subnet must not overlap: every IPv4 route (all tables) and
    address of the namespace, but those on its own bridge, and the other networks'."""
    out: list[tuple[str, tuple[int, int]]] = []
    if view.k is not None:
        own = view.link(bridge)
        own_index = own.index if own is not None else None
        for r in view.k.routes():
            if r.family != 2 or r.dst is None or r.type not in (1, 2, 3) or \
                    own_index in r.oifs or r.table == 255:
                continue
            via = view.by_index(r.oifs[0]) if r.oifs else None
            table = "" if r.table == 254 else f" table {r.table}"
            out.append((f"route {r.dst}/{r.dst_len}{table}"
                        f"{' dev ' + via.name if via else ''}",
                        subnets.span(f"{r.dst}/{r.dst_len}")))
        for a in view.k.addresses():
            if a.family != 2 or (own_index is not None and a.index == own_index):
                continue
            dev = view.by_index(a.index)
            cidr = f"{a.address}/{a.prefixlen}"
            out.append((f"address {cidr}{' on ' + dev.name if dev else ''}",
                        subnets.span(cidr)))
    for rec in others:
        if rec.bridge != bridge and rec.kind in L3_KINDS and rec.address:
            out.append((f"network {rec.network!r} ({rec.address})", subnets.span(rec.address)))
    return out


def guarded(records: Iterable[BridgeRecord]) -> set[str]:
    """Outbound interfaces whose forwarding vmnet switched on (its table guards them)."""
    out = set()
    for rec in records:
        for p in rec.sysctls:
            parts = p.split("/")
            if p.endswith("/forwarding") and len(parts) > 2:
                out.add(parts[-2])
    return out


def render_table(records: Iterable[BridgeRecord]) -> str:
    recs = [r for r in records if r.kind in L3_KINDS]
    return render_nft.table([n for r in recs if (n := L3.of(r)) is not None], guarded(recs))


def dnsmasq_argv(net: Network, l3: L3, site: Site) -> list[str]:
    upstream: tuple[str, ...] = ()
    if net.kind == "nat":
        upstream = net.upstream if net.upstream is not None else host_resolvers()
    user, group = dnsmasq.user_group()
    return render_dnsmasq.argv(dnsmasq.binary(), l3, site.paths(net.bridge), user=user,
                               group=group, upstream=upstream, mtu=net.mtu)


def host_resolvers(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The host's IPv4 name servers, for dnsmasq to forward to (dnsmasq itself reads no
    host file)."""
    from vmnet.errors import InputError
    from vmnet.model import validate as v

    out = []
    try:
        with open(path) as f:
            for line in f:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    try:
                        out.append(v.ipv4(words[1], "nameserver"))
                    except InputError:
                        continue  # IPv6 servers: dnsmasq here listens on IPv4 only
    except OSError:
        pass
    return tuple(out)


def plan_network(net: Network, br: LinkInfo | None, rec: BridgeRecord | None,
                 view: HostView, all_records: Callable[[], dict[str, BridgeRecord]],
                 site: Site,
                 steps: list[Step], notes: list[str], *, repair: bool = False) -> BridgeRecord:
    """Steps that bring up (or keep up) nat/isolated network `net`; its new record.

    For a network that is up: its dnsmasq restarted if it died; with `repair`
    (`vmnet network reload`) also its table re-applied if it is gone (an nft run:
    too dear for every VM's `up`)."""
    from vmnet.engine.ownership import is_our_bridge
    from vmnet.model import DEFAULT_DOMAIN

    if br is not None and br.index < 0 and rec is not None and rec.kind == net.kind:
        return rec  # made by this same plan (an earlier VM of a bulk `up`)
    if br is not None:
        if rec is None or rec.kind != net.kind or not rec.created or not is_our_bridge(br) \
                or rec.address is None:
            raise ConflictError(f"bridge {net.bridge!r} exists, but not as the {net.kind} "
                                f"network {net.name!r} vmnet made", ifname=net.bridge,
                                hint="a nat/isolated network needs a bridge vmnet creates: "
                                     "give the network another bridge name, or remove this "
                                     "one")
        if net.address is not None and net.address != rec.address:
            raise ConflictError(f"network {net.name!r} is up with {rec.address}, not "
                                f"{net.address}", ifname=net.bridge,
                                hint="`vmnet down` its VMs first, then up with the new address")
        l3 = L3.of(rec)
        assert l3 is not None
        paths = site.paths(net.bridge)
        if dnsmasq.running(paths) is None:  # it died: the next `up` restarts it
            notes.append(f"network {net.name}: dnsmasq was not running; restarted")
            steps.append(StartDnsmasq(dnsmasq_argv(net, l3, site), paths.dir, net.bridge,
                                      l3.gateway, restart=True))
        if repair and view.k is not None and not table_has(view.k, net.bridge):
            notes.append(f"network {net.name}: its rules in table {render_nft.FAMILY} "
                         f"{render_nft.TABLE} were gone; applied again")
            every = all_records().values()
            steps.append(ApplyTable(render_table(every), render_table(every), net.bridge))
        if repair:  # firewall_fix set since the network came up
            fixes = _firewall(net, l3, view, site, steps, notes, rec.fixes)
            if fixes != rec.fixes:
                return rec.with_(fixes=fixes)
        return rec
    from vmnet.kernel import nft

    nft.binary()  # both programs are there, or one line naming the package, before anything
    dnsmasq.binary()
    others = [r for b, r in all_records().items() if b != net.bridge]  # (reads them all)
    address = net.address or (rec.address if rec is not None else None) or \
        subnets.recall(site.data_dir, net.name)
    taken = taken_spans(view, net.bridge, others)
    if address is None:
        address = subnets.choose(taken)
        steps.append(KeepSubnet(site.data_dir, net.name, address))
    else:
        mine = subnets.span(address)
        for what, s in taken:
            if subnets.overlaps(mine, s):
                l3 = L3(net.bridge, net.kind, address, None, "")
                raise ConflictError(f"network {net.name!r}: subnet {l3.subnet} collides with "
                                    f"{what}", ifname=net.bridge,
                                    hint="give the network another address in the config "
                                         "file (networks.NAME.address)")
    outbound = None
    # A network whose bridge went behind vmnet's back (the watcher's re-creation, `up`
    # again): what it changed before is still its to put back.
    sysctls: dict[str, str] = dict(rec.sysctls) if rec is not None else {}
    if net.kind == "nat":
        outbound = net.outbound or default_outbound(view)
        if net.outbound is not None and view.link(net.outbound) is None:
            raise NotFoundError(f"network {net.name!r}: outbound interface {net.outbound!r} "
                                "does not exist", ifname=net.outbound,
                                hint="check the name with `ip link`, or leave outbound unset "
                                     "for the default route's")
        if outbound is None:
            notes.append(f"network {net.name}: no IPv4 default route, so no way out yet "
                         "(guests get addresses and DNS); `vmnet up` again once there is one")
    l3 = L3(net.bridge, net.kind, address, outbound, net.domain or DEFAULT_DOMAIN)
    new = BridgeRecord(bridge=net.bridge, network=net.name, created=True, address=address,
                       kind=net.kind, outbound=outbound, domain=net.domain)
    steps.append(CreateBridge(net.bridge, net.bridge_mac, net.mtu, net.stp, net.forward_delay,
                              net.mark))
    steps.append(AddAddress(net.bridge, address))
    steps.append(SetUp(net.bridge))
    if net.kind == "nat":
        steps.append(SetSysctl(forwarding_path(net.bridge), "1", None))
        if outbound is not None and view.k is not None:
            path = forwarding_path(outbound)
            old = view.k.sysctl(path)
            if old is not None and old != "1":
                steps.append(SetSysctl(path, "1", sysctls.get(path, old)))
                sysctls.setdefault(path, old)
        # a switch of an outbound no longer used goes back, unless another network still
        # goes out there (then it stays ours to hand over when this network goes)
        still = {forwarding_path(r.outbound) for r in others if r.outbound} | (
            {forwarding_path(outbound)} if outbound is not None else set())
        for p, v in list(sysctls.items()):
            if p not in still:
                steps.append(RestoreSysctl(p, v, "1"))
                del sysctls[p]
    new.sysctls = sysctls
    steps.append(ApplyTable(render_table([*others, new]), render_table(others), net.bridge))
    paths = site.paths(net.bridge)
    restart = rec is not None  # a bridge deleted under the network: its NICs' files stay
    if dnsmasq.running(paths) is not None:  # (and its old dnsmasq, bound to nothing, goes)
        steps.append(StopDnsmasq(paths.dir, keep_files=True))
    steps.append(StartDnsmasq(dnsmasq_argv(net, l3, site), paths.dir, net.bridge, l3.gateway,
                              restart=restart))
    view.planned(LinkInfo(0, net.bridge, "bridge", net.bridge_mac, net.mtu or 1500, True,
                          False, None, net.mark))
    new.fixes = _firewall(net, l3, view, site, steps, notes,
                          list(rec.fixes) if rec is not None else [])
    return new


def _firewall(net: Network, l3: L3, view: HostView, site: Site, steps: list[Step],
              notes: list[str], fixes: list[dict[str, object]]) -> list[dict[str, object]]:
    """Report the foreign chains that drop the network's traffic; with firewall_fix,
    add the steps that insert vmnet's accepts.  The fixes the record then holds."""
    from vmnet.kinds import firewall

    out = list(fixes)
    for f in firewall.findings(view, l3):
        if net.name in site.fix and f.chain is not None:
            steps.extend(firewall.fix_steps(f, l3))
            out.append(f.record())
            notes.append(f"network {net.name}: {f.text}; inserted vmnet's accept rules "
                         f"(firewall_fix)")
        else:
            notes.append(f"network {net.name}: {f.text}" +
                         ("" if f.chain is None else
                          f" (set networks.{net.name}.firewall_fix = true to insert a "
                          "commented accept for this bridge there)"))
    return out


def plan_release(brec: BridgeRecord, remaining: dict[str, BridgeRecord], site: Site,
                 steps: list[Step]) -> list[BridgeRecord]:
    """Steps that undo what network `brec` added to the host (before its bridge goes).

    A forwarding switch another remaining nat network still needs (same outbound) is
    handed over to that network's record instead of being put back; the changed
    records are returned."""
    from vmnet.kinds import firewall

    steps.append(StopDnsmasq(site.paths(brec.bridge).dir))
    for fix in brec.fixes:
        steps.append(firewall.unfix_step(fix, brec.bridge))
    heirs: dict[str, BridgeRecord] = {}
    for path, old in brec.sysctls.items():
        out = path.split("/")[-2]
        heir = next((r for r in remaining.values() if r.outbound == out and
                     r.kind == "nat"), None)
        if heir is not None:
            heir = heirs.get(heir.bridge, heir).with_(sysctls={**heir.sysctls, path: old})
            heirs[heir.bridge] = heir
            remaining[heir.bridge] = heir
        else:
            steps.append(RestoreSysctl(path, old, "1"))
    return list(heirs.values())


def release_table(before: Iterable[BridgeRecord], after: Iterable[BridgeRecord],
                  bridge: str) -> Step:
    return ApplyTable(render_table(after), render_table(before), bridge)


# -- NICs ------------------------------------------------------------------------
def dns_name(vm: str, index: int) -> str | None:
    """The name a NIC's address gets in its network's DNS: the VM's name for NIC 0,
    `<vm>-<index>` for the others; None when that is no DNS label."""
    name = (vm if index == 0 else f"{vm}-{index}").lower()
    ok = 0 < len(name) <= 63 and name.isascii() and all(c.isalnum() or c == "-" for c in name) \
        and not name.startswith("-") and not name.endswith("-")
    return name if ok else None


def nic_address(vm: Vm, nic: Nic, rec: BridgeRecord, claims: Claims, taken: set[str]) -> str:
    """The NIC's address: the fixed one it names, else one derived from its MAC (the first
    free one from a hash of it), never the gateway, the network's or broadcast."""
    l3 = L3.of(rec)
    assert l3 is not None
    first, last = subnets.span(l3.address)
    gateway = subnets.as_int(l3.gateway)
    if nic.ip is not None:
        n = subnets.as_int(nic.ip)
        if not first < n < last or n == gateway:
            raise ConflictError(f"VM {vm.name!r} NIC {nic.index}: address {nic.ip} is not a "
                                f"guest address of network {rec.network!r} ({l3.subnet}, "
                                f"host {l3.gateway})", hint="give an address inside the subnet")
        other = claims.ip_owner(rec.bridge, nic.ip)
        if (other is not None and other != vm.name) or nic.ip in taken:
            raise ConflictError(f"VM {vm.name!r} NIC {nic.index}: address {nic.ip} is already "
                                f"VM {other or 'another NIC'}'s on network {rec.network!r}",
                                hint="give another address")
        return nic.ip
    hosts = last - first - 1
    start = int.from_bytes(sha256(nic.mac.encode()).digest()[:4], "big") % hosts
    for i in range(hosts):
        n = first + 1 + (start + i) % hosts
        if n == gateway:
            continue
        ip = subnets.as_ip(n)
        if ip in taken:
            continue
        other = claims.ip_owner(rec.bridge, ip)
        if other is None or other == vm.name:
            return ip
    raise ConflictError(f"network {rec.network!r} ({l3.subnet}) has no free address left "
                        f"for VM {vm.name!r}", hint="give the network a larger subnet")


def host_step(site: Site, bridge: str, vm: str, index: int, tap: str, mac: str,
              ip: str) -> PutHost:
    dhcp, names = render_dnsmasq.host_lines(mac, ip, dns_name(vm, index))
    return PutHost(site.paths(bridge).dir, tap, dhcp, names)


def drop_host_step(site: Site, bridge: str, tap: str, mac: str = "", ip: str = "",
                   rec: BridgeRecord | None = None) -> DropHost:
    l3 = None if rec is None else L3.of(rec)
    return DropHost(site.paths(bridge).dir, tap, bridge, mac, ip,
                    "" if l3 is None else l3.gateway)



def network_of(rec: BridgeRecord, cfg: Config) -> Network:
    """The network a record is of: the config's, or (gone from the config) the record's."""
    net = cfg.networks.get(rec.network)
    if net is not None and net.bridge == rec.bridge and net.kind == rec.kind:
        return net
    return Network(name=rec.network, bridge=rec.bridge, kind=rec.kind, address=rec.address,
                   outbound=rec.outbound, domain=rec.domain)


# -- status ------------------------------------------------------------------------
def network_checks(rec: BridgeRecord, site: Site) -> list[Step]:
    """The steps whose check twins say whether network `rec` holds (status's loop)."""
    l3 = L3.of(rec)
    if l3 is None:
        return []
    paths = site.paths(rec.bridge)
    out: list[Step] = [StartDnsmasq([], paths.dir, rec.bridge, l3.gateway),
                       ApplyTable("", "", rec.bridge)]
    if rec.kind == "nat":
        out.append(SetSysctl(forwarding_path(rec.bridge), "1", None))
        out += [SetSysctl(p, "1", old) for p, old in sorted(rec.sysctls.items())]
    return out


def network_state(rec: BridgeRecord, view: HostView, site: Site) -> dict[str, object]:
    """What status shows of a nat/isolated network: its problems (failing checks, as
    `what: problem`), its dnsmasq, and foreign chains that drop its traffic."""
    problems = []
    for step in network_checks(rec, site):
        why = step.check(view)
        if why is not None:
            what = {StartDnsmasq: "dnsmasq", ApplyTable: f"nft table {render_nft.TABLE}"}.get(
                type(step)) or (step.path if isinstance(step, SetSysctl) else "?")
            problems.append(f"{what}: {why}")
    l3 = L3.of(rec)
    from vmnet.kinds import firewall

    found = [] if l3 is None else firewall.findings(view, l3)
    fixed = {(f.get("family"), f.get("table"), f.get("chain")) for f in rec.fixes}
    return {"subnet": None if l3 is None else l3.subnet, "outbound": rec.outbound,
            "dnsmasq_pid": dnsmasq.running(site.paths(rec.bridge)),
            "problems": problems,
            "firewall": [f.text for f in found if (f.family, f.table, f.chain) not in fixed],
            "firewall_fixes": [f"{f.get('family')} {f.get('table')} {f.get('chain')}"
                               for f in rec.fixes]}


def leases(site: Site, bridges: Iterable[str]) -> dict[str, dict[str, str]]:
    return {b: dnsmasq.leases(site.paths(b)) for b in bridges}
