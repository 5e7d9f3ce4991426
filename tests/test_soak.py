"""Bounded soak: many vmnet processes at once, then the kernel and the records must agree.

1. Parallel cycles: VMNET_SOAK_WORKERS threads, each owning a few VMs, run
   VMNET_SOAK_ROUNDS rounds of VMNET_SOAK_OPS random `up`/`down` each (single
   and bulk), so bridges are created and released under each other's feet:
   the default bridge, a bridge with an uplink that comes and goes with it,
   and the admin's bridge, which must stay.  After every round, with
   everything quiet, `vmnet status --json` is checked against `ip -d -j link`.
   `vmnet gc` runs in a loop all the while: it must leave live work and idle
   VMs alone.
2. Races on one VM (VMNET_SOAK_RACES rounds): two `up` at once, `up`
   against `down`, and `up` against `down --force` of a bulk set; every
   command must succeed, and the end state must be one of the two orders.

The choices come from VMNET_SOAK_SEED (default fixed) so a CI run is
repeatable; the defaults keep the module around half a minute.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import figures
from tests.nsutil import Netns
from tests.test_nat import dnsmasqs
from tests.vmnetcli import vmnet
from tests.world import public_tmpdir

pytestmark = pytest.mark.kernel

ROUNDS = int(os.environ.get("VMNET_SOAK_ROUNDS", "6"))
WORKERS = int(os.environ.get("VMNET_SOAK_WORKERS", "6"))
OPS = int(os.environ.get("VMNET_SOAK_OPS", "4"))
RACES = int(os.environ.get("VMNET_SOAK_RACES", "8"))
SEED = int(os.environ.get("VMNET_SOAK_SEED", "20240601"))
VMS_PER_WORKER = 3

CONFIG_HEAD = """\
[networks.lan]
bridge = "br-soak"
uplink = "up0"
address = "10.88.0.1/24"

[networks.adm]
bridge = "br-admin"
"""


@pytest.fixture
def state_dir() -> Iterator[str]:
    """A state directory dnsmasq (the default network is NAT) can reach after it drops
    root: under a directory others may pass through, unlike pytest's tmp_path."""
    with public_tmpdir("vmnet-soak-") as d:
        yield str(d / "state")


def soak_config(names: list[str], data_dir: str) -> str:
    """VMs on the default network (NAT: dnsmasq, nft, sysctls come and go with them), on
    br-soak (with uplink), on the admin's bridge, some with two NICs or several queues."""
    nets = ["default", "lan", "adm"]
    out = [f'[defaults]\ndata_dir = "{data_dir}"\n', CONFIG_HEAD]
    for i, name in enumerate(names):
        out.append(f"[vms.{name}]\nuser = \"{4000 + i % 3}\"")
        out.append(f"[[vms.{name}.nics]]\nnetwork = \"{nets[i % 3]}\"\nqueues = {1 + i % 2}")
        if i % 4 == 0:
            out.append(f"[[vms.{name}.nics]]\nnetwork = \"adm\"")
    return "\n".join(out) + "\n"


class Soak:
    def __init__(self, ns: Netns, state_dir: str, config: str) -> None:
        self.ns, self.state_dir, self.config = ns, state_dir, config
        self.counts: Counter[str] = Counter()
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        r = vmnet(self.ns, self.state_dir, "--lock-timeout", "120", *args,
                  config=self.config, timeout=180)
        with self._lock:
            self.counts[args[0]] += 1
            if r.returncode != 0 or "Traceback" in r.stderr:
                self.failures.append(f"vmnet {' '.join(args)}: {r.returncode} "
                                     f"{r.stderr.strip()[-300:]}")
        return r


def build_admin(ns: Netns) -> None:
    ns.ip("link", "add", "br-admin", "type", "bridge")
    ns.ip("link", "add", "port0", "type", "veth", "peer", "name", "port0p")
    ns.ip("link", "set", "port0", "master", "br-admin")
    ns.ip("link", "set", "br-admin", "up")
    ns.ip("link", "add", "up0", "type", "veth", "peer", "name", "up0p")


def agreement(s: Soak, expect_up: set[str] | None = None) -> list[str]:
    """Where `vmnet status --json` and the kernel (`ip -d -j link`) disagree."""
    r = vmnet(s.ns, s.state_dir, "status", "--json", config=s.config)
    if r.returncode != 0:
        return [f"status failed: {r.stderr.strip()}"]
    st = json.loads(r.stdout)
    links = s.ns.links()
    out: list[str] = []
    recorded: set[str] = set()
    for vm in st["vms"]:
        if vm["phase"] != "ready" or vm["stale"]:
            out.append(f"{vm['vm']}: phase {vm['phase']}, stale {vm['stale']}")
        for n in vm["nics"]:
            recorded.add(n["tap"])
            lk = links.get(n["tap"])
            if n["state"] != "ok" or lk is None:
                out.append(f"{vm['vm']}: {n['tap']} is {n['state']}")
                continue
            info = lk["linkinfo"]["info_data"]
            master = lk.get("master")
            if master != n["bridge"]:
                out.append(f"{n['tap']}: kernel master {master}, record {n['bridge']}")
            if lk.get("ifalias") != f"vmnet:{vm['vm']}:{n['index']}":
                out.append(f"{n['tap']}: mark {lk.get('ifalias')!r}")
            if info.get("multi_queue") != (n["queues"] > 1):
                out.append(f"{n['tap']}: multi_queue {info.get('multi_queue')}, "
                           f"{n['queues']} queues recorded")
            if not info.get("persist"):
                out.append(f"{n['tap']}: not persistent")
    # Every vmnet-marked tap in the kernel is recorded; every vmnet bridge has a record.
    for name, lk in links.items():
        alias = lk.get("ifalias") or ""
        kind = lk.get("linkinfo", {}).get("info_kind")
        if kind == "tun" and alias.startswith("vmnet:") and name not in recorded:
            out.append(f"tap {name} ({alias}) has no record")
    bridges = {b["bridge"]: b for b in st["bridges"]}
    used = {n["bridge"] for vm in st["vms"] for n in vm["nics"]}
    for name, lk in links.items():
        if lk.get("ifalias") == f"vmnet:bridge:{name}" and name not in used:
            out.append(f"bridge {name} is vmnet's but no VM uses it")
    for name, b in bridges.items():
        if not b["present"]:
            out.append(f"bridge record {name}: bridge missing")
        if name not in used:
            out.append(f"bridge record {name} kept with no VM on it")
    # The uplink is a port of br-soak exactly while br-soak exists.
    up0 = links["up0"].get("master")
    if ("br-soak" in links) != (up0 == "br-soak"):
        out.append(f"uplink up0 master {up0!r}, br-soak present: {'br-soak' in links}")
    if "br-admin" not in links or links["port0"].get("master") != "br-admin":
        out.append("the admin's bridge or its port changed")
    if st["unrecorded_taps"]:
        out.append(f"unrecorded taps {st['unrecorded_taps']}")
    if expect_up is not None and {vm["vm"] for vm in st["vms"]} != expect_up:
        out.append(f"VMs up {sorted(vm['vm'] for vm in st['vms'])}, expected "
                   f"{sorted(expect_up)}")
    # the kernel's view of ports per bridge matches the records
    ports: Counter[str] = Counter()
    for name, lk in links.items():
        if lk.get("master") and name in recorded:
            ports[lk["master"]] += 1
    want = Counter(n["bridge"] for vm in st["vms"] for n in vm["nics"])
    if ports != want:
        out.append(f"ports per bridge: kernel {dict(ports)}, records {dict(want)}")
    return out


def test_parallel_up_down_cycles(ns: Netns, state_dir: str, tmp_path: Path) -> None:
    build_admin(ns)
    names = [f"s{w}x{i}" for w in range(WORKERS) for i in range(VMS_PER_WORKER)]
    cfg = tmp_path / "soak.toml"
    cfg.write_text(soak_config(names, str(tmp_path / "data")))
    s = Soak(ns, state_dir, str(cfg))
    rng = random.Random(SEED)
    is_up: dict[str, bool] = dict.fromkeys(names, False)
    disagreements: list[str] = []

    def worker(w: int, plan: list[tuple[str, list[str]]]) -> None:
        for op, vms in plan:
            s.run(op, *vms)

    for rnd in range(ROUNDS):
        plans = []
        for w in range(WORKERS):
            mine = [f"s{w}x{i}" for i in range(VMS_PER_WORKER)]
            plan = []
            for _ in range(OPS):
                vms = rng.sample(mine, rng.choice([1, 1, 2, 3]))
                op = rng.choice(["up", "down"])
                plan.append((op, vms))
                for v in vms:
                    is_up[v] = op == "up"
            plans.append(plan)
        stop = threading.Event()

        def collector(stop: threading.Event) -> None:  # gc must leave live work be
            while not stop.is_set():
                s.run("gc")

        gc_thread = threading.Thread(target=collector, args=(stop,))
        gc_thread.start()
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(worker, range(WORKERS), plans))
        stop.set()
        gc_thread.join()
        problems = agreement(s, {v for v, u in is_up.items() if u})
        disagreements += [f"round {rnd}: {p}" for p in problems]
    # everything down, in one bulk call: nothing of vmnet's left
    s.run("down", "--all")
    disagreements += [f"end: {p}" for p in agreement(s, set())]
    left = {n for n in ns.links() if n not in ("lo", "br-admin", "port0", "port0p", "up0",
                                                "up0p")}
    assert not left, left
    assert not [f for _, _, fs in os.walk(state_dir) for f in fs]
    assert not dnsmasqs(ns) and "vmnet" not in ns.run("nft", "list", "ruleset").stdout
    figures.report("soak", "parallel-cycles", rounds=ROUNDS, workers=WORKERS,
                   vms=len(names), commands=sum(s.counts.values()), ups=s.counts["up"],
                   downs=s.counts["down"], gcs=s.counts["gc"], failures=len(s.failures),
                   disagreements=len(disagreements))
    assert not s.failures, "\n".join(s.failures)
    assert not disagreements, "\n".join(disagreements)


def race(s: Soak, *commands: list[str]) -> None:
    """Start the commands at the same moment (a barrier), wait for all."""
    barrier = threading.Barrier(len(commands))

    def go(args: list[str]) -> None:
        barrier.wait()
        s.run(*args)

    threads = [threading.Thread(target=go, args=(c,)) for c in commands]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_races_on_one_vm(ns: Netns, state_dir: str, tmp_path: Path) -> None:
    build_admin(ns)
    names = ["r0", "r1", "r2", "r3"]
    cfg = tmp_path / "race.toml"
    cfg.write_text(soak_config(names, str(tmp_path / "data")))
    s = Soak(ns, state_dir, str(cfg))
    rng = random.Random(SEED + 1)
    outcomes: Counter[str] = Counter()
    disagreements: list[str] = []
    for rnd in range(RACES):
        # two `up` of the same VM: one creates, the other finds it up; no duplicates
        race(s, ["up", "r0"], ["up", "r0"], ["up", "r1", "r0"])
        disagreements += [f"round {rnd} up/up: {p}"
                          for p in agreement(s, {"r0", "r1"})]
        taps = sorted(n for n in ns.links() if n.startswith(("r0-", "r1-")))
        if taps != ["r0-0", "r0-1", "r1-0"]:
            disagreements.append(f"round {rnd}: taps {taps}")
        # `up` against `down`: either order is fine, but the end state must be one of them
        victim = rng.choice(["r0", "r1"])
        race(s, ["up", victim], ["down", victim])
        st = json.loads(vmnet(ns, state_dir, "status", "--json", config=s.config).stdout)
        now_up = {vm["vm"] for vm in st["vms"]}
        outcomes["up-won" if victim in now_up else "down-won"] += 1
        disagreements += [f"round {rnd} up/down: {p}" for p in agreement(s, None)]
        # a bulk up against a bulk down --force of overlapping sets, and a single up
        race(s, ["up", "r2", "r3"], ["down", "--force", "r0", "r1", "r2"], ["up", "r1"])
        disagreements += [f"round {rnd} bulk: {p}" for p in agreement(s, None)]
        s.run("down", "--all")
        disagreements += [f"round {rnd} reset: {p}" for p in agreement(s, set())]
    figures.report("soak", "races", rounds=RACES, commands=sum(s.counts.values()),
                   up_won=outcomes["up-won"], down_won=outcomes["down-won"],
                   failures=len(s.failures), disagreements=len(disagreements))
    assert not s.failures, "\n".join(s.failures)
    assert not disagreements, "\n".join(disagreements)
