"""What vmnetd lets a peer do: root anything, a user without root only this.

A user (a peer whose SO_PEERCRED uid is not 0) may run `up`, `down`, `status`,
`list`, `qemu-args` and `run`, and the bridge helper; the daemon's own config
and state directory apply (the request's --config, --state-dir and environment
are ignored); --netns and --uplink are refused, and so are a --user or --group
that is not the peer's own.  Every NIC must be on a network whose
`allow_users` / `allow_groups` name the peer, within `[defaults]`
user_max_nics / user_max_queues; a VM configured with a `user` is that user's
alone, and a VM that is up is its owner's: nobody else may change, take down,
see or borrow it.  Tap names, MACs and VM names others hold are refused by the
engine's own claims, as for root.
"""

from __future__ import annotations

import os

from vmnet.config.users import lookup_group, lookup_user, owner_text
from vmnet.consts import DEFAULT_LOCK_TIMEOUT
from vmnet.errors import InputError, PrivilegeError
from vmnet.model.value import Value

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Mapping

    from vmnet.cli.main import Globals
    from vmnet.config import Config
    from vmnet.model import Network, Vm
    from vmnet.state.records import VmRecord
    from vmnet.state.store import StateStore

# `vmnet` commands a user without root may run through the daemon.
USER_COMMANDS = frozenset({"up", "down", "status", "list", "qemu-args", "run", "ip"})
_ROOT_FLAGS = (("uplink", "--uplink", "enslave an uplink"),
               ("ips", "--ip", "choose a NIC's address (it is derived, or set in the config)"),
               ("vlan", "--vlan", "choose a NIC's VLAN (it is the config's to give)"),
               ("no_guard", "--no-guard", "loosen a NIC's policy (a user may only tighten "
                                          "it: --mac-filter, --ip-filter)"),
               ("move", "--move", "take a VM's logical switch port from another OVN "
                                  "chassis"))
_CONFIG_HINT = "ask root to add it to {where}"


class Peer(Value):
    """The process at the other end of a connection (SO_PEERCRED at connect time), and
    whether it holds CAP_NET_ADMIN (read from /proc when it connected)."""

    __slots__ = ("gid", "net_admin", "pid", "uid")

    def __init__(self, pid: int, uid: int, gid: int, net_admin: bool = True) -> None:
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.net_admin = net_admin

    @property
    def root(self) -> bool:
        """Root as vmnet means it: uid 0 with CAP_NET_ADMIN (a root that dropped it, as
        QEMU sandboxes do, may do through the daemon only what a user may)."""
        return self.uid == 0 and self.net_admin

    def groups(self) -> set[int]:
        """Its primary and supplementary groups (from /proc while it runs, else the user
        database)."""
        from vmnet.state.files import proc_status

        groups = proc_status(self.pid).get("Groups")
        if groups is not None:
            return {self.gid, *(int(g) for g in groups)}
        found = lookup_user(str(self.uid))
        if found is not None and found[1] != str(self.uid):
            return set(os.getgrouplist(found[1], self.gid))
        return {self.gid}

    def who(self) -> str:
        return f"user {owner_text(self.uid, None)}"


class Policy:
    """The rules above, for one request of one peer (the daemon makes one per request)."""

    __slots__ = ("_groups", "_pending", "config_path", "peer", "state_dir")

    def __init__(self, peer: Peer, state_dir: str, config_path: str | None) -> None:
        self.peer = peer
        self.state_dir = state_dir
        self.config_path = config_path
        self._groups: set[int] | None = None
        self._pending: dict[str, int] = {}  # NICs of the VMs this request brings up

    # -- before the command runs -----------------------------------------------------
    def admit(self, command: str, g: Globals, values: Mapping[str, object]) -> None:
        """Refuse what a user may not ask for at all; pin the daemon's state and config."""
        g.state_dir = self.state_dir
        if self.peer.root:
            return
        g.config = self.config_path
        g.env = {"SUDO_USER": str(self.peer.uid)}  # "the invoking user" is the peer
        # the daemon serves one request at a time: a user's waits are root's default at most
        g.lock_timeout = min(g.lock_timeout, DEFAULT_LOCK_TIMEOUT)
        g.peer = self
        if command not in USER_COMMANDS:
            raise PrivilegeError(f"`vmnet {command}` is root's: vmnetd runs only up, down, "
                                 "status, list, ip, qemu-args and run for other users",
                                 hint="run it as root")
        if g.netns:
            raise PrivilegeError("--netns: only root may work in another network namespace",
                                 hint="drop --netns: vmnetd works in its own namespace")
        for key, flag, what in _ROOT_FLAGS:
            if values.get(key) not in (None, [], False):
                raise PrivilegeError(f"{flag}: only root may {what}",
                                     hint="ask root to set it in the config")
        user = values.get("user")
        if user is not None:
            found = lookup_user(str(user))
            if found is None or found[0] != self.peer.uid:
                raise PrivilegeError(f"--user {user}: {self.peer.who()} may give taps only "
                                     "to themself", hint="drop --user")
        group = values.get("group")
        if group is not None:
            gid = lookup_group(str(group))
            if gid is None or gid not in self.groups():
                raise PrivilegeError(f"--group {group}: {self.peer.who()} is not in that "
                                     "group", hint="name one of your own groups, or drop "
                                                   "--group")

    def groups(self) -> set[int]:
        if self._groups is None:
            self._groups = self.peer.groups()
        return self._groups

    # -- at resolution, under the lock -----------------------------------------------
    def owns(self, rec: VmRecord) -> bool:
        return all(n.owner == self.peer.uid for n in rec.nics)

    def check_record(self, name: str, rec: VmRecord | None) -> None:
        """A VM that is up is its owner's alone."""
        if rec is not None and not self.owns(rec):
            owner = next((n.owner for n in rec.nics if n.owner != self.peer.uid), None)
            raise PrivilegeError(f"VM {name!r} is up as {owner_text(owner, None)}'s: "
                                 f"{self.peer.who()} may not use or change it",
                                 hint="pick another VM name")

    def allowed(self, cfg: Config, net: Network) -> bool:
        acc = cfg.access.get(net.name)
        if acc is None or cfg.networks.get(net.name) is None or \
                cfg.networks[net.name].bridge != net.bridge:
            return False
        uid = self.peer.uid
        if any((found := lookup_user(u)) is not None and found[0] == uid for u in acc.users):
            return True
        mine = self.groups()
        return any((gid := lookup_group(gr)) is not None and gid in mine for gr in acc.groups)

    def refuse_network(self, cfg: Config, net: Network) -> PrivilegeError:
        where = cfg.path or "/etc/vmnet/vmnet.toml"
        if cfg.networks.get(net.name) is None or cfg.networks[net.name].bridge != net.bridge:
            return PrivilegeError(
                f"{self.peer.who()} may not use bridge {net.bridge}: it is no network of "
                f"{where}",
                hint=f"root can declare it: [networks.NAME] bridge = \"{net.bridge}\" with "
                     f"allow_users = [\"{self._name()}\"]")
        return PrivilegeError(
            f"{self.peer.who()} may not use network {net.name!r} (bridge {net.bridge})",
            hint=_CONFIG_HINT.format(where=f"networks.{net.name}.allow_users (or a group of "
                                           f"theirs to allow_groups) in {where}"))

    def _name(self) -> str:
        found = lookup_user(str(self.peer.uid))
        return found[1] if found is not None else str(self.peer.uid)

    def check_vm(self, cfg: Config, vm: Vm, rec: VmRecord | None, store: StateStore) -> None:
        """The VM as resolved for this peer: theirs, on their networks, within limits."""
        self.check_record(vm.name, rec)
        spec = cfg.vms.get(vm.name)
        if vm.uid != self.peer.uid:
            where = f"vms.{vm.name}.user" if spec is not None and spec.user is not None \
                else "the request"
            raise PrivilegeError(f"VM {vm.name!r} belongs to {owner_text(vm.uid, None)} "
                                 f"({where}): {self.peer.who()} may not bring it up",
                                 hint="pick another VM name")
        if vm.gid is not None and vm.gid not in self.groups():
            raise PrivilegeError(f"VM {vm.name!r}: {self.peer.who()} is not in group "
                                 f"{vm.gid} (vms.{vm.name}.group)",
                                 hint="ask root to change the VM's group")
        for nic in vm.nics:
            if not self.allowed(cfg, nic.network):
                raise self.refuse_network(cfg, nic.network)
            if nic.queues > cfg.user_max_queues:
                raise InputError(f"VM {vm.name!r} NIC {nic.index}: {nic.queues} queues is "
                                 f"over the {cfg.user_max_queues} a user may have "
                                 "(defaults.user_max_queues)", hint="ask for fewer queues")
            nspec = spec.nics[nic.index] if spec is not None and nic.index < len(spec.nics) \
                else None
            for way in ("to_vm", "from_vm"):  # a user may tighten a rate, never loosen it
                set_ = getattr(nspec, way, None)
                got = getattr(nic, way)
                if set_ is not None and (got is None or got[0] > set_[0]):
                    raise PrivilegeError(
                        f"VM {vm.name!r} NIC {nic.index}: rate {way} {got[0] if got else 'none'}"
                        f" bit/s is looser than the {set_[0]} bit/s of "
                        f"vms.{vm.name}.nics[{nic.index}].rate", hint="ask root to change it")
        held = sum(len(r.nics) for name, r in store.vms().items()
                   if name != vm.name and name not in self._pending and self.owns(r))
        held += sum(n for name, n in self._pending.items() if name != vm.name)
        self._pending[vm.name] = len(vm.nics)
        if held + len(vm.nics) > cfg.user_max_nics:
            raise PrivilegeError(f"{self.peer.who()} has {held} NIC(s) up; {len(vm.nics)} "
                                 f"more is over the {cfg.user_max_nics} allowed "
                                 "(defaults.user_max_nics)",
                                 hint="take a VM down first, or ask root to raise the limit")
