"""Config file (TOML) and CLI overrides -> the validated model.

Precedence: CLI flags > config file > built-in defaults.  Errors name the
file and key (or the flag).  This module reads files and the user database;
the model it returns is plain data.
"""

from __future__ import annotations

import os

from vmnet.config.users import invoking_user, lookup_group, lookup_user
from vmnet.consts import DEFAULT_CONFIG, DEFAULT_DATA_DIR
from vmnet.errors import ConfigError, InputError, NotFoundError
from vmnet.model import (
    BARE_BRIDGE,
    BARE_NETWORK,
    DEFAULT_BRIDGE,
    DEFAULT_NETWORK,
    OVN_BRIDGE,
    Network,
    Nic,
    Ovn,
    Vm,
    default_mac,
    default_tap_name,
)
from vmnet.model import validate as v
from vmnet.model.names import MAC_SCHEMES
from vmnet.model.value import Value

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


_NETWORK_KEYS = {"bridge", "uplink", "mtu", "stp", "forward_delay", "address",
                 "allow_users", "allow_groups", "kind", "outbound", "domain", "upstream",
                 "firewall_fix", "vlan_filtering", "switch", "northbound", "ovs_db",
                 "ovn_rundir", "ssl_key", "ssl_cert", "ssl_ca", "bind_timeout"}
_OVN_KEYS = ("switch", "northbound", "ovs_db", "ovn_rundir", "ssl_key", "ssl_cert", "ssl_ca",
             "bind_timeout")
_VM_KEYS = {"user", "group", "nics"}
_NIC_KEYS = {"network", "mac", "queues", "mtu", "tap", "vnet_hdr", "model", "ip",
             "mac_filter", "ip_filter", "guard", "addresses", "port_isolation", "rate",
             "vlan", "trunk", "native_vlan", "port"}
_RATE_KEYS = {"to_vm", "from_vm", "to_vm_burst", "from_vm_burst"}
_TOP_KEYS = {"networks", "vms", "defaults"}
_DEFAULTS_KEYS = {"network", "mac_scheme", "user_max_nics", "user_max_queues", "data_dir"}
# What one user without root may hold through vmnetd, unless [defaults] says otherwise.
USER_MAX_NICS = 16
USER_MAX_QUEUES = 4


class NicSpec(Value):
    """One `[[vms.NAME.nics]]` table as written (None: not given)."""

    __slots__ = ("addresses", "from_vm", "guard", "ip", "ip_filter", "mac", "mac_filter",
                 "model", "mtu", "native_vlan", "network", "port", "port_isolation", "queues",
                 "tap", "to_vm", "trunk", "vlan", "vnet_hdr")

    def __init__(self, network: str | None = None, mac: str | None = None,
                 queues: int | None = None, mtu: int | None = None, tap: str | None = None,
                 vnet_hdr: bool | None = None, model: str | None = None,
                 ip: str | None = None, mac_filter: bool | None = None,
                 ip_filter: bool | None = None, guard: bool | None = None,
                 addresses: tuple[str, ...] = (), port_isolation: bool | None = None,
                 to_vm: tuple[int, int] | None = None,
                 from_vm: tuple[int, int] | None = None, vlan: int | None = None,
                 trunk: tuple[int, ...] = (), native_vlan: int | None = None,
                 port: str | None = None) -> None:
        self.port = port
        self.vlan = vlan
        self.trunk = tuple(trunk)
        self.native_vlan = native_vlan
        self.to_vm = None if to_vm is None else (int(to_vm[0]), int(to_vm[1]))
        self.from_vm = None if from_vm is None else (int(from_vm[0]), int(from_vm[1]))
        self.port_isolation = port_isolation
        self.mac_filter = mac_filter
        self.ip_filter = ip_filter
        self.guard = guard
        self.addresses = tuple(addresses)
        self.ip = ip
        self.network = network
        self.mac = mac
        self.queues = queues
        self.mtu = mtu
        self.tap = tap
        self.vnet_hdr = vnet_hdr
        self.model = model


class VmSpec(Value):
    """One `[vms.NAME]` table as written."""

    __slots__ = ("group", "nics", "user")

    def __init__(self, user: str | None = None, group: str | None = None,
                 nics: tuple[NicSpec, ...] = ()) -> None:
        self.user = user
        self.group = group
        self.nics = nics


class Access(Value):
    """Who may use a network without root, through vmnetd (`allow_users`, `allow_groups`):
    user and group names or numeric ids, as written."""

    __slots__ = ("groups", "users")

    def __init__(self, users: tuple[str, ...] = (), groups: tuple[str, ...] = ()) -> None:
        self.users = users
        self.groups = groups


class Config(Value):
    """A parsed, validated config file (or the built-in defaults when there is none)."""

    __slots__ = ("path", "networks", "vms", "default_network", "digest", "mac_scheme",
                 "access", "user_max_nics", "user_max_queues", "data_dir", "firewall_fix")

    def __init__(self, path: str | None, networks: dict[str, Network], vms: dict[str, VmSpec],
                 default_network: str = DEFAULT_NETWORK, digest: str | None = None,
                 mac_scheme: str = "qemu", access: dict[str, Access] | None = None,
                 user_max_nics: int = USER_MAX_NICS,
                 user_max_queues: int = USER_MAX_QUEUES, data_dir: str = DEFAULT_DATA_DIR,
                 firewall_fix: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir  # what vmnet keeps across reboots (chosen subnets)
        self.firewall_fix = firewall_fix  # networks whose foreign firewall drops vmnet fixes
        self.path = path
        self.networks = networks
        self.vms = vms
        self.default_network = default_network
        self.digest = digest  # sha256 of the file's bytes: names its parsed form (cache)
        self.mac_scheme = mac_scheme  # how NICs that name no MAC get one (names.default_mac)
        self.access = access or {}  # network name -> who may use it without root
        self.user_max_nics = user_max_nics  # NICs one user without root may have in all
        self.user_max_queues = user_max_queues  # queues per NIC for a user without root

    def to_plain(self) -> tuple[object, ...]:
        """This config as builtin values (for vmnet.config.cache); from_plain reverses it."""
        return (self.path, self.default_network,
                tuple(n.as_dict() for n in self.networks.values()),
                tuple((name, s.user, s.group, tuple(n.as_dict() for n in s.nics))
                      for name, s in self.vms.items()), self.mac_scheme,
                tuple((name, a.users, a.groups) for name, a in self.access.items()),
                self.user_max_nics, self.user_max_queues, self.data_dir, self.firewall_fix)

    @classmethod
    def from_plain(cls, data: Any, digest: str | None) -> Config:
        (path, default_network, networks, vms, mac_scheme, access, max_nics,
         max_queues, data_dir, firewall_fix) = data
        return cls(path=path, default_network=default_network, digest=digest,
                   mac_scheme=mac_scheme,
                   networks={n["name"]: Network(**n) for n in networks},
                   vms={name: VmSpec(user, group, tuple(NicSpec(**n) for n in nics))
                        for name, user, group, nics in vms},
                   access={name: Access(tuple(u), tuple(g)) for name, u, g in access},
                   user_max_nics=max_nics, user_max_queues=max_queues, data_dir=data_dir,
                   firewall_fix=tuple(firewall_fix))

    def with_vm(self, name: str, spec: VmSpec, networks: dict[str, Network]) -> Config:
        """This config with VM `name` specified as `spec`, over `networks`."""
        return Config(self.path, networks, {**self.vms, name: spec}, self.default_network,
                      self.digest, self.mac_scheme, self.access, self.user_max_nics,
                      self.user_max_queues, self.data_dir, self.firewall_fix)


class Overrides(Value):
    """What the CLI (or a hook/script) says about a VM; None means 'not given'."""

    __slots__ = (
        "bridge",
        "group",
        "ips",
        "macs",
        "ip_filter",
        "mac_filter",
        "model",
        "mtu",
        "network",
        "nics",
        "no_guard",
        "port_isolation",
        "rate_from_vm",
        "rate_to_vm",
        "queues",
        "uplink",
        "user",
        "vlan",
        "vnet_hdr",
    )

    def __init__(self, bridge: str | None = None, uplink: str | None = None,
                 user: str | None = None, group: str | None = None, nics: int | None = None,
                 queues: int | None = None, macs: tuple[str, ...] = (), mtu: int | None = None,
                 vnet_hdr: bool | None = None, model: str | None = None,
                 network: str | None = None, ips: tuple[str, ...] = (),
                 mac_filter: bool | None = None, ip_filter: bool | None = None,
                 no_guard: bool | None = None, port_isolation: bool | None = None,
                 rate_to_vm: str | None = None, rate_from_vm: str | None = None,
                 vlan: int | None = None) -> None:
        self.vlan = vlan  # --vlan: every NIC an access port of it
        self.rate_to_vm = rate_to_vm  # as given (--rate-to-vm 100mbit)
        self.rate_from_vm = rate_from_vm
        self.port_isolation = port_isolation
        self.mac_filter = mac_filter  # flags only turn filters on (--mac-filter, ...)
        self.ip_filter = ip_filter
        self.no_guard = no_guard
        self.network = network
        self.ips = ips
        self.bridge = bridge
        self.uplink = uplink
        self.user = user
        self.group = group
        self.nics = nics
        self.queues = queues
        self.macs = macs
        self.mtu = mtu
        self.vnet_hdr = vnet_hdr
        self.model = model

    @property
    def empty(self) -> bool:
        return self == _NO_OVERRIDES


_NO_OVERRIDES = Overrides()


def builtin_network() -> Network:
    """The built-in default: NAT on vmnet0, its subnet chosen once (vmnet.engine.subnets)."""
    return Network(name=DEFAULT_NETWORK, bridge=DEFAULT_BRIDGE, kind="nat")


def builtin_networks() -> dict[str, Network]:
    """The networks every config has unless it redefines them: `default` (NAT) and
    `bare` (the bridge alone, vmnet's default before 0.5)."""
    return {DEFAULT_NETWORK: builtin_network(),
            BARE_NETWORK: Network(name=BARE_NETWORK, bridge=BARE_BRIDGE)}


def _check_keys(table: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} "
                          f"(allowed: {', '.join(sorted(allowed))})")
    return table


def _table(table: Any, where: str) -> dict[str, Any]:
    """A table whose keys are names (networks, VMs): any key, but a table it must be."""
    return _check_keys(table, set(table) if isinstance(table, dict) else set(), where)


def _typed(value: Any, typ: type, where: str) -> Any:
    if value is None:
        return None
    if typ is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, typ):
        raise ConfigError(f"{where}: expected {typ.__name__}, got {value!r}")
    return value


def _principals(t: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    """`allow_users` / `allow_groups`: a list of names or non-negative ids."""
    raw = t.get(key, [])
    if not isinstance(raw, list):
        raise ConfigError(f"{where}.{key}: expected a list of names or numeric ids")
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, bool) or not isinstance(item, str | int) or (
                isinstance(item, int) and not 0 <= item <= 0xFFFFFFFE) or item == "":
            raise ConfigError(f"{where}.{key}[{i}]: expected a name or a numeric id, "
                              f"got {item!r}")
        out.append(str(item))
    return tuple(out)


def _access(t: dict[str, Any], where: str) -> Access | None:
    users = _principals(t, "allow_users", where)
    groups = _principals(t, "allow_groups", where)
    return Access(users, groups) if users or groups else None


def _ovn(t: dict[str, Any], where: str) -> Ovn | None:
    """An ovn network's keys (None: none given; the model says what a kind needs)."""
    if not any(k in t for k in _OVN_KEYS):
        return None
    from vmnet.model import OVN_BIND_TIMEOUT, OVN_NB_DB, OVN_RUNDIR, OVS_DB

    s = {k: _typed(t.get(k), str, f"{where}.{k}") for k in _OVN_KEYS if k != "bind_timeout"}
    timeout = t.get("bind_timeout", OVN_BIND_TIMEOUT)
    return Ovn(switch=s["switch"] or "", nb=s["northbound"] or OVN_NB_DB,
               ovs=s["ovs_db"] or OVS_DB, rundir=s["ovn_rundir"] or OVN_RUNDIR,
               ssl_key=s["ssl_key"], ssl_cert=s["ssl_cert"], ssl_ca=s["ssl_ca"],
               bind_timeout=v.duration(timeout, f"{where}.bind_timeout", 0.1, 600.0))


def _network(name: str, t: dict[str, Any], where: str) -> Network:
    _check_keys(t, _NETWORK_KEYS, where)
    if "bridge" not in t and t.get("kind") == "ovn":
        t = {**t, "bridge": OVN_BRIDGE}  # the integration bridge
    if "bridge" not in t:
        raise ConfigError(f"{where}: 'bridge' is required")
    upstream = t.get("upstream")
    if upstream is not None and (not isinstance(upstream, list) or
                                 not all(isinstance(x, str) for x in upstream)):
        raise ConfigError(f"{where}.upstream: expected a list of IPv4 addresses")
    try:
        return Network(
            name=name,
            bridge=_typed(t["bridge"], str, f"{where}.bridge"),
            uplink=_typed(t.get("uplink"), str, f"{where}.uplink"),
            mtu=_typed(t.get("mtu"), int, f"{where}.mtu"),
            stp=bool(_typed(t.get("stp", False), bool, f"{where}.stp")),
            forward_delay=_typed(t.get("forward_delay", 0), int, f"{where}.forward_delay"),
            address=_typed(t.get("address"), str, f"{where}.address"),
            kind=_typed(t.get("kind", "bridge"), str, f"{where}.kind"),
            outbound=_typed(t.get("outbound"), str, f"{where}.outbound"),
            domain=_typed(t.get("domain"), str, f"{where}.domain"),
            upstream=None if upstream is None else tuple(upstream),
            vlan_filtering=bool(_typed(t.get("vlan_filtering", False), bool,
                                       f"{where}.vlan_filtering")),
            ovn=_ovn(t, where),
        )
    except InputError as e:
        raise ConfigError(f"{where}: {e.message}") from None


def _nic(t: Any, where: str) -> NicSpec:
    _check_keys(t, _NIC_KEYS, where)
    spec = NicSpec(
        network=_typed(t.get("network"), str, f"{where}.network"),
        mac=_typed(t.get("mac"), str, f"{where}.mac"),
        queues=_typed(t.get("queues"), int, f"{where}.queues"),
        mtu=_typed(t.get("mtu"), int, f"{where}.mtu"),
        tap=_typed(t.get("tap"), str, f"{where}.tap"),
        vnet_hdr=_typed(t.get("vnet_hdr"), bool, f"{where}.vnet_hdr"),
        model=_typed(t.get("model"), str, f"{where}.model"),
        ip=_typed(t.get("ip"), str, f"{where}.ip"),
        mac_filter=_typed(t.get("mac_filter"), bool, f"{where}.mac_filter"),
        ip_filter=_typed(t.get("ip_filter"), bool, f"{where}.ip_filter"),
        guard=_typed(t.get("guard"), bool, f"{where}.guard"),
        addresses=tuple(_addresses(t.get("addresses", []), f"{where}.addresses")),
        port_isolation=_typed(t.get("port_isolation"), bool, f"{where}.port_isolation"),
        **_rates(t.get("rate"), f"{where}.rate"),
        vlan=_typed(t.get("vlan"), int, f"{where}.vlan"),
        trunk=tuple(_vids(t.get("trunk", []), f"{where}.trunk")),
        native_vlan=_typed(t.get("native_vlan"), int, f"{where}.native_vlan"),
        port=_typed(t.get("port"), str, f"{where}.port"),
    )
    try:
        if spec.ip is not None:
            spec.ip = v.ipv4(spec.ip, f"{where}.ip")
        if spec.mac is not None:
            v.mac(spec.mac, f"{where}.mac")
        if spec.queues is not None:
            v.queues(spec.queues, f"{where}.queues")
        if spec.mtu is not None:
            v.mtu(spec.mtu, f"{where}.mtu")
        if spec.tap is not None:
            v.tap_name(spec.tap, f"{where}.tap")
        if spec.model is not None:
            _model(spec.model, f"{where}.model")
    except InputError as e:
        raise ConfigError(e.message) from None
    return spec


def _rates(raw: Any, where: str) -> dict[str, tuple[int, int] | None]:
    """`rate = { to_vm = "100mbit", from_vm = "50mbit", to_vm_burst = "64kb", ... }`."""
    if raw is None:
        return {}
    _check_keys(raw, _RATE_KEYS, where)
    out: dict[str, tuple[int, int] | None] = {}
    try:
        for key in ("to_vm", "from_vm"):
            if key in raw:
                out[key] = rate_pair(raw[key], raw.get(f"{key}_burst"), f"{where}.{key}")
            elif f"{key}_burst" in raw:
                raise InputError(f"{where}.{key}_burst: given without {key}")
    except InputError as e:
        raise ConfigError(e.message, hint=e.hint) from None
    return out


def rate_pair(rate: Any, burst: Any, what: str) -> tuple[int, int]:
    """(bits per second, burst bytes); the burst defaults to 10 ms at the rate, at least
    64 KiB (a policer's burst is what a line-rate flurry may exceed it by)."""
    bits = v.rate(rate, what)
    size = v.size(burst, f"{what}_burst") if burst is not None else max(bits // 800, 65536)
    return bits, size


def _list_of(raw: Any, where: str, parse: Callable[[Any, str], Any], what: str) -> list[Any]:
    """A config list, each item through `parse` (errors name the item's index)."""
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of {what}")
    try:
        return [parse(x, f"{where}[{i}]") for i, x in enumerate(raw)]
    except InputError as e:
        raise ConfigError(e.message) from None


def _vids(raw: Any, where: str) -> list[int]:
    return _list_of(raw, where, v.vlan_id, "VLAN ids")


def _addresses(raw: Any, where: str) -> list[str]:
    return _list_of(raw, where, v.address, "IPv4/IPv6 addresses")


def _model(value: str, what: str) -> str:
    if not value or not all(c.isalnum() or c in "-_" for c in value):
        raise InputError(f"{what}: {value!r} is not a QEMU device model name")
    return value


def parse_config(text: str, path: str | None = None) -> Config:
    """Parse TOML text into a Config; errors name the file, line or key."""
    import tomllib  # only when there is a config file: it costs ~3 ms to import

    src = path or "<config>"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{src}: malformed TOML: {e}") from None
    except RecursionError:  # tomllib recurses into nested arrays and inline tables
        raise ConfigError(f"{src}: malformed TOML: values nested too deeply") from None
    _check_keys(data, _TOP_KEYS, src)
    builtins = builtin_networks()
    networks: dict[str, Network] = {}
    access: dict[str, Access] = {}
    fixes: list[str] = []
    for name, t in _table(data.get("networks", {}), f"{src}: [networks]").items():
        networks[name] = _network(name, t, f"{src}: networks.{name}")
        got = _access(t, f"{src}: networks.{name}")
        if got is not None:
            access[name] = got
        if _typed(t.get("firewall_fix", False), bool, f"{src}: networks.{name}.firewall_fix"):
            if not networks[name].l3:
                raise ConfigError(f"{src}: networks.{name}.firewall_fix: only for kind "
                                  "\"nat\" or \"isolated\"")
            fixes.append(name)
    bridges: dict[str, str] = {}
    for n in networks.values():
        if n.kind == "ovn":
            continue  # ovn networks share this chassis' integration bridge
        if n.bridge in bridges:
            raise ConfigError(f"{src}: networks {bridges[n.bridge]!r} and {n.name!r} "
                              f"use the same bridge {n.bridge!r}")
        bridges[n.bridge] = n.name
    for name, b in builtins.items():
        if name not in networks and b.bridge in bridges:
            raise ConfigError(f"{src}: networks {bridges[b.bridge]!r} uses bridge "
                              f"{b.bridge!r}, the built-in network {name!r}'s",
                              hint=f"redefine [networks.{name}] instead, or give "
                                   f"{bridges[b.bridge]!r} another bridge")
    networks = {**{k: b for k, b in builtins.items() if k not in networks}, **networks}
    _refuse_overlaps(networks, src)
    defaults = _check_keys(data.get("defaults", {}), _DEFAULTS_KEYS, f"{src}: [defaults]")
    mac_scheme = _typed(defaults.get("mac_scheme", "qemu"), str, f"{src}: defaults.mac_scheme")
    if mac_scheme not in MAC_SCHEMES:
        raise ConfigError(f"{src}: defaults.mac_scheme: {mac_scheme!r} is not one of "
                          f"{', '.join(MAC_SCHEMES)}",
                          hint="\"local\" gives 40 bits (for thousands of VMs); \"qemu\" is "
                               "the default")
    data_dir = _typed(defaults.get("data_dir", DEFAULT_DATA_DIR), str,
                      f"{src}: defaults.data_dir")
    if not data_dir.startswith("/"):
        raise ConfigError(f"{src}: defaults.data_dir: {data_dir!r} is not an absolute path")
    default_network = _typed(defaults.get("network", DEFAULT_NETWORK), str,
                             f"{src}: defaults.network")
    if default_network not in networks:
        raise ConfigError(f"{src}: defaults.network names unknown network {default_network!r}")
    vms: dict[str, VmSpec] = {}
    for name, t in _table(data.get("vms", {}), f"{src}: [vms]").items():
        where = f"{src}: vms.{name}"
        try:
            v.vm_name(name, where)
        except InputError as e:
            raise ConfigError(e.message) from None
        _check_keys(t, _VM_KEYS, where)
        nics_raw = t.get("nics", [])
        if not isinstance(nics_raw, list):
            raise ConfigError(f"{where}.nics: expected an array of tables ([[vms.{name}.nics]])")
        nics = tuple(_nic(n, f"{where}.nics[{i}]") for i, n in enumerate(nics_raw))
        for i, nic in enumerate(nics):
            if nic.network is not None and nic.network not in networks:
                raise ConfigError(f"{where}.nics[{i}].network: unknown network "
                                  f"{nic.network!r}")
        user = t.get("user")
        group = t.get("group")
        for key, val in (("user", user), ("group", group)):
            # bool is an int to Python, and a negative id is nobody's.
            if val is not None and (isinstance(val, bool) or not isinstance(val, str | int)
                                    or (isinstance(val, int) and val < 0)):
                raise ConfigError(f"{where}.{key}: expected a name or a numeric id")
        vms[name] = VmSpec(user=None if user is None else str(user),
                           group=None if group is None else str(group), nics=nics)
    limits = [_typed(defaults.get(key, dflt), int, f"{src}: defaults.{key}")
              for key, dflt in (("user_max_nics", USER_MAX_NICS),
                                ("user_max_queues", USER_MAX_QUEUES))]
    for key, value, hi in (("user_max_nics", limits[0], 4096),
                           ("user_max_queues", limits[1], v.MAX_QUEUES)):
        if not 0 <= value <= hi:
            raise ConfigError(f"{src}: defaults.{key}: {value} is not in 0-{hi}")
    return Config(path=path, networks=networks, vms=vms, default_network=default_network,
                  mac_scheme=mac_scheme, access=access, user_max_nics=limits[0],
                  user_max_queues=limits[1], data_dir=data_dir, firewall_fix=tuple(fixes))


def _refuse_overlaps(networks: dict[str, Network], src: str) -> None:
    """Two nat/isolated networks whose subnets overlap would route each other's guests
    to the wrong bridge."""
    import ipaddress

    seen: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    for n in networks.values():
        if not n.l3 or n.address is None:
            continue
        net = ipaddress.ip_interface(n.address).network
        for other, onet in seen:
            if net.overlaps(onet):
                raise ConfigError(f"{src}: networks {other!r} ({onet}) and {n.name!r} ({net}) "
                                  "have overlapping subnets",
                                  hint="give each nat/isolated network a subnet of its own")
        seen.append((n.name, net))


def load_config(path: str | None = None, env: Mapping[str, str] | None = None,
                cache_dir: str | None = None) -> Config:
    """Load from --config, $VMNET_CONFIG or /etc/vmnet/vmnet.toml (optional).

    With `cache_dir` (vmnet's state directory), a parse of the file's exact bytes
    kept there (vmnet.config.cache) is reused while the file is unchanged: tomllib
    costs ~17 ms to import, more than the rest of a VM start.  The caller stores a
    fresh parse with `cache.save` once its operation has succeeded (so a refused
    command leaves the state directory as it was).
    """
    env = os.environ if env is None else env
    explicit = path or env.get("VMNET_CONFIG") or None
    target = explicit or DEFAULT_CONFIG
    try:
        with open(target, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {target} does not exist",
                              hint="give an existing file with --config, or unset "
                                   "VMNET_CONFIG to use the built-in defaults") from None
        return Config(path=None, networks=builtin_networks(), vms={})
    except OSError as e:
        raise ConfigError(f"cannot read config file {target}: {e.strerror}") from None
    from vmnet.config import cache

    digest = cache.digest(raw)
    known = cache.recall(digest, target)  # this process parsed these bytes already (vmnetd)
    if known is not None:
        return known
    if cache_dir is not None:
        cached = cache.load(cache_dir, digest)
        if cached is not None and cached.path == target:
            return cache.remember(cached)
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{target}: not UTF-8 text") from None
    cfg = parse_config(text, target)
    cfg.digest = digest
    return cache.remember(cfg)


# -- users (vmnet.config.users looks them up) --------------------------------------
def resolve_user(value: str, what: str = "--user") -> tuple[int, str]:
    found = lookup_user(value)
    if found is None:
        if value.isascii() and value.isdigit():
            raise InputError(f"{what}: uid {value} is out of range")
        raise NotFoundError(f"{what}: unknown user {value!r}",
                            hint="give an existing user name or a numeric uid")
    return found


def resolve_group(value: str, what: str = "--group") -> int:
    found = lookup_group(value)
    if found is None:
        if value.isascii() and value.isdigit():
            raise InputError(f"{what}: gid {value} is out of range")
        raise NotFoundError(f"{what}: unknown group {value!r}",
                            hint="give an existing group name or a numeric gid")
    return found


# -- resolution ----------------------------------------------------------
def _network_for(cfg: Config, name: str | None, ov: Overrides) -> Network:
    if ov.network is not None:
        if ov.bridge is not None:
            raise InputError("give --network or --bridge, not both")
        if ov.network not in cfg.networks:
            raise InputError(f"--network: no network {ov.network!r}",
                                hint="networks: " + ", ".join(sorted(cfg.networks)))
        name = ov.network
    if ov.bridge is not None:
        v.ifname(ov.bridge, "--bridge")
        net = next((n for n in cfg.networks.values() if n.bridge == ov.bridge), None)
        if net is None:
            net = Network(name=ov.bridge, bridge=ov.bridge)
    else:
        net = cfg.networks[name or cfg.default_network]
    if ov.uplink is not None:
        v.ifname(ov.uplink, "--uplink")
        if ov.uplink == net.bridge:
            raise InputError(f"--uplink: {ov.uplink!r} is the bridge itself")
        net = net.with_uplink(ov.uplink)
    return net


def _nic_ip(flag: str | None, spec: str | None, net: Network, index: int,
            where: str) -> str | None:
    if (flag or spec) is not None and not net.l3 and net.kind != "ovn":
        what = f"--ip (#{index + 1})" if flag is not None else f"{where}.nics[{index}].ip"
        raise InputError(f"{what}: NIC {index} is on network {net.name!r}, of kind "
                         f"{net.kind}; fixed addresses are for nat, isolated and ovn "
                         "networks")
    return flag or spec


def resolve_vm(cfg: Config, name: str, ov: Overrides | None = None,
               env: Mapping[str, str] | None = None) -> Vm:
    """Build the validated Vm for `name` from config, overrides and defaults."""
    ov = ov or Overrides()
    env = os.environ if env is None else env
    v.vm_name(name)
    spec = cfg.vms.get(name, VmSpec())
    if ov.nics is not None:
        v.int_range(ov.nics, "--nics", 1, v.MAX_NICS)
    if ov.queues is not None:
        v.queues(ov.queues, "--queues")
    if ov.mtu is not None:
        v.mtu(ov.mtu, "--mtu")
    for i, m in enumerate(ov.macs):
        v.mac(m, f"--mac (#{i + 1})")
    if ov.model is not None:
        _model(ov.model, "--model")
    count = ov.nics or len(spec.nics) or 1
    if len(ov.macs) > count:
        raise InputError(f"--mac given {len(ov.macs)} times for {count} NIC(s)",
                         hint=f"give --nics {len(ov.macs)} for one MAC per NIC")
    if len(ov.ips) > count:
        raise InputError(f"--ip given {len(ov.ips)} times for {count} NIC(s)",
                         hint=f"give --nics {len(ov.ips)} for one address per NIC")
    ips = tuple(v.ipv4(a, f"--ip (#{i + 1})") for i, a in enumerate(ov.ips))

    user_src = ov.user if ov.user is not None else spec.user
    group_src = ov.group if ov.group is not None else spec.group
    uid: int | None
    user: str | None
    if user_src is not None:
        uid, user = resolve_user(user_src, "--user" if ov.user is not None
                                 else f"vms.{name}.user")
    elif group_src is not None:
        uid, user = None, None  # a group alone grants access to that group
    else:
        uid, user = resolve_user(invoking_user(env), "invoking user (SUDO_USER)")
    gid = None if group_src is None else resolve_group(
        group_src, "--group" if ov.group is not None else f"vms.{name}.group")

    nics = []
    for i in range(count):
        nspec = spec.nics[i] if i < len(spec.nics) else NicSpec()
        net = _network_for(cfg, nspec.network, ov)
        nics.append(Nic(
            index=i,
            network=net,
            tap=nspec.tap or default_tap_name(name, i),
            mac=(ov.macs[i] if i < len(ov.macs) else None) or nspec.mac or
            default_mac(name, i, cfg.mac_scheme),
            queues=ov.queues or nspec.queues or 1,
            mtu=ov.mtu or nspec.mtu,
            vnet_hdr=ov.vnet_hdr if ov.vnet_hdr is not None else
            (nspec.vnet_hdr if nspec.vnet_hdr is not None else True),
            model=ov.model or nspec.model or "virtio-net-pci",
            ip=_nic_ip(ips[i] if i < len(ips) else None, nspec.ip, net, i, f"vms.{name}"),
            mac_filter=bool(ov.mac_filter or nspec.mac_filter),
            ip_filter=bool(ov.ip_filter or nspec.ip_filter),
            guard=False if ov.no_guard else nspec.guard,
            addresses=nspec.addresses,
            port_isolation=bool(ov.port_isolation or nspec.port_isolation),
            to_vm=rate_pair(ov.rate_to_vm, None, "--rate-to-vm") if ov.rate_to_vm
            else nspec.to_vm,
            from_vm=rate_pair(ov.rate_from_vm, None, "--rate-from-vm") if ov.rate_from_vm
            else nspec.from_vm,
            vlan=ov.vlan if ov.vlan is not None else nspec.vlan,
            trunk=() if ov.vlan is not None else nspec.trunk,
            native_vlan=None if ov.vlan is not None else nspec.native_vlan,
            port=nspec.port,
        ))
    return Vm(name=name, uid=uid, gid=gid, nics=tuple(nics), user=user)
