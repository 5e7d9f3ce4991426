"""vmnet against the `ip` baselines, measured in the same run, in a throwaway namespace.

    python bench/bench.py [--sizes 10,100,1000] [--repeat 3]

Prints, for each N: vmnet's bulk up/down whole-process time, the baseline's
(`ip -batch` doing the same work: tap with owner, MAC, MTU, alias, master,
up; grouped `ip link del`), their ratio, the per-NIC cost growth from the
smallest to the largest N; the whole-process time of the commands that start
one VM (`vmnet up VM` on a bridge vmnet made and on an admin's bridge, the
qemu ifup script, the libvirt hook at `prepare begin`) against the equivalent
three `ip` commands; the 1,000th single `vmnet up` (on a host with 999 VMs)
against the 1st (medians of interleaved runs); each edge's import time; and
the peak memory (max RSS) of the largest bulk up.  Ratios, not absolute
times, are the result: the machine is shared.  All of it is the one
implementation every command runs (there is no other path to measure).

    --host-vms 999 --single-runs 20   sizes of the 1,000th-VM comparison

Through vmnetd (a daemon started by the bench inside its namespace, state on
/dev/shm): the same three commands that start one VM, each a whole process
run inside the namespace, against a bare `python3 -IS -c pass` of the
launchers' interpreter run the same way, interleaved (target: at most bare +
3 ms); 100 concurrent clients from one load process, every one served (p50 /
p99 latency); and the throughput of single-VM ups from one load process with
100 in flight, a fresh connection each (target: at least 300 ups/s).

    --daemon-runs 21 --daemon-clients 100 --daemon-ups 1000 --daemon-inflight 100
    --daemon-profile FILE   also run the daemon under cProfile (stats to FILE);
                            its timings are then not the target's
    --only daemon           only this vmnetd part (with --daemon-clients 0
                            --daemon-ups 0: only its start commands)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
PY_SYSTEM = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
# vmnet's state lives in /run, a tmpfs on every systemd host; use a tmpfs here too
# (a directory of this run's, made by main() and removed at its end).
STATE_ROOT = "/dev/shm"
TARGETS = {"bulk_up": 1.5, "bulk_down": 1.5, "growth": 1.3, "start": 4.0, "nth": 1.3,
           "rss_mb": 100.0,
           # through vmnetd: a start's whole process at most bare python + this (ms),
           # every one of the concurrent clients served, single-VM ups per second
           "daemon_start_ms": 3.0, "daemon_served": 1.0, "daemon_ups_s": 300.0}


def run(argv: list[str], *, env: dict[str, str] | None = None,
        check: bool = True, stdin: str | None = None) -> tuple[float, int]:
    """Whole-process wall time (s) and peak RSS (KiB) of one command (`stdin`: a file it
    reads)."""
    f = open(stdin, "rb") if stdin else None  # noqa: SIM115 - closed once it started
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(argv, stdin=f, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    finally:
        if f:
            f.close()
    _pid, status, usage = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    err = p.stderr.read().decode() if p.stderr else ""
    if p.stderr:
        p.stderr.close()
    if check and status != 0:
        raise RuntimeError(f"{argv[:6]} failed: {err}")
    return dt, usage.ru_maxrss


@contextmanager
def netns() -> Iterator[str]:
    name = f"vmbench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def median(f: Callable[[], float], repeat: int) -> float:
    return statistics.median(f() for _ in range(repeat))


# main() sets this to the launcher scripts/install installs (vmnet.cli.launchers),
# which is how users run vmnet.
VMNET = "vmnet"


def vmnet(ns: str, state: str, cfg: str | None, *args: str) -> list[str]:
    conf = ["--config", cfg] if cfg else []
    return [VMNET, "--netns", ns, "--state-dir", state, *conf, *args]


def write_config(path: str, n: int) -> None:
    with open(path, "w") as f:
        f.write('[defaults]\nnetwork = "b"\n[networks.b]\nbridge = "vbr0"\n')
        for i in range(n):
            f.write(f'[vms.v{i}]\nuser = "0"\n')


def baseline_batch(path: str, n: int, *, group: int = 0) -> None:
    with open(path, "w") as f:
        f.write("link add vbr0 type bridge\nlink set vbr0 up\n")
        for i in range(n):
            tap = f"v{i}-0"
            mac = f"fe:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"
            f.write(f"tuntap add dev {tap} mode tap user 0\n")
            f.write(f"link set {tap} address {mac} mtu 1500 alias vmnet:v{i}:0"
                    f"{f' group {group}' if group else ''}\n")
            f.write(f"link set {tap} master vbr0 up\n")


def bulk(n: int, repeat: int, tmp: str) -> dict[str, float]:
    cfg = os.path.join(tmp, f"cfg{n}.toml")
    write_config(cfg, n)
    batch = os.path.join(tmp, f"batch{n}")
    baseline_batch(batch, n, group=7)
    res: dict[str, list[float]] = {k: [] for k in ("up", "down", "ip_up", "ip_del", "t0",
                                                   "rss")}
    for _ in range(repeat):
        with netns() as ns:
            state = tempfile.mkdtemp(dir=STATE_ROOT)
            t, _ = run(vmnet(ns, state, cfg, "down", "--all"))
            res["t0"].append(t)
            t, rss = run(vmnet(ns, state, cfg, "up", "--all"))
            res["up"].append(t)
            res["rss"].append(rss / 1024)
            t, _ = run(vmnet(ns, state, cfg, "down", "--all"))
            res["down"].append(t)
            left = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True,
                                  text=True).stdout.count("\n")
            assert left == 1, f"vmnet down --all left {left - 1} links"
        with netns() as ns:
            t, _ = run(["ip", "-n", ns, "-batch", batch])
            res["ip_up"].append(t)
            t, _ = run(["ip", "-n", ns, "link", "del", "group", "7"])
            res["ip_del"].append(t)
    return {k: statistics.median(v) for k, v in res.items()}


def one_at_a_time_delete(n: int, tmp: str) -> float:
    batch = os.path.join(tmp, "single")
    baseline_batch(batch, n)
    dels = os.path.join(tmp, "dels")
    with open(dels, "w") as f:
        for i in range(n):
            f.write(f"link del v{i}-0\n")
    with netns() as ns:
        run(["ip", "-n", ns, "-batch", batch])
        t, _ = run(["ip", "-n", ns, "-batch", dels])
    return t / n


def three_ip(ns: str, tap: str, create: bool) -> float:
    t0 = time.perf_counter()
    if create:
        subprocess.run(["ip", "-n", ns, "tuntap", "add", "dev", tap, "mode", "tap", "user", "0"],
                       check=True)
    else:
        subprocess.run(["ip", "-n", ns, "link", "set", tap, "mtu", "1500"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", tap, "master", "vbr0"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", tap, "up"], check=True)
    return time.perf_counter() - t0


def domain_xml(tmp: str, state: str, dom: str, vm: str, cfg: str = "") -> bytes:
    """A minimal domain with vmnet's interfaces and metadata, as `libvirt-xml` renders it
    (with config file `cfg`, else none)."""
    import uuid as _uuid

    base = os.path.join(tmp, f"{dom}.xml")
    with open(base, "w") as f:
        f.write(f"<domain type='qemu'><name>{dom}</name><uuid>{_uuid.uuid4()}</uuid>"
                "<memory>131072</memory><os><type arch='x86_64'>hvm</type></os></domain>")
    return subprocess.run([VMNET, "--state-dir", state, "libvirt-xml", vm, "--domain", base],
                          check=True, capture_output=True, env={**os.environ, "VMNET_CONFIG": cfg}
                          ).stdout


def run_stdin(argv: list[str], data: bytes, *, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, input=data, check=True, capture_output=True,
                   env={**os.environ, **env})
    return time.perf_counter() - t0


def launchers(tmp: str) -> str:
    """vmnet's commands as `scripts/install` installs them (vmnet.cli.launchers), for this
    Python's environment; returns their directory."""
    bindir = os.path.join(tmp, "bin")
    os.mkdir(bindir)
    subprocess.run([PY, "-m", "vmnet.cli.launchers", bindir], check=True, capture_output=True)
    return bindir


def start_paths(repeat: int, tmp: str) -> dict[str, tuple[float, float]]:
    """The commands that start one VM, each against three `ip` commands, interleaved."""
    out: dict[str, tuple[float, float]] = {}
    cfg = os.path.join(tmp, "start.toml")
    with open(cfg, "w") as f:  # a config file (parsed once, then read from its cache)
        # the bridge vmnet makes: vmnet0 as a plain bridge (bench/nat.py times NAT networks)
        f.write('[networks.default]\nbridge = "vmnet0"\n[networks.adm]\nbridge = "adm0"\n')
    bindir = os.path.dirname(VMNET)
    with netns() as ns:
        state = tempfile.mkdtemp(dir=STATE_ROOT)
        subprocess.run(["ip", "-n", ns, "link", "add", "vbr0", "type", "bridge"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "add", "adm0", "type", "bridge"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "adm0", "up"], check=True)
        run([VMNET, "--netns", ns, "--state-dir", state, "--config", cfg, "up", "warm"])
        ours, admins, ips = [], [], []
        for i in range(repeat):
            ours.append(run([VMNET, "--netns", ns, "--state-dir", state, "--config", cfg,
                             "up", f"h{i}"])[0])
            admins.append(run([VMNET, "--netns", ns, "--state-dir", state, "--config", cfg,
                               "up", f"a{i}", "--bridge", "adm0"])[0])
            ips.append(three_ip(ns, f"i{i}", create=True))
        out["vmnet up VM (vmnet's bridge)"] = (statistics.median(ours), statistics.median(ips))
        out["vmnet up VM (admin's bridge)"] = (statistics.median(admins),
                                               statistics.median(ips))
        # qemu ifup script on a tap QEMU created, found through the config file
        ifup = os.path.join(bindir, "vmnet-qemu-ifup")
        ifup_env = {"VMNET_STATE_DIR": state, "VMNET_CONFIG": cfg}
        subprocess.run(["ip", "-n", ns, "tuntap", "add", "dev", "qwarm", "mode", "tap"],
                       check=True)
        run(["ip", "netns", "exec", ns, ifup, "qwarm"], env=ifup_env)
        ups, ips = [], []
        for i in range(repeat):
            tap = f"q{i}"
            subprocess.run(["ip", "-n", ns, "tuntap", "add", "dev", tap, "mode", "tap"],
                           check=True)
            ups.append(run(["ip", "netns", "exec", ns, ifup, tap], env=ifup_env)[0])
            subprocess.run(["ip", "-n", ns, "tuntap", "add", "dev", f"r{i}", "mode", "tap"],
                           check=True)
            ips.append(three_ip(ns, f"r{i}", create=False))
        # `ip netns exec` costs the same on both sides; measure it and take it off
        nsx = median(lambda: run(["ip", "netns", "exec", ns, "true"])[0], repeat)
        out["qemu ifup script"] = (statistics.median(ups) - nsx, statistics.median(ips))
        # libvirt hook at `prepare begin`: creates the VM's tap on the existing bridge
        hook = os.path.join(bindir, "vmnet-libvirt-hook")
        ups, ips = [], []
        for i in range(repeat):
            xml = domain_xml(tmp, state, f"d{i}", f"k{i}", cfg)
            argv = ["ip", "netns", "exec", ns, hook, f"--state-dir={state}", f"--config={cfg}",
                    f"d{i}", "prepare", "begin", "-"]
            ups.append(run_stdin(argv, xml, env={"VMNET_CONFIG": ""}))
            ips.append(three_ip(ns, f"j{i}", create=True))
        out["libvirt hook (prepare begin)"] = (statistics.median(ups) - nsx,
                                               statistics.median(ips))
        bare = median(lambda: run([PY_SYSTEM, "-IS", "-c", "pass"])[0], repeat)
        out["  bare python3 -IS -c pass"] = (bare, statistics.median(ips))
    return out


def nth_up(host_vms: int, runs: int, tmp: str) -> tuple[float, float]:
    """Single `vmnet up` on an empty host vs on a host with `host_vms` VMs (medians of
    `runs` interleaved runs; each VM is taken down again, untimed)."""
    cfg = os.path.join(tmp, "nth.toml")
    write_config(cfg, host_vms)
    with netns() as empty, netns() as full:
        s_empty = tempfile.mkdtemp(dir=STATE_ROOT)
        s_full = tempfile.mkdtemp(dir=STATE_ROOT)
        run(vmnet(full, s_full, cfg, "up", "--all"))
        run(vmnet(empty, s_empty, cfg, "up", "v0"))  # the bridge and the records exist
        run(vmnet(empty, s_empty, cfg, "down", "v0"))
        run(vmnet(empty, s_empty, cfg, "up", "v1"))
        firsts, nths = [], []
        for i in range(runs):
            name = f"n{i}"
            firsts.append(run(vmnet(empty, s_empty, cfg, "up", name))[0])
            nths.append(run(vmnet(full, s_full, cfg, "up", name))[0])
            run(vmnet(empty, s_empty, cfg, "down", name))
            run(vmnet(full, s_full, cfg, "down", name))
        return statistics.median(firsts), statistics.median(nths)


# -- vmnetd ------------------------------------------------------------------------------
def ns_inode(ns: str) -> int:
    return os.stat(os.path.join("/run/netns", ns)).st_ino


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def links(ns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True,
                         check=True).stdout
    return [line.split(": ", 2)[1].split("@")[0] for line in out.splitlines() if ": " in line]


def launcher_python() -> str:
    """The interpreter the installed launchers start (their `#!... -IS` line)."""
    with open(VMNET) as f:
        return f.readline()[2:].split()[0]


def wait_listening(sock: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    from vmnet.daemon.client import wait_listening as listening

    if not listening(os.path.dirname(sock), timeout, lambda: proc.poll() is None):
        raise RuntimeError(f"vmnetd did not listen on {sock} within {timeout} s "
                           f"(exit status {proc.poll()})")


class Vmnetd:
    """A vmnetd of the bench's, inside the namespace `ns`; the log of its requests
    (-v: one line each, which shows they were served by it)."""

    def __init__(self, ns: str, state: str, cfg: str, log: str,
                 profile: str | None = None) -> None:
        self.ns, self.state, self.cfg, self.log = ns, state, cfg, log
        prof = ["-m", "cProfile", "-o", profile] if profile else []
        argv = in_ns(ns, PY, *prof, "-m", "vmnet.daemon.main", "--foreground",
                     "--state-dir", state, "--config", cfg, "-v")
        env = {k: v for k, v in os.environ.items() if not k.startswith("VMNET_")}
        with open(log, "w") as f:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=f, env=env)
        self.pid = self.proc.pid  # `ip netns exec` execs: this is vmnetd's own PID
        try:
            wait_listening(os.path.join(state, "vmnetd.sock"), self.proc)
            got = os.stat(f"/proc/{self.pid}/ns/net").st_ino
            if got != ns_inode(ns) or got == os.stat("/proc/self/ns/net").st_ino:
                raise RuntimeError(f"vmnetd (pid {self.pid}) is not in namespace {ns}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM by PID (it stops after the request at hand), SIGKILL if need be."""
        if self.proc.poll() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait()

    def served(self) -> tuple[dict[str, int], dict[str, list[float]]]:
        """Requests its log says it served (rc 0), per door, and the tracebacks it logged;
        the time it took for each (s) by what it was: its lines read `vmnetd: pid P uid U:
        DOOR ARGV -> rc RC (T ms)`."""
        count = {"vmnet": 0, "ifup": 0, "hook": 0, "Traceback": 0}
        took: dict[str, list[float]] = {}
        with open(self.log) as f:
            for line in f:
                if line.startswith("Traceback"):
                    count["Traceback"] += 1
                    continue
                head, sep, tail = line.rstrip().rpartition(" -> rc 0 (")
                if not line.startswith("vmnetd: pid ") or not sep or not tail.endswith(" ms)"):
                    continue
                door, _, argv = head.split(": ", 2)[2].partition(" ")
                count[door] = count.get(door, 0) + 1
                what = door if door != "vmnet" else " ".join(
                    w.rstrip("0123456789") for w in argv.split(" ")[-2:])
                took.setdefault(what, []).append(float(tail[:-4]) / 1e3)
        return count, took


@contextmanager
def vmnetd(ns: str, state: str, cfg: str, log: str,
           profile: str | None = None) -> Iterator[Vmnetd]:
    """A vmnetd for the block; then every VM taken down (through it while it lives) and
    the daemon stopped by its PID, whatever happened."""
    d = Vmnetd(ns, state, cfg, log, profile)
    try:
        yield d
    finally:
        try:
            subprocess.run(in_ns(ns, VMNET, "--state-dir", state, "--config", cfg,
                                 "down", "--all"),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
                           check=False)
        finally:
            d.stop()


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    v = sorted(values)
    return v[max(0, min(len(v) - 1, math.ceil(len(v) * q / 100) - 1))] if v else float("nan")


def load_worker(ns: str, state: str, cfg: str, clients: int, total: int,
                inflight: int) -> None:
    """The load process (run inside the namespace): `clients` connections opened at once,
    each then sending one `vmnet up vmI`; then `total` more ups, `inflight` at a time, a
    fresh connection each.  Every latency, wall time and failure as JSON on stdout."""
    import selectors

    from vmnet.daemon import client
    from vmnet.errors import VmnetError

    if os.stat("/proc/self/ns/net").st_ino != ns_inode(ns):
        sys.exit(f"load worker: not in namespace {ns}")

    def up(name: str) -> dict[str, object]:
        return client.request("vmnet", ["--state-dir", state, "--config", cfg, "up", name],
                              {})  # type: ignore[return-value]

    def connect() -> socket.socket:
        s = client.connect(state)
        if s is None:
            sys.exit(f"load worker: no vmnetd serves {state}")
        return s  # type: ignore[return-value]

    def collect(sel: selectors.BaseSelector, lat: list[float], fails: list[str],
                more: Callable[[], None]) -> None:
        while sel.get_map():
            for key, _ev in sel.select():
                s = key.fileobj
                name, t = key.data
                sel.unregister(s)
                try:
                    reply, fds = client.receive(s)  # type: ignore[arg-type]
                except VmnetError as e:
                    reply, fds = {"rc": None, "err": e.one_line()}, []
                lat.append(time.perf_counter() - t)
                s.close()  # type: ignore[union-attr]
                for fd in fds:
                    os.close(fd)
                rc, why = reply.get("rc"), reply.get("err")
                if rc != 0:
                    fails.append(f"{name}: rc {rc!r}: {why!s}"[:300].rstrip())
                more()

    # 1. `clients` at once: every connection open before the first request is sent
    sel = selectors.DefaultSelector()
    lat: list[float] = []
    fails: list[str] = []
    socks = [connect() for _ in range(clients)]
    t0 = time.perf_counter()
    for i, s in enumerate(socks):
        t = time.perf_counter()
        client.send(s, up(f"vm{i}"))  # type: ignore[arg-type]
        sel.register(s, selectors.EVENT_READ, (f"vm{i}", t))
    collect(sel, lat, fails, lambda: None)
    conc = {"lat": lat, "wall": time.perf_counter() - t0, "fails": fails}

    # 2. `total` ups, `inflight` in flight, a new connection for each
    names = iter(f"vm{clients + i}" for i in range(total))
    lat2: list[float] = []
    fails2: list[str] = []

    def start() -> None:
        name = next(names, None)
        if name is not None:
            s = connect()
            t = time.perf_counter()
            client.send(s, up(name))  # type: ignore[arg-type]
            sel.register(s, selectors.EVENT_READ, (name, t))

    t0 = time.perf_counter()
    for _ in range(min(inflight, total)):
        start()
    collect(sel, lat2, fails2, start)
    thr = {"lat": lat2, "wall": time.perf_counter() - t0, "fails": fails2}
    json.dump({"concurrent": conc, "throughput": thr}, sys.stdout)


# which of vmnetd's log lines (Vmnetd.served) each start command is
DAEMON_DOOR = {"vmnet up VM": "up dh", "qemu ifup script": "ifup",
               "libvirt hook (prepare begin)": "hook"}


class DaemonResult:
    """What the vmnetd part measured."""

    def __init__(self) -> None:
        self.bare = 0.0  # median whole-process times (s), all run inside the namespace
        self.starts: dict[str, float] = {}
        self.spread: dict[str, tuple[float, float]] = {}  # each one's quartiles (s)
        self.conc_lat: list[float] = []
        self.conc_fails: list[str] = []
        self.thr_lat: list[float] = []
        self.thr_fails: list[str] = []
        self.thr_wall = 0.0
        self.total = 0
        self.down_all = 0.0
        self.served: dict[str, int] = {}
        self.service: dict[str, list[float]] = {}  # vmnetd's own time per request (s)

    def ups_s(self) -> float:
        return (self.total - len(self.thr_fails)) / self.thr_wall if self.thr_wall else 0.0


def daemon_paths(runs: int, clients: int, total: int, inflight: int, tmp: str,
                 profile: str | None = None) -> DaemonResult:
    """vmnetd inside a namespace of its own: the three commands that start one VM (whole
    processes, inside the namespace too) interleaved with a bare python of the launchers'
    interpreter; then one load process's concurrent clients and throughput."""
    res = DaemonResult()
    # The start commands' VMs on a bridge of their own; the load's on vmnet's default
    # network, but a bridge holds at most 1,023 ports: VMs past each 1,000 on more.
    start_cfg = os.path.join(tmp, "daemon-start.toml")
    with open(start_cfg, "w") as f:
        f.write('[defaults]\nnetwork = "one"\n[networks.one]\nbridge = "vbs0"\n')
    cfg = os.path.join(tmp, "daemon-load.toml")
    with open(cfg, "w") as f:
        f.write('[networks.default]\nbridge = "vmnet0"\n')  # a plain bridge (nat: bench/nat.py)
        for k in range(1, (clients + total - 1) // 1000 + 1):
            f.write(f'[networks.load{k}]\nbridge = "vbl{k}"\n')
        for i in range(1000, clients + total):
            f.write(f'[[vms.vm{i}.nics]]\nnetwork = "load{i // 1000}"\n')
    bindir = os.path.dirname(VMNET)
    ifup = os.path.join(bindir, "vmnet-qemu-ifup")
    hook = os.path.join(bindir, "vmnet-libvirt-hook")
    python = launcher_python()
    with netns() as ns:
        state = tempfile.mkdtemp(dir=STATE_ROOT)
        xmls = []
        for i in range(runs + 1):  # the domains' XML, rendered before anything is timed
            path = os.path.join(tmp, f"dd{i}.xml")
            with open(path, "wb") as fx:
                fx.write(domain_xml(tmp, state, f"dd{i}", f"dk{i}", start_cfg))
            xmls.append(path)
        for i in range(runs + 1):
            subprocess.run(["ip", "-n", ns, "tuntap", "add", "dev", f"dq{i}", "mode", "tap"],
                           check=True)
        with vmnetd(ns, state, cfg, os.path.join(tmp, "vmnetd.log"), profile) as d:
            ifup_env = {"VMNET_STATE_DIR": state, "VMNET_CONFIG": start_cfg}

            def up(i: int) -> float:
                return run(in_ns(ns, VMNET, "--state-dir", state, "--config", start_cfg,
                                 "up", f"dh{i}"))[0]

            def script(i: int) -> float:
                return run(in_ns(ns, ifup, f"dq{i}"), env=ifup_env)[0]

            def hooked(i: int) -> float:
                return run(in_ns(ns, hook, f"--state-dir={state}", f"--config={start_cfg}",
                                 f"dd{i}", "prepare", "begin", "-"), stdin=xmls[i])[0]

            def bare(_i: int) -> float:
                return run(in_ns(ns, python, "-IS", "-c", "pass"))[0]

            paths: dict[str, Callable[[int], float]] = {
                "vmnet up VM": up, "qemu ifup script": script,
                "libvirt hook (prepare begin)": hooked}
            for f_ in (bare, *paths.values()):  # warm: the config's parse, the page cache
                f_(runs)
            times: dict[str, list[float]] = {k: [] for k in paths}
            bares: list[float] = []
            for i in range(runs):
                bares.append(bare(i))
                for name, f_ in paths.items():
                    times[name].append(f_(i))
            res.bare = statistics.median(bares)
            res.starts = {k: statistics.median(v) for k, v in times.items()}
            for what, v in {"bare": bares, **times}.items():
                q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
                res.spread[what] = (q[0], q[2])
            # one load process, inside the namespace
            r = subprocess.run(in_ns(ns, PY, os.path.abspath(__file__), "--load-worker", ns,
                                     state, cfg, str(clients), str(total), str(inflight)),
                               capture_output=True, text=True, check=False, timeout=900)
            if r.returncode != 0:
                raise RuntimeError(f"load worker failed ({r.returncode}): {r.stderr}")
            got = json.loads(r.stdout)
            res.conc_lat, res.conc_fails = got["concurrent"]["lat"], got["concurrent"]["fails"]
            res.thr_lat, res.thr_fails = got["throughput"]["lat"], got["throughput"]["fails"]
            res.thr_wall, res.total = got["throughput"]["wall"], total
            res.down_all = run(in_ns(ns, VMNET, "--state-dir", state, "--config", cfg,
                                     "down", "--all"))[0]
            left = [n for n in links(ns) if n.startswith(("dh", "dk"))
                    or (n.startswith("vm") and n[2:3].isdigit())]  # (QEMU's dq taps stay)
            assert not left, f"vmnet down --all left {len(left)} taps: {left[:5]}"
        res.served, res.service = d.served()
    return res


def import_times() -> dict[str, float]:
    """Each edge's import time (-X importtime, cumulative, of the module that serves it)."""
    edges = {"vmnet up (cli)": "vmnet.cli.main, vmnet.cli.table, vmnet.cli.commands, "
                               "vmnet.engine.ops, vmnet.config",
             "qemu ifup": "vmnet.integrations.qemu.ifup, vmnet.engine.context, "
                          "vmnet.config, vmnet.kernel.linux",
             "libvirt hook (prepare)": "vmnet.integrations.libvirt.hook, "
                                       "vmnet.integrations.libvirt.domainxml, "
                                       "vmnet.engine.ops, vmnet.config"}
    out = {}
    for name, mods in edges.items():
        vals = []
        for _ in range(7):
            r = subprocess.run([PY, "-X", "importtime", "-c", f"import {mods}"],
                               capture_output=True, text=True, check=True)
            total = 0
            for line in r.stderr.splitlines():
                parts = line.split("|")
                if len(parts) == 3 and parts[2].strip().startswith("vmnet") and \
                        not parts[2].startswith("  "):
                    total += int(parts[1])
            vals.append(total / 1e6)
        out[name] = statistics.median(vals)
    return out


def daemon_report(a: argparse.Namespace, tmp: str) -> dict[str, bool]:
    """Run and print the vmnetd part; its verdicts."""
    dm = daemon_paths(a.daemon_runs, a.daemon_clients, a.daemon_ups, a.daemon_inflight,
                      tmp, a.daemon_profile)
    print(f"through vmnetd (whole process inside the namespace, median of {a.daemon_runs} "
          "interleaved runs, each under `ip netns exec`):")
    def iqr(k: str) -> str:
        lo, hi = dm.spread.get(k, (float("nan"), float("nan")))
        return f"[IQR {lo * 1e3:.1f}-{hi * 1e3:.1f}]"

    print(f"  {'bare python3 -IS -c pass':<32} {dm.bare * 1e3:7.1f} ms {iqr('bare')}")
    for name, t in dm.starts.items():
        own = statistics.median(dm.service.get(DAEMON_DOOR[name]) or [float("nan")])
        print(f"  {name:<32} {t * 1e3:7.1f} ms {iqr(name)}: bare + {(t - dm.bare) * 1e3:5.1f}"
              f" ms (vmnetd's own {own * 1e3:.2f} ms, the rest the client process)")
    n_ok = len(dm.conc_lat) - len(dm.conc_fails)
    if a.daemon_clients:
        print(f"  {a.daemon_clients} concurrent clients (one load process): {n_ok} of "
              f"{a.daemon_clients} served rc 0; latency p50 "
              f"{percentile(dm.conc_lat, 50) * 1e3:.1f} ms, p99 "
              f"{percentile(dm.conc_lat, 99) * 1e3:.1f} ms")
    for line in dm.conc_fails[:3] + dm.thr_fails[:3]:
        print(f"    failed: {line}")
    if dm.total:
        print(f"  {dm.total} single-VM ups, {a.daemon_inflight} in flight, a connection "
              f"each: {dm.ups_s():.0f} ups/s ({dm.thr_wall:.2f} s; latency p50 "
              f"{percentile(dm.thr_lat, 50) * 1e3:.1f} ms, p99 "
              f"{percentile(dm.thr_lat, 99) * 1e3:.1f} ms; {len(dm.thr_fails)} failed; "
              f"vmnetd's own per up: median "
              f"{statistics.median(dm.service.get('up vm') or [float('nan')]) * 1e3:.2f} ms)")
    print(f"  then down --all of {a.daemon_clients + dm.total + 2 * (a.daemon_runs + 1)} VMs "
          f"through it: {dm.down_all * 1e3:.0f} ms; its log: "
          + ", ".join(f"{v} {k}" for k, v in dm.served.items()))
    if a.daemon_profile:
        print(f"  (vmnetd ran under cProfile: stats in {a.daemon_profile}; timings slowed)")
    out = {"vmnetd start": all((t - dm.bare) * 1e3 <= TARGETS["daemon_start_ms"]
                               for t in dm.starts.values())}
    if a.daemon_clients:
        out["vmnetd served"] = n_ok >= TARGETS["daemon_served"] * a.daemon_clients
    if a.daemon_ups:
        out["vmnetd ups/s"] = dm.ups_s() >= TARGETS["daemon_ups_s"] and not dm.thr_fails
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--single-delete-n", type=int, default=100)
    ap.add_argument("--host-vms", type=int, default=999)
    ap.add_argument("--single-runs", type=int, default=20)
    ap.add_argument("--daemon-runs", type=int, default=21,
                    help="interleaved runs of each start command through vmnetd")
    ap.add_argument("--daemon-clients", type=int, default=100,
                    help="concurrent clients of vmnetd, each one `vmnet up`")
    ap.add_argument("--daemon-ups", type=int, default=1000,
                    help="single-VM ups through vmnetd for the throughput")
    ap.add_argument("--daemon-inflight", type=int, default=100,
                    help="of those, how many in flight at a time")
    ap.add_argument("--daemon-profile", metavar="FILE",
                    help="run vmnetd under cProfile, its stats to FILE (slows it)")
    ap.add_argument("--only", choices=("daemon",),
                    help="daemon: only the vmnetd part (its start commands, then the load "
                         "unless --daemon-clients 0 --daemon-ups 0)")
    ap.add_argument("--load-worker", nargs=6, help=argparse.SUPPRESS,
                    metavar=("NS", "STATE", "CFG", "CLIENTS", "TOTAL", "INFLIGHT"))
    a = ap.parse_args()
    if a.load_worker:
        ns, state, cfg, clients, total, inflight = a.load_worker
        load_worker(ns, state, cfg, int(clients), int(total), int(inflight))
        return
    if os.geteuid() != 0:
        sys.exit("bench needs root (it makes a network namespace)")
    sizes = [int(s) for s in a.sizes.split(",")]
    tmp = tempfile.mkdtemp(prefix="vmnet-bench-")
    global VMNET, STATE_ROOT
    STATE_ROOT = tempfile.mkdtemp(prefix="vmnet-bench-", dir="/dev/shm")
    try:
        VMNET = os.path.join(launchers(tmp), "vmnet")
        print(f"vmnet as installed by scripts/install: {VMNET} (python -IS launcher)")
        if a.only == "daemon":
            for k, ok in daemon_report(a, tmp).items():
                print(f"  {k:<16} {'met' if ok else 'MISSED'}")
            return
        print(f"{'N':>6} {'vmnet up':>9} {'ip -batch':>9} {'ratio':>6}   "
              f"{'vmnet down':>10} {'ip del grp':>10} {'ratio':>6}   {'T0':>6} {'RSS MB':>7}")
        rows = {}
        for n in sizes:
            r = bulk(n, a.repeat, tmp)
            rows[n] = r
            print(f"{n:>6} {r['up'] * 1e3:>8.0f}ms {r['ip_up'] * 1e3:>8.0f}ms "
                  f"{r['up'] / r['ip_up']:>6.2f}   {r['down'] * 1e3:>9.0f}ms "
                  f"{r['ip_del'] * 1e3:>9.0f}ms {r['down'] / r['ip_del']:>6.2f}   "
                  f"{r['t0'] * 1e3:>5.0f}ms {r['rss']:>7.1f}")
        lo, hi = min(sizes), max(sizes)

        def per_nic(n: int, key: str) -> float:
            return (rows[n][key] - rows[n]["t0"]) / n

        growth_up = per_nic(hi, "up") / per_nic(lo, "up")
        growth_down = per_nic(hi, "down") / per_nic(lo, "down")
        print(f"per-NIC cost (T(N)-T(0))/N: up {per_nic(lo, 'up') * 1e3:.3f} ms at {lo} -> "
              f"{per_nic(hi, 'up') * 1e3:.3f} ms at {hi} (x{growth_up:.2f}); down "
              f"{per_nic(lo, 'down') * 1e3:.3f} -> {per_nic(hi, 'down') * 1e3:.3f} ms "
              f"(x{growth_down:.2f})")
        single = one_at_a_time_delete(a.single_delete_n, tmp)
        vm_del = rows[hi]["down"] / hi
        print(f"one-at-a-time delete: {single * 1e3:.2f} ms/link; vmnet bulk down "
              f"{vm_del * 1e3:.3f} ms/link: {single / vm_del:.0f}x faster")
        print("starting one VM (whole process through the installed command, median):")
        starts = start_paths(max(11, a.repeat), tmp)
        for name, (ours, ip3) in starts.items():
            print(f"  {name:<32} {ours * 1e3:7.1f} ms vs three ip {ip3 * 1e3:6.1f} ms: "
                  f"x{ours / ip3:.2f}")
        first, nth = nth_up(a.host_vms, a.single_runs, tmp)
        print(f"single up on an empty host {first * 1e3:.1f} ms, next to {a.host_vms} VMs "
              f"{nth * 1e3:.1f} ms: x{nth / first:.2f} (medians of {a.single_runs} "
              "interleaved runs)")
        verdict_d = daemon_report(a, tmp)
        print("import time of each edge (-X importtime, vmnet's modules, median):")
        for name, secs in import_times().items():
            print(f"  {name:<32} {secs * 1e3:6.1f} ms")
        print("targets: bulk up <= x1.5, bulk down <= x1.5, growth <= x1.3, starting one VM "
              "<= x4 three ip, 1,000th up <= x1.3 the 1st, RSS < 100 MB; through vmnetd: "
              f"starting one VM <= bare python + {TARGETS['daemon_start_ms']:g} ms, every "
              f"concurrent client served, >= {TARGETS['daemon_ups_s']:g} ups/s")
        r = rows[hi]
        verdict = {
            f"bulk up {hi}": r["up"] / r["ip_up"] <= TARGETS["bulk_up"],
            f"bulk down {hi}": r["down"] / r["ip_del"] <= TARGETS["bulk_down"],
            "per-NIC growth": max(growth_up, growth_down) <= TARGETS["growth"],
            "starting one VM": all(o / i <= TARGETS["start"] for k, (o, i) in starts.items()
                                   if not k.startswith(" ")),
            "1,000th up": nth / first <= TARGETS["nth"],
            "peak RSS": r["rss"] < TARGETS["rss_mb"],
            **verdict_d,
        }
        for k, ok in verdict.items():
            print(f"  {k:<16} {'met' if ok else 'MISSED'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(STATE_ROOT, ignore_errors=True)


if __name__ == "__main__":
    main()
