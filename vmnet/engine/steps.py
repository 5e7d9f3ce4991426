"""Plan steps: each one kernel change with its `ip` equivalent, its down twin and its
check twin.

- `ip(netns)`: the commands that, replayed by hand, do what the step does
  (`ip -n NS ...` when vmnet works in a named namespace).
- `run(kernel)`: the change itself (only vmnet.engine.apply calls it).
- `undo()`: the step that reverses it (None: nothing to reverse).
- `check(view)`: does the host hold what this step made?  None if it does,
  else one word for what is not so (`missing`, `foreign`, `detached`, `down`).
  `vmnet status` is a loop over the checks of the steps `up` would have taken.
"""

from __future__ import annotations

from vmnet.model.value import Value
from vmnet.render.shell import command

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from vmnet.engine.observe import HostView
    from vmnet.kernel.base import TapSpec
    from vmnet.kernel.protocol import Kernel


def _ip(netns: str | None, *words: str) -> str:
    return command("ip", *(("-n", netns) if netns else ()), *words)


def sysctl_line(netns: str | None, key: str, value: str) -> str:
    """A sysctl assignment in slash form, so an interface name with dots stays one
    component (`net.ipv6.conf.a.b.disable_ipv6` would read `a` and `b` as two levels)."""
    head = ("ip", "netns", "exec", netns) if netns else ()
    return command(*head, "sysctl", "-qw", f"{key}={value}")


class Step(Value):
    __slots__ = ()

    def ip(self, netns: str | None = None) -> str:
        raise NotImplementedError

    def run(self, k: Kernel) -> None:
        raise NotImplementedError

    def undo(self) -> Step | None:
        """The step that reverses this one (None: nothing to reverse)."""
        return None

    def check(self, view: HostView) -> str | None:
        """None if the host holds what this step made; else what is not so."""
        return None


class CreateBridge(Step):
    __slots__ = ("alias", "forward_delay", "mac", "mtu", "name", "stp", "vlan_filtering")

    def __init__(self, name: str, mac: str, mtu: int | None, stp: bool, forward_delay: int,
                 alias: str, vlan_filtering: bool = False) -> None:
        self.vlan_filtering = vlan_filtering
        self.name = name
        self.mac = mac
        self.mtu = mtu
        self.stp = stp
        self.forward_delay = forward_delay
        self.alias = alias

    def ip(self, netns: str | None = None) -> str:
        mtu = ["mtu", str(self.mtu)] if self.mtu else []
        return (_ip(netns, "link", "add", self.name, "address", self.mac, *mtu, "type",
                    "bridge", "stp_state", str(int(self.stp)), "forward_delay",
                    str(self.forward_delay * 100),
                    *(["vlan_filtering", "1"] if self.vlan_filtering else []))
                + "\n" + _ip(netns, "link", "set", self.name, "alias", self.alias))

    def run(self, k: Kernel) -> None:
        k.create_bridge(self.name, mac=self.mac, mtu=self.mtu, stp=self.stp,
                        forward_delay=self.forward_delay, alias=self.alias,
                        vlan_filtering=self.vlan_filtering)

    def undo(self) -> Step:
        return DeleteLinks((self.name,))

    def check(self, view: HostView) -> str | None:
        from vmnet.engine.ownership import is_our_bridge

        br = view.link(self.name)
        if br is None:
            return "missing"
        return None if is_our_bridge(br) else "foreign"


class AddAddress(Step):
    __slots__ = ("cidr", "ifname")

    def __init__(self, ifname: str, cidr: str) -> None:
        self.ifname = ifname
        self.cidr = cidr

    def ip(self, netns: str | None = None) -> str:
        return _ip(netns, "address", "add", self.cidr, "dev", self.ifname)

    def run(self, k: Kernel) -> None:
        k.add_address(self.ifname, self.cidr)

    def undo(self) -> Step:
        return DelAddress(self.ifname, self.cidr)

    def check(self, view: HostView) -> str | None:
        return None if self.cidr in view.addresses(self.ifname) else "missing"


class DelAddress(Step):
    __slots__ = ("cidr", "ifname")

    def __init__(self, ifname: str, cidr: str) -> None:
        self.ifname = ifname
        self.cidr = cidr

    def ip(self, netns: str | None = None) -> str:
        return _ip(netns, "address", "del", self.cidr, "dev", self.ifname)

    def run(self, k: Kernel) -> None:
        k.del_address(self.ifname, self.cidr)

    def check(self, view: HostView) -> str | None:
        return "present" if self.cidr in view.addresses(self.ifname) else None


class SetUp(Step):
    __slots__ = ("ifname",)

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname

    def ip(self, netns: str | None = None) -> str:
        return _ip(netns, "link", "set", self.ifname, "up")

    def run(self, k: Kernel) -> None:
        k.set_link(self.ifname, up=True)

    def check(self, view: HostView) -> str | None:
        link = view.link(self.ifname)
        return "missing" if link is None else (None if link.up else "down")


class AttachUplink(Step):
    __slots__ = ("bridge", "bring_up", "uplink")

    def __init__(self, uplink: str, bridge: str, bring_up: bool) -> None:
        self.uplink = uplink
        self.bridge = bridge
        self.bring_up = bring_up

    def ip(self, netns: str | None = None) -> str:
        return _ip(netns, "link", "set", self.uplink, "master", self.bridge,
                   *(["up"] if self.bring_up else []))

    def run(self, k: Kernel) -> None:
        k.set_link(self.uplink, master=self.bridge, up=True if self.bring_up else None)

    def undo(self) -> Step:
        return DetachUplink(self.uplink, bring_down=self.bring_up)

    def check(self, view: HostView) -> str | None:
        return _port_state(view, self.uplink, self.bridge)


class DetachUplink(Step):
    __slots__ = ("bring_down", "uplink")

    def __init__(self, uplink: str, bring_down: bool) -> None:
        self.uplink = uplink
        self.bring_down = bring_down

    def ip(self, netns: str | None = None) -> str:
        return _ip(netns, "link", "set", self.uplink, "nomaster",
                   *(["down"] if self.bring_down else []))

    def run(self, k: Kernel) -> None:
        k.set_link(self.uplink, nomaster=True, up=False if self.bring_down else None)

    def check(self, view: HostView) -> str | None:
        link = view.link(self.uplink)
        if link is None:
            return None
        if link.master is not None:
            return "attached"
        return "up" if self.bring_down and link.up else None


class CreateTap(Step):
    __slots__ = ("spec",)

    def __init__(self, spec: TapSpec) -> None:
        self.spec = spec

    def ip(self, netns: str | None = None) -> str:
        s = self.spec
        owner = ["user", str(s.owner)] if s.owner is not None else []
        group = ["group", str(s.group)] if s.group is not None else []
        mq = ["multi_queue"] if s.multi_queue else []
        mtu = ["mtu", str(s.mtu)] if s.mtu else []
        return (_ip(netns, "tuntap", "add", "dev", s.name, "mode", "tap", *owner, *group, *mq)
                + "\n" + sysctl_line(netns, f"net/ipv6/conf/{s.name}/disable_ipv6", "1")
                + "\n" + _ip(netns, "link", "set", s.name, "address", s.mac, *mtu,
                             "alias", s.alias, "up"))

    def run(self, k: Kernel) -> None:
        k.create_tap(self.spec)

    def undo(self) -> Step:
        return DeleteLinks((self.spec.name,))

    def check(self, view: HostView) -> str | None:
        link = view.link(self.spec.name)
        if link is None:
            return "missing"
        if link.kind != "tun" or link.tun is None or not link.tun.tap or \
                link.alias != self.spec.alias or link.tun.owner != self.spec.owner:
            return "foreign"
        return None


class ConfigureTap(Step):
    """Change an existing tap's MAC and/or MTU (a settings change on `up` again)."""

    __slots__ = ("tap", "mac", "mtu", "old_mac", "old_mtu")

    def __init__(self, tap: str, mac: str | None, mtu: int | None, old_mac: str | None,
                 old_mtu: int | None) -> None:
        self.tap = tap
        self.mac = mac
        self.mtu = mtu
        self.old_mac = old_mac
        self.old_mtu = old_mtu

    def ip(self, netns: str | None = None) -> str:
        return _ip(netns, "link", "set", self.tap,
                   *(["address", self.mac] if self.mac else []),
                   *(["mtu", str(self.mtu)] if self.mtu else []))

    def run(self, k: Kernel) -> None:
        k.set_link(self.tap, mac=self.mac, mtu=self.mtu)

    def undo(self) -> Step:
        return ConfigureTap(self.tap, self.old_mac if self.mac else None,
                            self.old_mtu if self.mtu else None, self.mac, self.mtu)

    def check(self, view: HostView) -> str | None:
        link = view.link(self.tap)
        if link is None:
            return "missing"
        if (self.mac and link.mac != self.mac) or (self.mtu and link.mtu != self.mtu):
            return "differs"
        return None


class AttachTap(Step):
    """Enslave a tap to its bridge and bring it up (one netlink request)."""

    __slots__ = ("bridge", "tap")

    def __init__(self, tap: str, bridge: str) -> None:
        self.tap = tap
        self.bridge = bridge

    def ip(self, netns: str | None = None) -> str:
        return _ip(netns, "link", "set", self.tap, "master", self.bridge, "up")

    def run(self, k: Kernel) -> None:
        k.set_link(self.tap, master=self.bridge, up=True)

    def check(self, view: HostView) -> str | None:
        return _port_state(view, self.tap, self.bridge)


class DeleteLinks(Step):
    """Delete links verified as vmnet's (several at once through a netdev group)."""

    __slots__ = ("names",)

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def ip(self, netns: str | None = None) -> str:
        return "\n".join(_ip(netns, "link", "del", n) for n in self.names)

    def run(self, k: Kernel) -> None:
        k.delete_links(list(self.names))

    def check(self, view: HostView) -> str | None:
        left = [n for n in self.names if view.link(n) is not None]
        return f"present: {', '.join(left)}" if left else None


def _port_state(view: HostView, port: str, bridge: str) -> str | None:
    link = view.link(port)
    if link is None:
        return "missing"
    br = view.link(bridge)
    if br is None or link.master != br.index:
        return "detached"
    return None if link.up else "down"
