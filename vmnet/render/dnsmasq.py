"""dnsmasq's command line for one nat/isolated network, and its per-NIC host lines.

`--bind-dynamic` (libvirt's choice), not `--bind-interfaces`: with the latter dnsmasq
dumps the namespace's addresses on every DHCP packet, so a lease took 2.3x as long with
200 NICs as with 10 (bench/nat.py).

dnsmasq is confined to the network's bridge and reads no file of the host:
no /etc/dnsmasq.conf, /etc/hosts or /etc/resolv.conf (upstream servers are
given as --server).  Every guest address is a static lease (`static` range:
a MAC vmnet did not record gets none), one file per NIC in --dhcp-hostsdir and
--hostsdir, which dnsmasq re-reads by inotify as NICs come and go.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from vmnet.kinds.l3 import L3

LEASE_TIME = "1h"


class Paths:
    """Where one network's dnsmasq keeps its files (under vmnet's state directory)."""

    __slots__ = ("dir",)

    def __init__(self, directory: str) -> None:
        self.dir = directory

    @property
    def pid(self) -> str:
        return f"{self.dir}/pid"

    @property
    def leases(self) -> str:
        return f"{self.dir}/leases"

    @property
    def hosts(self) -> str:
        return f"{self.dir}/hosts"

    @property
    def names(self) -> str:
        return f"{self.dir}/names"

    @property
    def log(self) -> str:
        return f"{self.dir}/log"


def argv(binary: str, net: L3, paths: Paths, *, user: str, group: str,
         upstream: tuple[str, ...] = (), mtu: int | None = None) -> list[str]:
    """The dnsmasq command (it daemonizes itself once it listens, reporting a failed start
    through its exit status, so the caller knows at once and leaves no child)."""
    out = [binary, "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
           f"--interface={net.bridge}", "--bind-dynamic", "--except-interface=lo",
           f"--listen-address={net.gateway}",
           f"--dhcp-range={net.network_address},static,{net.netmask},{LEASE_TIME}",
           "--dhcp-authoritative", "--no-ping", f"--dhcp-leasefile={paths.leases}",
           f"--pid-file={paths.pid}", f"--dhcp-hostsdir={paths.hosts}",
           f"--hostsdir={paths.names}", f"--domain={net.domain}", f"--local=/{net.domain}/",
           "--expand-hosts", "--domain-needed", "--bogus-priv",
           f"--log-facility={paths.log}", f"--user={user}", f"--group={group}"]
    if net.kind == "isolated":
        out.append("--dhcp-option=option:router")  # no default route: no way out
    if mtu:
        out.append(f"--dhcp-option=option:mtu,{mtu}")
    out += [f"--server={s}" for s in upstream]
    return out


def host_lines(mac: str, ip: str, name: str | None) -> tuple[str, str | None]:
    """(the --dhcp-hostsdir line, the --hostsdir line or None when the NIC has no name)."""
    if name is None:
        return f"{mac},{ip}\n", None
    return f"{mac},{ip},{name}\n", f"{ip} {name}\n"
