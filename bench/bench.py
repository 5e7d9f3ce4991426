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
"""

from __future__ import annotations

import argparse
import json
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
        check: bool = True) -> tuple[float, int]:
    """Whole-process wall time (s) and peak RSS (KiB) of one command."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env={**os.environ, **(env or {})})
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


def domain_xml(tmp: str, state: str, dom: str, vm: str) -> bytes:
    """A minimal domain with vmnet's interfaces and metadata, as `libvirt-xml` renders it."""
    import uuid as _uuid

    base = os.path.join(tmp, f"{dom}.xml")
    with open(base, "w") as f:
        f.write(f"<domain type='qemu'><name>{dom}</name><uuid>{_uuid.uuid4()}</uuid>"
                "<memory>131072</memory><os><type arch='x86_64'>hvm</type></os></domain>")
    return subprocess.run([VMNET, "--state-dir", state, "libvirt-xml", vm, "--domain", base],
                          check=True, capture_output=True, env={**os.environ, "VMNET_CONFIG": ""}
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
        f.write('[networks.adm]\nbridge = "adm0"\n')
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
            xml = domain_xml(tmp, state, f"d{i}", f"k{i}")
            argv = ["ip", "netns", "exec", ns, hook, f"--state-dir={state}", f"d{i}",
                    "prepare", "begin", "-"]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--single-delete-n", type=int, default=100)
    ap.add_argument("--host-vms", type=int, default=999)
    ap.add_argument("--single-runs", type=int, default=20)
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench needs root (it makes a network namespace)")
    sizes = [int(s) for s in a.sizes.split(",")]
    tmp = tempfile.mkdtemp(prefix="vmnet-bench-")
    global VMNET, STATE_ROOT
    STATE_ROOT = tempfile.mkdtemp(prefix="vmnet-bench-", dir="/dev/shm")
    try:
        VMNET = os.path.join(launchers(tmp), "vmnet")
        print(f"vmnet as installed by scripts/install: {VMNET} (python -IS launcher)")
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
        print("import time of each edge (-X importtime, vmnet's modules, median):")
        for name, secs in import_times().items():
            print(f"  {name:<32} {secs * 1e3:6.1f} ms")
        print("targets: bulk up <= x1.5, bulk down <= x1.5, growth <= x1.3, starting one VM "
              "<= x4 three ip, 1,000th up <= x1.3 the 1st, RSS < 100 MB")
        r = rows[hi]
        verdict = {
            f"bulk up {hi}": r["up"] / r["ip_up"] <= TARGETS["bulk_up"],
            f"bulk down {hi}": r["down"] / r["ip_del"] <= TARGETS["bulk_down"],
            "per-NIC growth": max(growth_up, growth_down) <= TARGETS["growth"],
            "starting one VM": all(o / i <= TARGETS["start"] for k, (o, i) in starts.items()
                                   if not k.startswith(" ")),
            "1,000th up": nth / first <= TARGETS["nth"],
            "peak RSS": r["rss"] < TARGETS["rss_mb"],
        }
        for k, ok in verdict.items():
            print(f"  {k:<16} {'met' if ok else 'MISSED'}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(STATE_ROOT, ignore_errors=True)


if __name__ == "__main__":
    main()
