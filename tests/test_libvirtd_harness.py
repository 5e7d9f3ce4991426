"""The private-libvirtd harness itself: start, hooks, clean-up.

These tests prove what tests/libvirtd.py promises and pin down how libvirt
9.0 calls qemu hooks (main script, `qemu.d/`, SIGHUP rescan), which the vmnet
libvirt hook relies on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import libvirtd as harness
from tests.libvirtd import Libvirtd, LibvirtdError, libvirtd
from tests.nsutil import Netns, netns

pytestmark = pytest.mark.libvirt

DOMAIN_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='network'/>
  </os>
  <devices>
    <interface type='ethernet'>
      <target dev='{tap}' managed='no'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
"""

# Appends one line per call: its arguments, whether stdin held domain XML.
HOOK = """\
#!/bin/sh
stdin=$(cat)
case "$stdin" in
  *"<domain"*) xml=xml ;;
  *) xml=noxml ;;
esac
echo "{tag} $* $xml" >> {log}
"""

LIFECYCLE = ["prepare begin", "start begin", "started begin", "stopped end", "release end"]


def hook(tag: str, log: Path) -> str:
    return HOOK.format(tag=tag, log=log)


def calls(log: Path, tag: str, domain: str) -> list[str]:
    """'OP SUBOP' of each call logged under TAG for DOMAIN, in order."""
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        t, dom, op, subop, extra, xml = line.split()
        if t == tag and dom == domain:
            assert (extra, xml) == ("-", "xml"), line
            out.append(f"{op} {subop}")
    return out


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def host_mounts() -> str:
    return subprocess.run(["findmnt", "-rn", "-o", "TARGET,SOURCE"],
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture
def ns() -> Iterator[Netns]:
    if os.geteuid() != 0:
        pytest.skip("libvirtd tests need root (namespaces, mounts, taps)")
    for tool in ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (scripts/install-deps --test)")
    with netns("vmlv") as n:
        yield n


@pytest.fixture
def hook_log(tmp_path: Path) -> Path:
    return tmp_path / "hook.log"


def add_tap(ns: Netns, name: str = "tap0") -> None:
    ns.ip("tuntap", "add", name, "mode", "tap")
    ns.ip("link", "set", name, "up")


def lower_up(ns: Netns, name: str = "tap0") -> bool:
    (link,) = json.loads(ns.ip("-j", "link", "show", name).stdout)
    return "LOWER_UP" in link["flags"]


def define_and_start(d: Libvirtd, tmp_path: Path, name: str, tap: str = "tap0") -> float:
    xml = tmp_path / f"{name}.xml"
    xml.write_text(DOMAIN_XML.format(name=name, tap=tap))
    d.virsh("define", str(xml))
    t = time.monotonic()
    d.virsh("start", name)
    return time.monotonic() - t


def test_start_and_clean_up() -> None:
    if os.geteuid() != 0:
        pytest.skip("libvirtd tests need root (namespaces, mounts, taps)")
    if shutil.which("libvirtd") is None:
        pytest.skip("libvirtd not installed (scripts/install-deps --test)")
    etc_before = sorted(str(p) for p in Path("/etc/libvirt").rglob("*"))
    dev_before = {p.name: p.lstat() for p in Path("/dev").iterdir()}
    with netns("vmlv") as n:
        t = time.monotonic()
        with libvirtd(n.name) as d:
            started = time.monotonic() - t
            assert "libvirt 9" in d.virsh("version").stdout
            assert d.virsh("list", "--all", "--name").stdout.strip() == ""
            pids = [d.pid, d.virtlogd_pid, d.mount_ns_pid]
            mount_ns = os.readlink(f"/proc/{d.mount_ns_pid}/ns/mnt")
            for pid in pids:
                # In the test's network namespace, in the private mount namespace.
                assert os.stat(f"/proc/{pid}/ns/net").st_ino == n.inode
                assert os.readlink(f"/proc/{pid}/ns/mnt") == mount_ns
            assert mount_ns != os.readlink("/proc/self/ns/mnt")
            inside = d.nsenter("findmnt", "-rn", "-o", "TARGET").stdout.split()
            for target in ("/run", "/etc/libvirt", "/var/lib/libvirt",
                           "/var/log/libvirt", "/var/cache/libvirt"):
                assert target in inside
            assert ("/dev/kvm" in inside) == Path("/dev/kvm").exists()
            assert d.nsenter("ls", "-A", "/etc/libvirt/hooks").stdout == ""
            # The host's /run stays visible inside (bound back in) ...
            assert d.nsenter("test", "-e", f"/run/netns/{n.name}", check=False).returncode == 0
            # ... while nothing of libvirt's appears in the host's /run.
            assert not Path("/run/libvirt").exists()
            # libvirt-python reaches the same socket.
            libvirt = pytest.importorskip(
                "libvirt", reason="libvirt-python is not installed (pip install '.[libvirt]'; "
                                  "scripts/test installs it)")
            conn = libvirt.open(d.uri)
            try:
                assert conn.getLibVersion() >= 9_000_000
            finally:
                conn.close()
            tmp = d.tmp
        print(f"\nlibvirtd start: {started:.2f} s")
        assert not tmp.exists()
        assert not [pid for pid in pids if alive(pid)]
        assert not [line for line in host_mounts().splitlines() if str(tmp) in line]
    assert n.name not in subprocess.run(["ip", "netns", "list"],
                                        capture_output=True, text=True).stdout
    assert not [line for line in host_mounts().splitlines() if n.name in line]
    assert sorted(str(p) for p in Path("/etc/libvirt").rglob("*")) == etc_before
    assert {p.name: p.lstat() for p in Path("/dev").iterdir()} == dev_before


def test_start_failure_is_reported_and_cleaned(ns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "LIBVIRTD_CONF", "this is = not [ valid\n")
    tmps_before = set(Path(tempfile.gettempdir()).glob("vmnet-libvirtd-*"))
    with pytest.raises(LibvirtdError, match="libvirtd exited") as err, libvirtd(ns.name):
        pass
    assert "expecting an assignment" in str(err.value)  # the tail of its log
    assert set(Path(tempfile.gettempdir()).glob("vmnet-libvirtd-*")) == tmps_before
    assert subprocess.run(["ip", "netns", "pids", ns.name],
                          capture_output=True, text=True).stdout == ""


def test_qemu_hook_lifecycle(ns: Netns, tmp_path: Path, hook_log: Path) -> None:
    add_tap(ns)
    t = time.monotonic()
    with libvirtd(ns.name, hooks={"qemu": hook("main", hook_log)}) as d:
        started = time.monotonic() - t
        created = define_and_start(d, tmp_path, "vm1")
        assert d.virsh("domstate", "vm1").stdout.strip() == "running"
        assert lower_up(ns)
        assert calls(hook_log, "main", "vm1") == LIFECYCLE[:3]
        t = time.monotonic()
        d.virsh("destroy", "vm1")
        destroyed = time.monotonic() - t
        assert d.virsh("domstate", "vm1").stdout.strip() == "shut off"
        assert not lower_up(ns)
        assert calls(hook_log, "main", "vm1") == LIFECYCLE
        # The managed='no' tap outlives the domain.
        assert ns.link("tap0") is not None
    print(f"\nstart {started:.2f} s, virsh start {created:.2f} s, destroy {destroyed:.2f} s")


def test_qemu_d_hooks_run_after_main_in_order(ns: Netns, tmp_path: Path,
                                              hook_log: Path) -> None:
    add_tap(ns)
    hooks = {"qemu": hook("main", hook_log),
             "qemu.d/20-b": hook("b", hook_log),
             "qemu.d/10-a": hook("a", hook_log),
             "qemu.d/30-off": hook("off", hook_log)}
    with libvirtd(ns.name, hooks=hooks) as d:
        (d.hooks_dir / "qemu.d" / "30-off").chmod(0o644)  # not executable: skipped
        define_and_start(d, tmp_path, "vm1")
        d.virsh("destroy", "vm1")
    for tag in ("main", "a", "b"):
        assert calls(hook_log, tag, "vm1") == LIFECYCLE
    assert calls(hook_log, "off", "vm1") == []
    tags = [line.split()[0] for line in hook_log.read_text().splitlines()]
    assert tags[:3] == ["main", "a", "b"]


def test_qemu_d_hooks_alone(ns: Netns, tmp_path: Path, hook_log: Path) -> None:
    add_tap(ns)
    with libvirtd(ns.name, hooks={"qemu.d/vmnet": hook("d", hook_log)}) as d:
        define_and_start(d, tmp_path, "vm1")
        d.virsh("destroy", "vm1")
    assert calls(hook_log, "d", "vm1") == LIFECYCLE


def test_new_hook_needs_reload(ns: Netns, tmp_path: Path, hook_log: Path) -> None:
    add_tap(ns)
    with libvirtd(ns.name) as d:
        d.write_hook("qemu", hook("main", hook_log))
        define_and_start(d, tmp_path, "vm1")
        d.virsh("destroy", "vm1")
        assert calls(hook_log, "main", "vm1") == []  # cached "no qemu hook"
        d.reload_hooks()
        d.virsh("start", "vm1")
        # Once libvirtd knows qemu hooks exist, qemu.d is re-read on every call.
        d.write_hook("qemu.d/late", hook("late", hook_log))
        d.virsh("destroy", "vm1")
    assert calls(hook_log, "main", "vm1") == LIFECYCLE
    assert calls(hook_log, "late", "vm1") == LIFECYCLE[3:]


def test_hook_install_from_inside(ns: Netns, tmp_path: Path, hook_log: Path) -> None:
    """A command run with nsenter writes into the private /etc/libvirt/hooks."""
    with libvirtd(ns.name) as d:
        d.nsenter("sh", "-c", "cat > /etc/libvirt/hooks/qemu && chmod 755 /etc/libvirt/hooks/qemu",
                  input=hook("main", hook_log))
        assert (d.hooks_dir / "qemu").read_text() == hook("main", hook_log)
    assert not Path("/etc/libvirt/hooks/qemu").exists()


def test_running_domain_is_destroyed_when_the_test_fails(ns: Netns, tmp_path: Path) -> None:
    add_tap(ns)
    with pytest.raises(RuntimeError, match="test failed"), libvirtd(ns.name) as d:
        define_and_start(d, tmp_path, "vm1")
        qemu_pid = int((d.run_dir / "libvirt" / "qemu" / "vm1.pid").read_text())
        assert alive(qemu_pid) and lower_up(ns)
        raise RuntimeError("test failed")
    assert not alive(qemu_pid)
    assert not lower_up(ns)


def test_restart_reconnects_to_running_domain(ns: Netns, tmp_path: Path, hook_log: Path) -> None:
    add_tap(ns)
    with libvirtd(ns.name, hooks={"qemu": hook("main", hook_log)}) as d:
        define_and_start(d, tmp_path, "vm1")
        old_pid = d.pid
        d.restart()
        assert d.pid != old_pid
        assert d.virsh("domstate", "vm1").stdout.strip() == "running"
        assert lower_up(ns)
        assert calls(hook_log, "main", "vm1") == [*LIFECYCLE[:3], "reconnect begin"]


def test_a_stale_run_libvirt_on_the_host_does_not_matter() -> None:
    """A host where libvirtd ran before keeps /run/libvirt (a dead socket, a pid file):
    the harness starts its libvirtd on an empty private one all the same, and the host's
    leftovers stay as they were.  (0.1: "libvirtd did not answer within 60 s".)"""
    import socket

    if os.geteuid() != 0:
        pytest.skip("libvirtd tests need root (namespaces, mounts, taps)")
    if shutil.which("libvirtd") is None:
        pytest.skip("libvirtd not installed (scripts/install-deps --test)")
    run = Path("/run/libvirt")
    if run.exists() or Path("/run/libvirtd.pid").exists():
        pytest.skip("this host has a /run/libvirt of its own: not ours to play with")
    made: list[Path] = []
    try:
        run.mkdir()
        made.append(run)
        sock = run / "libvirt-sock"
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(sock))
        s.close()  # a dead socket, as a killed libvirtd leaves it
        made.insert(0, sock)
        pidfile = Path("/run/libvirtd.pid")
        pidfile.write_text("999999\n")
        made.insert(0, pidfile)
        with netns("vmlv") as n, libvirtd(n.name) as d:
            assert "libvirt 9" in d.virsh("version").stdout
            assert d.nsenter("test", "-S", "/run/libvirt/libvirt-sock").returncode == 0
        assert sorted(p.name for p in run.iterdir()) == ["libvirt-sock"]
        assert pidfile.read_text() == "999999\n"
    finally:
        for p in made:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
