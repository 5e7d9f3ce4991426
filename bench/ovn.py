"""vmnet on an OVN network: `up` to bound, N ports on one chassis, vmnet's own per-port cost.

    python bench/ovn.py [--sizes 10,100] [--repeat 1] [--tail 10] [--no-hand]
                        [--mode in-process|vmnetd|both] [--json FILE]

One throwaway OVN deployment per N (tests/ovnworld.py: NB, SB and ovn-northd
in a namespace, two chassis `a` and `b`, each with its ovsdb-server,
ovs-vswitchd on the userspace datapath and ovn-controller in a namespace of its
own, Geneve between them).  The ports go on chassis `a`; `b` only gives br-int
its tunnel port, as a chassis of a real deployment has.  So each chassis, and
each NB, holds only its N's ports while they are measured; each run (repeat)
gets a logical switch and a state directory of its own, and the previous run's
ports are gone (checked) and `ovn-nbctl --wait=hv sync` has let every
ovn-controller catch up before it starts.  The sizes run side by side,
interleaved: the size with the most ports left goes next, so all end together
and the small N's ups alternate with the largest N's last ones (what the target
compares: a drift of the shared machine falls on both sides).

1. vmnet: N VMs brought up one `vmnet -v up VM` process each (whole process,
   `--netns` the chassis' namespace, one NIC on the config's default ovn
   network).  Per up: the wall time of the process; the bind wait, parsed from
   its debug line `vmnet: PORT: bound on this chassis after X ms` (the time
   its WaitBound step waited for ovn-controller to set
   `external_ids:ovn-installed=true`); the time from the start of the process
   to that line (up -> bound); vmnet's own cost = wall - bind wait (it includes
   the wait of vmnet's add-port transaction for ovs-vswitchd to reconfigure:
   ovsdbapp waits for cur_cfg as ovs-vsctl does); and the process's CPU time
   (user + system, its rusage), vmnet's own work alone.  Every port must then
   be installed on the chassis.  Then one `vmnet down --all`
   (timed), and nothing may be left: no logical switch port on the switch, no
   Port_Binding of its ports in the SB, no port on br-int but tunnels, no new
   link in the chassis namespace, no VM in `vmnet list`.
   With --mode vmnetd (or both, the default: one phase each) the same ups go
   through vmnetd: one `vmnet.daemon.main --foreground -v` per run (as
   tests/daemon.py starts one: `ip netns exec` the chassis' namespace, the
   run's state dir and config, its socket waited for, stopped by its PID),
   so `vmnet -v up VM` is a small client and the daemon does the work, its
   OVSDB connections open from one request to the next.  The daemon returns
   the request's stderr in its reply, which the client prints when it exits:
   so the bound line comes on the client's stderr, at the end (the bind wait
   is there per up; up -> bound is not: its arrival is the reply's).  Per up
   also the daemon's own time for the request (its `-v` log line, "in
   vmnetd") and the daemon's CPU time in the up's window (user + system of
   all its threads, /proc/PID/task/*/schedstat); "CPU" is then the
   client's.  The `vmnet list` and `down --all` of the run go through it too.
2. By hand, for perspective (no target): the same N ports made with the
   commands `vmnet -v` prints as its equivalents, one process each, per port:
   `ovn-nbctl lsp-add + lsp-set-addresses + lsp-set-port-security + set
   options:requested-chassis`, `ip tuntap add`, `sysctl disable_ipv6`, `ip link
   set address mtu up`, `ovs-vsctl add-port -- set Interface external_ids:
   iface-id=...`, `ovs-vsctl wait-until Interface T external_ids:ovn-installed
   =true` (its wall time stands for the bind wait); then removed (untimed) and
   checked gone the same way.

With --repeat above 1 (the default, 1, keeps the run of both modes under 2.5
minutes on two cores), the repeats alternate the order of the phases
(in-process, vmnetd, by hand; then the other way round); figures are pooled
over the repeats.  "setup N" is the N ups' (commands') wall
times added up.

Target (the issue): vmnet's own per-port cost must not grow with the ports the
chassis holds: the median own cost of the last --tail ups at the largest N
over the median of ups 2..N at the smallest N <= x1.3 (the 1st up of a run is
shown apart: it may pay one-time cost), judged for each mode.  The bind
wait's growth, the ratio to the by-hand commands and the setup time of N ports
are informative.

Ratios, not absolute times, are the result: the machine is shared.  State on
/dev/shm; every daemon is the world's child (or the bench's: vmnetd), stopped
by its PID, every namespace removed, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, ".venv", "bin", "python")
if not os.path.exists(PY):
    PY = sys.executable
sys.path.insert(0, ROOT)

from tests.ovnworld import UNDERLAY_MTU, Chassis, OvnWorld, ovn_missing, ovn_world  # noqa: E402

TARGETS = {"own_growth": 1.3}
MODES = ("in-process", "vmnetd")
CHASSIS = ("a", "b")  # ports on a; b gives br-int its tunnel port
GENEVE_V4 = 58  # what vmnet leaves of the underlay's MTU (vmnet.kinds.ovn.OVERHEAD)
UP_TIMEOUT = 60.0  # s one process may take before the run fails
TUNNELS = {"geneve", "vxlan", "stt"}
UP_FIGURES = ("wall", "bind", "own", "to_bound", "cpu", "served", "dcpu")
BOUND = re.compile(r"^vmnet: (?P<port>\S+): bound on this chassis after (?P<ms>[0-9.]+) ms$")
# vmnetd -v: one line per request (vmnet.daemon.doors.Doors.serve)
SERVED = re.compile(r"^vmnetd: pid (?P<pid>[0-9]+) uid [0-9]+: (?P<door>\S+) .*"
                    r"-> rc (?P<rc>\S+) \((?P<ms>[0-9.]+) ms\)$")
DAEMON_START = 15.0  # s vmnetd may take to listen
DAEMON_STOP = 10.0  # s after SIGTERM, then SIGKILL


def percentile(v: list[float], p: float) -> float:
    """Linear-interpolated percentile of v (0 <= p <= 100)."""
    s = sorted(v)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(v: list[float]) -> dict[str, float]:
    """p50/p90/max in ms of times in seconds."""
    return {"n": len(v), "p50_ms": percentile(v, 50) * 1e3, "p90_ms": percentile(v, 90) * 1e3,
            "max_ms": max(v, default=float("nan")) * 1e3}


def clean_env() -> dict[str, str]:
    """No OVS_*/OVN_* of the caller's (an OVN_NB_DAEMON would redirect ovn-nbctl)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("OVS_", "OVN_"))}


def timed(argv: list[str], what: str) -> float:
    """Run one process; its wall time (s); an error with its stderr if it fails."""
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, check=False, env=clean_env(),
                       timeout=UP_TIMEOUT)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{what}: {' '.join(argv)} failed ({r.returncode}): "
                           f"{r.stderr.strip()[-800:]}")
    return dt


# -- vmnet ------------------------------------------------------------------------------
@dataclass
class Up:
    """One `vmnet -v up VM` process."""

    wall: float  # s, start to exit
    bind: float | None  # s, the bind wait vmnet logged (None: no bound line)
    to_bound: float | None  # s, start to the bound line on its stderr (None: through vmnetd)
    cpu: float  # s, the process's user + system CPU time (its rusage)
    served: float | None = None  # s, vmnetd's own time for the request (its -v line)
    dcpu: float | None = None  # s, vmnetd's CPU time (all threads) in the up's window
    bind_from: str = "client"  # whose stderr had the bound line: client, vmnetd, none

    @property
    def own(self) -> float | None:
        return None if self.bind is None else self.wall - self.bind


def task_cpu(pid: int) -> float | None:
    """CPU time (s) of a process's live threads: the sum of their schedstat run times (ns);
    None when there is none to read."""
    total, seen = 0, False
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
                seen = True
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9 if seen else None


class Vmnetd:
    """One vmnetd on a run's state dir and config, in the chassis' namespace, as
    tests/daemon.py starts one (`ip netns exec NS python -m vmnet.daemon.main --foreground
    --state-dir DIR --config CFG`, plus -v: one log line per request); its socket waited
    for; stopped by its PID (SIGTERM, SIGKILL after DAEMON_STOP s).  Its stderr is read as
    it comes: the request lines by client pid, and everything for a traceback."""

    def __init__(self, state: str, cfg: str, ns: str) -> None:
        self.state = state
        env = clean_env()
        env.pop("VMNET_STATE_DIR", None)
        env.pop("VMNET_CONFIG", None)
        # (`ip netns exec` execs the command: the PID is the daemon's own)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, PY, "-m", "vmnet.daemon.main", "--foreground", "-v",
             "--state-dir", state, "--config", cfg],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, env=env, cwd=ROOT)
        self.log: list[str] = []
        self.served: dict[int, float] = {}  # client pid -> s, vmnetd's time for it
        self.lock = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            m = SERVED.match(line.rstrip("\n"))
            with self.lock:
                self.log.append(line)
                if m:
                    self.served[int(m["pid"])] = float(m["ms"]) / 1e3
                self.lock.notify_all()

    def _wait_listening(self) -> None:
        from vmnet.daemon.client import wait_listening

        if not wait_listening(self.state, DAEMON_START, lambda: self.proc.poll() is None):
            why = (f"exited with {self.proc.returncode}" if self.proc.poll() is not None
                   else f"did not listen within {DAEMON_START:g} s")
            self.reader.join(2)
            raise RuntimeError(f"vmnetd on {self.state} {why}: {self.text()[-800:]}")
        try:
            with open(f"/proc/{self.proc.pid}/cmdline", "rb") as f:
                ours = b"vmnet.daemon.main" in f.read()
        except OSError:
            ours = False
        if not ours:
            raise RuntimeError(f"pid {self.proc.pid} is not vmnetd after `ip netns exec`")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float | None:
        return task_cpu(self.proc.pid)

    def served_for(self, client: int, timeout: float = 2.0) -> float | None:
        """vmnetd's logged time for the request of client pid (written before its reply)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while client not in self.served and self.proc.poll() is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.lock.wait(left)
            return self.served.pop(client, None)

    def text(self) -> str:
        with self.lock:
            return "".join(self.log)

    def mark(self) -> int:
        with self.lock:
            return len(self.log)

    def lines(self, since: int) -> list[str]:
        with self.lock:
            return self.log[since:]

    def stop(self) -> str:
        """SIGTERM by its PID, wait, SIGKILL if need be; reaped; its log."""
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=DAEMON_STOP)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.text()


class Vmnet:
    """vmnet's CLI (a whole process each) on the chassis' namespace, one state dir, a config
    whose default network is an ovn network on `switch`; with `daemon`, a vmnetd on that
    state dir serves it."""

    def __init__(self, world: OvnWorld, ch: Chassis, root: str, switch: str) -> None:
        self.ns = ch.ns.name
        self.state = os.path.join(root, f"state-{switch}")
        self.cfg = os.path.join(root, f"{switch}.toml")
        self.daemon: Vmnetd | None = None
        with open(self.cfg, "w") as f:
            f.write(f'[networks.o]\nkind = "ovn"\nswitch = "{switch}"\n'
                    f'northbound = "{world.nb}"\novs_db = "{ch.ovs_db}"\n'
                    f'ovn_rundir = "{ch.ovn_rundir}"\n[defaults]\nnetwork = "o"\n')

    def argv(self, *args: str) -> list[str]:
        return [PY, "-m", "vmnet", "--state-dir", self.state, "--config", self.cfg,
                "--netns", self.ns, *args]

    def up(self, vm: str) -> Up:
        """`vmnet -v up VM`, its stderr read as it comes (the bound line's arrival)."""
        d = self.daemon
        if d is not None and d.proc.poll() is not None:
            raise RuntimeError(f"vmnetd (pid {d.pid}) exited with {d.proc.returncode} before "
                               f"up {vm}: {d.text()[-800:]}")
        dcpu0 = d.cpu() if d is not None else None
        log0 = d.mark() if d is not None else 0
        t0 = time.perf_counter()
        proc = subprocess.Popen(self.argv("-v", "up", vm), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=clean_env(), cwd=ROOT)
        err: list[str] = []
        outs: list[str] = []
        bound: list[tuple[float, float]] = []  # (arrival, logged ms)

        def read_err() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                m = BOUND.match(line.rstrip("\n"))
                if m:
                    bound.append((time.perf_counter() - t0, float(m["ms"]) / 1e3))
                err.append(line)

        def read_out() -> None:
            assert proc.stdout is not None
            outs.append(proc.stdout.read())

        readers = [threading.Thread(target=f, daemon=True) for f in (read_err, read_out)]
        for r in readers:
            r.start()
        timer = threading.Timer(UP_TIMEOUT, proc.kill)  # our child, by its PID
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)  # (wait4: its CPU time too)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        dcpu1 = d.cpu() if d is not None else None
        proc.returncode = os.waitstatus_to_exitcode(status)
        for r in readers:
            r.join(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        out = "".join(outs)
        if proc.returncode != 0:
            late = f", killed after {UP_TIMEOUT:g} s" if wall >= UP_TIMEOUT else ""
            via = f" (through vmnetd pid {d.pid})" if d is not None else ""
            raise RuntimeError(f"vmnet up {vm}{via} failed ({proc.returncode}{late}): "
                               f"{''.join(err).strip()[-800:]}")
        cpu = ru.ru_utime + ru.ru_stime
        if d is None:
            if len(bound) != 1:
                raise RuntimeError(f"vmnet -v up {vm}: {len(bound)} 'bound on this chassis' "
                                   f"lines in its stderr, not 1:\n{''.join(err)[-800:]}\n"
                                   f"{out[-300:]}")
            return Up(wall, bound[0][1], bound[0][0], cpu)
        # Through vmnetd the bound line is the daemon's: sent back in its reply (the client
        # prints it when it exits: its arrival says nothing, to_bound None), else perhaps on
        # the daemon's own stderr; without one, the bind wait of this up is unknown.
        served = d.served_for(proc.pid)
        dcpu = None if dcpu0 is None or dcpu1 is None else max(dcpu1 - dcpu0, 0.0)
        if len(bound) > 1:
            raise RuntimeError(f"vmnet -v up {vm} through vmnetd: {len(bound)} 'bound on this "
                               f"chassis' lines in its stderr, not 1:\n{''.join(err)[-800:]}")
        if bound:
            return Up(wall, bound[0][1], None, cpu, served, dcpu, "client")
        port = f"vmnet-{vm}-0"
        theirs = [float(m["ms"]) / 1e3 for line in d.lines(log0)
                  if (m := BOUND.match(line.rstrip("\n"))) and m["port"] == port]
        if len(theirs) == 1:
            return Up(wall, theirs[0], None, cpu, served, dcpu, "vmnetd")
        return Up(wall, None, None, cpu, served, dcpu, "none")

    def run(self, *args: str) -> tuple[float, str]:
        """Whole-process wall time (s) and stdout; an error if it fails."""
        t0 = time.perf_counter()
        r = subprocess.run(self.argv(*args), capture_output=True, text=True, check=False,
                           env=clean_env(), cwd=ROOT, timeout=UP_TIMEOUT * 5)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"vmnet {' '.join(args)} failed ({r.returncode}): "
                               f"{r.stderr.strip()[-800:]}")
        return dt, r.stdout


# -- what the chassis and the databases hold -------------------------------------------------
def settle(world: OvnWorld) -> None:
    """Every chassis has caught up with the NB (and northd with it)."""
    world.nbctl("--timeout=60", "--wait=hv", "sync")


def interfaces(ch: Chassis) -> dict[str, dict[str, object]]:
    """The chassis' OVS Interfaces: name -> {type, external_ids}."""
    got = json.loads(ch.vsctl("--format=json", "--columns=name,type,external_ids", "list",
                              "Interface"))
    out: dict[str, dict[str, object]] = {}
    for name, typ, ids in got["data"]:
        out[name] = {"type": typ, "external_ids": dict(ids[1])}
    return out


def link_names(ch: Chassis) -> set[str]:
    return set(ch.ns.links())


def not_installed(ch: Chassis, taps: dict[str, str]) -> list[str]:
    """Of taps (tap -> logical port), those not installed on the chassis for their port."""
    have = interfaces(ch)
    bad = []
    for tap, port in taps.items():
        ids = have.get(tap, {}).get("external_ids", {})
        assert isinstance(ids, dict)
        if ids.get("iface-id") != port or ids.get("ovn-installed") != "true":
            bad.append(tap)
    return bad


def leftovers(world: OvnWorld, ch: Chassis, ports: set[str],
              links_before: set[str]) -> list[str]:
    """What is left of a run's logical ports after its teardown (after a settle)."""
    nb = world.nbctl("--bare", "--columns=name", "list", "Logical_Switch_Port").split()
    left = [f"NB port {p}" for p in nb if p in ports]
    sb = world.sbctl("--bare", "--columns=logical_port", "list", "Port_Binding").split()
    left += [f"SB Port_Binding {p}" for p in sb if p in ports]
    types = {n: i["type"] for n, i in interfaces(ch).items()}
    left += [f"br-int port {p}" for p in ch.vsctl("list-ports", "br-int").split()
             if types.get(p) not in TUNNELS]
    left += [f"link {n}" for n in sorted(link_names(ch) - links_before)]
    return left


# -- one run of N ports ------------------------------------------------------------------
@dataclass
class VmnetRun:
    n: int
    ups: list[Up]
    span: float  # s, the N ups' wall times added up
    down: float  # s, one `vmnet down --all`
    left: list[str]
    daemon: list[str] = field(default_factory=list)  # what was wrong with its vmnetd


@dataclass
class HandPort:
    steps: dict[str, float]  # command -> s

    @property
    def total(self) -> float:
        return sum(self.steps.values())

    @property
    def wait(self) -> float:
        return self.steps["wait-until"]


@dataclass
class HandRun:
    n: int
    ports: list[HandPort]
    span: float  # s, the N ports' commands added up
    left: list[str]


class VmnetSet:
    """One run of N vmnet ports in one world: its own switch and state dir; in mode vmnetd
    a vmnetd of its own on them (stopped by `finish`, else by `stack` whatever happens)."""

    def __init__(self, world: OvnWorld, root: str, n: int, tag: str, mode: str,
                 stack: ExitStack) -> None:
        self.world, self.ch, self.n, self.mode = world, world.chassis[CHASSIS[0]], n, mode
        self.switch = f"ls-{tag}"
        world.nbctl("ls-add", self.switch)
        self.vm = Vmnet(world, self.ch, root, self.switch)
        if mode == "vmnetd":
            self.vm.daemon = Vmnetd(self.vm.state, self.vm.cfg, self.ch.ns.name)
            stack.callback(self.vm.daemon.stop)
        self.before = link_names(self.ch)
        self.names = [f"{tag}-{i}" for i in range(n)]
        self.ups: list[Up] = []

    def step(self) -> None:
        self.ups.append(self.vm.up(self.names[len(self.ups)]))

    def vms(self) -> list[str]:
        got = json.loads(self.vm.run("list", "--json")[1])
        rows = got if isinstance(got, list) else got.get("vms", [])
        return [str(r.get("vm", r)) if isinstance(r, dict) else str(r) for r in rows]

    def finish(self) -> VmnetRun:
        """Check every port is up and installed, `vmnet down --all`, look for leftovers;
        stop its vmnetd (it must exit 0 on SIGTERM, with no traceback in its log)."""
        listed = self.vms()
        if len(listed) != self.n:
            raise RuntimeError(f"`vmnet list --json` after {self.n} ups has {len(listed)} "
                               "VMs")
        taps = {f"{name}-0": f"vmnet-{name}-0" for name in self.names}
        bad = not_installed(self.ch, taps)
        if bad:
            raise RuntimeError(f"after `up`, {len(bad)} taps are not installed: {bad[:5]}")
        down, _ = self.vm.run("down", "--all")
        settle(self.world)
        left = [f"NB port {p} on {self.switch}"
                for p in self.world.nbctl("lsp-list", self.switch).splitlines() if p.strip()]
        left += leftovers(self.world, self.ch, set(taps.values()), self.before)
        left += [f"vmnet record of {v}" for v in self.vms()]
        self.world.nbctl("ls-del", self.switch)
        wrong = []
        d = self.vm.daemon
        if d is not None:
            log = d.stop()
            if d.proc.returncode != 0:
                wrong.append(f"vmnetd pid {d.pid} exited {d.proc.returncode} on SIGTERM")
            if "Traceback" in log:
                at = log.index("Traceback")
                wrong.append(f"vmnetd pid {d.pid} logged a traceback: {log[at:at + 600]}")
            if os.path.exists(os.path.join(self.vm.state, "vmnetd.sock")):
                wrong.append(f"vmnetd pid {d.pid} left its socket behind")
        return VmnetRun(self.n, self.ups, sum(u.wall for u in self.ups), down, left, wrong)


class HandSet:
    """The same N ports by hand, one process per command `vmnet -v` prints."""

    def __init__(self, world: OvnWorld, n: int, tag: str) -> None:
        self.world, self.ch, self.n, self.tag = world, world.chassis[CHASSIS[0]], n, tag
        self.switch = f"hand-{tag}"
        world.nbctl("ls-add", self.switch)
        self.before = link_names(self.ch)
        self.ports: list[HandPort] = []
        self.taps: dict[str, str] = {}
        self.nbctl = shutil.which("ovn-nbctl") or "ovn-nbctl"
        self.vsctl = shutil.which("ovs-vsctl") or "ovs-vsctl"

    def step(self) -> None:
        i, ch, ns = len(self.ports), self.ch, self.ch.ns.name
        tap, port = f"h{self.tag}-{i}", f"hand-{self.tag}-{i}"
        mac, mtu = f"52:54:01:00:{i >> 8 & 255:02x}:{i & 255:02x}", str(UNDERLAY_MTU - GENEVE_V4)
        self.taps[tap] = port
        vsctl = [self.vsctl, f"--db={ch.ovs_db}"]
        steps = {
            "lsp-add": timed([self.nbctl, f"--db={self.world.nb}", "lsp-add", self.switch, port,
                              "--", "lsp-set-addresses", port, mac, "--",
                              "lsp-set-port-security", port, mac, "--", "set",
                              "Logical_Switch_Port", port,
                              f"options:requested-chassis={ch.name}"], port),
            "tuntap add": timed(["ip", "-n", ns, "tuntap", "add", "dev", tap, "mode", "tap",
                                 "user", "0"], tap),
            "sysctl": timed(["ip", "netns", "exec", ns, "sysctl", "-qw",
                             f"net/ipv6/conf/{tap}/disable_ipv6=1"], tap),
            "link set": timed(["ip", "-n", ns, "link", "set", tap, "address", "fe" + mac[2:],
                               "mtu", mtu, "up"], tap),
            "add-port": timed([*vsctl, "add-port", "br-int", tap, "--", "set", "Interface",
                               tap, f"external_ids:iface-id={port}",
                               f"external_ids:attached-mac={mac}"], tap),
            "wait-until": timed([*vsctl, "--timeout=20", "wait-until", "Interface", tap,
                                 "external_ids:ovn-installed=true"], tap),
        }
        self.ports.append(HandPort(steps))

    def finish(self) -> HandRun:
        """Check every port is installed, remove them (untimed), look for leftovers."""
        bad = not_installed(self.ch, self.taps)
        if bad:
            raise RuntimeError(f"by hand, {len(bad)} taps are not installed: {bad[:5]}")
        self.ch.vsctl(*[w for tap in self.taps
                        for w in ("--", "--if-exists", "del-port", "br-int", tap)])
        self.world.nbctl("ls-del", self.switch)
        subprocess.run(["ip", "-n", self.ch.ns.name, "-batch", "-"], check=True, text=True,
                       input="".join(f"link del {tap}\n" for tap in self.taps),
                       capture_output=True)
        settle(self.world)
        left = leftovers(self.world, self.ch, set(self.taps.values()), self.before)
        return HandRun(self.n, self.ports, sum(p.total for p in self.ports), left)


def schedule(counts: dict[int, int]) -> list[int]:
    """The order of the steps: the size with the most left goes next (on a tie the larger),
    so that all sizes end together, the smaller sizes' steps alternating with the largest's
    last ones (the target compares them: side by side in time, a drift of the shared
    machine falls on both)."""
    left = dict(counts)
    out = []
    while any(left.values()):
        n = max(left, key=lambda k: (left[k], k))
        out.append(n)
        left[n] -= 1
    return out


def phase(sets: dict[int, VmnetSet] | dict[int, HandSet]) -> None:
    for w in {id(s.world): s.world for s in sets.values()}.values():
        settle(w)
    for n in schedule({n: s.n for n, s in sets.items()}):
        sets[n].step()


# -- figures ---------------------------------------------------------------------------------
def _modes() -> dict[str, list[VmnetRun]]:
    return {m: [] for m in MODES}


@dataclass
class Size:
    """One N over its repeats (pooled)."""

    n: int
    vm: dict[str, list[VmnetRun]] = field(default_factory=_modes)  # mode -> its runs
    hand: list[HandRun] = field(default_factory=list)

    def ups(self, mode: str, what: str, first: int = 1, last: int | None = None
            ) -> list[float]:
        """`what` (UP_FIGURES) of ups first..last (0-based, slice) of mode's runs, pooled;
        the ups without it (None) left out."""
        got = (getattr(u, what) for r in self.vm[mode] for u in r.ups[first:last])
        return [x for x in got if x is not None]

    def hand_ports(self, what: str, first: int = 1, last: int | None = None) -> list[float]:
        return [getattr(p, what) for r in self.hand for p in r.ports[first:last]]

    def med(self, mode: str, what: str, first: int = 1, last: int | None = None) -> float:
        return med(self.ups(mode, what, first, last))

    @property
    def left(self) -> list[str]:
        return [f"{m}: {x}" for m, runs in self.vm.items() for r in runs for x in r.left] + \
            [f"by hand: {x}" for r in self.hand for x in r.left]

    @property
    def daemon_wrong(self) -> list[str]:
        return [x for r in self.vm["vmnetd"] for x in r.daemon]

    def as_json(self, mode: str) -> dict[str, object]:
        runs = self.vm[mode]

        def ms(what: str) -> list[list[float | None]]:
            return [[None if (x := getattr(u, what)) is None else round(x * 1e3, 2)
                     for u in r.ups] for r in runs]

        return {
            "first_up": {w: summary([x for r in runs
                                     if (x := getattr(r.ups[0], w)) is not None])
                         for w in UP_FIGURES},
            "ups_2_to_n": {w: summary(self.ups(mode, w)) for w in UP_FIGURES},
            "setup_s": [r.span for r in runs], "down_all_s": [r.down for r in runs],
            "ups_ms": ms("wall"), "bind_ms": ms("bind"), "cpu_ms": ms("cpu"),
            **({"served_ms": ms("served"), "vmnetd_cpu_ms": ms("dcpu"),
                "bind_from": [[u.bind_from for u in r.ups] for r in runs],
                "vmnetd_wrong": self.daemon_wrong} if mode == "vmnetd" else {}),
            "left_after_down": [x for r in runs for x in r.left],
        }

    def hand_json(self) -> dict[str, object]:
        return {"per_port_total": summary(self.hand_ports("total")),
                "per_port_wait_until": summary(self.hand_ports("wait")),
                "steps": {k: summary([p.steps[k] for r in self.hand for p in r.ports[1:]])
                          for k in (self.hand[0].ports[0].steps if self.hand else {})},
                "setup_s": [r.span for r in self.hand],
                "left_after_down": [x for r in self.hand for x in r.left]}


def pq(v: list[float]) -> str:
    if not v:
        return "n/a"
    return f"{percentile(v, 50) * 1e3:6.1f}/{percentile(v, 90) * 1e3:<6.1f}"


def med(v: list[float]) -> float:
    return statistics.median(v) if v else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b and not (math.isnan(a) or math.isnan(b)) else float("nan")


def no_nan(x: object) -> object:
    """JSON has no NaN: None instead."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: no_nan(v) for k, v in x.items()}
    if isinstance(x, list):
        return [no_nan(v) for v in x]
    return x


def growth(rows: dict[int, Size], mode: str, tail: int) -> dict[str, float]:
    """The medians' ratios, last `tail` ups at the largest N / ups 2..N at the smallest."""
    sizes = sorted(rows)
    lo, hi = rows[sizes[0]], rows[sizes[-1]]
    g = {w: ratio(hi.med(mode, w, -tail), lo.med(mode, w)) for w in UP_FIGURES}
    g["own_within_largest"] = ratio(hi.med(mode, "own", -tail), hi.med(mode, "own", 1, tail + 1))
    # the small N's up k ran right after the largest's up N_hi - N_lo + k (see schedule)
    pairs = [(a, b) for hr, sr in zip(hi.vm[mode], lo.vm[mode], strict=True)
             for k in range(1, lo.n)
             if (a := hr.ups[hi.n - lo.n + k].own) is not None
             and (b := sr.ups[k].own) is not None]
    g["own_paired"] = med([a / b for a, b in pairs])
    return g


def report_mode(rows: dict[int, Size], mode: str, tail: int, repeat: int,
                hand: bool) -> dict[str, float]:
    """Print one mode's table and growth; its growth ratios."""
    sizes = sorted(rows)
    lo, hi = rows[sizes[0]], rows[sizes[-1]]
    d = mode == "vmnetd"
    if d:
        print(f"\n1b. `vmnet -v up VM` through vmnetd (one per run, in chassis {CHASSIS[0]}'s "
              f"namespace), one client process per port; ms, p50/p90 of ups 2..N (of {repeat} "
              "run(s)); own = wall - bind wait; in vmnetd = the daemon's time for the request "
              "(its -v line); CPU = the client's user+sys; vmnetd CPU = the daemon's, all "
              "threads, in the up's window")
        print(f"   {'N':>4} {'setup N':>8} {'1st up':>7} {'wall':>13} {'bind wait':>13} "
              f"{'own cost':>13} {'in vmnetd':>13} {'CPU':>13} {'vmnetd CPU':>13} "
              f"{'down --all':>10}")
    else:
        print(f"\n1. `vmnet -v up VM` in-process, one process per port; ms, p50/p90 of ups "
              f"2..N (of {repeat} run(s)); own = wall - bind wait; CPU = the process's "
              "user+sys")
        print(f"   {'N':>4} {'setup N':>8} {'1st up':>7} {'wall':>13} {'bind wait':>13} "
              f"{'own cost':>13} {'up->bound':>13} {'CPU':>13} {'down --all':>10}")
    for n, r in rows.items():
        runs = r.vm[mode]
        first = med([u.ups[0].wall for u in runs]) * 1e3
        cols = [pq(r.ups(mode, w)) for w in ("wall", "bind", "own")]
        cols += [pq(r.ups(mode, w)) for w in (("served", "cpu", "dcpu") if d else
                                              ("to_bound", "cpu"))]
        print(f"   {n:>4} {med([u.span for u in runs]):>6.2f} s {first:>5.0f}ms "
              + " ".join(f"{c:>13}" for c in cols)
              + f" {med([u.down for u in runs]):>6.2f} s")
    g = growth(rows, mode, tail)

    def m(r: Size, w: str, first: int = 1) -> str:
        return f"{r.med(mode, w, first) * 1e3:.1f}"

    if d:
        sources = [u.bind_from for r in rows.values() for run in r.vm[mode] for u in run.ups]
        print("   the bound line: " + ", ".join(
            f"{sum(x == k for x in sources)}/{len(sources)} ups {where}"
            for k, where in (("client", "on the client's stderr (the daemon's reply)"),
                             ("vmnetd", "on the daemon's stderr"),
                             ("none", "nowhere (bind wait unknown)"))
            if any(x == k for x in sources)))
    print(f"   growth {lo.n} -> {hi.n} (medians, last {tail} ups at N={hi.n} vs ups "
          f"2..{lo.n} at N={lo.n}): own cost x{g['own']:.2f} ({m(lo, 'own')} -> "
          f"{m(hi, 'own', -tail)} ms), {'client ' if d else ''}CPU x{g['cpu']:.2f} "
          f"({m(lo, 'cpu')} -> {m(hi, 'cpu', -tail)} ms), wall x{g['wall']:.2f}, "
          + (f"in vmnetd x{g['served']:.2f} ({m(lo, 'served')} -> {m(hi, 'served', -tail)} "
             f"ms), vmnetd CPU x{g['dcpu']:.2f} ({m(lo, 'dcpu')} -> {m(hi, 'dcpu', -tail)} ms)"
             if d else f"up->bound x{g['to_bound']:.2f}")
          + f"; bind wait x{g['bind']:.2f} ({m(lo, 'bind')} -> {m(hi, 'bind', -tail)} ms, "
          "no target)")
    if d:
        def split(r: Size, first: int) -> tuple[float, float]:
            outside, inside = [], []
            for run in r.vm[mode]:
                for u in run.ups[first:]:
                    if u.served is not None:
                        outside.append(u.wall - u.served)
                        if u.bind is not None:
                            inside.append(u.served - u.bind)
            return med(outside), med(inside)

        (out_lo, in_lo), (out_hi, in_hi) = split(lo, 1), split(hi, -tail)
        print(f"   where an up's wall goes, N={lo.n} -> {hi.n} (p50s): outside vmnetd (client "
              f"start, request, reply) {out_lo * 1e3:.1f} -> {out_hi * 1e3:.1f} ms; in vmnetd "
              f"minus the bind wait {in_lo * 1e3:.1f} -> {in_hi * 1e3:.1f} ms")
    if hand:
        add = [med([p.steps["add-port"] for h in r.hand for p in h.ports[first:]])
               for r, first in ((lo, 1), (hi, -tail))]
        cpu = "dcpu" if d else "cpu"
        print(f"   own cost at N={hi.n} "
              f"{(hi.med(mode, 'own', -tail) - lo.med(mode, 'own')) * 1e3:+.1f} ms: "
              f"{'vmnetd' if d else 'vmnet'}'s CPU "
              f"{(hi.med(mode, cpu, -tail) - lo.med(mode, cpu)) * 1e3:+.1f} ms; an "
              f"`ovs-vsctl add-port` {(add[1] - add[0]) * 1e3:+.1f} ms (it waits for "
              "ovs-vswitchd to reconfigure, as vmnet's ovsdbapp add-port transaction does)")
    print(f"   paired: N={hi.n}'s up {hi.n - lo.n}+k / N={lo.n}'s up k, run next to each "
          f"other (k = 2..{lo.n}), median: own cost x{g['own_paired']:.2f}")
    print(f"   within N={hi.n}: own cost of the last {tail} ups vs ups 2..{tail + 1}: "
          f"x{g['own_within_largest']:.2f}")
    return g


def report_hand(rows: dict[int, Size], tail: int, modes: list[str]) -> dict[str, float]:
    """Print the by-hand table (and each mode's ratio to it); its growth ratios."""
    sizes = sorted(rows)
    lo, hi = rows[sizes[0]], rows[sizes[-1]]
    print("\n2. by hand: the commands `vmnet -v` prints, one process each, per port; ms, "
          "p50/p90 of ports 2..N")
    print(f"   {'N':>4} {'setup N':>8} {'per port':>13} {'wait-until':>13} "
          f"{'the rest':>13}   vmnet / by hand, p50s: wall, own / the rest")
    for n, r in rows.items():
        tot, wait = r.hand_ports("total"), r.hand_ports("wait")
        rest = [t - w for t, w in zip(tot, wait, strict=True)]
        print(f"   {n:>4} {med([h.span for h in r.hand]):>6.2f} s {pq(tot):>13} "
              f"{pq(wait):>13} {pq(rest):>13}   " + "; ".join(
                  f"{mode} x{ratio(r.med(mode, 'wall'), med(tot)):.2f}, "
                  f"x{ratio(r.med(mode, 'own'), med(rest)):.2f}" for mode in modes))
    print(f"   per command, p50 N={lo.n} -> N={hi.n}: " + ", ".join(
        f"{k} {med([p.steps[k] for h in lo.hand for p in h.ports[1:]]) * 1e3:.1f}->"
        f"{med([p.steps[k] for h in hi.hand for p in h.ports[-tail:]]) * 1e3:.1f}"
        for k in lo.hand[0].ports[0].steps) + " ms")
    g = {"hand_total": ratio(med(hi.hand_ports("total", -tail)), med(lo.hand_ports("total"))),
         "hand_wait": ratio(med(hi.hand_ports("wait", -tail)), med(lo.hand_ports("wait")))}
    print(f"   by hand {lo.n} -> {hi.n}: per port x{g['hand_total']:.2f}, wait-until "
          f"x{g['hand_wait']:.2f}")
    return g


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", default="10,100", help="ports on the chassis (10,100)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each phase, their order turned round each time, pooled (1)")
    ap.add_argument("--tail", type=int, default=10,
                    help="the last ups at the largest N whose median is its own cost (10)")
    ap.add_argument("--mode", choices=("in-process", "vmnetd", "both"), default="both",
                    help="vmnet in-process, through vmnetd, or both, a phase each (both)")
    ap.add_argument("--no-hand", action="store_true", help="skip the by-hand baseline")
    ap.add_argument("--json", metavar="FILE", help="also write the summary as JSON here")
    a = ap.parse_args()
    why = ovn_missing()
    if why:
        sys.exit(f"bench/ovn.py cannot run: {why}")
    sizes = sorted({int(s) for s in a.sizes.split(",") if s.strip()})
    if len(sizes) < 2 or sizes[0] < 3 or sizes[-1] > 2000 or a.repeat < 1 or a.tail < 2:
        sys.exit("--sizes: two or more port counts, 3..2000; --repeat >= 1; --tail >= 2")
    if a.mode in ("vmnetd", "both") and os.geteuid() != 0:
        sys.exit("bench/ovn.py --mode vmnetd: vmnetd runs as root (so does the bench)")
    modes = list(MODES) if a.mode == "both" else [a.mode]
    tail = min(a.tail, sizes[-1] - 1)
    root = tempfile.mkdtemp(prefix="vmnet-ovn-", dir="/dev/shm")
    t_start = time.perf_counter()
    rows = {n: Size(n) for n in sizes}
    try:
        with ExitStack() as stack:
            worlds = {n: stack.enter_context(ovn_world(CHASSIS)) for n in sizes}
            print(f"vmnet ovn bench: {PY} -m vmnet ({', '.join(modes)}); one OVN world per N "
                  f"(chassis {', '.join(CHASSIS)}, userspace datapath), the ports on chassis "
                  f"{CHASSIS[0]}; state on {root}")
            for rep in range(a.repeat):
                kinds = [*modes, *([] if a.no_hand else ["hand"])]
                for kind in kinds[::-1] if rep % 2 else kinds:
                    t0 = time.perf_counter()
                    if kind == "hand":
                        hsets = {n: HandSet(worlds[n], n, f"n{n}r{rep}") for n in sizes}
                        phase(hsets)
                        for n, hs in hsets.items():
                            rows[n].hand.append(hs.finish())
                    else:
                        # (a tag per mode: a switch, VM and tap names of its own)
                        tag = "d" if kind == "vmnetd" else "n"
                        vsets = {n: VmnetSet(worlds[n], root, n, f"{tag}{n}r{rep}", kind,
                                             stack) for n in sizes}
                        phase(vsets)
                        for n, vs in vsets.items():
                            rows[n].vm[kind].append(vs.finish())
                    print(f"   ({kind}, run {rep + 1} of {a.repeat}: "
                          f"{time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
        g = {mode: report_mode(rows, mode, tail, a.repeat, not a.no_hand) for mode in modes}
        gh = {} if a.no_hand else report_hand(rows, tail, modes)
        left = [f"N={n}: {x}" for n in sizes for x in rows[n].left]
        wrong = [f"N={n}: {x}" for n in sizes for x in rows[n].daemon_wrong]
        for x in left[:10]:
            print(f"   ! left: {x}")
        for x in wrong[:5]:
            print(f"   ! {x}")
        lo, hi, t = sizes[0], sizes[-1], TARGETS["own_growth"]
        verdicts: dict[str, tuple[bool, str]] = {}
        for mode in modes:
            own = g[mode]["own"]
            verdicts[f"{mode}: vmnet's own per-port cost {lo} -> {hi} <= x{t:g}"] = (
                (own <= t, f"x{own:.2f}") if not math.isnan(own) else
                (False, f"not measured: no bind wait per up (wall x{g[mode]['wall']:.2f})"))
        verdicts["down --all leaves nothing (NB, SB, br-int, links, records)"] = (
            not left, "nothing left" if not left else f"{len(left)} leftovers")
        if "vmnetd" in modes:
            verdicts["vmnetd: exits 0 on SIGTERM, no traceback, its socket gone"] = (
                not wrong, "clean" if not wrong else f"{len(wrong)} problems")
        wall = time.perf_counter() - t_start
        print(f"(wall {wall:.0f} s)")
        for k, (ok, detail) in verdicts.items():
            print(f"{'PASS' if ok else 'FAIL'} {k}: {detail}")
        if a.json:
            out = {"sizes": sizes, "repeat": a.repeat, "tail": tail, "targets": TARGETS,
                   "chassis": list(CHASSIS), "modes": modes,
                   "per_mode": {mode: {
                       "per_size": {str(n): r.as_json(mode) for n, r in rows.items()},
                       "growth": g[mode],
                       "verdict": next({"pass": ok, "detail": d}
                                       for k, (ok, d) in verdicts.items()
                                       if k.startswith(f"{mode}: "))}
                       for mode in modes},
                   "by_hand": None if a.no_hand else {
                       "per_size": {str(n): r.hand_json() for n, r in rows.items()},
                       "growth": gh},
                   "verdicts": {k: {"pass": ok, "detail": d}
                                for k, (ok, d) in verdicts.items()},
                   "wall_s": wall}
            with open(a.json, "w") as f:
                json.dump(no_nan(out), f, indent=2)
                f.write("\n")
        return 0 if all(ok for ok, _ in verdicts.values()) else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # so the world's and the state dir's `finally` run


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
