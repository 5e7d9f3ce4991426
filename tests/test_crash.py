"""Crash at any point: SIGKILL vmnet at every fault point of up, down, run, gc and the hook.

tests/faults.py (test-only: nothing of it is in vmnet) wraps kill points around
vmnet's steps, record writes and transaction phases, counts the points a
process passes when VMNET_FAULT='*' and SIGKILLs it at the VMNET_FAULT_AT-th.
For each operation N goes 1, 2, ...
until the operation completes without being killed: that enumerates every
point it passes, in order, with no list here that could go stale when the
plan gains a step.  (A traced run names the points for the report.)

After each kill the host must come back to exactly what it was before the
operation, by `vmnet gc` alone (and, for the hook, the `release end` libvirt
always sends after a failed start): no tap, bridge, address or state record
left, and the admin's bridge, its port, the uplink and the foreign taps
unchanged.  Then the operation, repeated, must work and be undone cleanly.

Problems are counted as leaks and reported together (a kill sweep that
stopped at the first one would hide the others); the namespace is rebuilt
after a leak so the next kill starts clean.

VMNET_CRASH_MAX_POINTS caps a sweep (default 80: a runaway count is a bug).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import figures
from tests.nsutil import Netns, netns
from tests.vmnetcli import FAULTS, host_snapshot, vmnet, vmnet_argv

pytestmark = pytest.mark.kernel

MAX_POINTS = int(os.environ.get("VMNET_CRASH_MAX_POINTS", "80"))
UUID = "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b"

# vm1: NIC 0 on a bridge vmnet creates (with a host address and an uplink it
# enslaves), NIC 1 on the admin's bridge.  Every kind of up step appears.
CONFIG = """\
[networks.lan]
bridge = "br-lan"
uplink = "up0"
address = "10.77.0.1/24"

[networks.adm]
bridge = "br-admin"

[vms.vm1]
user = "65534"
[[vms.vm1.nics]]
network = "lan"
queues = 2
[[vms.vm1.nics]]
network = "adm"

[vms.vm2]
[[vms.vm2.nics]]
network = "lan"

# vm3, vm4: with vm1, three VMs of two NICs each for the bulk syscall sweeps.
[vms.vm3]
[[vms.vm3.nics]]
network = "lan"
[[vms.vm3.nics]]
network = "adm"

[vms.vm4]
user = "65534"
[[vms.vm4.nics]]
network = "adm"
[[vms.vm4.nics]]
network = "lan"
"""

DOMAIN = """\
<domain type='qemu'>
  <name>crash</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <metadata>
    <vmnet:vmnet xmlns:vmnet="urn:vmnet:libvirt:1">{vms}</vmnet:vmnet>
  </metadata>
  <devices/>
</domain>
"""

@dataclass
class Host:
    """A namespace dressed as a host vmnet shares with an admin, and its expected state."""

    ns: Netns
    state_dir: str
    config: str
    base: dict[str, Any] = field(default_factory=dict)

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
            prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        e = {"VMNET_LIBVIRT_URI": "test:///default", "PYTHONHASHSEED": "0", **(env or {})}
        return vmnet(self.ns, self.state_dir, *args, config=self.config, env=e,
                     timeout=timeout, prefix=prefix)

    def hook(self, op: str, subop: str, xml: str, env: dict[str, str] | None = None,
             tracer: list[str] | None = None) -> subprocess.CompletedProcess[str]:
        """The hook as libvirtd runs it: isolated interpreter, minimal environment."""
        faulty = tracer or ([FAULTS] if "VMNET_FAULT" in (env or {}) else None)
        head = [sys.executable, "-I", *(faulty or ["-m"]), "vmnet.integrations.libvirt.hook"]
        argv = ["ip", "netns", "exec", self.ns.name, *head, f"--state-dir={self.state_dir}",
                f"--config={self.config}", "crash", op, subop, "-"]
        e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", **(env or {})}
        return subprocess.run(argv, input=xml, text=True, capture_output=True, env=e,
                              timeout=60)

    def snapshot(self) -> dict[str, Any]:
        return host_snapshot(self.ns, self.state_dir)

    def settled_diff(self, want: dict[str, Any], timeout: float = 3.0) -> list[str]:
        """Differences from `want`, waiting out linkwatch (operstate lags carrier by ~1 s)."""
        deadline = time.monotonic() + timeout
        while True:
            diff = snapshot_diff(want, self.snapshot())
            if not diff or time.monotonic() > deadline:
                return diff
            time.sleep(0.1)


def snapshot_diff(want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """A readable list of what differs between two host_snapshot()s."""
    out = []
    wl, gl = want["links"], got["links"]
    out += [f"link {n} leaked" for n in sorted(set(gl) - set(wl))]
    out += [f"link {n} is gone" for n in sorted(set(wl) - set(gl))]
    for n in sorted(set(wl) & set(gl)):
        keys = sorted(k for k in set(wl[n]) | set(gl[n])
                      if k != "ifindex" and wl[n].get(k) != gl[n].get(k))
        out += [f"link {n}: {k} {wl[n].get(k)!r} -> {gl[n].get(k)!r}" for k in keys]
    if want["addrs"] != got["addrs"]:
        out.append(f"addresses {want['addrs']} -> {got['addrs']}")
    ws, gs = dict(want["state"]), dict(got["state"])
    out += [f"state file {p} leaked" for p in sorted(set(gs) - set(ws))]
    out += [f"state file {p} is gone" for p in sorted(set(ws) - set(gs))]
    out += [f"state file {p} changed" for p in sorted(set(ws) & set(gs)) if ws[p] != gs[p]]
    return out


def build_host(ns: Netns, state_dir: str, config: str) -> Host:
    """The admin's things (never vmnet's to change) and an idle VM of vmnet's."""
    ns.ip("link", "add", "br-admin", "type", "bridge")
    ns.run("sysctl", "-qw", "net.ipv6.conf.br-admin.disable_ipv6=1")
    ns.ip("link", "set", "br-admin", "up")
    ns.ip("address", "add", "10.66.0.1/24", "dev", "br-admin")
    ns.ip("link", "add", "other0", "type", "veth", "peer", "name", "other0p")
    for port in ("other0", "other0p"):  # a port with carrier: br-admin's state is stable
        ns.run("sysctl", "-qw", f"net.ipv6.conf.{port}.disable_ipv6=1")
        ns.ip("link", "set", port, "up")
    ns.ip("link", "set", "other0", "master", "br-admin")
    # The uplink, down: vmnet brings it up while enslaved and down again after.  Up once
    # before, so it has its default qdisc already (the kernel attaches one at the first
    # up and keeps it: noop -> noqueue, not vmnet's doing).
    ns.ip("link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    ns.ip("link", "set", "up0", "up")
    ns.ip("link", "set", "up0", "down")
    ns.ip("tuntap", "add", "foreign0", "mode", "tap", "user", "1234")
    ns.ip("tuntap", "add", "vm1-9", "mode", "tap")  # a name vmnet could use, not vmnet's
    host = Host(ns, state_dir, config)
    r = host.cli("up", "keep", "--bridge", "br-admin")  # idle `up`: gc must keep it
    assert r.returncode == 0, r.stderr
    host.base = settled(host)
    return host


SYNC_LINKWATCH = """
import socket, sys
from vmnet.kernel.tun import settle_operstate
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    for name in sys.argv[1:]:
        settle_operstate(s.fileno(), name)
"""


def settled(host: Host, timeout: float = 6.0) -> dict[str, Any]:
    """A snapshot that no longer changes.  linkwatch applies carrier changes to the
    operstate up to a second later; ETHTOOL_GLINK makes it do so at once."""
    deadline = time.monotonic() + timeout
    host.ns.run(sys.executable, "-c", SYNC_LINKWATCH, *host.ns.links())
    last = host.snapshot()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = host.snapshot()
        if now == last:
            return now
        last = now
    raise AssertionError(f"host never settled: {snapshot_diff(last, host.snapshot())}")


@dataclass
class Sweep:
    """One operation's kill sweep: what was covered and what went wrong."""

    op: str
    points: list[str] = field(default_factory=list)
    kills: int = 0
    leaks: list[str] = field(default_factory=list)


class Lab:
    """A Host that can be thrown away and rebuilt after a leak."""

    def __init__(self, stack: contextlib.ExitStack, tmp: Path) -> None:
        self.stack = stack
        self.tmp = tmp
        self.config = str(tmp / "vmnet.toml")
        Path(self.config).write_text(CONFIG)
        self.builds = 0
        self.host = self.rebuild()

    def rebuild(self) -> Host:
        self.builds += 1
        ns = self.stack.enter_context(netns("vmk"))
        state = str(self.tmp / f"state{self.builds}")
        os.mkdir(state)
        self.host = build_host(ns, state, self.config)
        return self.host


def _after_kill(lab: Lab, res: Sweep, what: str, recover: Callable[[Host], list[str]],
                expect: Callable[[Host], dict[str, Any]],
                redo: Callable[[Host], list[str]]) -> None:
    """Recover as an admin would, check the host against `expect`, redo; count leaks."""
    host = lab.host
    problems = recover(host)
    problems += host.settled_diff(expect(host))
    if not problems:
        problems += redo(host)
    if problems:
        res.leaks += [f"{what}: {p}" for p in problems]
        lab.rebuild()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("kernel tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces)")
    with contextlib.ExitStack() as stack:
        yield Lab(stack, tmp_path)


def killed(r: subprocess.CompletedProcess[str]) -> bool:
    return r.returncode == -signal.SIGKILL


def clean_exit(what: str, r: subprocess.CompletedProcess[str]) -> str | None:
    if r.returncode != 0 or "Traceback" in r.stderr:
        return f"{what} failed ({r.returncode}): {r.stderr.strip()[-300:]}"
    return None


def traced(lab: Lab, run: Callable[[list[str]], subprocess.CompletedProcess[str]]) -> list[str]:
    """The fault points one complete run passes, by name, in order."""
    fd, out = tempfile.mkstemp(prefix="vmnet-trace-", suffix=".json")
    os.close(fd)
    os.chmod(out, 0o666)
    try:
        r = run([FAULTS, f"--trace={out}"])
        assert r.returncode == 0, r.stderr
        return list(json.loads(Path(out).read_text()))
    finally:
        os.unlink(out)


def sweep(lab: Lab, op: str, *, prepare: Callable[[Host], None],
          run: Callable[[Host, dict[str, str], list[str] | None],
                        subprocess.CompletedProcess[str]],
          recover: Callable[[Host], list[str]], redo: Callable[[Host], list[str]],
          undo: Callable[[Host], list[str]], expect: Callable[[Host], dict[str, Any]]) -> Sweep:
    """Kill `op` at point 1, 2, ... until it completes; check recovery after each kill.

    prepare: bring the host to the state the operation starts from.
    run: the operation (with the fault env; tracer argv prefix or None).
    recover: what an admin/libvirt does after the crash (gc, ...): problems.
    redo: the operation again and its undo: problems.
    undo: what undoes a complete run of the operation: problems.
    expect: the snapshot the host must match after recovery.
    """
    res = Sweep(op)
    host = lab.host
    prepare(host)
    res.points = traced(lab, lambda tr: run(lab.host, {}, tr))
    assert not undo(host)
    assert not (d := host.settled_diff(expect(host))), f"{op} (traced run): {d}"
    for n in range(1, MAX_POINTS + 1):
        host = lab.host
        prepare(host)
        r = run(host, {"VMNET_FAULT": "*", "VMNET_FAULT_AT": str(n)}, None)
        if not killed(r):
            assert r.returncode == 0 and "Traceback" not in r.stderr, \
                f"{op} at point {n}: exit {r.returncode}: {r.stderr}"
            assert n - 1 == len(res.points), \
                f"{op}: counted {n - 1} points, the traced run passed {res.points}"
            assert not (p := undo(host)), p
            break
        res.kills += 1
        where = res.points[n - 1] if n <= len(res.points) else f"#{n}"
        _after_kill(lab, res, f"{op} killed at {where}", recover, expect, redo)
    else:
        pytest.fail(f"{op}: still being killed after {MAX_POINTS} points")
    figures.report("crash", op, points=len(res.points), kills=res.kills,
                   leaks=len(res.leaks), names=" ".join(res.points))
    print(f"\n{op}: {len(res.points)} points, {res.kills} kills, {len(res.leaks)} leaks")
    return res


def assert_no_leaks(res: Sweep) -> None:
    assert res.kills >= 1
    assert not res.leaks, "\n".join(res.leaks)


# -- recovery and redo steps --------------------------------------------------------
def gc(host: Host) -> list[str]:
    return [p for p in [clean_exit("gc", host.cli("gc"))] if p]


def status_agrees(host: Host) -> list[str]:
    """`vmnet status --json` knows exactly the idle VM, and no stray vmnet tap."""
    r = host.cli("status", "--json")
    if r.returncode != 0:
        return [f"status failed: {r.stderr.strip()}"]
    st = json.loads(r.stdout)
    out = []
    vms = sorted(v["vm"] for v in st["vms"])
    if vms != ["keep"]:
        out.append(f"status lists {vms}, expected ['keep']")
    if st["unrecorded_taps"]:
        out.append(f"unrecorded vmnet taps {st['unrecorded_taps']}")
    return out


def up_down_again(host: Host) -> list[str]:
    """vm1 up and down again: works, and leaves the base state."""
    out = [p for p in (clean_exit("repeated up", host.cli("up", "vm1")),
                       clean_exit("repeated down", host.cli("down", "vm1"))) if p]
    return out or host.settled_diff(host.base) or status_agrees(host)


def down_all(host: Host) -> list[str]:
    """Undo a complete `up` of vm1 (and vm2): down, host back to base."""
    r = host.cli("down", "vm1", "vm2")
    return [p for p in [clean_exit("down", r)] if p] or host.settled_diff(host.base)


def settle(host: Host) -> list[str]:
    """The operation undoes itself (down, run, gc): the host is back to base."""
    return host.settled_diff(host.base)


def vm1_up(host: Host) -> None:
    r = host.cli("up", "vm1")
    assert r.returncode == 0, r.stderr


def nothing(_host: Host) -> None:
    pass


def cli_run(*args: str) -> Callable[[Host, dict[str, str], list[str] | None],
                                    subprocess.CompletedProcess[str]]:
    def go(host: Host, env: dict[str, str],
           tracer: list[str] | None) -> subprocess.CompletedProcess[str]:
        if tracer is None:
            return host.cli(*args, env=env)
        argv = [sys.executable, *tracer, "vmnet",
                *vmnet_argv(host.ns, host.state_dir, *args, config=host.config)[3:]]
        e = {**os.environ, "VMNET_LIBVIRT_URI": "test:///default", **env}
        e.pop("VMNET_FAULT", None)
        return subprocess.run(argv, text=True, capture_output=True, env=e, timeout=60)
    return go


# -- the sweeps ---------------------------------------------------------------------
def test_kill_up_at_every_point(lab: Lab) -> None:
    """A killed `up` is rolled back by gc: the host is as before, up/down work again."""
    res = sweep(lab, "up", prepare=nothing, run=cli_run("up", "vm1"),
                recover=gc, redo=up_down_again, undo=down_all, expect=lambda h: h.base)
    kinds = {p.split(":", 1)[1] for p in res.points if p.startswith("step:")}
    assert {"CreateBridge", "AddAddress", "SetUp", "AttachUplink", "CreateTap",
            "AttachTap"} <= kinds, res.points
    assert_no_leaks(res)


def test_kill_bulk_up_at_every_point(lab: Lab) -> None:
    """Two VMs in one transaction: a kill anywhere rolls both back."""
    res = sweep(lab, "bulk-up", prepare=nothing, run=cli_run("up", "vm1", "vm2"),
                recover=gc, redo=up_down_again, undo=down_all, expect=lambda h: h.base)
    assert_no_leaks(res)


def down_recover(host: Host) -> list[str]:
    return gc(host)


def down_redo(host: Host) -> list[str]:
    r = host.cli("down", "vm1")
    out = [p for p in [clean_exit("repeated down", r)] if p]
    if not out and "nothing to do" not in r.stdout:
        out.append(f"repeated down did something: {r.stdout.strip()}")
    return out or up_down_again(host)


def test_kill_down_at_every_point(lab: Lab) -> None:
    """A killed `down` is finished by gc (and a repeated down has nothing left to do)."""
    res = sweep(lab, "down", prepare=vm1_up, run=cli_run("down", "vm1"),
                recover=down_recover, redo=down_redo, undo=settle, expect=lambda h: h.base)
    assert any(p.startswith("step:DeleteLinks") for p in res.points)
    assert "step:DetachUplink" in res.points
    assert_no_leaks(res)


def test_kill_gc_at_every_point(lab: Lab) -> None:
    """gc itself killed while it rolls back a crashed `up`: the next gc finishes."""
    def crashed_up(host: Host) -> None:
        r = host.cli("up", "vm1", env={"VMNET_FAULT": "up:applied"})
        assert killed(r), r.stderr

    res = sweep(lab, "gc", prepare=crashed_up, run=cli_run("gc"), recover=gc,
                redo=up_down_again, undo=settle, expect=lambda h: h.base)
    assert_no_leaks(res)


@pytest.fixture
def fake_qemu() -> Iterator[str]:
    """A stand-in QEMU that holds its tap fds for a moment, then exits 0."""
    d = Path(tempfile.mkdtemp(prefix="vmnet-fake-"))
    os.chmod(d, 0o755)  # it runs as the VM's user (65534)
    path = d / "qemu"
    path.write_text("#!/bin/sh\nsleep 0.05\nexit 0\n")
    path.chmod(0o755)
    yield str(path)
    shutil.rmtree(d)


def test_kill_run_at_every_point(lab: Lab, fake_qemu: str) -> None:
    """`vmnet run` killed before QEMU, while attaching, or in its teardown: gc clears it."""
    res = sweep(lab, "run", prepare=nothing, run=cli_run("run", "vm1", "--", fake_qemu),
                recover=gc, redo=up_down_again, undo=settle, expect=lambda h: h.base)
    assert "up:recorded" in res.points and "down:recorded" in res.points
    assert_no_leaks(res)


def hook_xml(*vms: str) -> str:
    return DOMAIN.format(uuid=UUID, vms="".join(f'<vmnet:vm name="{v}"/>' for v in vms))


def hook_run(op: str, subop: str, xml: str) -> Callable[
        [Host, dict[str, str], list[str] | None], subprocess.CompletedProcess[str]]:
    def go(host: Host, env: dict[str, str],
           tracer: list[str] | None) -> subprocess.CompletedProcess[str]:
        return host.hook(op, subop, xml, env=env, tracer=tracer)
    return go


def hook_recover(xml: str) -> Callable[[Host], list[str]]:
    """What follows a hook killed at prepare: libvirt fails the start, sends `release
    end`; the admin may run gc (libvirt says the domain is gone)."""
    def go(host: Host) -> list[str]:
        out = gc(host)
        r = host.hook("release", "end", xml)
        if r.returncode != 0 or r.stdout or r.stderr:
            out.append(f"release after the crash: {r.returncode} {r.stderr.strip()}")
        return out
    return go


def hook_redo(xml: str) -> Callable[[Host], list[str]]:
    def go(host: Host) -> list[str]:
        out = []
        for op, subop in (("prepare", "begin"), ("release", "end")):
            r = host.hook(op, subop, xml)
            if r.returncode != 0:
                out.append(f"hook {op} again: {r.stderr.strip()}")
        return out or host.settled_diff(host.base) or status_agrees(host)
    return go


def hook_release(xml: str) -> Callable[[Host], list[str]]:
    def go(host: Host) -> list[str]:
        r = host.hook("release", "end", xml)
        return [f"release: {r.stderr}"] if r.returncode else host.settled_diff(host.base)
    return go


def test_kill_hook_prepare_at_every_point(lab: Lab) -> None:
    """The hook killed at `prepare begin` of a domain naming two vmnet VMs."""
    xml = hook_xml("vm1", "vm2")
    res = sweep(lab, "hook-prepare", prepare=nothing, run=hook_run("prepare", "begin", xml),
                recover=hook_recover(xml), redo=hook_redo(xml), undo=hook_release(xml),
                expect=lambda h: h.base)
    # Both VMs come up in one transaction (one reverter for the whole domain).
    assert res.points.count("up:recorded") == 1 and res.points.count("record:put_vm") == 4
    assert_no_leaks(res)


def test_kill_hook_release_at_every_point(lab: Lab) -> None:
    """The hook killed at `release end`: gc (the domain is gone) finishes the teardown."""
    xml = hook_xml("vm1", "vm2")

    def prepared(host: Host) -> None:
        r = host.hook("prepare", "begin", xml)
        assert r.returncode == 0, r.stderr

    res = sweep(lab, "hook-release", prepare=prepared, run=hook_run("release", "end", xml),
                recover=gc, redo=hook_redo(xml), undo=settle, expect=lambda h: h.base)
    assert_no_leaks(res)


def test_killed_gc_report_is_readable(lab: Lab) -> None:
    """After a crash, status marks the record stale and gc says what it did, in words."""
    host = lab.host
    r = host.cli("up", "vm1", env={"VMNET_FAULT": "step:AttachTap", "VMNET_FAULT_AT": "2"})
    assert killed(r)
    st = json.loads(host.cli("status", "--json").stdout)
    vm1 = next(v for v in st["vms"] if v["vm"] == "vm1")
    assert vm1["stale"] is True and vm1["phase"] == "applying"
    r = host.cli("gc")
    assert r.returncode == 0
    assert "cleared vm1: rolled back" in r.stdout, r.stdout
    assert "idle (kept, waiting for its VM) keep" in r.stdout, r.stdout
    assert not host.settled_diff(host.base)
    print(textwrap.indent(r.stdout, "  "))


# -- finer than the fault points: a kill before every state-changing syscall ---------------
# The fault points sit between kernel steps, but one step can be several syscalls (a tap is
# created, made persistent, then marked; a bridge is created, then marked).  strace can
# SIGKILL a process on entry to its N-th call of a syscall, before the call runs: a traced
# run lists the calls that change something (netlink sends, tun ioctls, state file
# writes/renames/unlinks, files created), then each is a kill point of its own.
STRACE = shutil.which("strace")
WATCHED = ("sendto", "sendmsg", "ioctl", "write", "rename", "unlink", "openat", "mkdir",
           "rmdir", "symlink")
HARMLESS_IOCTLS = ("TCGETS", "TIOCGWINSZ", "FIOCLEX", "FIONBIO")


@dataclass(frozen=True)
class Syscall:
    name: str
    nth: int  # the nth call of `name` in the process
    text: str

    @property
    def label(self) -> str:
        return f"{self.name}#{self.nth}"


def changing_syscalls(trace: str) -> list[Syscall]:
    """The calls of a strace log that change kernel or file state, with their ordinal."""
    import re

    seen: Counter[str] = Counter()
    out = []
    for line in trace.splitlines():
        m = re.match(r"^(?:\d+\s+)?(\w+)\((.*)$", line)
        if m is None or m.group(1) not in WATCHED:
            continue
        name, args = m.groups()
        seen[name] += 1
        if name == "ioctl" and any(h in args.split(",")[1] for h in HARMLESS_IOCTLS):
            continue
        if name == "openat" and "O_CREAT" not in args:
            continue
        if name == "write" and args.split(",")[0] in ("1", "2"):
            continue
        out.append(Syscall(name, seen[name], line.split(" ", 1)[-1][:110]))
    return out


def syscall_sweep(lab: Lab, op: str, args: tuple[str, ...], *,
                  prepare: Callable[[Host], None], recover: Callable[[Host], list[str]],
                  redo: Callable[[Host], list[str]], undo: Callable[[Host], list[str]],
                  expect: Callable[[Host], dict[str, Any]]) -> Sweep:
    assert STRACE is not None
    res = Sweep(op)
    host = lab.host
    prepare(host)
    fd, log = tempfile.mkstemp(prefix="vmnet-strace-")
    os.close(fd)
    try:
        r = host.cli(*args, prefix=[STRACE, "-qq", "-o", log, "-e",
                                    f"trace={','.join(WATCHED)}"])
        assert r.returncode == 0, r.stderr
        calls = changing_syscalls(Path(log).read_text())
    finally:
        os.unlink(log)
    assert not (p := undo(host)), p
    res.points = [c.label for c in calls]
    missed = []
    for call in calls:
        host = lab.host
        prepare(host)
        inject = f"inject={call.name}:error=EIO:signal=KILL:when={call.nth}"
        r = host.cli(*args, prefix=[STRACE, "-qq", "-o", "/dev/null", "-e",
                                    f"trace={call.name}", "-e", inject])
        if not killed(r):  # the run went another way: not the call we meant
            missed.append(call.label)
            assert not (p := undo(host)), p
            continue
        res.kills += 1
        _after_kill(lab, res, f"{op} killed before {call.label} {call.text}", recover,
                    expect, redo)
    assert len(missed) <= len(calls) // 10, f"{op}: calls not reproduced: {missed}"
    figures.report("crash", f"{op} (syscalls)", points=len(calls), kills=res.kills,
                   leaks=len(res.leaks), missed=len(missed))
    print(f"\n{op}: {len(calls)} syscalls, {res.kills} kills, {len(res.leaks)} leaks")
    return res


needs_strace = pytest.mark.skipif(STRACE is None, reason="strace is not installed")


# vm2 (one NIC on a bridge vmnet creates, with an address and an uplink) by default: every
# kind of syscall once; VMNET_CRASH_SYSCALL_VMS=vm1,vm2 (about 60 s more) for more NICs.
SYSCALL_VMS = tuple(os.environ.get("VMNET_CRASH_SYSCALL_VMS", "vm2").split(","))


SWEPT = {"one VM": SYSCALL_VMS, "3 VMs x 2 NICs": ("vm1", "vm3", "vm4")}


def down_these(vms: tuple[str, ...]) -> Callable[[Host], list[str]]:
    def go(host: Host) -> list[str]:
        r = host.cli("down", *vms)
        return [p for p in [clean_exit("down", r)] if p] or host.settled_diff(host.base)
    return go


@needs_strace
@pytest.mark.parametrize("what", list(SWEPT))
def test_kill_up_before_every_changing_syscall(lab: Lab, what: str) -> None:
    """Killed before each state-changing syscall (the journal, records, index entries,
    taps, ready marks): gc rolls back every VM of the transaction."""
    vms = SWEPT[what]
    res = syscall_sweep(lab, f"up {what}", ("up", *vms), prepare=nothing, recover=gc,
                        redo=up_down_again, undo=down_these(vms), expect=lambda h: h.base)
    assert {"sendto", "ioctl", "rename", "write", "symlink"} <= {p.split("#")[0]
                                                                 for p in res.points}
    assert_no_leaks(res)


@needs_strace
@pytest.mark.parametrize("what", list(SWEPT))
def test_kill_down_before_every_changing_syscall(lab: Lab, what: str) -> None:
    vms = SWEPT[what]

    def vms_up(host: Host) -> None:
        r = host.cli("up", *vms)
        assert r.returncode == 0, r.stderr

    def gc_and_retry(host: Host) -> list[str]:
        """Killed before its record says `removing`, the down never started: gc keeps
        the idle VM and the admin's retried down does the work.  Killed after: gc
        finishes it and the retried down has nothing to do."""
        out = gc(host)
        retry = host.cli("down", *vms)
        return out + [p for p in [clean_exit("retried down", retry)] if p]

    res = syscall_sweep(lab, f"down {what}", ("down", *vms), prepare=vms_up,
                        recover=gc_and_retry, redo=up_down_again, undo=settle,
                        expect=lambda h: h.base)
    assert_no_leaks(res)


# -- a big bulk up killed at random points, its final phase included -------------------------
BULK_VMS = int(os.environ.get("VMNET_CRASH_BULK_VMS", "300"))
BULK_KILLS = int(os.environ.get("VMNET_CRASH_BULK_KILLS", "20"))


def test_random_kills_of_a_big_bulk_up_roll_back_whole(lab: Lab, tmp_path: Path) -> None:
    """`up` of BULK_VMS VMs in one transaction, SIGKILLed at BULK_KILLS points drawn (seeded)
    from all its points, a third of them among the ready marks at the end (0.1 left 131
    of 300 VMs up after a kill there): `gc` alone brings the host back, every time."""
    import random

    cfg = tmp_path / "big.toml"
    cfg.write_text('[networks.big]\nbridge = "br-big"\n[defaults]\nnetwork = "big"\n' +
                   "".join(f'[vms.b{i}]\nuser = "0"\n' for i in range(BULK_VMS)))
    host = lab.host
    fd, out = tempfile.mkstemp(prefix="vmnet-trace-", suffix=".json")
    os.close(fd)
    try:
        r = vmnet(host.ns, host.state_dir, "up", "--all", config=str(cfg),
                  env={"VMNET_FAULT_TRACE": out}, timeout=300)
        assert r.returncode == 0, r.stderr
        points = json.loads(Path(out).read_text())
    finally:
        os.unlink(out)
    assert points.count("record:put_vm") == 2 * BULK_VMS  # applying, then ready
    names = [f"b{i}" for i in range(BULK_VMS)]  # (not --all: the lab's idle VM stays)
    r = vmnet(host.ns, host.state_dir, "down", *names, config=str(cfg), timeout=300)
    assert r.returncode == 0, r.stderr
    assert not (d := host.settled_diff(host.base)), d
    ready = [i for i, p in enumerate(points) if p == "record:put_vm"][BULK_VMS:]
    rng = random.Random(20261203)
    picks = sorted(set(rng.sample(range(len(points)), BULK_KILLS - BULK_KILLS // 3) +
                       rng.sample(ready, BULK_KILLS // 3)))
    leaks = []
    for at in picks:
        r = vmnet(host.ns, host.state_dir, "up", "--all", config=str(cfg), timeout=300,
                  env={"VMNET_FAULT": "*", "VMNET_FAULT_AT": str(at + 1)})
        assert killed(r), (at, points[at], r.stderr)
        g = vmnet(host.ns, host.state_dir, "gc", config=str(cfg), timeout=300)
        diff = host.settled_diff(host.base) if g.returncode == 0 else [g.stderr.strip()]
        leaks += [f"killed at {points[at]} #{at}: {d}" for d in diff[:3]]
        if diff:
            host = lab.rebuild()
    figures.report("crash", f"bulk-up {BULK_VMS} VMs (random)", points=len(points),
                   kills=len(picks), in_final_phase=sum(1 for a in picks if a in ready),
                   leaks=len(leaks))
    assert not leaks, leaks

