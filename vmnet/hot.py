"""The hot path: `vmnet up VM`, the QEMU ifup script and the libvirt hook in milliseconds.

A VM start pays for these once per VM, and platforms start hundreds.  The
full path (vmnet.engine.ops: model, planner, steps, records as classes) costs
40-50 ms of imports alone; the `ip` commands it replaces cost ~4 ms.  This
module does the common case with builtin modules only, through the same
light layer the full path stands on (vmnet.model.names, vmnet.state.files,
vmnet.confcache, vmnet.kernel.rtnl/tun/netns, vmnet.render.qemu.up_lines):

- `up VM` of one VM that has no record yet, whose bridges exist with
  vmnet's bridge record (any uplink already a port), and whose taps do not
  exist yet: the taps are made, marked, attached and recorded exactly as
  vmnet.engine.ops.up does;
- ifup of a tap whose bridge exists: MTU, MAC, IPv6 off, bridge, up, exactly
  as vmnet.integrations.qemu.ifup.ifup does;
- the libvirt hook's `prepare begin` of a domain that names one such VM
  without overrides (vmnet.integrations.libvirt.hook.prepare).

Anything else is *declined* (so is an unexpected exception, after the same
undoing): the request goes to the full path, which
serves it (or words its error) as if the hot path did not exist.  A decline
happens before any change, or after undoing the changes made, so the full
path starts from the same host.  Declined, among others: an existing record
(idempotent re-up), a bridge to create or adopt, an uplink to attach, a
config file whose compiled form (vmnet.confcache) is not stored yet, a
record or config the full path would refuse or skip, a busy lock, fault
injection (VMNET_FAULT), VMNET_KERNEL=pyroute2, and VMNET_HOT=0, which
turns the hot path off (the test suite runs its kernel tests both ways).
"""

from __future__ import annotations

import os
import sys

from vmnet.errors import VmnetError
from vmnet.kernel import rtnl
from vmnet.model import validate
from vmnet.model.names import (
    DEFAULT_BRIDGE,
    DEFAULT_NETWORK,
    bridge_mark,
    default_mac,
    default_tap_name,
    nic_mark,
    pinned_bridge_mac,
    tap_mac,
)
from vmnet.state.files import (
    FORMAT,
    check_trusted_dir,
    dumps,
    fname,
    is_stale,
    key_of,
    loads,
    proc_start_time,
    same_file,
    stored_cookie,
    write_file,
)

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from vmnet.cli.entry import Request

class Decline(Exception):
    """The full path must serve this request; the host is as it was before."""


def enabled(env: Mapping[str, str]) -> bool:
    return (env.get("VMNET_HOT") != "0" and env.get("VMNET_LEAN") != "0"
            and env.get("VMNET_KERNEL") != "pyroute2" and not env.get("VMNET_FAULT"))


# -- the model, as plain objects -------------------------------------------
class Net:
    __slots__ = ("bridge", "mtu", "name", "uplink")

    def __init__(self, name: str, bridge: str, uplink: str | None, mtu: int | None) -> None:
        self.name, self.bridge, self.uplink, self.mtu = name, bridge, uplink, mtu


class Nic:
    __slots__ = ("index", "mac", "model", "mtu", "network", "queues", "tap", "vnet_hdr")

    def __init__(self, index: int, tap: str, mac: str, queues: int, mtu: int | None,
                 vnet_hdr: bool, model: str, network: Net) -> None:
        self.index, self.tap, self.mac, self.queues = index, tap, mac, queues
        self.mtu, self.vnet_hdr, self.model, self.network = mtu, vnet_hdr, model, network

    @property
    def netdev_id(self) -> str:
        return f"net{self.index}"

    @property
    def tap_mac(self) -> str:
        return tap_mac(self.mac)


class Vm:
    __slots__ = ("gid", "name", "nics", "uid", "user")

    def __init__(self, name: str, uid: int | None, gid: int | None, user: str | None,
                 nics: list[Nic]) -> None:
        self.name, self.uid, self.gid, self.user, self.nics = name, uid, gid, user, nics


# -- config ----------------------------------------------------------------
_BUILTIN: dict[str, Any] = {"default_network": DEFAULT_NETWORK,
                            "networks": {DEFAULT_NETWORK: (DEFAULT_BRIDGE, None, None)},
                            "vms": {}}


def load_config(path: str | None, env: Mapping[str, str], state_root: str) -> dict[str, Any]:
    """The compiled config (vmnet.confcache), or the built-in default when there is no file."""
    from vmnet.model.names import DEFAULT_CONFIG

    explicit = path or env.get("VMNET_CONFIG") or None
    try:
        with open(explicit or DEFAULT_CONFIG, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if explicit:
            raise Decline from None  # the full path says it is missing
        return _BUILTIN
    except OSError:
        raise Decline from None
    from vmnet.confcache import load

    compiled = load(state_root, raw)
    if compiled is None:
        raise Decline  # the full path parses it and stores its compiled form
    return compiled


def _network(cfg: dict[str, Any], name: str) -> Net:
    bridge, uplink, mtu = cfg["networks"][name]
    return Net(name, bridge, uplink, mtu)


def _owner(user_src: str | None, group_src: str | None,
           env: Mapping[str, str]) -> tuple[int | None, int | None, str | None]:
    """uid, gid and owner name as vmnet.config.resolve_vm gives them (declines where
    the full path would refuse)."""
    from vmnet.config import users

    uid: int | None = None
    user: str | None = None
    if user_src is not None or group_src is None:
        found = users.lookup_user(user_src if user_src is not None
                                  else users.invoking_user(env))
        if found is None:
            raise Decline
        uid, user = found
    gid = None if group_src is None else users.lookup_group(group_src)
    if group_src is not None and gid is None:
        raise Decline
    return uid, gid, user


def resolve(cfg: dict[str, Any], name: str, env: Mapping[str, str], nics: int = 1) -> Vm:
    """vmnet.config.resolve_vm without overrides (but `nics` for an unconfigured VM)."""
    try:
        validate.vm_name(name)
    except VmnetError:
        raise Decline from None
    if name in cfg["vms"]:
        entry = cfg["vms"][name]
        if entry is None:
            raise Decline  # the full path words why it cannot be resolved
        user_src, group_src, specs = entry
        out = [Nic(i, tap, mac, q, mtu, vh, model, _network(cfg, net))
               for i, tap, mac, q, mtu, vh, model, net in specs]
    else:
        if not 1 <= nics <= validate.MAX_NICS:
            raise Decline
        user_src = group_src = None
        net = _network(cfg, cfg["default_network"])
        out = [Nic(i, default_tap_name(name, i), default_mac(name, i), 1, None, True,
                   "virtio-net-pci", net) for i in range(nics)]
        if len({n.mac for n in out}) != len(out):
            raise Decline  # the model refuses two NICs with one MAC
    uid, gid, user = _owner(user_src, group_src, env)
    return Vm(name, uid, gid, user, out)


# -- records ---------------------------------------------------------------
def _me() -> dict[str, int]:
    pid = os.getpid()
    return {"pid": pid, "start": proc_start_time(pid) or 0}


def _valid_name(n: object) -> bool:
    try:
        validate.ifname(n, "state")
    except VmnetError:
        return False
    return True


_NIC_KEYS = frozenset({"index", "tap", "bridge", "network", "mac", "tap_mac", "mtu", "queues",
                       "vnet_hdr", "owner", "group", "created"})
_NIC_REQUIRED = _NIC_KEYS - {"created"}


def _vm_record(data: object) -> dict[str, Any]:
    """A VM record the full path would accept as it is (vmnet.state.store.parse_vm_record)."""
    if not isinstance(data, dict) or data.get("mode") not in ("up", "run", "hook") or \
            data.get("phase") not in ("applying", "ready", "removing") or \
            not isinstance(data.get("vm"), str) or not isinstance(data.get("nics"), list):
        raise Decline
    w, h = data.get("writer"), data.get("holder")
    if not isinstance(w, dict) or set(w) != {"pid", "start"} or \
            not (not h or (isinstance(h, dict) and set(h) == {"pid", "start"})) or \
            not isinstance(data.get("created_at", 0), int | float):
        raise Decline
    for n in data["nics"]:
        if not isinstance(n, dict) or not _NIC_REQUIRED <= set(n) <= _NIC_KEYS or \
                not _valid_name(n["tap"]) or not _valid_name(n["bridge"]):
            raise Decline
    return data


def _bridge_record(rec: object, bridge: str) -> dict[str, Any]:
    """A bridge record the full path would accept as it is (vmnet.state.store.parse_bridge_record;
    it would skip another and write a new one: the full path's work)."""
    w = rec.get("writer") if isinstance(rec, dict) else None
    if not isinstance(rec, dict) or rec.get("bridge") != bridge or "created" not in rec \
            or not isinstance(rec.get("network"), str) or \
            not (w is None or (isinstance(w, dict) and set(w) == {"pid", "start"})) or \
            not _valid_name(bridge) or not (rec.get("uplink") is None
                                            or _valid_name(rec.get("uplink"))):
        raise Decline
    return rec


class Store:
    """vmnet.state.store.StateStore's files for one namespace, for the hot path's narrow use."""

    def __init__(self, root: str) -> None:
        from vmnet.kernel.netns import current_cookie, current_inode

        self.root = root
        self.dir = os.path.join(root, f"ns-{current_inode()}")
        self.cookie = current_cookie()
        self.lock_fd: int | None = None

    def check(self) -> None:
        """The records are this namespace's and lie in directories only root can write."""
        if is_stale(self.cookie, stored_cookie(self.dir)):
            raise Decline  # a dead namespace's records: the full path sets them aside
        try:
            for level in (self.root, self.dir, os.path.join(self.dir, "vms"),
                          os.path.join(self.dir, "bridges")):
                check_trusted_dir(level, top=level == self.root)
        except (OSError, VmnetError):
            raise Decline from None

    def lock(self) -> None:
        """StateStore.locked() without waiting: a held lock sends us to the full path."""
        import fcntl

        self.check()
        path = os.path.join(self.dir, "lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            raise Decline from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not same_file(fd, path):
                raise Decline
            self.check()
        except BaseException:
            os.close(fd)
            if isinstance(sys.exc_info()[1], OSError):
                raise Decline from None
            raise
        self.lock_fd = fd

    def unlock(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def vm_records(self) -> dict[str, dict[str, Any]]:
        d = os.path.join(self.dir, "vms")
        out = {}
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return {}
        except OSError:
            raise Decline from None
        for fn in names:
            if fn.endswith(".json"):
                out[key_of(fn)] = _vm_record(self._read(os.path.join(d, fn)))
        return out

    def has_bridge(self, bridge: str) -> bool:
        path = os.path.join(self.dir, "bridges", fname(bridge))
        if not os.path.exists(path):
            return False
        _bridge_record(self._read(path), bridge)
        return True

    @staticmethod
    def _read(path: str) -> object:
        try:
            with open(path, "rb") as f:
                return loads(f.read())
        except (OSError, ValueError):
            raise Decline from None

    def put_vm(self, name: str, rec: dict[str, Any]) -> None:
        if self.cookie is not None and stored_cookie(self.dir) != self.cookie:
            write_file(os.path.join(self.dir, "cookie"), f"{self.cookie}\n".encode())
        write_file(os.path.join(self.dir, "vms", fname(name)), dumps(rec))

    def drop_vm(self, name: str) -> None:
        try:  # noqa: SIM105 - contextlib costs an import on the hot path
            os.unlink(os.path.join(self.dir, "vms", fname(name)))
        except FileNotFoundError:
            pass


# -- the kernel --------------------------------------------------------------
class Links:
    """Single-link reads and the few changes of the hot path, on one rtnetlink socket."""

    def __init__(self) -> None:
        self.nl = rtnl.Rtnl()

    def close(self) -> None:
        self.nl.close()

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            got = self.nl.get(rtnl.RTM_GETLINK, rtnl.ifinfo() + rtnl.by_name(name))
        except OSError:
            raise Decline from None
        return None if got is None else rtnl.link_fields(*got)

    def ports(self, index: int) -> list[dict[str, Any]]:
        """The bridge's ports (the kernel filters the dump by master)."""
        body = rtnl.ifinfo() + rtnl.a_u32(rtnl.IFLA_MASTER, index)
        try:
            found = [rtnl.link_fields(*m) for m in self.nl.dump(rtnl.RTM_GETLINK, body)]
        except OSError:
            raise Decline from None
        return [p for p in found if p["master"] == index]

    def setlink(self, body: bytes) -> None:
        self.nl.call(rtnl.RTM_SETLINK, 0, body)

    def delete(self, name: str) -> None:
        try:  # noqa: SIM105 - contextlib costs an import on the hot path
            self.nl.call(rtnl.RTM_DELLINK, 0, rtnl.ifinfo() + rtnl.by_name(name))
        except OSError:
            pass


def _is_our_bridge(br: dict[str, Any]) -> bool:
    """vmnet.engine.ownership.is_our_bridge on a link's fields."""
    return br["kind"] == "bridge" and (br["alias"] == bridge_mark(br["name"]) or (
        not br["alias"] and br["mac"] == pinned_bridge_mac(br["name"])))


# -- up ----------------------------------------------------------------------
def up(req: Request, env: Mapping[str, str]) -> list[str] | None:
    """Serve `vmnet up VM` (the lines to print), or None: the full path must."""
    if req.cmd != "up" or req.dry_run or req.all or len(req.names) != 1:
        return None
    try:
        return _up(req, env)
    except Exception:  # Decline, or a surprise: the full path serves it (and words it)
        return None


def _up(req: Request, env: Mapping[str, str]) -> list[str]:
    from vmnet.kernel.caps import has_net_admin

    cfg = load_config(req.config, env, req.state_dir)
    vm = resolve(cfg, req.names[0], env)
    if not has_net_admin():
        raise Decline
    if req.netns:
        from vmnet.kernel.netns import enter

        try:
            enter(req.netns)
        except VmnetError:
            raise Decline from None
    bring_up(req.state_dir, vm, "up", None)
    from vmnet.render.qemu import up_lines

    return up_lines(vm)


def bring_up(state_dir: str, vm: Vm, mode: str, domain_uuid: str | None) -> None:
    """vmnet.engine.ops.up for a VM the hot path can serve."""
    from vmnet.kernel.tun import TUN_PATH

    if not os.path.exists(TUN_PATH):
        raise Decline
    store = Store(state_dir)
    store.lock()
    k = Links()
    try:
        _up_locked(store, k, vm, mode, domain_uuid)
    finally:
        k.close()
        store.unlock()


def _up_locked(store: Store, k: Links, vm: Vm, mode: str, domain_uuid: str | None) -> None:
    """vmnet.engine.ops.up_many + vmnet.engine.plan.plan_up for one new VM on existing bridges."""
    records = store.vm_records()
    if vm.name in records:
        raise Decline  # re-up, adoption, mode and holder rules: the full path's
    taps: dict[str, str] = {}
    macs: dict[tuple[str, str], str] = {}
    for other, orec in records.items():
        for n in orec["nics"]:
            taps[n["tap"]] = other
            macs[(n["bridge"], n["mac"])] = other
    bridges: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for nic in vm.nics:
        net = nic.network
        if net.bridge in bridges:
            continue
        br = k.get(net.bridge)
        if br is None or br["kind"] != "bridge" or not store.has_bridge(net.bridge):
            raise Decline  # to create, to adopt, or not a bridge: the full path's
        if net.uplink is not None:
            upl = k.get(net.uplink)
            if upl is None or upl["master"] != br["index"]:
                raise Decline  # an uplink to attach (and vet): the full path's
        bridges[net.bridge] = (br, k.ports(br["index"]))
    nic_records: list[dict[str, Any]] = []
    new_ports: dict[str, int] = {}
    for nic in vm.nics:
        bridge = nic.network.bridge
        br, ports = bridges[bridge]
        if macs.get((bridge, nic.mac), vm.name) != vm.name or \
                taps.get(nic.tap, vm.name) != vm.name:
            raise Decline
        if any(p["mac"] in (nic.mac, nic.tap_mac) for p in ports):
            raise Decline
        if k.get(nic.tap) is not None:
            raise Decline  # exists: ours to re-attach, or foreign to refuse
        mtu = nic.mtu or nic.network.mtu or br["mtu"]
        if nic.mtu and nic.mtu < br["mtu"] and not _is_our_bridge(br):
            raise Decline
        new_ports[bridge] = new_ports.get(bridge, 0) + 1
        nic_records.append({"index": nic.index, "tap": nic.tap, "bridge": bridge,
                            "network": nic.network.name, "mac": nic.mac,
                            "tap_mac": nic.tap_mac, "mtu": mtu, "queues": nic.queues,
                            "vnet_hdr": nic.vnet_hdr, "owner": vm.uid, "group": vm.gid,
                            "created": True})
    for bridge, count in new_ports.items():
        if len(bridges[bridge][1]) + count > validate.MAX_BRIDGE_PORTS:
            raise Decline
    import time

    from vmnet.kernel import tun

    rec: dict[str, Any] = {"format": FORMAT, "vm": vm.name, "mode": mode, "phase": "applying",
                           "writer": _me(), "nics": nic_records, "holder": None,
                           "domain_uuid": domain_uuid, "created_at": time.time()}
    store.put_vm(vm.name, rec)
    made: list[str] = []
    try:
        for nic, nrec in zip(vm.nics, nic_records, strict=True):
            tun.create_configured_tap(k.nl, nic.tap, owner=vm.uid, group=vm.gid,
                                      multi_queue=nic.queues > 1, mac=nic.tap_mac,
                                      alias=nic_mark(vm.name, nic.index), mtu=nrec["mtu"])
            made.append(nic.tap)
            k.setlink(rtnl.set_link(nic.tap, master=bridges[nic.network.bridge][0]["index"],
                                    up=True))
    except BaseException as e:
        for tap in reversed(made):
            k.delete(tap)
        store.drop_vm(vm.name)
        if isinstance(e, (OSError, VmnetError)):
            raise Decline from None  # the full path redoes it and words the error
        raise
    rec["phase"] = "ready"
    store.put_vm(vm.name, rec)


# -- ifup --------------------------------------------------------------------
class Port:
    """vmnet.integrations.qemu.ifup.Port: where a tap goes and with what."""

    __slots__ = ("bridge", "mtu", "nic_mtu", "tap_mac")

    def __init__(self, bridge: str, mtu: int | None, tap_mac: str | None,
                 nic_mtu: bool = False) -> None:
        self.bridge, self.mtu, self.tap_mac, self.nic_mtu = bridge, mtu, tap_mac, nic_mtu


def find_port(tap: str, env: Mapping[str, str]) -> Port:
    """vmnet.integrations.qemu.ifup.find_port: the records first, then the (compiled) config."""
    from vmnet.state.files import DEFAULT_STATE_DIR

    root = env.get("VMNET_STATE_DIR") or DEFAULT_STATE_DIR
    store = Store(root)
    if os.path.isdir(store.dir):
        store.check()
        records = store.vm_records()
        for name in sorted(records):
            for n in records[name]["nics"]:
                if n["tap"] == tap:
                    return Port(n["bridge"], n["mtu"], n["tap_mac"])
    elif os.path.lexists(store.dir):
        raise Decline
    cfg = load_config(None, env, root)
    for name in sorted(cfg["vms"]):
        entry = cfg["vms"][name]
        if entry is None:
            continue  # unresolvable: the full path skips it too
        for _i, t, mac, _q, mtu, _vh, _model, net in entry[2]:
            if t == tap:
                _owner(entry[0], entry[1], env)  # one the full path skips: Decline
                network = _network(cfg, net)
                return Port(network.bridge, mtu or network.mtu, tap_mac(mac), mtu is not None)
    head, dash, idx = tap.rpartition("-")
    if dash and head and idx.isdecimal() and head not in cfg["vms"]:
        try:
            vm = resolve(cfg, head, env, nics=int(idx) + 1)
        except Decline:
            vm = None
        for nic in vm.nics if vm is not None else ():
            if nic.tap == tap:
                return Port(nic.network.bridge, nic.network.mtu, nic.tap_mac)
    net = _network(cfg, cfg["default_network"])
    return Port(net.bridge, net.mtu, None)


def ifup(argv: list[str], env: Mapping[str, str]) -> bool:
    """Serve `vmnet-qemu-ifup TAP`; False: the full path must (nothing changed)."""
    if len(argv) != 1:
        return False
    try:
        _ifup(argv[0], env)
    except Exception:  # Decline, or a surprise: the full path serves it (and words it)
        return False
    return True


def _ifup(tap: str, env: Mapping[str, str]) -> None:
    from vmnet.kernel.caps import has_net_admin

    try:
        validate.ifname(tap, "argument")
    except VmnetError:
        raise Decline from None
    if not has_net_admin():
        raise Decline
    port = find_port(tap, env)
    k = Links()
    try:
        link = k.get(tap)
        if link is None or link["kind"] != "tun" or not (link["tun"] or {}).get("tap"):
            raise Decline
        br = k.get(port.bridge)
        if br is None or br["kind"] != "bridge":
            raise Decline
        if port.nic_mtu and port.mtu and port.mtu < br["mtu"] and not _is_our_bridge(br):
            raise Decline
        mtu = port.mtu or br["mtu"]
        from vmnet.kernel.tun import disable_ipv6

        try:
            disable_ipv6(tap)
            k.setlink(rtnl.set_link(
                tap, mtu=mtu if link["mtu"] != mtu else None,
                mac=port.tap_mac if port.tap_mac and link["mac"] != port.tap_mac else None,
                master=br["index"] if link["master"] != br["index"] else None, up=True))
        except (OSError, VmnetError):
            raise Decline from None  # the full path tries again and words the error
    finally:
        k.close()


# -- libvirt hook: prepare begin ------------------------------------------------
NS_URI = "urn:vmnet:libvirt:1"
_HEX = frozenset("0123456789abcdef")


class Iface:
    """vmnet.integrations.libvirt.domainxml.InterfaceInfo."""

    __slots__ = ("alias", "bridge", "mac", "target_dev", "type")

    def __init__(self, type_: str) -> None:
        self.type = type_
        self.alias: str | None = None
        self.mac: str | None = None
        self.target_dev: str | None = None
        self.bridge: str | None = None


class Domain:
    """What vmnet.integrations.libvirt.domainxml.read_domain gives the hook, gathered in one expat pass."""

    __slots__ = ("interfaces", "name", "uuid", "vms")

    def __init__(self) -> None:
        self.name = ""
        self.uuid: str | None = None
        self.vms: list[str] = []
        self.interfaces: list[Iface] = []


def read_domain(data: bytes) -> Domain:
    """The domain XML, read as vmnet.integrations.libvirt.domainxml reads it (ElementTree + defusedxml).

    Declines anything unusual: a DTD (defusedxml refuses those; the full path
    words it), a malformed document, a metadata VM with overrides, a UUID not in
    libvirt's canonical form.
    """
    import pyexpat

    dom = Domain()
    seen: set[tuple[int, str]] = set()  # (depth, tag) of first-child lookups already done
    path: list[str] = []
    state: dict[str, Any] = {"text": None, "meta": False, "iface": None, "vm": False}
    text: list[str] = []

    def first(depth: int, tag: str) -> bool:
        """Is this the first `tag` child of its parent (ElementTree's find())?"""
        key = (depth, tag)
        if key in seen:
            return False
        seen.add(key)
        return True

    def finish_text() -> None:
        """ElementTree's .text: the character data before the first child element."""
        if state["text"] is not None:
            value = "".join(text).strip()
            if state["text"] == "name":
                dom.name = value
            else:
                dom.uuid = value or None
            state["text"] = None

    def start(tag: str, attrs: dict[str, str]) -> None:
        depth = len(path)
        parent = path[-1] if path else None
        path.append(tag)
        finish_text()
        if depth == 0:
            if tag != "domain":
                raise Decline
        elif depth == 1:
            for k in [k for k in seen if k[0] > 1]:
                seen.discard(k)
            if tag in ("name", "uuid") and first(1, tag):
                state["text"] = tag
                text.clear()
            elif tag == "metadata" and first(1, tag):
                state["meta"] = True
        elif depth == 2 and state["meta"] and tag == f"{NS_URI}}}vmnet":
            state["vm"] = True
        elif depth == 3 and state["vm"] and parent == f"{NS_URI}}}vmnet":
            name = attrs.get("name")
            if tag != f"{NS_URI}}}vm" or not name or name in dom.vms:
                raise Decline
            dom.vms.append(name)
        elif depth == 4 and state["vm"] and parent == f"{NS_URI}}}vm":
            raise Decline  # overrides in the metadata: the full path resolves those
        elif depth == 2 and parent == "devices" and tag == "interface":
            state["iface"] = Iface(attrs.get("type", ""))
            dom.interfaces.append(state["iface"])
            for k in [k for k in seen if k[0] > 2]:
                seen.discard(k)
        elif depth == 3 and state["iface"] is not None and parent == "interface" and \
                first(3, tag):
            i = state["iface"]
            if tag == "alias":
                i.alias = attrs.get("name")
            elif tag == "mac":
                mac = attrs.get("address")
                i.mac = mac.lower() if mac else None
            elif tag == "target":
                i.target_dev = attrs.get("dev")
            elif tag == "source":
                i.bridge = attrs.get("bridge")

    def end(tag: str) -> None:
        depth = len(path) - 1
        path.pop()
        if depth == 1:
            finish_text()
            state["meta"] = False
        elif depth == 2:
            if tag == f"{NS_URI}}}vmnet":
                state["vm"] = False
            elif tag == "interface":
                state["iface"] = None

    def chars(data: str) -> None:
        if state["text"] is not None and len(path) == 2:
            text.append(data)

    def refuse(*_args: object) -> int:
        raise Decline

    p = pyexpat.ParserCreate(None, "}")
    p.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
    p.StartDoctypeDeclHandler = refuse
    p.EntityDeclHandler = refuse
    p.UnparsedEntityDeclHandler = refuse
    p.ExternalEntityRefHandler = refuse
    p.StartElementHandler = start
    p.EndElementHandler = end
    p.CharacterDataHandler = chars
    try:
        p.Parse(data, True)
    except (pyexpat.ExpatError, ValueError, LookupError):
        # ValueError: a multi-byte encoding expat cannot handle (UTF-7); LookupError:
        # one Python does not know.  The full path words both.
        raise Decline from None
    if dom.uuid is not None:  # libvirt's canonical form only (the full path normalises)
        u = dom.uuid
        if len(u) != 36 or any(u[i] != "-" for i in (8, 13, 18, 23)) or \
                not set(u.replace("-", "")) <= _HEX:
            raise Decline
    return dom


def hook_prepare(call: Any, data: bytes) -> bool:
    """Serve the hook's `prepare begin` (vmnet.integrations.libvirt.hook.prepare); False: the full path must."""
    try:
        _hook_prepare(call, data)
    except Exception:  # Decline, or a surprise: the full path serves it (and words it)
        return False
    return True


def _hook_prepare(call: Any, data: bytes) -> None:
    from vmnet.kernel.caps import has_net_admin
    from vmnet.model.names import ALIAS_PREFIX, alias_for

    dom = read_domain(data)
    if not dom.vms:
        return  # not a domain of vmnet's: nothing to do
    if len(dom.vms) != 1 or not dom.uuid:
        raise Decline  # several VMs (all or nothing across them) or no UUID: the full path
    env: dict[str, str] = {}  # the hook resolves without the environment (libvirt's)
    cfg = load_config(call.config, env, call.state_dir)
    vm = resolve(cfg, dom.vms[0], env)
    by_alias = {i.alias: i for i in dom.interfaces
                if i.alias is not None and i.alias.startswith(ALIAS_PREFIX)}
    for nic in vm.nics:
        i = by_alias.get(alias_for(nic.tap))
        if i is None:
            continue
        if (i.type == "ethernet" and i.target_dev != nic.tap) or \
                (i.type == "bridge" and i.bridge != nic.network.bridge) or \
                (i.mac is not None and i.mac != nic.mac):
            raise Decline  # XML rendered from another config: the full path words it
    if not has_net_admin():
        raise Decline
    bring_up(call.state_dir, vm, "hook", dom.uuid)
