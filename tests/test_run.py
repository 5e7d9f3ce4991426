"""`vmnet run` against the real kernel, each test in its own namespace.

Two tiers: a stand-in QEMU (a script that reports the fds, argv and identity
it was given, then exits or waits for a signal) proves the mechanics fast;
the real TCG guest (tests/guest) proves that QEMU gets a working network.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.guest import (
    Guest,
    GuestConsole,
    GuestImage,
    ensure_guest,
    guest_argv,
    http_get_from_ns,
    ping_from_ns,
    qemu_available,
)
from tests.nsutil import Netns
from tests.tapholder import hold_tap
from tests.vmnetcli import host_snapshot, status_json, vmnet, vmnet_argv
from vmnet.render.qemu import split_opts

pytestmark = pytest.mark.kernel

IFF_TAP, IFF_MULTI_QUEUE, IFF_PERSIST, IFF_NO_PI, IFF_VNET_HDR = (
    0x0002, 0x0100, 0x0800, 0x1000, 0x4000)
BOOT_TIMEOUT = 120.0  # TCG on a shared machine; a boot takes a few seconds
NET = "10.77.0"

FAKE_QEMU = r"""
import fcntl, json, os, signal, struct, sys, time
out = {"pid": os.getpid(), "argv": sys.argv[1:], "uid": os.getuid(), "fds": {}}
for word in sys.argv[1:]:
    for part in word.split(","):
        key, _, value = part.partition("=")
        if key in ("fd", "fds"):
            for fd in value.split(":"):
                buf = bytearray(40)
                fcntl.ioctl(int(fd), 0x800454D2, buf)  # TUNGETIFF
                name, flags = struct.unpack("16sH22x", bytes(buf))
                out["fds"][fd] = [name.rstrip(b"\0").decode(), flags]
if os.environ.get("FAKE_MODE") == "wait":
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, lambda n, f: sys.exit(100 + n))
print("FAKE " + json.dumps(out), flush=True)
if os.environ.get("FAKE_MODE") == "wait":
    while True:
        time.sleep(1)
if os.environ.get("FAKE_MODE") == "fork" and os.fork() == 0:
    null = os.open(os.devnull, os.O_RDWR)  # a child that keeps the tap fds (not the pipes)
    for std in (0, 1, 2):
        os.dup2(null, std)
    time.sleep(float(os.environ.get("FAKE_HOLD", "3")))
    os._exit(0)
sys.exit(int(os.environ.get("FAKE_RC", "3")))
"""


@pytest.fixture
def fake_qemu(tmp_path: Path) -> str:
    path = tmp_path / "fake-qemu"
    path.write_text(f"#!{sys.executable}\n{FAKE_QEMU}")
    path.chmod(0o755)
    return str(path)


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER", "VMNET_FAULT")}
    env.update(extra or {})
    return env


def start_run(ns: Netns, state_dir: str, vm_flags: list[str], qemu: list[str], *,
              config: str | None = None, env: dict[str, str] | None = None,
              stderr: Any = None) -> subprocess.Popen[bytes]:
    """`vmnet run` in the background; QEMU's stdout (the serial console) is its stdout."""
    argv = vmnet_argv(ns, state_dir, "run", *vm_flags, "--", *qemu, config=config)
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=stderr, env=clean_env(env))


def record(ns: Netns, state_dir: str, vm: str) -> dict[str, Any] | None:
    path = Path(state_dir) / f"ns-{ns.inode}" / "vms" / f"{vm}.json"
    return json.loads(path.read_text()) if path.exists() else None


def fake_report(console: GuestConsole) -> dict[str, Any]:
    return dict(json.loads(console.wait_for(r"FAKE (\{.*\})\n", 30).group(1)))


def netdev_opts(argv: list[str]) -> list[dict[str, str]]:
    return [dict(split_opts(argv[i + 1])) for i, a in enumerate(argv) if a == "-netdev"]


def assert_nothing_left(ns: Netns, state_dir: str) -> None:
    assert set(ns.links()) == {"lo"}
    assert [f for _, _, fs in os.walk(state_dir) for f in fs] == []


def settled_view(ns: Netns, state_dir: str) -> dict[str, Any]:
    """host_snapshot minus what the kernel changes on a bridge by itself, late: its carrier
    settles (linkwatch) after ports come and go, and it gains an IPv6 link-local address
    once it has had a live port."""
    snap = host_snapshot(ns, state_dir)
    for link in snap["links"].values():
        if link["kind"] == "bridge":
            link["flags"] = sorted(set(link["flags"]) - {"LOWER_UP", "NO-CARRIER"})
            link.pop("operstate", None)
    snap["addrs"] = [(n, [a for a in addrs if not a[0].startswith("fe80:")])
                     for n, addrs in snap["addrs"]]
    return snap


# -- the mechanics, with a stand-in QEMU --------------------------------------
FD_CASES = [
    ("one-queue", [], 1, True, True),
    ("two-queues", ["--queues", "2"], 2, True, True),
    ("no-vnet-hdr", ["--no-vnet-hdr"], 1, False, True),
    ("netdev-only", ["--netdev-only", "--queues", "3"], 3, True, False),
]


@pytest.mark.parametrize(("name", "flags", "queues", "vnet_hdr", "device"), FD_CASES,
                         ids=[c[0] for c in FD_CASES])
def test_fds_argv_and_exit_status(ns: Netns, state_dir: str, fake_qemu: str, name: str,
                                  flags: list[str], queues: int, vnet_hdr: bool,
                                  device: bool) -> None:
    before = host_snapshot(ns, state_dir)
    r = subprocess.run(vmnet_argv(ns, state_dir, "run", "vm1", "--nics", "2", *flags, "--",
                                  fake_qemu, "-m", "64"),
                       capture_output=True, text=True, env=clean_env(), timeout=120)
    assert r.returncode == 3, r.stderr  # QEMU's own status
    rep = json.loads(r.stdout.split("FAKE ", 1)[1])
    argv = rep["argv"]
    assert argv[:2] == ["-m", "64"]  # the user's arguments first, untouched
    netdevs = netdev_opts(argv)
    assert [n["id"] for n in netdevs] == ["net0", "net1"]
    want = IFF_TAP | IFF_NO_PI | (IFF_MULTI_QUEUE if queues > 1 else 0) | \
        (IFF_VNET_HDR if vnet_hdr else 0)
    for i, nd in enumerate(netdevs):
        fds = (nd["fds"] if queues > 1 else nd["fd"]).split(":")
        assert len(fds) == queues
        assert not {"vnet_hdr", "vhost", "ifname", "script"} & set(nd)  # no vhost here
        for fd in fds:
            tap, got = rep["fds"][fd]
            assert tap == f"vm1-{i}"
            # persist cleared: the tap dies with QEMU's last fd
            assert got == want, (hex(got), hex(want))
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert len(devices) == (2 if device else 0)
    if device and queues > 1:
        assert all(f"mq=on,vectors={2 * queues + 2}" in d for d in devices)
    assert host_snapshot(ns, state_dir) == before


def test_run_on_a_vm_up_made_uses_it_and_leaves_it_as_it_found_it(
        ns: Netns, state_dir: str, fake_qemu: str) -> None:
    """`run` borrows the taps `up` made: same settings (the record's, not the config's),
    persist kept, the record still mode `up`; when QEMU exits, taps and record are as
    they were, so a later QEMU (or libvirt, managed='no') finds them."""
    vmnet(ns, state_dir, "up", "vm1", "--queues", "2", "--mac", "52:54:00:aa:bb:01",
          check=True)
    after_up = settled_view(ns, state_dir)
    r = subprocess.run(vmnet_argv(ns, state_dir, "run", "vm1", "--", fake_qemu),
                       capture_output=True, text=True, env=clean_env(), timeout=120)
    assert r.returncode == 3, r.stderr
    rep = json.loads(r.stdout.split("FAKE ", 1)[1])
    assert [tap for tap, _ in rep["fds"].values()] == ["vm1-0", "vm1-0"]  # two queues
    assert "mac=52:54:00:aa:bb:01" in " ".join(rep["argv"]) and "mq=on" in " ".join(rep["argv"])
    deadline = time.monotonic() + 3  # the carrier's drop reaches the flags late (linkwatch)
    while "NO-CARRIER" not in ns.link("vm1-0")["flags"] and time.monotonic() < deadline:
        time.sleep(0.05)
    now = settled_view(ns, state_dir)
    # IFF_VNET_HDR is a flag of whichever fd attached last (QEMU's asked for it): the
    # kernel reports it on the tap, and the next opener sets its own (HOST.md).
    assert now["links"]["vm1-0"]["info_data"].pop("vnet_hdr") is True
    assert after_up["links"]["vm1-0"]["info_data"].pop("vnet_hdr") is False
    assert now == after_up
    tap = ns.link("vm1-0")
    assert tap is not None and tap["linkinfo"]["info_data"]["persist"] is True
    assert record(ns, state_dir, "vm1")["mode"] == "up"  # type: ignore[index]
    # flags that would describe other taps than the recorded ones are refused
    check_refused(vmnet(ns, state_dir, "run", "vm1", "--queues", "4", "--", fake_qemu),
                  "is up")


def test_run_of_a_vm_it_brought_up_cleans_up(ns: Netns, state_dir: str,
                                              fake_qemu: str) -> None:
    before = host_snapshot(ns, state_dir)
    r = subprocess.run(vmnet_argv(ns, state_dir, "run", "vm1", "--", fake_qemu),
                       capture_output=True, text=True, env=clean_env(), timeout=120)
    assert r.returncode == 3, r.stderr
    assert host_snapshot(ns, state_dir) == before  # the run owned the VM's network to the end


def test_while_running_held_recorded_and_protected(ns: Netns, state_dir: str,
                                                   fake_qemu: str) -> None:
    proc = start_run(ns, state_dir, ["vm1"], [fake_qemu], env={"FAKE_MODE": "wait"})
    assert proc.stdout is not None
    console = GuestConsole(proc.stdout, name="fake")
    try:
        rep = fake_report(console)
        rec = record(ns, state_dir, "vm1")
        assert rec is not None and rec["mode"] == "run" and rec["phase"] == "ready"
        assert rec["holder"]["pid"] == rep["pid"]  # QEMU holds it, not vmnet
        tap = ns.link("vm1-0")
        assert tap is not None and "LOWER_UP" in tap["flags"]
        assert tap["linkinfo"]["info_data"]["persist"] is False
        st = status_json(ns, state_dir, "vm1")["vms"][0]
        assert st["holder_alive"] is True and not st["stale"] and st["nics"][0]["held"]
        # `down` refuses a tap in use and names the holder
        r = vmnet(ns, state_dir, "down", "vm1")
        assert r.returncode != 0 and f"pid {rep['pid']}" in r.stderr
        # a repeated `up` changes nothing and never makes the tap persistent again
        r = vmnet(ns, state_dir, "up", "vm1", check=True)
        assert "already up" in r.stdout
        assert ns.link("vm1-0")["linkinfo"]["info_data"]["persist"] is False
        # a second `run` of the same VM is refused: the tap has a holder
        r = vmnet(ns, state_dir, "run", "vm1", "--", fake_qemu)
        assert r.returncode != 0 and "vm1-0" in r.stderr and "FAKE" not in r.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 100 + signal.SIGTERM  # forwarded; QEMU's status returned
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        console.join(5)
        proc.stdout.close()
    assert_nothing_left(ns, state_dir)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["SIGINT", "SIGHUP"])
def test_signals_forwarded(ns: Netns, state_dir: str, fake_qemu: str,
                           sig: signal.Signals) -> None:
    proc = start_run(ns, state_dir, ["vm1"], [fake_qemu], env={"FAKE_MODE": "wait"})
    assert proc.stdout is not None
    console = GuestConsole(proc.stdout, name="fake")
    fake_report(console)
    proc.send_signal(sig)
    assert proc.wait(60) == 100 + sig
    console.join(5)
    proc.stdout.close()
    assert_nothing_left(ns, state_dir)


def test_qemu_sigkilled(ns: Netns, state_dir: str, fake_qemu: str) -> None:
    proc = start_run(ns, state_dir, ["vm1", "--queues", "2"], [fake_qemu],
                     env={"FAKE_MODE": "wait"})
    assert proc.stdout is not None
    console = GuestConsole(proc.stdout, name="fake")
    rep = fake_report(console)
    os.kill(rep["pid"], signal.SIGKILL)
    assert proc.wait(60) == 128 + signal.SIGKILL
    console.join(5)
    proc.stdout.close()
    assert_nothing_left(ns, state_dir)


def test_privileges_dropped_to_the_vm_user(ns: Netns, state_dir: str) -> None:
    """QEMU runs as the VM's uid, gid and groups, on fds it could never open itself."""
    with tempfile.TemporaryDirectory(prefix="vmnet-fake-") as d:
        os.chmod(d, 0o755)  # nobody must reach the script
        fake = Path(d) / "fake-sh"
        _privileges_dropped(ns, state_dir, fake)


def _privileges_dropped(ns: Netns, state_dir: str, fake: Path) -> None:
    fake.write_text('#!/bin/sh\necho "ID $(id -u) $(id -g) $(id -G)"\n'
                    'for a in "$@"; do case "$a" in tap,*fd=*) '
                    'fd=${a##*fd=}; echo "IFF $(grep iff: /proc/$$/fdinfo/$fd)";; esac; done\n')
    fake.chmod(0o755)
    r = subprocess.run(vmnet_argv(ns, state_dir, "run", "vm1", "--user", "nobody", "--group",
                                  "4242", "--", str(fake)),
                       capture_output=True, text=True, env=clean_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ID 65534 4242 4242\n" in r.stdout  # no root group left behind
    assert "IFF iff:\tvm1-0" in r.stdout
    assert_nothing_left(ns, state_dir)


# -- bad input: a clear error, nothing left behind ----------------------------
def check_refused(r: subprocess.CompletedProcess[str], culprit: str) -> None:
    assert r.returncode != 0, r.stdout
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("vmnet: error: "), err
    assert culprit in err, err
    assert "FAKE" not in r.stdout  # QEMU never started


@pytest.mark.parametrize(("args", "culprit"), [
    (["run", "vm1", "QEMU"], "needs `--`"),
    (["run", "vm1"], "needs `--`"),
    (["run", "vm1", "--"], "no QEMU command"),
    (["run", "vm1", "--", "/nonexistent/qemu-system-x86_64"], "/nonexistent/qemu-system-x86_64"),
    (["run", "vm1", "--", "qemu-system-vmnet-nonexistent"], "not found in PATH"),
    (["run", "vm/1", "--", "QEMU"], "vm/1"),
    (["run", "vm1", "--", "QEMU", "-m", "64", "-daemonize"], "daemonizes"),
], ids=["no-dashdash", "nothing", "empty-after-dashdash", "missing-binary-path",
        "missing-binary-name", "bad-vm-name", "daemonize"])
def test_bad_invocations(ns: Netns, state_dir: str, fake_qemu: str, args: list[str],
                         culprit: str) -> None:
    vmnet(ns, state_dir, "up", "other", check=True)  # something that must stay as it is
    before = settled_view(ns, state_dir)
    r = vmnet(ns, state_dir, *[fake_qemu if a == "QEMU" else a for a in args])
    check_refused(r, culprit)
    assert settled_view(ns, state_dir) == before


@pytest.mark.parametrize("queues", [1, 2], ids=["single-queue", "multi-queue"])
def test_tap_held_by_another_process(ns: Netns, state_dir: str, fake_qemu: str,
                                     queues: int) -> None:
    """A single-queue tap would answer EBUSY; a multi-queue one would silently accept a
    second holder: vmnet refuses any tap with carrier on, before changing anything."""
    vmnet(ns, state_dir, "up", "vm1", "--queues", str(queues), check=True)
    with hold_tap(ns, "vm1-0", queues=1, multi_queue=queues > 1) as holder:
        before = settled_view(ns, state_dir)
        r = vmnet(ns, state_dir, "run", "vm1", "--queues", str(queues), "--", fake_qemu)
        check_refused(r, "vm1-0")
        assert f"pid {holder.pid}" in r.stderr or "held" in r.stderr
        assert settled_view(ns, state_dir) == before
        assert record(ns, state_dir, "vm1")["mode"] == "up"  # type: ignore[index]


def test_second_fd_on_single_queue_tap_is_ebusy(ns: Netns) -> None:
    """The kernel's own guard behind vmnet's carrier check, as vmnet reports it."""
    ns.ip("tuntap", "add", "dev", "t0", "mode", "tap")
    code = ("from vmnet.kernel.tun import open_queues\n"
            "from vmnet.errors import VmnetError\n"
            "try:\n    open_queues('t0', 1, vnet_hdr=True)\n"
            "except VmnetError as e:\n    print(type(e).__name__, e.one_line())\n")
    with hold_tap(ns, "t0"):
        out = ns.run(sys.executable, "-c", code).stdout
    assert out.startswith("BusyError attach to tap on t0 failed: EBUSY"), out


def test_queue_count_mismatching_existing_tap(ns: Netns, state_dir: str,
                                              fake_qemu: str) -> None:
    """The recorded queue count is what `run` opens; asking for another is refused before
    anything changes (the tap's multi_queue flag cannot change while it exists)."""
    vmnet(ns, state_dir, "up", "vm2", check=True)
    before = settled_view(ns, state_dir)
    check_refused(vmnet(ns, state_dir, "run", "vm2", "--queues", "4", "--", fake_qemu),
                  "queues 4 on vm2-0 (it is up with 1)")
    assert settled_view(ns, state_dir) == before
    check_refused(vmnet(ns, state_dir, "up", "vm2", "--queues", "4"), "multi_queue")
    assert settled_view(ns, state_dir) == before


@pytest.mark.parametrize(("point", "taps_left"), [("run:up", True), ("run:attached", False)],
                         ids=["after-up", "after-attach"])
def test_vmnet_killed_before_qemu_starts_leaves_only_gc_work(
        ns: Netns, state_dir: str, fake_qemu: str, point: str, taps_left: bool) -> None:
    """Killed between `up` and QEMU: vmnet itself was the holder, so gc clears everything.

    Once the fds are open (persist cleared), the taps die with vmnet at once."""
    r = vmnet(ns, state_dir, "run", "vm1", "--queues", "2", "--", fake_qemu,
              env={"VMNET_FAULT": point})
    assert r.returncode == -signal.SIGKILL and "FAKE" not in r.stdout
    assert ("vm1-0" in ns.links()) == taps_left
    st = status_json(ns, state_dir, "vm1")["vms"][0]
    assert st["stale"] is True and st["mode"] == "run"
    r = vmnet(ns, state_dir, "gc", check=True)
    assert "cleared vm1" in r.stdout
    assert_nothing_left(ns, state_dir)


# -- the real guest -------------------------------------------------------------
NETWORK = f"""
[networks.t]
bridge = "vmt0"
address = "{NET}.1/24"

[defaults]
network = "t"
"""


@pytest.fixture(scope="module")
def image() -> Iterator[GuestImage]:
    """The test guest, copied where any uid can read it (QEMU runs as nobody)."""
    if os.geteuid() != 0:
        pytest.skip("QEMU guest tests need root (network namespaces, taps)")
    if not qemu_available():
        pytest.skip("qemu-system-x86_64 missing (install with scripts/install-deps --test)")
    src = ensure_guest()
    d = Path(tempfile.mkdtemp(prefix="vmnet-guest-"))
    try:
        d.chmod(0o755)
        img = GuestImage(kernel=d / "vmlinuz", initrd=d / "initrd.img")
        for a, b in ((src.kernel, img.kernel), (src.initrd, img.initrd)):
            shutil.copyfile(a, b)
            b.chmod(0o644)
        if src.no_ra_sender is not None:
            (d / "no-ra-sender").write_text(src.no_ra_sender)
        yield img
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def netcfg(tmp_path: Path) -> str:
    p = tmp_path / "vmnet.toml"
    p.write_text(NETWORK)
    p.chmod(0o644)
    return str(p)


@contextlib.contextmanager
def run_guest(ns: Netns, state_dir: str, config: str, image: GuestImage, vm: str,
              flags: list[str], *, ip: str, ping: str | None = None,
              smp: int = 1) -> Iterator[Guest]:
    """`vmnet run VM --user nobody FLAGS -- <guest>`; stops it (SIGTERM to vmnet) on exit."""
    qemu = guest_argv([], ip=ip, ping=ping, smp=smp, image=image)
    proc = start_run(ns, state_dir, [vm, "--user", "nobody", *flags], qemu, config=config,
                     stderr=subprocess.STDOUT)
    guest = Guest(proc, name=vm)
    try:
        guest.wait_ready(BOOT_TIMEOUT)
        yield guest
    finally:
        guest.stop(grace=30)


def qemu_pid(ns: Netns, state_dir: str, vm: str) -> int:
    rec = record(ns, state_dir, vm)
    assert rec is not None and rec["holder"] is not None
    return int(rec["holder"]["pid"])


def proc_ids(pid: int) -> dict[str, list[int]]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(x) for x in val.split()]
    return out


@pytest.mark.qemu
def test_guest_answers_ping_and_http(ns: Netns, state_dir: str, netcfg: str,
                                     image: GuestImage) -> None:
    before = host_snapshot(ns, state_dir)
    started = time.monotonic()
    with run_guest(ns, state_dir, netcfg, image, "vm1", ["--group", "4242"],
                   ip=f"{NET}.2/24") as g:
        assert ping_from_ns(ns.name, f"{NET}.2", timeout=60)
        first_ping = time.monotonic() - started
        print(f"\nvmnet run: start to VMNET-READY {g.ready_after:.2f} s, "
              f"to first ping answered {first_ping:.2f} s")
        assert http_get_from_ns(ns.name, f"{NET}.2", timeout=30) == "vmnet-guest-ok"
        [nic] = g.nics()
        st = status_json(ns, state_dir, "vm1")["vms"][0]
        assert nic["mac"] == st["nics"][0]["mac"] and (nic["rxq"], nic["txq"]) == (1, 1)
        ids = proc_ids(qemu_pid(ns, state_dir, "vm1"))
        assert ids == {"Uid": [65534] * 4, "Gid": [4242] * 4, "Groups": [4242]}
        tap = ns.link("vm1-0")
        assert tap is not None and tap["master"] == "vmt0"
        assert tap["linkinfo"]["info_data"]["persist"] is False
        rc = g.stop(grace=30)
    assert rc == 0  # QEMU's status: it exits 0 on SIGTERM
    assert host_snapshot(ns, state_dir) == before  # tap, bridge and record gone


@pytest.mark.qemu
def test_guest_two_queues_then_qemu_sigkilled(ns: Netns, state_dir: str, netcfg: str,
                                              image: GuestImage) -> None:
    with run_guest(ns, state_dir, netcfg, image, "vm1", ["--queues", "2"], ip=f"{NET}.2/24",
                   smp=2) as g:
        [nic] = g.nics()
        assert (nic["rxq"], nic["txq"]) == (2, 2)  # min(queues, CPUs) pairs
        assert ping_from_ns(ns.name, f"{NET}.2", timeout=60)
        assert ns.link("vm1-0")["linkinfo"]["info_data"]["multi_queue"] is True
        os.kill(qemu_pid(ns, state_dir, "vm1"), signal.SIGKILL)
        assert g.proc.wait(60) == 128 + signal.SIGKILL
    assert_nothing_left(ns, state_dir)


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Orphans of our children (QEMU after vmnet dies) are re-parented to us, to reap."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    assert libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        libc.prctl(pr_set_child_subreaper, 0, 0, 0, 0)


@pytest.mark.qemu
def test_guest_keeps_network_when_vmnet_is_sigkilled(ns: Netns, state_dir: str, netcfg: str,
                                                     image: GuestImage) -> None:
    with subreaper(), run_guest(ns, state_dir, netcfg, image, "vm1", [],
                                ip=f"{NET}.2/24") as g:
        pid = qemu_pid(ns, state_dir, "vm1")
        g.proc.kill()  # vmnet itself, SIGKILL: no teardown can run
        assert g.proc.wait(30) == -signal.SIGKILL
        assert ping_from_ns(ns.name, f"{NET}.2", timeout=60)  # QEMU keeps its network
        assert http_get_from_ns(ns.name, f"{NET}.2", timeout=30) == "vmnet-guest-ok"
        st = status_json(ns, state_dir, "vm1")["vms"][0]
        assert st["holder_alive"] is True and not st["stale"]
        r = vmnet(ns, state_dir, "gc", check=True)
        assert "cleared" not in r.stdout  # QEMU still runs: gc leaves it alone
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # the tap died with QEMU's last fd (persist was cleared); the rest is a stale record
        assert "vm1-0" not in ns.links()
        st = status_json(ns, state_dir, "vm1")["vms"][0]
        assert st["stale"] is True and st["holder_alive"] is False
        r = vmnet(ns, state_dir, "gc", check=True)
        assert "cleared vm1" in r.stdout
    assert_nothing_left(ns, state_dir)


@pytest.mark.qemu
def test_two_guests_on_one_bridge_reach_each_other(ns: Netns, state_dir: str, netcfg: str,
                                                   image: GuestImage) -> None:
    with run_guest(ns, state_dir, netcfg, image, "vma", [], ip=f"{NET}.2/24"), \
            run_guest(ns, state_dir, netcfg, image, "vmb", [], ip=f"{NET}.3/24",
                      ping=f"{NET}.2") as b:
        b.wait_for(rf"VMNET-PING-OK {NET}\.2", timeout=60)
        assert ping_from_ns(ns.name, f"{NET}.3", timeout=60)
        ports = {n for n, lk in ns.links().items() if lk.get("master") == "vmt0"}
        assert ports == {"vma-0", "vmb-0"}
    assert_nothing_left(ns, state_dir)


@pytest.mark.qemu
def test_guest_in_script_mode(ns: Netns, state_dir: str, netcfg: str,
                              image: GuestImage) -> None:
    """QEMU creates the tap itself and runs vmnet's scripts (qemu-args --mode script)."""
    vmnet(ns, state_dir, "up", "anchor", config=netcfg, check=True)  # the bridge, with address
    before = settled_view(ns, state_dir)
    r = vmnet(ns, state_dir, "qemu-args", "vm1", "--mode", "script", "--json", config=netcfg,
              check=True)
    args = json.loads(r.stdout)["args"]
    mac = json.loads(r.stdout)["nics"][0]["mac"]
    qemu = guest_argv(args, ip=f"{NET}.2/24", image=image)
    env = clean_env({"VMNET_STATE_DIR": state_dir, "VMNET_CONFIG": netcfg})
    proc = subprocess.Popen(["ip", "netns", "exec", ns.name, *qemu], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    with Guest(proc, name="script") as g:
        g.wait_ready(BOOT_TIMEOUT)
        assert ping_from_ns(ns.name, f"{NET}.2", timeout=60)
        assert http_get_from_ns(ns.name, f"{NET}.2", timeout=30) == "vmnet-guest-ok"
        tap = ns.link("vm1-0")
        assert tap is not None and tap["master"] == "vmt0"
        assert tap["address"] == "fe" + mac[2:]
        assert tap["linkinfo"]["info_data"]["persist"] is False  # QEMU's own tap
        assert g.stop(grace=30) == 0
    # the scripts said nothing (their stderr is QEMU's); QEMU reported no script failure
    assert "vmnet-qemu-if" not in g.output and "network script" not in g.output, g.output
    assert settled_view(ns, state_dir) == before  # QEMU's tap gone, nothing else touched
    vmnet(ns, state_dir, "down", "anchor", config=netcfg, check=True)
    assert_nothing_left(ns, state_dir)


def test_run_says_once_that_vhost_net_is_missing(ns: Netns, state_dir: str,
                                                 fake_qemu: str) -> None:
    """Without /dev/vhost-net, QEMU gets no vhost fds: run says so once, with what it
    costs, however many NICs (0.1 passed none, silently)."""
    import os

    if os.path.exists("/dev/vhost-net"):
        pytest.skip("this host has /dev/vhost-net")
    r = subprocess.run(vmnet_argv(ns, state_dir, "run", "vm1", "--nics", "3", "--",
                                  fake_qemu), capture_output=True, text=True, env=clean_env(),
                       timeout=120)
    assert r.returncode == 3, r.stderr
    assert r.stderr.count("/dev/vhost-net is missing") == 1, r.stderr
    assert "3 NIC(s) in userspace" in r.stderr and "vhost_net" in r.stderr
    assert "vhost" not in " ".join(json.loads(r.stdout.split("FAKE ", 1)[1])["argv"])


def test_taps_a_child_of_qemu_still_holds_are_not_deleted(ns: Netns, state_dir: str,
                                                          fake_qemu: str) -> None:
    """QEMU's main process exits while a child keeps the fds: run deletes nothing, says
    who holds them in one line, exits with QEMU's status; the kernel removes the taps
    with their last fd and gc then clears the record."""
    before = host_snapshot(ns, state_dir)
    env = {**clean_env(), "FAKE_MODE": "fork", "FAKE_HOLD": "2"}
    r = subprocess.run(vmnet_argv(ns, state_dir, "run", "vm1", "--", fake_qemu),
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 3, r.stderr
    line = [x for x in r.stderr.splitlines() if "still held by pid" in x]
    assert len(line) == 1 and "nothing deleted" in line[0], r.stderr
    assert "vm1-0" in ns.links() and record(ns, state_dir, "vm1") is not None
    deadline = time.monotonic() + 10
    while "vm1-0" in ns.links() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "vm1-0" not in ns.links()  # went with its last fd
    vmnet(ns, state_dir, "gc", check=True)
    assert host_snapshot(ns, state_dir) == before
