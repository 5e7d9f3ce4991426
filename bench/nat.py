"""vmnet's nat networks: DHCP lease time against a bare dnsmasq, and 200 NICs on one network.

    python bench/nat.py [--sizes 10,200] [--repeat 3] [--samples 200] [--json FILE]

No QEMU: a stand-in DHCP client opens a VM's persistent tap (/dev/net/tun,
TUNSETIFF IFF_TAP|IFF_NO_PI on the tap `vmnet up` made, checked to be that
same link), writes raw Ethernet frames (DHCPDISCOVER, then DHCPREQUEST, from
the VM's guest MAC, broadcast, option 55 = 1,3,6,15,26,28,51,54) and times
until the OFFER / ACK for its xid comes back out of the tap fd (other frames,
IPv6 and ARP, are read and ignored).  Every offer is checked against the
address vmnet recorded (`vmnet ip VM --json`, or `vmnet status --json`).

1. Lease time: DISCOVER->OFFER and REQUEST->ACK (p50/p90/max) against vmnet's
   dnsmasq (a nat network with one VM), interleaved exchange by exchange with
   the same client against a dnsmasq this bench starts by hand in another
   namespace on a plain bridge + tap with one static host (BEYOND.md's command
   line, the host in a --dhcp-hostsfile, logging to a file as vmnet's does;
   its tap with IPv6 off as vmnet's).  Target: vmnet / bare of the p50s.
2. N NICs on one nat network, every N in a fresh namespace of its own, all
   sizes at once, --repeat times: `vmnet up vI` one command each (whole
   process), the sizes' ups interleaved by progress (N=10's spread over
   N=200's time); the per-NIC cost is the mean of ups 2..N (the 1st also makes
   the network: bridge, nft table, dnsmasq; shown apart); the marginal cost is
   time-matched: the median ratio of the large N's up #j to the small N's up
   #k that ran next to it, k in the small N's second half (j = k * N_hi/N_lo,
   so NICs 120..200 against 6..10); the medians of the last 5 ups are shown.
   Then NICs 1..N-1 each lease once (each offer checked against `vmnet status
   --json`), and the Nth NIC's lease time is measured with N-1 leased,
   interleaved with the other sizes' and with a bare dnsmasq holding the same
   N taps (enslaved, up, IPv6 off), N static hosts and N-1 leases (a
   reference: what dnsmasq itself costs at N).  Then one `vmnet
   down` of all of them (whole process), and nothing may be left: no process
   in the namespace (dnsmasq), no `table ip vmnet`, no link but lo, no dnsmasq
   file.  Targets: per-NIC up cost, marginal up cost and the Nth NIC's lease
   time each within x1.3 from the smallest N to the largest; the Nth lease
   within x1.3 of the bare dnsmasq's at the largest N.

Ratios, not absolute times, are the result: the machine is shared.  State on
/dev/shm (dnsmasq drops root: every parent is made o+x), everything in
network namespaces of the bench's own, which go (their processes killed by
PID first) whatever happens.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import math
import os
import secrets
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, ".venv", "bin", "python")
if not os.path.exists(PY):
    PY = sys.executable
DNSMASQ = "/usr/sbin/dnsmasq"
BRIDGE = "vmnet0"
ADDRESS = "10.77.0.1/22"  # room for 1,021 guests
TARGETS = {"lease": 1.3, "growth": 1.3}
EXCHANGE_TIMEOUT = 2.0  # s a DHCP reply may take before the exchange counts as lost
MARGINAL = 5  # the last ups whose median is the marginal per-NIC cost
MAX_LOST_IN_A_ROW = 3

# -- namespaces, processes --------------------------------------------------------------
NS_PREFIX = "vmnatbench-"
_LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def ip_(*argv: str, check: bool = True) -> str:
    return subprocess.run(["ip", *argv], check=check, capture_output=True,
                          text=True).stdout


def ns_pids(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                         check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def kill_ns_procs(ns: str) -> list[int]:
    """SIGTERM, then SIGKILL, each process inside the bench's namespace `ns` (by PID):
    vmnet's dnsmasq, or the bench's own.  The PIDs it found."""
    pids = ns_pids(ns)
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in pids:
        if alive(pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return pids


@contextmanager
def netns() -> Iterator[str]:
    """A throwaway namespace; at the end its processes are killed, then it is deleted."""
    name = f"{NS_PREFIX}{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        kill_ns_procs(name)
        subprocess.run(["ip", "netns", "del", name], check=False)


@contextmanager
def inside(ns: str) -> Iterator[None]:
    """This thread in namespace `ns` for the block (setns), then back in its own."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _LIBC.setns(target, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns {ns}: {os.strerror(e)}")
        try:
            yield
        finally:
            if _LIBC.setns(own, CLONE_NEWNET) != 0:  # never go on in the wrong namespace
                print(f"setns back from {ns} failed: {os.strerror(ctypes.get_errno())}",
                      file=sys.stderr)
                os._exit(1)
    finally:
        os.close(own)
        os.close(target)


# -- the tap and the DHCP client ---------------------------------------------------------
TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
VNET_HDR_LEN = 10
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
PARAMS = bytes([1, 3, 6, 15, 26, 28, 51, 54])


def link_json(ns: str, name: str) -> dict[str, object] | None:
    r = subprocess.run(["ip", "-n", ns, "-j", "-d", "link", "show", "dev", name],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return None
    got: list[dict[str, object]] = json.loads(r.stdout)
    return got[0] if got else None


def port_state(ns: str, tap: str) -> str | None:
    out = subprocess.run(["bridge", "-n", ns, "-j", "link", "show", "dev", tap],
                         capture_output=True, text=True, check=False).stdout
    rows: list[dict[str, object]] = json.loads(out or "[]")
    return str(rows[0].get("state")) if rows else None


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def dhcp_frame(mac: bytes, xid: int, kind: int, hostname: str,
               requested: bytes | None = None, server: bytes | None = None) -> bytes:
    """A broadcast Ethernet/IPv4/UDP 68->67 frame with one BOOTREQUEST."""
    opts = bytes([53, 1, kind, 61, 7, 1]) + mac
    opts += bytes([12, len(hostname)]) + hostname.encode()
    if requested is not None:
        opts += bytes([50, 4]) + requested
    if server is not None:
        opts += bytes([54, 4]) + server
    opts += bytes([55, len(PARAMS)]) + PARAMS + b"\xff"
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128sI", 1, 1, 6, 0, xid, 0, 0, bytes(4),
                        bytes(4), bytes(4), bytes(4), mac, b"", b"", 0x63825363) + opts
    bootp += bytes(max(0, 300 - len(bootp)))
    udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), xid & 0xFFFF, 0, 64, 17, 0,
                      bytes(4), b"\xff" * 4)
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return b"\xff" * 6 + mac + b"\x08\x00" + hdr + udp


@dataclass
class Reply:
    kind: int
    yiaddr: str
    options: dict[int, bytes]

    @property
    def server(self) -> bytes | None:
        return self.options.get(54)


def parse_reply(frame: bytes, mac: bytes, xid: int) -> Reply | None:
    """The BOOTREPLY for (mac, xid) in an Ethernet frame, else None."""
    if len(frame) < 14 + 20 + 8 + 240 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 15) * 4
    if frame[23] != 17:
        return None
    udp = 14 + ihl
    if struct.unpack("!H", frame[udp + 2:udp + 4])[0] != 68:
        return None
    b = frame[udp + 8:]
    if len(b) < 240 or b[0] != 2 or struct.unpack("!I", b[4:8])[0] != xid or \
            b[28:34] != mac or b[236:240] != b"\x63\x82\x53\x63":
        return None
    options: dict[int, bytes] = {}
    i = 240
    while i < len(b) and b[i] != 255:
        if b[i] == 0:
            i += 1
            continue
        if i + 1 >= len(b):
            break
        n = b[i + 1]
        options[b[i]] = b[i + 2:i + 2 + n]
        i += 2 + n
    kind = options.get(53, b"\0")[0]
    return Reply(kind, socket.inet_ntoa(b[16:20]), options)


class Tap:
    """A fd on an existing persistent tap (no other is ever made): the guest's side."""

    def __init__(self, ns: str, name: str, mac: str, hostname: str) -> None:
        self.ns, self.name, self.hostname = ns, name, hostname
        self.mac = mac_bytes(mac)
        link = link_json(ns, name)
        if link is None:
            raise RuntimeError(f"no link {name} in {ns}: not opening /dev/net/tun on it")
        info = link.get("linkinfo") or {}
        data = info.get("info_data") or {} if isinstance(info, dict) else {}
        assert isinstance(info, dict) and isinstance(data, dict)
        if info.get("info_kind") != "tun" or data.get("type") != "tap" or \
                not data.get("persist"):
            raise RuntimeError(f"{name} in {ns} is no persistent tap: {info}")
        self.vnet_hdr = bool(data.get("vnet_hdr"))
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if self.vnet_hdr else 0) | \
            (IFF_MULTI_QUEUE if data.get("multi_queue") else 0)
        with inside(ns):
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
                got, gflags = struct.unpack("16sH22x", fcntl.ioctl(fd, TUNGETIFF, bytes(40)))
                index = socket.if_nametoindex(name)
            except BaseException:
                os.close(fd)
                raise
        self.fd = fd
        if got.rstrip(b"\0").decode() != name or index != link.get("ifindex") or \
                not gflags & IFF_TAP:
            self.close()
            raise RuntimeError(f"attached to {got!r} (index {index}), not the tap {name} "
                               f"(index {link.get('ifindex')})")
        deadline = time.monotonic() + 5  # carrier on: the bridge port goes forwarding
        while port_state(ns, name) != "forwarding":
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"bridge port {name} is {port_state(ns, name)}, "
                                   "not forwarding, with a fd attached")
            time.sleep(0.01)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def drain(self) -> None:
        while select.select([self.fd], [], [], 0)[0]:
            try:
                os.read(self.fd, 65536)
            except BlockingIOError:
                return

    def exchange(self, frame: bytes, xid: int, want: int,
                 mac: bytes) -> tuple[float, Reply | None]:
        """Write `frame`; the time (s) until the reply of kind `want` for xid comes out."""
        self.drain()
        pre = bytes(VNET_HDR_LEN) if self.vnet_hdr else b""
        t0 = time.perf_counter()
        os.write(self.fd, pre + frame)
        deadline = t0 + EXCHANGE_TIMEOUT
        while True:
            left = deadline - time.perf_counter()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return time.perf_counter() - t0, None
            try:
                got = os.read(self.fd, 65536)
            except BlockingIOError:
                continue
            t = time.perf_counter() - t0
            r = parse_reply(got[len(pre):], mac, xid)
            if r is not None and r.kind in (want, NAK):
                return t, r

    def dora(self, mac: str | None = None, hostname: str | None = None
             ) -> tuple[float | None, float | None, Reply | None]:
        """DISCOVER->OFFER, REQUEST->ACK times (None: lost or refused) and the offer; from
        the guest's MAC, or another (a guest behind the same port, as the bridge sees it)."""
        xid = secrets.randbits(32)
        src = self.mac if mac is None else mac_bytes(mac)
        name = hostname or self.hostname
        t_offer, offer = self.exchange(dhcp_frame(src, xid, DISCOVER, name), xid, OFFER, src)
        if offer is None or offer.kind != OFFER:
            return None, None, offer
        req = dhcp_frame(src, xid, REQUEST, name, requested=socket.inet_aton(offer.yiaddr),
                         server=offer.server)
        t_ack, ack = self.exchange(req, xid, ACK, src)
        if ack is None or ack.kind != ACK or ack.yiaddr != offer.yiaddr:
            return t_offer, None, offer
        return t_offer, t_ack, offer


# -- vmnet ---------------------------------------------------------------------------
class Vmnet:
    """vmnet's CLI (`python -m vmnet`, a whole process each) on one namespace and state."""

    def __init__(self, ns: str, root: str) -> None:
        self.ns = ns
        self.state = os.path.join(root, f"state-{ns}")
        self.cfg = os.path.join(root, f"{ns}.toml")
        with open(self.cfg, "w") as f:
            f.write(f'[defaults]\ndata_dir = "{root}/data-{ns}"\n'
                    f'[networks.default]\nbridge = "{BRIDGE}"\nkind = "nat"\n'
                    f'address = "{ADDRESS}"\n')

    def argv(self, *args: str) -> list[str]:
        return [PY, "-m", "vmnet", "--state-dir", self.state, "--config", self.cfg,
                "--netns", self.ns, *args]

    def run(self, *args: str) -> tuple[float, str]:
        """Whole-process wall time (s) and stdout; an error if it fails."""
        t0 = time.perf_counter()
        r = subprocess.run(self.argv(*args), capture_output=True, text=True, check=False,
                           cwd=ROOT)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"vmnet {' '.join(args[:4])} failed ({r.returncode}): "
                               f"{r.stderr.strip()[-800:]}")
        return dt, r.stdout

    def ip_json(self, vm: str, *more: str) -> dict[str, object]:
        got: dict[str, object] = json.loads(self.run("ip", vm, "--json", *more)[1])
        return got

    def nics(self) -> dict[str, tuple[str, str, str]]:
        """VM -> (tap, guest MAC, address) of NIC 0, from `vmnet status --json`."""
        st = json.loads(self.run("status", "--json")[1])
        return {v["vm"]: (n["tap"], n["mac"], n["ip"]) for v in st["vms"] for n in v["nics"]
                if n["index"] == 0}

    def leftovers(self) -> list[str]:
        """What of a nat network is left in the namespace after the last down."""
        left = []
        pids = ns_pids(self.ns)
        if pids:
            left.append(f"processes {pids}: " + "; ".join(
                " ".join(_cmdline(p)[:2]) for p in pids))
        r = subprocess.run(["ip", "netns", "exec", self.ns, "nft", "list", "table", "ip",
                            "vmnet"], capture_output=True, text=True, check=False)
        if r.returncode == 0:
            left.append("table ip vmnet")
        links = [ln.split(": ")[1].split("@")[0]
                 for ln in ip_("-n", self.ns, "-o", "link").splitlines() if ": " in ln]
        left += [f"link {n}" for n in links if n != "lo"]
        for dirpath, _dirs, files in os.walk(self.state):
            if "dnsmasq" in dirpath.split(os.sep):
                left += [f"file {os.path.join(dirpath, f)}" for f in files]
        return left


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


# -- the bare dnsmasq baseline -------------------------------------------------------------
class Bare:
    """A dnsmasq started by hand (BEYOND.md's line, static hosts in one --dhcp-hostsfile,
    logging to a file as vmnet's does) on a plain bridge in namespace `ns` with the
    client's tap `tap0` and `taps - 1` more (persistent, IPv6 off, enslaved, up: like
    vmnet's); in the foreground, in a session of its own: the bench owns its PID."""

    def __init__(self, ns: str, root: str, hosts: list[tuple[str, str, str]],
                 taps: int = 1, extra: tuple[str, ...] = ()) -> None:
        self.ns = ns
        d = os.path.join(root, f"bare-{ns}")
        os.makedirs(d, mode=0o755)
        gw = ADDRESS.partition("/")[0]
        net = ipv4_network(ADDRESS)
        names = ["tap0", *(f"t{i}" for i in range(1, taps))]
        with open(f"{d}/hosts", "w") as f:
            f.writelines(f"{mac},{ip},{name}\n" for mac, ip, name in hosts)
        with open(f"{d}/make", "w") as f:
            f.write(f"link add br0 type bridge forward_delay 0 stp_state 0\n"
                    f"addr add {ADDRESS} dev br0\nlink set br0 up\n")
            f.writelines(f"tuntap add dev {t} mode tap\n" for t in names)
        with open(f"{d}/enslave", "w") as f:
            f.write(f"link set tap0 address fe{hosts[0][0][2:]}\n")
            f.writelines(f"link set {t} master br0 up\n" for t in names)
        subprocess.run(["ip", "-n", ns, "-batch", f"{d}/make"], check=True)
        with inside(ns):  # (/proc/sys/net is the opener's namespace's)
            for t in names:
                with open(f"/proc/sys/net/ipv6/conf/{t}/disable_ipv6", "w") as f:
                    f.write("1")
        subprocess.run(["ip", "-n", ns, "-batch", f"{d}/enslave"], check=True)
        argv = ["ip", "netns", "exec", ns, DNSMASQ, "--keep-in-foreground",
                "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--interface=br0",
                "--bind-interfaces", "--except-interface=lo", f"--listen-address={gw}",
                f"--dhcp-range={net[0]},static,{net[1]},1h", "--dhcp-authoritative",
                "--no-ping", f"--dhcp-leasefile={d}/leases", f"--pid-file={d}/pid",
                f"--dhcp-hostsfile={d}/hosts", f"--log-facility={d}/log", *extra]
        self.log = f"{d}/log"
        # a session of its own, as vmnet's daemonized dnsmasq has (and so, with
        # sched_autogroup, a scheduling group of its own, not the bench's)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.pid = self.proc.pid  # `ip netns exec` execs: dnsmasq's own PID
        deadline = time.monotonic() + 10
        while not self.listening():
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"bare dnsmasq exited {self.proc.returncode}: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("bare dnsmasq does not listen on udp 67 after 10 s")
            time.sleep(0.02)

    def listening(self) -> bool:
        out = subprocess.run(["ip", "netns", "exec", self.ns, "ss", "-Hulpn", "sport", "=",
                              ":67"], capture_output=True, text=True, check=False).stdout
        return f"pid={self.pid}," in out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()


def ipv4_network(cidr: str) -> tuple[str, str]:
    """(network address, netmask) of an IPv4 address/prefix."""
    addr, _, plen = cidr.partition("/")
    mask = (0xFFFFFFFF << (32 - int(plen))) & 0xFFFFFFFF
    n = struct.unpack("!I", socket.inet_aton(addr))[0] & mask
    return socket.inet_ntoa(struct.pack("!I", n)), socket.inet_ntoa(struct.pack("!I", mask))


# -- statistics ----------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    v = sorted(values)
    return v[max(0, min(len(v) - 1, math.ceil(len(v) * q / 100) - 1))] if v else math.nan


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": percentile(values, 50) * 1e3,
            "p90_ms": percentile(values, 90) * 1e3,
            "max_ms": max(values) * 1e3 if values else math.nan}


@dataclass
class Leases:
    """One client's lease exchanges."""

    offer: list[float] = field(default_factory=list)
    ack: list[float] = field(default_factory=list)
    lost: int = 0
    wrong: list[str] = field(default_factory=list)
    streak: int = 0  # exchanges lost in a row

    def add(self, got: tuple[float | None, float | None, Reply | None], want_ip: str) -> None:
        t_offer, t_ack, offer = got
        if offer is not None and offer.kind == OFFER and offer.yiaddr != want_ip:
            self.wrong.append(f"offered {offer.yiaddr}, recorded {want_ip}")
        if t_offer is None or t_ack is None:
            self.lost += 1
            self.streak += 1
            if self.streak >= MAX_LOST_IN_A_ROW:  # a dead server: stop, not wait it out
                raise RuntimeError(f"{self.streak} DHCP exchanges in a row got no "
                                   f"OFFER/ACK for {want_ip} (last: {offer})")
            return
        self.streak = 0
        self.offer.append(t_offer)
        self.ack.append(t_ack)

    def as_json(self) -> dict[str, object]:
        return {"discover_offer": summary(self.offer), "request_ack": summary(self.ack),
                "lost": self.lost, "wrong": self.wrong[:5]}


# -- 1. lease time against a bare dnsmasq -----------------------------------------------
@dataclass
class LeaseResult:
    ip: str
    options: dict[str, object]
    cold_ms: dict[str, tuple[float | None, float | None]]
    vmnet: Leases
    bare: Leases
    leased: object  # what `vmnet ip VM --json --wait` says afterwards

    def ratio(self, which: str) -> float:
        v, b = getattr(self.vmnet, which), getattr(self.bare, which)
        return percentile(v, 50) / percentile(b, 50)

    def as_json(self) -> dict[str, object]:
        return {"ip": self.ip, "offer_options": self.options, "cold_ms": self.cold_ms,
                "vmnet": self.vmnet.as_json(), "bare": self.bare.as_json(),
                "leased_per_vmnet_ip": self.leased,
                "ratio_offer_p50": self.ratio("offer"), "ratio_ack_p50": self.ratio("ack")}


def ms(t: float | None) -> float | None:
    return None if t is None else round(t * 1e3, 3)


def lease_vs_bare(root: str, samples: int) -> LeaseResult:
    """vmnet's dnsmasq (one VM on a nat network) and a bare one, the same client on each,
    exchange by exchange in turn."""
    with netns() as ns_v, netns() as ns_b:
        vm = Vmnet(ns_v, root)
        bare: Bare | None = None
        taps: list[Tap] = []
        try:
            vm.run("up", "lease0")
            info = vm.ip_json("lease0")
            mac, ip = str(info["mac"]), str(info["ip"])
            tap_v = Tap(ns_v, "lease0-0", mac, "lease0")
            taps.append(tap_v)
            bare = Bare(ns_b, root, [(mac, ip, "lease0")])
            tap_b = Tap(ns_b, "tap0", mac, "lease0")
            taps.append(tap_b)
            first = {"vmnet": tap_v.dora(), "bare": tap_b.dora()}  # cold, not in the stats
            for k, got in first.items():
                if got[1] is None or got[2] is None or got[2].yiaddr != ip:
                    raise RuntimeError(f"{k}: the first DHCP exchange got {got}, want {ip}")
            offer = first["vmnet"][2]
            assert offer is not None
            res = LeaseResult(ip, describe_options(offer.options),
                              {k: (ms(v[0]), ms(v[1])) for k, v in first.items()},
                              Leases(), Leases(), None)
            for i in range(samples):  # interleaved, alternating which goes first
                order = [(res.vmnet, tap_v), (res.bare, tap_b)]
                for leases, tap in order if i % 2 == 0 else order[::-1]:
                    leases.add(tap.dora(), ip)
            res.leased = vm.ip_json("lease0", "--wait", "2").get("leased")
        finally:
            for t in taps:
                t.close()
            if bare is not None:
                bare.stop()
            subprocess.run(vm.argv("down", "lease0"), capture_output=True, check=False)
        return res


def describe_options(o: dict[int, bytes]) -> dict[str, object]:
    def ips(b: bytes) -> list[str]:
        return [socket.inet_ntoa(b[i:i + 4]) for i in range(0, len(b) - 3, 4)]

    out: dict[str, object] = {}
    if 1 in o:
        out["netmask"] = socket.inet_ntoa(o[1])
    if 3 in o:
        out["router"] = ips(o[3])
    if 6 in o:
        out["dns"] = ips(o[6])
    if 15 in o:
        out["domain"] = o[15].decode(errors="replace")
    if 26 in o:
        out["mtu"] = struct.unpack("!H", o[26])[0]
    if 51 in o:
        out["lease_s"] = struct.unpack("!I", o[51])[0]
    return out


# -- 2. N NICs on one network ------------------------------------------------------------
@dataclass
class ManyRun:
    """One fresh namespace with N VMs."""

    n: int
    ups: list[float] = field(default_factory=list)  # whole-process time of each `up` (s)
    down: float = math.nan  # the one `vmnet down` of all of them (s)
    left: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    leased: int = 0  # of NICs 1..N-1, those that took their recorded address
    leases_in_file: int = 0
    nth: Leases = field(default_factory=Leases)
    bare_nth: Leases = field(default_factory=Leases)  # bare dnsmasq, same taps/hosts/leases

    @property
    def first_up(self) -> float:
        return self.ups[0]

    @property
    def per_nic_up(self) -> float:
        return statistics.mean(self.ups[1:])

    @property
    def early_up(self) -> float:
        return statistics.median(self.ups[1:1 + MARGINAL])

    @property
    def marginal_up(self) -> float:
        return statistics.median(self.ups[-MARGINAL:])

    def as_json(self) -> dict[str, object]:
        return {"n": self.n, "ups_ms": [round(t * 1e3, 2) for t in self.ups],
                "first_up_ms": self.first_up * 1e3, "per_nic_up_ms": self.per_nic_up * 1e3,
                "early_up_ms": self.early_up * 1e3, "marginal_up_ms": self.marginal_up * 1e3,
                "down_all_ms": self.down * 1e3, "left_after_down": self.left,
                "problems": self.problems, "guests_leased": self.leased,
                "leases_in_file_before_down": self.leases_in_file,
                "nth_lease": self.nth.as_json(), "bare_nth_lease": self.bare_nth.as_json()}


def one_repeat(sizes: list[int], root: str, samples: int) -> dict[int, ManyRun]:
    """One fresh namespace per N, all at once.  `vmnet up vI` one command each, the sizes'
    ups interleaved by progress (N=10's spread over N=200's time, so drift hits both);
    NICs 1..N-1 each lease once; then the Nth NICs' exchanges, the sizes in turn, each
    with N-1 leased; then one `vmnet down` of each namespace's VMs, and what is left."""
    runs = {n: ManyRun(n) for n in sizes}
    names = {n: [f"v{i}" for i in range(1, n + 1)] for n in sizes}
    with ExitStack() as stack:
        vms: dict[int, Vmnet] = {}
        downed: set[int] = set()
        for n in sizes:
            vms[n] = Vmnet(stack.enter_context(netns()), root)

        def take_down_rest(n: int) -> None:  # untimed, if the timed down did not happen
            if n not in downed:
                subprocess.run(vms[n].argv("down", *names[n]), capture_output=True,
                               check=False)

        for n in sizes:
            stack.callback(take_down_rest, n)  # (before its namespace goes)
        order = sorted((k / n, n, k) for n in sizes for k in range(1, n + 1))
        for _, size, k in order:
            runs[size].ups.append(vms[size].run("up", names[size][k - 1])[0])
        taps: dict[int, tuple[Tap, str]] = {}
        bare_taps: dict[int, Tap] = {}
        for n in sizes:
            res, vm, ns = runs[n], vms[n], vms[n].ns
            recorded = vm.nics()
            missing = [v for v in names[n] if v not in recorded]
            if missing:
                raise RuntimeError(f"`vmnet status --json` has no NIC 0 for {missing[:5]}")
            if len({recorded[v][2] for v in names[n]}) != n:
                res.problems.append("recorded addresses are not distinct")
            for name in names[n][:-1]:  # each guest but the Nth takes its lease once
                tap_name, mac, ip = recorded[name]
                tap = Tap(ns, tap_name, mac, name)
                try:
                    t_offer, t_ack, offer = tap.dora()
                finally:
                    tap.close()
                if offer is None or t_ack is None:
                    res.problems.append(f"{name}: no lease ({t_offer=}, {offer=})")
                elif offer.yiaddr != ip:
                    res.problems.append(f"{name}: offered {offer.yiaddr}, recorded {ip}")
                else:
                    res.leased += 1
            last = names[n][-1]
            tap_name, mac, ip = recorded[last]
            info = vm.ip_json(last)
            if (info["mac"], info["ip"]) != (mac, ip):
                res.problems.append(f"{last}: `vmnet ip --json` {info} vs status {mac} {ip}")
            tap = Tap(ns, tap_name, mac, last)
            stack.callback(tap.close)
            taps[n] = (tap, ip)
            tap.dora()  # its first exchange: not counted
            # the reference: a bare dnsmasq with the same N taps, hosts and N-1 leases
            hosts = [(recorded[v][1], recorded[v][2], v) for v in [last, *names[n][:-1]]]
            bns = stack.enter_context(netns())
            bare = Bare(bns, root, hosts, taps=n)
            stack.callback(bare.stop)
            btap = Tap(bns, "tap0", mac, last)
            stack.callback(btap.close)
            for bmac, bip, bname in hosts[1:]:
                got = btap.dora(bmac, bname)
                if got[1] is None or got[2] is None or got[2].yiaddr != bip:
                    raise RuntimeError(f"bare dnsmasq (N={n}): {bname} got {got}, not {bip}")
            btap.dora()
            bare_taps[n] = btap
        clients = [(runs[n].nth, taps[n][0], taps[n][1]) for n in sizes] + \
            [(runs[n].bare_nth, bare_taps[n], taps[n][1]) for n in sizes]
        for i in range(samples):  # every client in turn, a different one first each time
            k = i % len(clients)
            for leases, tap, ip in clients[k:] + clients[:k]:
                leases.add(tap.dora(), ip)
        for n in sizes:
            res = runs[n]
            taps[n][0].close()
            res.problems += res.nth.wrong[:5]
            if res.nth.lost:
                res.problems.append(f"{names[n][-1]}: {res.nth.lost} of {samples} "
                                    "exchanges lost")
            res.leases_in_file = count_leases(vms[n])
            if res.leases_in_file != n:
                res.problems.append(f"dnsmasq's lease file has {res.leases_in_file} leases, "
                                    f"not {n}")
            res.down = vms[n].run("down", *names[n])[0]
            downed.add(n)
            res.left = vms[n].leftovers()
    return runs


def count_leases(vm: Vmnet) -> int:
    n = 0
    for dirpath, _dirs, files in os.walk(vm.state):
        if "leases" in files and os.path.basename(dirpath) == BRIDGE:
            with open(os.path.join(dirpath, "leases")) as f:
                n += sum(1 for line in f if line.strip())
    return n


def paired_ratios(lo: ManyRun, hi: ManyRun) -> list[float]:
    """Time-matched marginal cost: for each of the small run's ups k in its second half
    (k > N/2, the 1st never), the ratio of the large run's up j = k * N_hi / N_lo (the one
    that ran next to it: the ups are interleaved by progress) to it; j is then the
    (N_hi/2 .. N_hi)th NIC, k the (N_lo/2 .. N_lo)th."""
    out = []
    for k in range(max(2, lo.n // 2 + 1), lo.n + 1):
        j = min(hi.n, max(2, round(k * hi.n / lo.n)))
        out.append(hi.ups[j - 1] / lo.ups[k - 1])
    return out


@dataclass
class Row:
    """One N over its repeats: medians of the runs' per-NIC figures, percentiles of all
    their Nth-NIC exchanges."""

    n: int
    runs: list[ManyRun]

    def med(self, what: str) -> float:
        return statistics.median(float(getattr(r, what)) for r in self.runs)

    def nth(self, which: str, bare: bool = False) -> list[float]:
        return [t for r in self.runs for t in getattr(r.bare_nth if bare else r.nth, which)]

    def lease_p50(self, which: str, bare: bool = False) -> float:
        return percentile(self.nth(which, bare), 50)

    @property
    def left(self) -> list[str]:
        return sorted({x for r in self.runs for x in r.left})

    @property
    def problems(self) -> list[str]:
        return [x for r in self.runs for x in r.problems]

    def as_json(self) -> dict[str, object]:
        return {"first_up_ms": self.med("first_up") * 1e3,
                "per_nic_up_ms": self.med("per_nic_up") * 1e3,
                "early_up_ms": self.med("early_up") * 1e3,
                "marginal_up_ms": self.med("marginal_up") * 1e3,
                "down_all_ms": self.med("down") * 1e3,
                "down_per_nic_ms": self.med("down") * 1e3 / self.n,
                "nth_discover_offer": summary(self.nth("offer")),
                "nth_request_ack": summary(self.nth("ack")),
                "bare_nth_discover_offer": summary(self.nth("offer", True)),
                "bare_nth_request_ack": summary(self.nth("ack", True)),
                "left_after_down": self.left, "problems": self.problems,
                "runs": [r.as_json() for r in self.runs]}


# -- main ----------------------------------------------------------------------------------
def fmt(s: dict[str, float]) -> str:
    return f"{s['p50_ms']:7.3f} {s['p90_ms']:7.3f} {s['max_ms']:7.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", default="10,200", help="NIC counts on one network (10,200)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="fresh namespaces per size, medians across them (3)")
    ap.add_argument("--samples", type=int, default=200,
                    help="timed DHCP exchanges per client against the bare dnsmasq (200); "
                         "the Nth NIC's: half that, at least 20, per repeat")
    ap.add_argument("--json", metavar="FILE", help="also write the summary as JSON here")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/nat.py needs root (it makes network namespaces)")
    sizes = sorted({int(s) for s in a.sizes.split(",") if s.strip()})
    if len(sizes) < 2 or sizes[0] < MARGINAL + 1 or sizes[-1] > 1000 or a.repeat < 1 \
            or a.samples < 1:
        sys.exit(f"--sizes: two or more NIC counts, {MARGINAL + 1}..1000; "
                 "--repeat, --samples >= 1")
    if not os.access(DNSMASQ, os.X_OK):
        sys.exit(f"{DNSMASQ} missing: apt-get install dnsmasq-base")
    root = tempfile.mkdtemp(prefix="vmnet-nat-", dir="/dev/shm")
    os.chmod(root, 0o755)  # dnsmasq drops root: it must reach its files below
    t_start = time.perf_counter()
    try:
        print(f"vmnet nat bench: {PY} -m vmnet; state on {root}; network {ADDRESS}")
        lease = lease_vs_bare(root, a.samples)
        v, b = lease.vmnet, lease.bare
        print(f"\n1. lease time: {a.samples} exchanges against each dnsmasq, interleaved "
              f"(after one cold, not counted: DISCOVER->OFFER, REQUEST->ACK ms vmnet "
              f"{lease.cold_ms['vmnet']}, bare {lease.cold_ms['bare']})")
        print(f"   offered {lease.ip} (= `vmnet ip`), {lease.options}")
        print(f"   {'dnsmasq':<8} {'DISCOVER->OFFER p50/p90/max':>27} "
              f"{'REQUEST->ACK p50/p90/max':>26}  lost wrong")
        for k, r in (("vmnet", v), ("bare", b)):
            print(f"   {k:<8} {fmt(summary(r.offer)):>24} ms {fmt(summary(r.ack)):>23} ms"
                  f"  {r.lost:>4} {len(r.wrong):>5}")
        r_off, r_ack = lease.ratio("offer"), lease.ratio("ack")
        print(f"   vmnet / bare, p50: DISCOVER->OFFER x{r_off:.2f}, REQUEST->ACK x{r_ack:.2f}"
              f"; `vmnet ip lease0 --json --wait 2` says leased: {lease.leased}")

        nth_samples = max(20, a.samples // 2)
        runs: dict[int, list[ManyRun]] = {n: [] for n in sizes}
        for rep in range(a.repeat):
            t0 = time.perf_counter()
            for n, run in one_repeat(sizes, root, nth_samples).items():
                runs[n].append(run)
            print(f"   (N={','.join(map(str, sizes))}, run {rep + 1} of {a.repeat}: "
                  f"{time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
        rows = {n: Row(n, runs[n]) for n in sizes}
        print(f"\n2. N NICs on one nat network: `vmnet up vI` one command each, whole process;"
              f" {a.repeat} fresh namespace(s) per N, medians")
        print(f"   {'N':>4} {'1st up':>8} {'per-NIC up':>10} {'ups 2-6':>8} "
              f"{'last 5':>8} {'down all':>9} {'/NIC':>6} {'leased':>11}  left after down")
        for n, row in rows.items():
            leased = "/".join(str(r.leased) for r in row.runs)
            print(f"   {n:>4} {row.med('first_up') * 1e3:>6.1f}ms "
                  f"{row.med('per_nic_up') * 1e3:>8.1f}ms {row.med('early_up') * 1e3:>6.1f}ms "
                  f"{row.med('marginal_up') * 1e3:>6.1f}ms {row.med('down') * 1e3:>7.0f}ms "
                  f"{row.med('down') * 1e3 / n:>4.1f}ms {leased:>11}  "
                  f"{', '.join(row.left) or 'nothing'}")
            for p in row.problems[:5]:
                print(f"        ! {p}")
        print(f"   the Nth NIC's lease with N-1 leased, {nth_samples} exchanges per run and "
              "client, all clients in turn; `bare`: a dnsmasq of the bench's with the same N "
              "taps (enslaved, up, IPv6 off), N static hosts and N-1 leases")
        print(f"   {'N':>4} {'vmnet offer p50/p90':>20} {'ack p50/p90':>14}  "
              f"{'bare offer p50/p90':>19} {'ack p50/p90':>14}  {'vmnet/bare p50':>15}")
        for n, row in rows.items():
            vo, va = summary(row.nth("offer")), summary(row.nth("ack"))
            bo, ba = summary(row.nth("offer", True)), summary(row.nth("ack", True))
            print(f"   {n:>4} {vo['p50_ms']:>9.3f} {vo['p90_ms']:>6.3f} ms "
                  f"{va['p50_ms']:>6.3f} {va['p90_ms']:>6.3f}  "
                  f"{bo['p50_ms']:>8.3f} {bo['p90_ms']:>6.3f} ms {ba['p50_ms']:>6.3f} "
                  f"{ba['p90_ms']:>6.3f}  x{vo['p50_ms'] / bo['p50_ms']:.2f} / "
                  f"x{va['p50_ms'] / ba['p50_ms']:.2f}")
        lo, hi = rows[sizes[0]], rows[sizes[-1]]
        g = {"per_nic_up": hi.med("per_nic_up") / lo.med("per_nic_up"),
             "marginal_up": statistics.median(
                 x for rl, rh in zip(lo.runs, hi.runs, strict=True)
                 for x in paired_ratios(rl, rh)),
             "within_largest": hi.med("marginal_up") / hi.med("early_up"),
             "nth_lease_offer": hi.lease_p50("offer") / lo.lease_p50("offer"),
             "nth_lease_ack": hi.lease_p50("ack") / lo.lease_p50("ack"),
             "bare_nth_lease_offer": hi.lease_p50("offer", True) / lo.lease_p50("offer", True),
             "bare_nth_lease_ack": hi.lease_p50("ack", True) / lo.lease_p50("ack", True),
             "nth_vs_bare_offer": hi.lease_p50("offer") / hi.lease_p50("offer", True),
             "nth_vs_bare_ack": hi.lease_p50("ack") / hi.lease_p50("ack", True),
             "down_per_nic": (hi.med("down") / hi.n) / (lo.med("down") / lo.n)}
        print(f"   {lo.n} -> {hi.n}: per-NIC up x{g['per_nic_up']:.2f}, marginal up "
              f"x{g['marginal_up']:.2f} (time-matched: the median of up #j at N={hi.n} / up "
              f"#k at N={lo.n} run next to it, k = {lo.n // 2 + 1}..{lo.n}, j = "
              f"{round((lo.n // 2 + 1) * hi.n / lo.n)}..{hi.n}; within N={hi.n}, last "
              f"{MARGINAL} vs ups 2-6: "
              f"x{g['within_largest']:.2f}); down per NIC x{g['down_per_nic']:.2f} (no "
              f"target); Nth NIC's lease p50: vmnet x{g['nth_lease_offer']:.2f} offer / "
              f"x{g['nth_lease_ack']:.2f} ack, bare x{g['bare_nth_lease_offer']:.2f} / "
              f"x{g['bare_nth_lease_ack']:.2f}")
        clean = not lo.left and not hi.left and all(not rows[n].left for n in sizes)
        wrong = [p for n in sizes for p in rows[n].problems] + v.wrong + b.wrong
        tl, tg = TARGETS["lease"], TARGETS["growth"]
        verdicts = {
            f"lease, vmnet vs bare dnsmasq (p50s) <= x{tl:g}":
                (max(r_off, r_ack) <= tl and not v.lost,
                 f"x{r_off:.2f} offer, x{r_ack:.2f} ack"),
            f"per-NIC up cost {lo.n} -> {hi.n} <= x{tg:g}":
                (g["per_nic_up"] <= tg, f"x{g['per_nic_up']:.2f} "
                 f"({lo.med('per_nic_up') * 1e3:.1f} -> {hi.med('per_nic_up') * 1e3:.1f} ms)"),
            f"marginal up cost {lo.n} -> {hi.n}, time-matched <= x{tg:g}":
                (g["marginal_up"] <= tg, f"x{g['marginal_up']:.2f} (last {MARGINAL} ups: "
                 f"{lo.med('marginal_up') * 1e3:.1f} -> {hi.med('marginal_up') * 1e3:.1f} ms)"),
            # dnsmasq's own per-packet work grows with the links of the namespace (a bare
            # dnsmasq's lease grows as much): the target is that vmnet adds no growth
            f"Nth NIC's lease growth {lo.n} -> {hi.n} vs a bare dnsmasq's <= x{tg:g}":
                (max(g["nth_lease_offer"] / g["bare_nth_lease_offer"],
                     g["nth_lease_ack"] / g["bare_nth_lease_ack"]) <= tg,
                 f"vmnet x{g['nth_lease_offer']:.2f} offer / x{g['nth_lease_ack']:.2f} ack "
                 f"({lo.lease_p50('offer') * 1e3:.3f} -> {hi.lease_p50('offer') * 1e3:.3f} ms)"
                 f", bare dnsmasq x{g['bare_nth_lease_offer']:.2f} / "
                 f"x{g['bare_nth_lease_ack']:.2f}"),
            f"lease at N={hi.n}, vmnet vs bare, same N (p50s) <= x{tl:g}":
                (max(g["nth_vs_bare_offer"], g["nth_vs_bare_ack"]) <= tl,
                 f"x{g['nth_vs_bare_offer']:.2f} offer, x{g['nth_vs_bare_ack']:.2f} ack"),
            "one `vmnet down` of all leaves nothing": (clean, "nothing left" if clean
                                                       else "leftovers above"),
            "every guest gets its recorded address": (not wrong, "all" if not wrong
                                                      else f"{len(wrong)} problems above"),
        }
        print("\nverdicts:")
        for k, (ok, why) in verdicts.items():
            print(f"  {k:<52} {'met' if ok else 'MISSED':<7} {why}")
        wall = time.perf_counter() - t_start
        print(f"(wall {wall:.0f} s)")
        if a.json:
            summary_ = {"sizes": sizes, "repeat": a.repeat, "samples": a.samples,
                        "nth_samples": nth_samples, "targets": TARGETS,
                        "lease": lease.as_json(),
                        "nics": {str(n): rows[n].as_json() for n in sizes}, "growth": g,
                        "verdicts": {k: {"met": ok, "detail": why}
                                     for k, (ok, why) in verdicts.items()},
                        "wall_s": wall}
            with open(a.json, "w") as f:
                json.dump(summary_, f, indent=2)
                f.write("\n")
        return 0 if all(ok for ok, _ in verdicts.values()) else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # so every namespace's `finally` runs


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
