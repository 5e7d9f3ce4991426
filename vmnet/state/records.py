"""vmnet's records: one versioned schema, encoded and decoded here and nowhere else.

Format 2 (written by this vmnet).  A VM record::

    {"format": 2, "vm": "vm1", "mode": "up", "phase": "ready",
     "writer": {"pid": 123, "start": 456}, "holder": null, "domain_uuid": null,
     "created_at": 1700000000.0,
     "nics": [{"index": 0, "tap": "vm1-0", "bridge": "vmnet0", "network": "default",
               "mac": "52:54:00:..", "tap_mac": "fe:54:00:..", "mtu": null, "queues": 1,
               "vnet_hdr": true, "owner": 0, "group": null, "created": true,
               "model": "virtio-net-pci"}]}

and a bridge record::

    {"format": 2, "bridge": "br0", "network": "lan", "created": true, "uplink": null,
     "uplink_attached": false, "uplink_was_down": false, "address": null, "writer": null}

`mode` and `phase` are enumerations (MODES, PHASES), checked on every read.
Format 1 (no `model`) is read as format 2 and rewritten as 2 on its next write.
A record of a format this vmnet does not know raises UnknownFormat: it is
refused with one clear line and never cleared by gc (a newer vmnet wrote it).
A file that is not a record at all (truncated, not JSON, wrong types) is
"corrupt": reported, and removable by gc, since no vmnet could have meant it.
"""

from __future__ import annotations

import os
import time

from vmnet.errors import InputError, StateError
from vmnet.model.value import Value
from vmnet.state.files import proc_start_time

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from typing import Any, Literal

    Mode = Literal["up", "run", "hook"]
    Phase = Literal["applying", "ready", "removing"]

FORMAT = 2
READABLE_FORMATS = (1, 2)
MODES: tuple[Mode, ...] = ("up", "run", "hook")
PHASES: tuple[Phase, ...] = ("applying", "ready", "removing")
DEFAULT_MODEL = "virtio-net-pci"


class Corrupt(ValueError):
    """A file that is no vmnet record (any format)."""


class UnknownFormat(StateError):
    """A record written in a format this vmnet cannot read."""


_ME: Proc | None = None  # Proc.me(), once read


class Proc(Value):
    """A process identity that survives pid reuse: pid + start time (clock ticks)."""

    __slots__ = ("pid", "start")

    def __init__(self, pid: int, start: int) -> None:
        self.pid = pid
        self.start = start

    @classmethod
    def me(cls) -> Proc:
        """This process (read once per pid: vmnetd asks on every request)."""
        global _ME
        pid = os.getpid()
        if _ME is None or _ME.pid != pid:  # (a fork is another process)
            me = cls.of(pid)
            if me is None:
                return cls(pid, 0)
            _ME = me
        return _ME

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        start = proc_start_time(pid)
        return None if start is None else cls(pid, start)

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start": self.start}


class NicRecord(Value):
    """What vmnet made for one NIC, and with which settings."""

    __slots__ = (
        "bridge",
        "created",
        "filter",
        "group",
        "index",
        "ip",
        "isolated",
        "mac",
        "model",
        "mtu",
        "network",
        "ovn",
        "owner",
        "queues",
        "rate",
        "tap",
        "tap_mac",
        "vlans",
        "vnet_hdr",
    )

    def __init__(self, index: int, tap: str, bridge: str, network: str, mac: str,
                 tap_mac: str, mtu: int | None, queues: int, vnet_hdr: bool,
                 owner: int | None, group: int | None, created: bool = True,
                 model: str = DEFAULT_MODEL, ip: str | None = None,
                 filter: dict[str, object] | None = None, isolated: bool = False,
                 rate: dict[str, list[int]] | None = None,
                 vlans: dict[str, object] | None = None,
                 ovn: dict[str, object] | None = None) -> None:
        # on an ovn network: {"switch", "port", "chassis", "net": the network's OVN keys}
        self.ovn = ovn
        self.rate = rate  # {"to_vm": [bits/s, burst bytes], "from_vm": [...]}
        self.vlans = vlans  # {"vlan": N} or {"trunk": [N, ...], "native": N or null}
        self.isolated = isolated  # port_isolation
        self.ip = ip  # its fixed address on a nat/isolated network
        # its port filter: {"mac": bool, "ip": bool, "guard": bool, "addresses": [...]}
        self.filter = filter
        self.index = index
        self.tap = tap
        self.bridge = bridge
        self.network = network
        self.mac = mac
        self.tap_mac = tap_mac
        self.mtu = mtu
        self.queues = queues
        self.vnet_hdr = vnet_hdr
        self.owner = owner
        self.group = group
        self.created = created
        self.model = model

    def to_json(self) -> dict[str, object]:
        d = {s: getattr(self, s) for s in self.__slots__}
        for key in ("ip", "filter", "isolated", "rate", "vlans", "ovn"):
            if not d[key]:
                del d[key]  # (unused: the record reads as before 0.5)
        return d

    def policy_spec(self) -> dict[str, Any]:
        """The filter settings as NicSpec keywords (what `up` made, for `up` again)."""
        f = self.filter or {}
        return {"mac_filter": bool(f.get("mac")), "ip_filter": bool(f.get("ip")),
                "guard": f.get("guard") if self.filter else None,
                "addresses": tuple(f.get("addresses") or ()),  # type: ignore[arg-type]
                "port_isolation": self.isolated,
                "to_vm": self.rate_of("to_vm"), "from_vm": self.rate_of("from_vm"),
                **self.vlan_spec()}

    def vlan_spec(self) -> dict[str, Any]:
        """vlan, trunk and native_vlan as NicSpec keywords."""
        d = self.vlans or {}
        trunk = d.get("trunk") or []
        return {"vlan": d.get("vlan"), "trunk": tuple(trunk),  # type: ignore[arg-type]
                "native_vlan": d.get("native")}

    def rate_of(self, direction: str) -> tuple[int, int] | None:
        got = (self.rate or {}).get(direction)
        return None if not got else (int(got[0]), int(got[1]))


class VmRecord(Value):
    """One VM's record: its NICs, how it came up, and where its transaction is."""

    __slots__ = (
        "created_at",
        "domain_uuid",
        "holder",
        "mode",
        "nics",
        "phase",
        "vm",
        "writer",
    )

    def __init__(self, vm: str, mode: Mode, phase: Phase, writer: Proc, nics: list[NicRecord],
                 holder: Proc | None = None, domain_uuid: str | None = None,
                 created_at: float | None = None) -> None:
        self.vm = vm
        self.mode: Mode = mode
        self.phase: Phase = phase
        self.writer = writer
        self.nics = nics
        self.holder = holder  # the QEMU of a `run`
        self.domain_uuid = domain_uuid
        self.created_at = time.time() if created_at is None else created_at

    def copy(self) -> VmRecord:
        return VmRecord(self.vm, self.mode, self.phase, self.writer, list(self.nics),
                        self.holder, self.domain_uuid, self.created_at)

    def to_json(self) -> dict[str, object]:
        return {"format": FORMAT, "vm": self.vm, "mode": self.mode, "phase": self.phase,
                "writer": self.writer.to_json(), "nics": [n.to_json() for n in self.nics],
                "holder": None if self.holder is None else self.holder.to_json(),
                "domain_uuid": self.domain_uuid, "created_at": self.created_at}


class BridgeRecord(Value):
    """What vmnet did to one bridge: made it, or found it; attached an uplink or not."""

    __slots__ = (
        "address",
        "bridge",
        "created",
        "domain",
        "fixes",
        "kind",
        "network",
        "outbound",
        "sysctls",
        "uplink",
        "uplink_vlans",
        "uplink_attached",
        "uplink_was_down",
        "writer",
    )

    def __init__(self, bridge: str, network: str, created: bool, uplink: str | None = None,
                 uplink_attached: bool = False, uplink_was_down: bool = False,
                 address: str | None = None, writer: Proc | None = None,
                 kind: str = "bridge", outbound: str | None = None, domain: str | None = None,
                 sysctls: dict[str, str] | None = None,
                 fixes: list[dict[str, object]] | None = None,
                 uplink_vlans: list[int] | None = None) -> None:
        self.uplink_vlans = sorted(uplink_vlans or [])  # VLANs vmnet added to the uplink
        self.kind = kind  # the network's kind: bridge, nat or isolated
        self.outbound = outbound  # a nat network's outgoing interface, as applied
        self.domain = domain
        # sysctls vmnet changed for this network: /proc/sys path -> the value before
        self.sysctls = dict(sysctls or {})
        # accept rules vmnet inserted into foreign chains: family, table, chain, hook (the
    # rules themselves are found by their comment when they are removed)
        self.fixes = list(fixes or [])
        self.bridge = bridge
        self.network = network
        self.created = created  # vmnet created the bridge itself
        self.uplink = uplink
        self.uplink_attached = uplink_attached  # vmnet enslaved the uplink
        self.uplink_was_down = uplink_was_down
        self.address = address
        self.writer = writer

    def with_(self, **changes: Any) -> BridgeRecord:
        d = self.as_dict()
        d.update(changes)
        return BridgeRecord(**d)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {s: getattr(self, s) for s in self.__slots__}
        d["writer"] = None if self.writer is None else self.writer.to_json()
        d["format"] = FORMAT
        if self.kind == "bridge":  # a plain bridge's record reads as before 0.5
            for key in ("kind", "outbound", "domain", "sysctls", "fixes"):
                del d[key]
        if not self.uplink_vlans:
            del d["uplink_vlans"]
        return d


# -- decoding -------------------------------------------------------------
def _get(d: dict[str, Any], key: str, kind: type | tuple[type, ...], *,
         optional: bool = False, default: object = None) -> Any:
    if key not in d or d[key] is None:
        if optional:
            return default
        raise Corrupt(f"{key} missing")
    value = d[key]
    if (isinstance(value, bool) and kind is int) or not isinstance(value, kind):
        raise Corrupt(f"{key} has the wrong type")
    return value


def _proc(d: object) -> Proc:
    if not isinstance(d, dict):
        raise Corrupt("process is not an object")
    return Proc(_get(d, "pid", int), _get(d, "start", int))


def _name(value: str) -> str:
    from vmnet.model import validate

    try:
        return validate.ifname(value, "record")
    except InputError:
        raise Corrupt(f"invalid interface name {value!r}") from None


def check_format(d: dict[str, Any], path: str) -> int:
    fmt = d.get("format", 1)
    if isinstance(fmt, bool) or not isinstance(fmt, int):
        raise Corrupt("format is not a number")
    if fmt not in READABLE_FORMATS:
        raise UnknownFormat(
            f"record {path} has format {fmt}; this vmnet reads formats "
            f"{READABLE_FORMATS[0]}-{READABLE_FORMATS[-1]} and will not act on it",
            hint="a newer vmnet wrote it: use that version for this VM")
    return fmt


def vm_from_json(d: object, path: str = "record") -> VmRecord:
    """A VmRecord; Corrupt if it is no record, UnknownFormat if a newer one."""
    if not isinstance(d, dict):
        raise Corrupt("not an object")
    check_format(d, path)
    mode = _get(d, "mode", str)
    phase = _get(d, "phase", str)
    if mode not in MODES or phase not in PHASES:
        raise Corrupt("unknown mode or phase")
    nics = []
    raw_nics = _get(d, "nics", list)
    for n in raw_nics:
        if not isinstance(n, dict):
            raise Corrupt("NIC is not an object")
        nics.append(NicRecord(
            index=_get(n, "index", int), tap=_name(_get(n, "tap", str)),
            bridge=_name(_get(n, "bridge", str)), network=_get(n, "network", str),
            mac=_get(n, "mac", str), tap_mac=_get(n, "tap_mac", str),
            mtu=_get(n, "mtu", int, optional=True), queues=_get(n, "queues", int),
            vnet_hdr=_get(n, "vnet_hdr", bool), owner=_get(n, "owner", int, optional=True),
            group=_get(n, "group", int, optional=True),
            created=_get(n, "created", bool, optional=True, default=True),
            model=_get(n, "model", str, optional=True, default=DEFAULT_MODEL),
            ip=_get(n, "ip", str, optional=True),
            filter=_filter(_get(n, "filter", dict, optional=True)),
            isolated=_get(n, "isolated", bool, optional=True, default=False),
            rate=_rate(_get(n, "rate", dict, optional=True)),
            vlans=_vlans(_get(n, "vlans", dict, optional=True)),
            ovn=_ovn(_get(n, "ovn", dict, optional=True))))
    holder = d.get("holder")
    created_at = _get(d, "created_at", (int, float), optional=True, default=0.0)
    return VmRecord(vm=_get(d, "vm", str), mode=mode, phase=phase,
                    writer=_proc(d.get("writer")), nics=nics,
                    holder=_proc(holder) if holder else None,
                    domain_uuid=_get(d, "domain_uuid", str, optional=True),
                    created_at=float(created_at))


def bridge_from_json(d: object, path: str = "record") -> BridgeRecord:
    """A BridgeRecord; Corrupt if it is no record, UnknownFormat if a newer one."""
    if not isinstance(d, dict):
        raise Corrupt("not an object")
    check_format(d, path)
    uplink = _get(d, "uplink", str, optional=True)
    writer = d.get("writer")
    return BridgeRecord(
        bridge=_name(_get(d, "bridge", str)), network=_get(d, "network", str),
        created=_get(d, "created", bool),
        uplink=None if uplink is None else _name(uplink),
        uplink_attached=_get(d, "uplink_attached", bool, optional=True, default=False),
        uplink_was_down=_get(d, "uplink_was_down", bool, optional=True, default=False),
        address=_get(d, "address", str, optional=True),
        writer=_proc(writer) if writer else None,
        kind=_kind(_get(d, "kind", str, optional=True, default="bridge")),
        outbound=_get(d, "outbound", str, optional=True),
        domain=_get(d, "domain", str, optional=True),
        sysctls=_sysctls(_get(d, "sysctls", dict, optional=True, default={})),
        fixes=_fixes(_get(d, "fixes", list, optional=True, default=[])),
        uplink_vlans=_uplink_vlans(_get(d, "uplink_vlans", list, optional=True, default=[])))


def _uplink_vlans(items: list[Any]) -> list[int]:
    if not all(_vid(x) for x in items):
        raise Corrupt("uplink_vlans is not a list of VLAN ids")
    return items


def _filter(d: dict[str, Any] | None) -> dict[str, object] | None:
    if d is None:
        return None
    if not all(isinstance(d.get(k), bool) for k in ("mac", "ip", "guard")) or \
            not isinstance(d.get("addresses"), list) or \
            not all(isinstance(a, str) for a in d["addresses"]):
        raise Corrupt("port filter is not mac, ip, guard and addresses")
    return d


def _ovn(d: dict[str, Any] | None) -> dict[str, object] | None:
    if d is None:
        return None
    net = d.get("net")
    if not all(isinstance(d.get(k), str) for k in ("switch", "port", "chassis")) or \
            not isinstance(net, dict) or not all(isinstance(k, str) for k in net):
        raise Corrupt("ovn is not switch, port, chassis and net")
    try:
        from vmnet.model import Ovn

        Ovn.from_json(net).check("record")
    except (TypeError, InputError) as e:
        raise Corrupt(f"ovn net: {e}") from None
    return d


def _rate(d: dict[str, Any] | None) -> dict[str, list[int]] | None:
    if d is None:
        return None
    for key, value in d.items():
        if key not in ("to_vm", "from_vm") or not isinstance(value, list) or len(value) != 2 \
                or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                           for x in value):
            raise Corrupt("rate is not to_vm/from_vm [bits per second, burst bytes]")
    return d


def _vid(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 4094


def _vlans(d: dict[str, Any] | None) -> dict[str, object] | None:
    if d is None:
        return None
    ok = (set(d) == {"vlan"} and _vid(d["vlan"])) or (
        set(d) == {"trunk", "native"} and isinstance(d["trunk"], list) and
        all(_vid(x) for x in d["trunk"]) and (d["native"] is None or _vid(d["native"])))
    if not ok:
        raise Corrupt("vlans is not {vlan} or {trunk, native}")
    return d


def _kind(kind: str) -> str:
    if kind not in ("bridge", "nat", "isolated"):
        raise Corrupt("unknown network kind")
    return kind


def _sysctls(d: dict[str, Any]) -> dict[str, str]:
    for key, value in d.items():
        if not key.startswith("/proc/sys/net/") or ".." in key or not isinstance(value, str):
            raise Corrupt("sysctl entry is not a /proc/sys/net path and its old value")
    return d


def _fixes(items: list[Any]) -> list[dict[str, object]]:
    for f in items:
        if not isinstance(f, dict) or not all(isinstance(f.get(k), str) for k in (
                "family", "table", "chain", "hook")):
            raise Corrupt("firewall fix is not family, table, chain and hook")
    return items
