"""The typed model: networks, NICs and VMs.  Plain frozen data, validated on entry.

Nothing here touches the host; `vmnet.config` builds these from TOML and CLI
input, and everything else consumes them.
"""

from __future__ import annotations

from vmnet.errors import InputError
from vmnet.model import validate as v
from vmnet.model.names import (
    BARE_BRIDGE,
    BARE_NETWORK,
    DEFAULT_BRIDGE,
    DEFAULT_NETWORK,
    HASHED_TAP_PREFIX,
    MARK_PREFIX,
    QEMU_OUI,
    bridge_mark,
    default_mac,
    default_tap_name,
    nic_mark,
    parse_nic_mark,
    pinned_bridge_mac,
    tap_mac,
)
from vmnet.model.value import Value

KINDS = ("bridge", "nat", "isolated", "ovn")
L3_KINDS = ("nat", "isolated")  # kinds with a host address, DHCP and DNS (vmnet.engine.l3)
DEFAULT_DOMAIN = "vmnet"
MAX_L3_PREFIX = 29  # a /30 leaves one guest address beside the host's: too small for DHCP
OVN_BRIDGE = "br-int"  # the integration bridge ovn-controller manages (its ovn-bridge)
OVS_DB = "unix:/var/run/openvswitch/db.sock"
OVN_NB_DB = "unix:/var/run/ovn/ovnnb_db.sock"
OVN_RUNDIR = "/var/run/ovn"
OVN_BIND_TIMEOUT = 20.0  # seconds `up` waits for this chassis to bind a port


class Ovn(Value):
    """How a kind "ovn" network reaches OVN: its logical switch, the northbound database
    (unix:PATH, tcp:HOST:PORT or ssl:HOST:PORT, with key, certificate and CA for ssl),
    this chassis' Open vSwitch database, and ovn-controller's run directory."""

    __slots__ = ("bind_timeout", "nb", "ovs", "rundir", "ssl_ca", "ssl_cert", "ssl_key",
                 "switch")

    def __init__(self, switch: str, nb: str = OVN_NB_DB, ovs: str = OVS_DB,
                 rundir: str = OVN_RUNDIR, ssl_key: str | None = None,
                 ssl_cert: str | None = None, ssl_ca: str | None = None,
                 bind_timeout: float = OVN_BIND_TIMEOUT) -> None:
        self.switch = switch
        self.nb = nb
        self.ovs = ovs
        self.rundir = rundir
        self.ssl_key = ssl_key
        self.ssl_cert = ssl_cert
        self.ssl_ca = ssl_ca
        self.bind_timeout = bind_timeout

    def check(self, what: str) -> None:
        v.ovn_name(self.switch, f"{what} switch")
        for key, addr in (("northbound", self.nb), ("ovs_db", self.ovs)):
            v.ovsdb_address(addr, f"{what} {key}")
        ssl = (self.ssl_key, self.ssl_cert, self.ssl_ca)
        if self.nb.startswith("ssl:") and None in ssl:
            raise InputError(f"{what} northbound: {self.nb!r} needs ssl_key, ssl_cert and "
                             "ssl_ca (the private key, certificate and CA certificate files)")
        if not self.nb.startswith("ssl:") and ssl != (None, None, None):
            raise InputError(f"{what}: ssl_key, ssl_cert and ssl_ca are for an ssl: "
                             "northbound address")
        for key, path in (("ovn_rundir", self.rundir), ("ssl_key", self.ssl_key),
                          ("ssl_cert", self.ssl_cert), ("ssl_ca", self.ssl_ca)):
            if path is not None and not path.startswith("/"):
                raise InputError(f"{what} {key}: {path!r} is not an absolute path")
        v.duration(self.bind_timeout, f"{what} bind_timeout", 0.1, 600.0)

    def to_json(self) -> dict[str, object]:
        return {k: val for k, val in self.as_dict().items() if val is not None}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> Ovn:
        return cls(**d)  # type: ignore[arg-type]


class Network(Value):
    """A Linux bridge, optionally with an uplink and a host address.

    kind "bridge": the bridge alone (and its uplink).  "nat" and "isolated": a
    bridge vmnet creates, with the host address `address` (None: one chosen
    once, vmnet.engine.subnets), DHCP and DNS for the guests (dnsmasq), and
    for "nat" IPv4 masquerade out of `outbound` (None: the default route's).
    """

    __slots__ = ("address", "bridge", "domain", "forward_delay", "kind", "mtu", "name",
                 "outbound", "ovn", "stp", "upstream", "uplink", "vlan_filtering")

    def __init__(self, name: str, bridge: str, uplink: str | None = None,
                 mtu: int | None = None, stp: bool = False, forward_delay: int = 0,
                 address: str | None = None, kind: str = "bridge",
                 outbound: str | None = None, domain: str | None = None,
                 upstream: tuple[str, ...] | None = None,
                 vlan_filtering: bool = False, ovn: Ovn | None = None) -> None:
        self.vlan_filtering = vlan_filtering  # a bridge vmnet creates is VLAN-aware
        self.ovn = ovn  # kind "ovn": the logical switch and databases (bridge: br-int)
        self.name = name
        self.bridge = bridge
        self.uplink = uplink
        self.mtu = mtu
        self.stp = stp
        self.forward_delay = forward_delay
        self.address: str | None = address
        self.kind = kind
        self.outbound = outbound
        self.domain = domain
        self.upstream = None if upstream is None else tuple(upstream)
        what = f"network {self.name!r}"
        if self.kind not in KINDS:
            raise InputError(f"{what} kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        v.ifname(self.bridge, f"{what} bridge")
        if self.uplink is not None:
            v.ifname(self.uplink, f"{what} uplink")
            if self.uplink == self.bridge:
                raise InputError(f"{what}: uplink {self.uplink!r} is the bridge itself")
        if self.mtu is not None:
            v.mtu(self.mtu, f"{what} mtu")
        v.int_range(self.forward_delay, f"{what} forward_delay", 0, v.FORWARD_DELAY_MAX)
        v.stp_pair(self.stp, self.forward_delay, what)
        if self.address is not None:
            self.address = v.cidr(self.address, f"{what} address")
        if self.kind in L3_KINDS:
            for key, named in (("bridge", self.bridge), ("outbound", self.outbound)):
                if named is not None and not all(c.isascii() and (c.isalnum() or c in "_.-")
                                                 for c in named):
                    raise InputError(f"{what} {key}: {named!r}: a {self.kind} network's "
                                     "interfaces are named with letters, digits, '_', '.' "
                                     "and '-' (they are written into nftables rules)")
            if self.address is not None:
                v.l3_subnet(self.address, f"{what} address", MAX_L3_PREFIX)
            if self.outbound is not None:
                v.ifname(self.outbound, f"{what} outbound")
                if self.outbound == self.bridge:
                    raise InputError(f"{what}: outbound {self.outbound!r} is the bridge itself")
            if self.domain is not None:
                v.dns_label(self.domain, f"{what} domain")
            for i, server in enumerate(self.upstream or ()):
                v.ipv4(server, f"{what} upstream[{i}]")
            if self.uplink is not None:
                raise InputError(f"{what}: a {self.kind} network has no uplink (guests reach "
                                 "the outside through the host's routing); use kind = "
                                 "\"bridge\" to bridge an interface")
        if (self.kind == "ovn") != (self.ovn is not None):
            raise InputError(f"{what}: a kind \"ovn\" network names its logical switch "
                             "(switch = \"...\"); switch and the OVN keys are for kind "
                             "\"ovn\" only")
        if self.ovn is not None:
            self.ovn.check(what)
            if self.uplink is not None or self.address is not None or self.stp:
                raise InputError(f"{what}: an ovn network has no uplink, address or stp "
                                 "(its integration bridge is ovn-controller's)")
        if self.vlan_filtering and self.kind != "bridge":
            raise InputError(f"{what}: vlan_filtering is for kind \"bridge\" networks")
        if self.kind not in L3_KINDS and (self.outbound, self.domain, self.upstream) != (
                None, None, None):
            raise InputError(f"{what}: outbound, domain and upstream are for kind \"nat\" "
                             "or \"isolated\"")

    def with_uplink(self, uplink: str | None) -> Network:
        return self.with_(uplink=uplink)

    def with_(self, **changes: object) -> Network:
        d = self.as_dict()
        d.update(changes)
        return Network(**d)  # type: ignore[arg-type]

    @property
    def l3(self) -> bool:
        """A network with a host address, DHCP and DNS (kind nat or isolated)."""
        return self.kind in L3_KINDS

    @property
    def dns_domain(self) -> str:
        return self.domain or DEFAULT_DOMAIN

    @property
    def bridge_mac(self) -> str:
        """Pinned bridge MAC: locally administered, derived from the bridge name.

        Without it a bridge takes the lowest port MAC and changes it as ports
        come and go, which breaks the host's neighbours' ARP caches.
        """
        return pinned_bridge_mac(self.bridge)

    @property
    def mark(self) -> str:
        return bridge_mark(self.bridge)


class Nic(Value):
    """One virtual NIC of a VM: a tap on a network's bridge."""

    __slots__ = ("addresses", "from_vm", "guard", "index", "ip", "ip_filter", "mac",
                 "mac_filter", "model", "mtu", "native_vlan", "network", "port",
                 "port_isolation", "queues", "tap", "to_vm", "trunk", "vlan", "vnet_hdr")

    def __init__(self, index: int, network: Network, tap: str, mac: str, queues: int = 1,
                 mtu: int | None = None, vnet_hdr: bool = True,
                 model: str = "virtio-net-pci", ip: str | None = None,
                 mac_filter: bool = False, ip_filter: bool = False,
                 guard: bool | None = None, addresses: tuple[str, ...] = (),
                 port_isolation: bool = False, to_vm: tuple[int, int] | None = None,
                 from_vm: tuple[int, int] | None = None, vlan: int | None = None,
                 trunk: tuple[int, ...] = (), native_vlan: int | None = None,
                 port: str | None = None) -> None:
        self.port = port  # an ovn network's logical switch port (None: vmnet-VM-INDEX)
        self.vlan = vlan  # access port: untagged to the VM, its PVID
        self.trunk = tuple(trunk)  # tagged VLANs to the VM
        self.native_vlan = native_vlan  # a trunk's untagged VLAN
        self.port_isolation = port_isolation  # isolated bridge port, no learning
        self.to_vm = to_vm  # rate toward the guest: (bits per second, burst bytes)
        self.from_vm = from_vm  # ... from the guest
        self.mac_filter = mac_filter  # frames, ARP from the VM carry only its MAC
        self.ip_filter = ip_filter  # IPv4/IPv6 sources only from its known addresses
        self.guard = guard  # no RA, redirects, DHCP server replies (None: on with a filter)
        self.addresses = tuple(addresses)  # addresses the VM may use, beside `ip`
        self.index = index
        self.network = network
        self.tap = tap
        self.mac = mac
        self.queues = queues
        self.mtu = mtu
        self.vnet_hdr = vnet_hdr
        self.model = model
        self.ip = ip  # fixed IPv4 address on a nat/isolated network (None: derived)
        what = f"NIC {self.index}"
        v.tap_name(self.tap, f"{what} tap")
        v.mac(self.mac, f"{what} mac")
        v.queues(self.queues, f"{what} queues")
        if self.mtu is not None:
            v.mtu(self.mtu, f"{what} mtu")
        if self.ip is not None:
            if not network.l3 and network.kind != "ovn":
                raise InputError(f"{what} ip: network {network.name!r} is of kind "
                                 f"{network.kind!r}; fixed addresses are for nat, "
                                 "isolated and ovn networks")
            v.ipv4(self.ip, f"{what} ip")
        if self.port is not None:
            if network.kind != "ovn":
                raise InputError(f"{what} port: a logical switch port is for an ovn "
                                 f"network; {network.name!r} is of kind {network.kind!r}")
            v.ovn_name(self.port, f"{what} port")
        if network.kind == "ovn":
            bad = [k for k, on in (("port_isolation", port_isolation),
                                   ("rate", to_vm is not None or from_vm is not None),
                                   ("vlan/trunk", vlan is not None or bool(trunk)))
                   if on]
            if bad:
                raise InputError(f"{what}: {', '.join(bad)} cannot be set on ovn network "
                                 f"{network.name!r}: its ports live on OVN's logical switch "
                                 "(use OVN's QoS, port groups or localnet tags in the "
                                 "northbound database)")

        for i, a in enumerate(self.addresses):
            v.address(a, f"{what} addresses[{i}]")
        if self.vlan is not None:
            v.vlan_id(self.vlan, f"{what} vlan")
            if self.trunk or self.native_vlan is not None:
                raise InputError(f"{what}: give vlan (an access port) or trunk, not both")
        for i, t in enumerate(self.trunk):
            v.vlan_id(t, f"{what} trunk[{i}]")
        if self.native_vlan is not None:
            v.vlan_id(self.native_vlan, f"{what} native_vlan")
            if not self.trunk:
                raise InputError(f"{what}: native_vlan is a trunk's untagged VLAN; give trunk")

    @property
    def guarded(self) -> bool:
        return self.guard if self.guard is not None else (self.mac_filter or self.ip_filter)

    @property
    def tap_mac(self) -> str:
        return tap_mac(self.mac)

    @property
    def multi_queue(self) -> bool:
        return self.queues > 1

    @property
    def netdev_id(self) -> str:
        """The QEMU netdev id vmnet uses for this NIC (documented: net0, net1, ...)."""
        return f"net{self.index}"


class Vm(Value):
    """A VM's network: its owner and NICs."""

    __slots__ = ("gid", "name", "nics", "uid", "user")

    def __init__(self, name: str, uid: int | None, gid: int | None, nics: tuple[Nic, ...],
                 user: str | None = None) -> None:
        self.name = name
        self.uid = uid
        self.gid = gid
        self.nics = nics
        self.user = user  # display name of the owner
        v.vm_name(self.name)
        if not 1 <= len(self.nics) <= v.MAX_NICS:
            raise InputError(f"VM {self.name!r}: needs 1..{v.MAX_NICS} NICs, "
                               f"got {len(self.nics)}")
        taps = [n.tap for n in self.nics]
        if len(set(taps)) != len(taps):
            raise InputError(f"VM {self.name!r}: two NICs share a tap name")
        macs = [n.mac for n in self.nics]
        if len(set(macs)) != len(macs):
            raise InputError(f"VM {self.name!r}: two NICs share a MAC")

    def mark(self, nic: Nic) -> str:
        return nic_mark(self.name, nic.index)

    def lsp(self, nic: Nic) -> str:
        """The logical switch port of a NIC on an ovn network."""
        return nic.port or f"vmnet-{self.name}-{nic.index}"


__all__ = [
    "BARE_BRIDGE",
    "BARE_NETWORK",
    "DEFAULT_BRIDGE",
    "DEFAULT_DOMAIN",
    "DEFAULT_NETWORK",
    "HASHED_TAP_PREFIX",
    "KINDS",
    "L3_KINDS",
    "MARK_PREFIX",
    "OVN_BRIDGE",
    "QEMU_OUI",
    "Network",
    "Nic",
    "Ovn",
    "Vm",
    "bridge_mark",
    "default_mac",
    "default_tap_name",
    "nic_mark",
    "parse_nic_mark",
    "pinned_bridge_mac",
    "tap_mac",
]
