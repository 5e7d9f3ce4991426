"""vmnet against a real libvirtd: the hook, rendered domains, hot-plug, a real guest.

Each test starts its own virtlogd + libvirtd inside a throwaway network
namespace and a private mount namespace (tests/libvirtd.py), installs vmnet's
hook there with `vmnet hook install` (run inside that mount namespace, so it
writes the private /etc/libvirt/hooks), renders the domain with `vmnet
libvirt-xml --domain`, and boots the tiny TCG guest (tests/guest).  The guest
reports its NICs on the serial console, which libvirt writes to a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import figures
from tests.guest import GuestBuildError, GuestConsole, GuestImage, ensure_guest, ping_from_ns
from tests.libvirtd import Libvirtd, VirshError, libvirtd
from tests.nsutil import Netns, netns

pytestmark = pytest.mark.libvirt

CONFIG = """\
[networks.lan]
bridge = "br-lv"
address = "10.77.0.1/24"

[vms.vm1]
[[vms.vm1.nics]]
network = "lan"

[vms.vm2]
[[vms.vm2.nics]]
network = "lan"

[vms.broken]
user = "no-such-user-vmnet"
[[vms.broken.nics]]
network = "lan"
"""

DOMAIN = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 vmnet.ip={ips}</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>
"""
GUEST_IP, GUEST_IP2 = "10.77.0.2", "10.77.0.3"
TIMINGS: dict[str, float] = {}


@dataclass
class Lab:
    ns: Netns
    d: Libvirtd
    image: GuestImage
    tmp: Path
    cfg: str
    state: str

    def vmnet(self, *args: str, netns: bool = False, inside: bool = False,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        """`vmnet` with this lab's state dir and config; inside=in libvirtd's namespaces."""
        argv = [sys.executable, "-m", "vmnet", "--state-dir", self.state, "--config", self.cfg]
        if netns:
            argv += ["--netns", self.ns.name]
        argv += list(args)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VMNET_", "SUDO_"))}
        if inside:
            argv = ["nsenter", "-t", str(self.d.mount_ns_pid), "-m", "-n", "--", *argv]
        res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"vmnet {' '.join(args)} exited {res.returncode}:\n"
                                 f"{res.stdout}{res.stderr}")
        return res

    def render(self, vm: str, name: str, ips: str = f"{GUEST_IP}/24,{GUEST_IP2}/24") -> Path:
        base = self.tmp / f"{name}.base.xml"
        base.write_text(DOMAIN.format(name=name, kernel=self.image.kernel,
                                      initrd=self.image.initrd, ips=ips,
                                      console=self.console_path(name)))
        out = self.tmp / f"{name}.xml"
        out.write_text(self.vmnet("libvirt-xml", vm, "--domain", str(base)).stdout)
        return out

    def console_path(self, name: str) -> Path:
        return self.tmp / f"{name}.console"

    def links(self) -> dict[str, dict[str, Any]]:
        return {n: lk for n, lk in self.ns.links().items() if n != "lo"}

    def records(self) -> dict[str, dict[str, Any]]:
        d = Path(self.state) / f"ns-{self.ns.inode}" / "vms"
        return {p.stem: json.loads(p.read_text()) for p in d.glob("*.json")} \
            if d.is_dir() else {}

    def uuid(self, domain: str) -> str:
        return self.d.virsh("domuuid", domain).stdout.strip()


@pytest.fixture(scope="module")
def image() -> GuestImage:
    if os.geteuid() != 0:
        pytest.skip("libvirtd tests need root (namespaces, mounts, taps)")
    for tool in ("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "nsenter", "tail"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (scripts/install-deps --test)")
    pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    try:
        return ensure_guest()
    except GuestBuildError as e:
        pytest.skip(f"no test guest: {e}")


@pytest.fixture
def lab(image: GuestImage, tmp_path: Path) -> Iterator[Lab]:
    tmp_path.chmod(0o755)
    cfg = tmp_path / "vmnet.toml"
    cfg.write_text(CONFIG)
    with netns("vmlv") as ns:
        t = time.monotonic()
        with libvirtd(ns.name) as d:
            TIMINGS.setdefault("libvirtd start", time.monotonic() - t)
            lab = Lab(ns=ns, d=d, image=image, tmp=tmp_path, cfg=str(cfg),
                      state=str(tmp_path / "state"))
            res = lab.vmnet("hook", "install", inside=True)
            assert "installed /etc/libvirt/hooks/qemu.d/vmnet" in res.stdout
            assert (d.hooks_dir / "qemu.d" / "vmnet").exists()
            d.reload_hooks()
            yield lab
            # Domains go while the hook is still installed: their release hook runs.
            for name in d.virsh("list", "--name").stdout.split():
                d.virsh("destroy", name)
            lab.vmnet("hook", "uninstall", inside=True)
            assert not (d.hooks_dir / "qemu.d" / "vmnet").exists()
    # Nothing of ours is left: no records; the harness removed daemons, mounts and
    # the private hooks directory, nsutil the namespace.
    assert not list((tmp_path / "state").glob("ns-*"))
    assert not Path(f"/run/netns/{ns.name}").exists()


@contextlib.contextmanager
def console(path: Path, name: str) -> Iterator[GuestConsole]:
    """The guest's serial console file, followed from its start (tail -F)."""
    proc = subprocess.Popen(["tail", "-F", "-n", "+1", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        yield GuestConsole(proc.stdout, name=name)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def lower_up(lab: Lab, tap: str) -> bool:
    lk = lab.ns.link(tap)
    return lk is not None and "LOWER_UP" in lk["flags"]


def start(lab: Lab, xml: Path, name: str) -> float:
    lab.d.virsh("define", str(xml))
    t = time.monotonic()
    lab.d.virsh("start", name)
    return t


def test_start_ping_destroy(lab: Lab) -> None:
    xml = lab.render("vm1", "d1")
    if shutil.which("virt-xml-validate"):
        res = subprocess.run(["virt-xml-validate", str(xml), "domain"], capture_output=True,
                             text=True, check=False)
        assert res.returncode == 0, res.stderr
    t = start(lab, xml, "d1")
    started = time.monotonic() - t
    uuid = lab.uuid("d1")
    with console(lab.console_path("d1"), "d1") as con:
        con.wait_for("VMNET-READY", 90)
        assert ping_from_ns(lab.ns.name, GUEST_IP, timeout=30)
        to_ping = time.monotonic() - t
        (nic,) = con.nics()
        mac = lab.records()["vm1"]["nics"][0]["mac"]
        assert nic["mac"] == mac and nic["ip"] == f"{GUEST_IP}/24"
    links = lab.links()
    assert links["vm1-0"]["master"] == "br-lv" and lower_up(lab, "vm1-0")
    rec = lab.records()["vm1"]
    assert (rec["mode"], rec["domain_uuid"], rec["phase"]) == ("hook", uuid, "ready")
    # What libvirt made of the rendered XML: our tap, our MAC, our alias.
    live = lab.d.virsh("dumpxml", "d1").stdout
    assert "<target dev='vm1-0' managed='no'/>" in live
    assert "<alias name='ua-vmnet-vm1-0'/>" in live and "urn:vmnet:libvirt:1" in live
    t = time.monotonic()
    lab.d.virsh("destroy", "d1")
    destroyed = time.monotonic() - t
    assert set(lab.links()) == set()  # taps and the bridge vmnet made are gone
    assert lab.records() == {}
    TIMINGS.update({"virsh start": started, "start to ping": to_ping,
                    "virsh destroy (incl. release hook)": destroyed})
    print("\n" + ", ".join(f"{k} {v:.2f} s" for k, v in TIMINGS.items()))


def test_broken_vmnet_config_refuses_to_start(lab: Lab) -> None:
    xml = lab.render("vm2", "d2")
    xml.write_text(xml.read_text().replace('name="vm2"', 'name="broken"'))
    lab.d.virsh("define", str(xml))
    with pytest.raises(VirshError) as err:
        lab.d.virsh("start", "d2")
    msg = str(err.value)
    print(f"\nvirsh start d2: {msg.splitlines()[-1]}")
    assert "vmnet: error: domain 'd2': vmnet VM 'broken'" in msg, msg
    assert "unknown user 'no-such-user-vmnet'" in msg
    assert "Traceback" not in msg
    assert lab.d.virsh("domstate", "d2").stdout.strip() == "shut off"
    assert lab.links() == {} and lab.records() == {}


def test_second_domain_naming_the_same_vm_is_refused(lab: Lab) -> None:
    a = lab.render("vm1", "dA")
    b = lab.render("vm1", "dB")
    start(lab, a, "dA")
    lab.d.virsh("define", str(b))
    with pytest.raises(VirshError, match=f"belongs to libvirt domain {lab.uuid('dA')}"):
        lab.d.virsh("start", "dB")
    # dB's failed start ran its release hook: dA keeps its tap, held by its QEMU.
    assert lower_up(lab, "vm1-0")
    assert lab.records()["vm1"]["domain_uuid"] == lab.uuid("dA")
    lab.d.virsh("destroy", "dA")
    assert lab.links() == {} and lab.records() == {}


def test_hotplug_attach_detach(lab: Lab) -> None:
    start(lab, lab.render("vm1", "d1"), "d1")
    uuid = lab.uuid("d1")
    with console(lab.console_path("d1"), "d1") as con:
        con.wait_for("VMNET-READY", 90)
        mark = con.mark()
        res = lab.vmnet("libvirt", "attach", "vm2", "d1", "-c", lab.d.uri, netns=True)
        assert "attached vm2-0 to domain d1 (live)" in res.stdout
        m = con.wait_for(r"VMNET-NIC name=eth1 mac=(\S+)", 60, since=mark)
        rec = lab.records()["vm2"]
        assert m.group(1) == rec["nics"][0]["mac"]
        assert (rec["mode"], rec["domain_uuid"]) == ("hook", uuid)
        assert lab.links()["vm2-0"]["master"] == "br-lv" and lower_up(lab, "vm2-0")
        assert ping_from_ns(lab.ns.name, GUEST_IP2, timeout=30)
        live = lab.d.virsh("dumpxml", "d1").stdout
        assert "ua-vmnet-vm2-0" in live and 'name="vm2"' in live
        assert "ua-vmnet-vm2-0" not in lab.d.virsh("dumpxml", "--inactive", "d1").stdout
        # attaching twice is refused, nothing changes
        again = lab.vmnet("libvirt", "attach", "vm2", "d1", "-c", lab.d.uri, netns=True,
                          check=False)
        assert again.returncode == 1 and "already has VM 'vm2'" in again.stderr

        mark = con.mark()
        t = time.monotonic()
        res = lab.vmnet("libvirt", "detach", "vm2", "d1", "-c", lab.d.uri, netns=True)
        detached = time.monotonic() - t
        assert "removed vm2-0" in res.stdout
        con.wait_for("VMNET-NIC-GONE name=eth1", 30, since=mark)
        assert "vm2-0" not in lab.links() and "vm2" not in lab.records()
        live = lab.d.virsh("dumpxml", "d1").stdout
        assert "ua-vmnet-vm2-0" not in live and 'name="vm2"' not in live
        # vm1 is untouched
        assert lower_up(lab, "vm1-0") and ping_from_ns(lab.ns.name, GUEST_IP, timeout=10)
    lab.d.virsh("destroy", "d1")
    assert lab.links() == {} and lab.records() == {}
    print(f"\ndetach (device gone, taps removed): {detached:.2f} s")


def test_hotplug_config_persists_and_release_cleans_hotplugged(lab: Lab) -> None:
    start(lab, lab.render("vm1", "d1"), "d1")
    with console(lab.console_path("d1"), "d1") as con:
        con.wait_for("VMNET-READY", 90)
        lab.vmnet("libvirt", "attach", "vm2", "d1", "--config", "-c", lab.d.uri, netns=True)
        con.wait_for("VMNET-NIC name=eth1", 60)
    inactive = lab.d.virsh("dumpxml", "--inactive", "d1").stdout
    assert "ua-vmnet-vm2-0" in inactive and 'name="vm2"' in inactive
    # Destroying the domain releases the hot-plugged VM too (records carry its UUID).
    lab.d.virsh("destroy", "d1")
    assert lab.links() == {} and lab.records() == {}
    # The next start brings up both from the persistent metadata.
    lab.console_path("d1").unlink()
    lab.d.virsh("start", "d1")
    with console(lab.console_path("d1"), "d1") as con:
        con.wait_for("VMNET-READY", 90)
        assert [n["name"] for n in con.nics()] == ["eth0", "eth1"]
        assert ping_from_ns(lab.ns.name, GUEST_IP2, timeout=30)
    assert {"vm1", "vm2"} == set(lab.records())
    # Detach from a running domain and its definition at once.
    lab.vmnet("libvirt", "detach", "vm2", "d1", "--config", "-c", lab.d.uri, netns=True)
    assert "ua-vmnet-vm2-0" not in lab.d.virsh("dumpxml", "--inactive", "d1").stdout
    assert set(lab.records()) == {"vm1"}
    lab.d.virsh("destroy", "d1")
    assert lab.links() == {} and lab.records() == {}


def test_config_only_attach_detach_on_a_stopped_domain(lab: Lab) -> None:
    lab.d.virsh("define", str(lab.render("vm1", "d3")))
    res = lab.vmnet("libvirt", "attach", "vm2", "d3", "-c", lab.d.uri, netns=True,
                    check=False)
    assert res.returncode == 2 and "domain d3 is not running" in res.stderr
    res = lab.vmnet("libvirt", "attach", "vm2", "d3", "--config", "-c", lab.d.uri, netns=True)
    assert "(persistent)" in res.stdout
    # Nothing runs, so nothing is made: the hook brings vm2 up with the domain.
    assert lab.links() == {} and lab.records() == {}
    inactive = lab.d.virsh("dumpxml", "--inactive", "d3").stdout
    assert "<target dev='vm2-0' managed='no'/>" in inactive and 'name="vm2"' in inactive
    lab.d.virsh("start", "d3")
    uuid = lab.uuid("d3")
    assert {k: r["domain_uuid"] for k, r in lab.records().items()} == {"vm1": uuid,
                                                                      "vm2": uuid}
    assert lower_up(lab, "vm1-0") and lower_up(lab, "vm2-0")
    lab.d.virsh("destroy", "d3")
    assert lab.links() == {} and lab.records() == {}
    lab.vmnet("libvirt", "detach", "vm2", "d3", "--config", "-c", lab.d.uri, netns=True)
    inactive = lab.d.virsh("dumpxml", "--inactive", "d3").stdout
    assert "vm2-0" not in inactive and 'name="vm2"' not in inactive
    assert 'name="vm1"' in inactive and "vm1-0" in inactive
    res = lab.vmnet("libvirt", "detach", "vm2", "d3", "--config", "-c", lab.d.uri, netns=True,
                    check=False)
    assert res.returncode == 1 and "has no interfaces of vmnet VM 'vm2'" in res.stderr


# -- hot-plug errors, against libvirt's in-process test driver (no daemon) ------------
@pytest.fixture
def test_driver_ns(ns: Netns, tmp_path: Path) -> tuple[Netns, Path]:
    pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    cfg = tmp_path / "vmnet.toml"
    cfg.write_text(CONFIG)
    return ns, tmp_path


def run_vmnet(ns: Netns, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "vmnet", "--state-dir", str(tmp / "state"), "--config",
            str(tmp / "vmnet.toml"), "--netns", ns.name, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "code", "message"), [
    (["attach", "vm1", "nosuchdomain", "-c", "test:///default"], 1,
     "libvirt has no domain 'nosuchdomain'"),
    (["detach", "vm1", "nosuchdomain", "-c", "test:///default"], 1,
     "libvirt has no domain 'nosuchdomain'"),
    (["attach", "vm1", "test", "-c", "qemu:///system?socket=/nonexistent/sock"], 1,
     "cannot connect to libvirt at qemu:///system?socket=/nonexistent/sock"),
    (["attach", "broken", "test", "-c", "test:///default"], 1, "unknown user"),
], ids=["attach-no-domain", "detach-no-domain", "no-daemon", "broken-vm"])
def test_attach_errors_are_one_line(test_driver_ns: tuple[Netns, Path], args: list[str],
                                    code: int, message: str) -> None:
    ns, tmp = test_driver_ns
    res = run_vmnet(ns, tmp, "libvirt", *args)
    assert res.returncode == code, res
    assert res.stderr.startswith("vmnet: error: ") and res.stderr.count("\n") == 1
    assert message in res.stderr
    assert {n for n in ns.links() if n != "lo"} == set()


def test_attach_rolls_back_when_libvirt_refuses(test_driver_ns: tuple[Netns, Path]) -> None:
    """The test driver's running domain `test` cannot hot-plug: the taps vmnet made go."""
    ns, tmp = test_driver_ns
    res = run_vmnet(ns, tmp, "libvirt", "attach", "vm1", "test", "-c", "test:///default")
    assert res.returncode == 1
    assert "attaching vm1-0 failed" in res.stderr and "not supported" in res.stderr
    assert {n for n in ns.links() if n != "lo"} == set()
    assert not list((tmp / "state").glob("ns-*/vms/*.json"))


def test_a_domain_whose_qemu_died_while_libvirtd_was_stopped_is_reaped(lab: Lab) -> None:
    """vmnetd's watcher: the hook recorded the domain's QEMU at `started`; libvirtd is
    stopped, QEMU dies (no release hook can run): its VM is reaped within 2 s."""
    from tests.daemon import vmnetd

    with vmnetd(lab.state, config=lab.cfg):
        start(lab, lab.render("vm1", "d9"), "d9")
        with console(lab.console_path("d9"), "d9") as con:
            con.wait_for("VMNET-READY", 90)
        rec = lab.records()["vm1"]
        assert rec["mode"] == "hook" and rec["holder"] is not None  # the `started` hook's
        qemu = int(rec["holder"]["pid"])
        assert b"-uuid" in Path(f"/proc/{qemu}/cmdline").read_bytes().split(b"\0")
        with lab.d.stopped():
            os.kill(qemu, signal.SIGKILL)
            t = time.monotonic()
            while lab.records() or "vm1-0" in lab.links():
                assert time.monotonic() - t < 2.0, "not reaped within 2 s"
                time.sleep(0.01)
            took = time.monotonic() - t
            TIMINGS["reaped with libvirtd stopped"] = took
            figures.report("watcher", "reap, libvirtd stopped", ms=round(took * 1e3))
        lab.d.virsh("undefine", "d9", check=False)
