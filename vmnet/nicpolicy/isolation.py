"""`port_isolation`: the NIC's port cannot talk to the bridge's other isolated ports
(the kernel's port isolation, `bridge link set dev TAP isolated on`), and the bridge
learns nothing on it (`learning off`): a static entry for the VM's MAC says where it
is, so a guest cannot make the bridge send it another's frames by sending with a
stolen source address.  Ports that are not isolated (the uplink, the gateway's
bridge itself, the VM's own gateway) it still reaches.  Deleting the tap takes all of
it along: the down twin is the tap's own delete.
"""

from __future__ import annotations

from vmnet.engine.steps import Step
from vmnet.render.shell import command

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from vmnet.engine.observe import HostView
    from vmnet.kernel.protocol import Kernel


class IsolatePort(Step):
    __slots__ = ("bridge", "mac", "tap")

    def __init__(self, tap: str, bridge: str, mac: str) -> None:
        self.tap = tap
        self.bridge = bridge
        self.mac = mac  # the guest's

    def ip(self, netns: str | None = None) -> str:
        head = ("-n", netns) if netns else ()
        return (command("bridge", *head, "link", "set", "dev", self.tap, "isolated", "on",
                        "learning", "off") + "\n" +
                command("bridge", *head, "fdb", "replace", self.mac, "dev", self.tap,
                        "master", "static"))

    def run(self, k: Kernel) -> None:
        k.set_bridge_port(self.tap, isolated=True, learning=False)
        k.fdb_add(self.tap, self.mac)

    def undo(self) -> Step:
        return ReleasePort(self.tap, self.mac)

    def check(self, view: HostView) -> str | None:
        link = view.link(self.tap)
        br = view.link(self.bridge)
        if link is None or br is None or view.k is None:
            return "missing"
        if link.port_isolated is not True or link.port_learning is not False:
            return "not isolated"
        entry = view.k.fdb_get(br.index, self.mac)
        if entry is None or entry.ifindex != link.index or not entry.static:
            return f"no static fdb entry for {self.mac}"
        return None


class ReleasePort(Step):
    """Undo IsolatePort on a tap that stays (a settings change, a rollback)."""

    __slots__ = ("mac", "tap")

    def __init__(self, tap: str, mac: str) -> None:
        self.tap = tap
        self.mac = mac

    def ip(self, netns: str | None = None) -> str:
        head = ("-n", netns) if netns else ()
        return (command("bridge", *head, "fdb", "del", self.mac, "dev", self.tap, "master")
                + "\n" + command("bridge", *head, "link", "set", "dev", self.tap, "isolated",
                                 "off", "learning", "on"))

    def run(self, k: Kernel) -> None:
        if k.link(self.tap) is None:
            return
        k.fdb_del(self.tap, self.mac)
        k.set_bridge_port(self.tap, isolated=False, learning=True)
