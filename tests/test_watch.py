"""vmnetd's watcher with real TCG guests: VMs whose QEMU died are reaped, a tap `up` made
for later survives, taps go back on a bridge deleted and re-created under running
guests, and a vmnetd restarted in the middle of it converges.  Latencies are reported
(tests/figures.py: p50 and max)."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import figures
from tests.daemon import Vmnetd, needs_root, vmnetd
from tests.guest import Guest, GuestImage, guest_argv, ping_from_ns
from tests.nsutil import Netns
from tests.tapholder import hold_tap
from tests.test_run import BOOT_TIMEOUT, image, start_run  # noqa: F401 - the guest fixture
from tests.vmnetcli import status_json, vmnet

pytestmark = pytest.mark.kernel

NET = "10.77.5"
NETWORK = f"""
[networks.t]
bridge = "vmw0"
address = "{NET}.1/24"

[defaults]
network = "t"
"""
UUID = "5a1e0000-1111-2222-3333-444455556666"
LATENCY: dict[str, list[float]] = {"reap": [], "reattach": [], "ping-again": []}
WITHIN = 2.0  # seconds the issue allows


@pytest.fixture
def cfg(tmp_path: Path) -> str:
    p = tmp_path / "vmnet.toml"
    p.write_text(NETWORK)
    p.chmod(0o644)
    return str(p)


@pytest.fixture(scope="module", autouse=True)
def report_latencies() -> Iterator[None]:
    yield
    for what, xs in LATENCY.items():
        if xs:
            figures.report("watcher", what, n=len(xs), p50_ms=round(statistics.median(xs) * 1e3),
                           max_ms=round(max(xs) * 1e3))


def within(pred: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `pred` holds (polled every 10 ms); fails after `timeout`."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - t0


def record(ns: Netns, state_dir: str, vm: str) -> dict[str, object] | None:
    p = Path(state_dir) / f"ns-{ns.inode}" / "vms" / f"{vm}.json"
    return json.loads(p.read_text()) if p.exists() else None


def gone(ns: Netns, state_dir: str, vm: str, tap: str) -> Callable[[], bool]:
    return lambda: record(ns, state_dir, vm) is None and tap not in ns.links()


def holder_pid(ns: Netns, state_dir: str, vm: str) -> int:
    rec = record(ns, state_dir, vm)
    assert rec is not None and rec["holder"] is not None
    return int(rec["holder"]["pid"])  # type: ignore[index]


def boot_run(ns: Netns, state_dir: str, cfg: str, image: GuestImage,  # noqa: F811
             vm: str, ip: str, ping: str | None = None) -> Guest:
    proc = start_run(ns, state_dir, [vm, "--user", "nobody"],
                     guest_argv([], ip=ip, ping=ping, image=image), config=cfg,
                     stderr=subprocess.STDOUT)
    g = Guest(proc, name=vm)
    g.wait_ready(BOOT_TIMEOUT)
    return g


@pytest.mark.qemu
def test_a_run_killed_with_its_qemu_is_reaped(ns: Netns, state_dir: str, cfg: str,
                                              image: GuestImage) -> None:  # noqa: F811
    # through the daemon: the run's connection ends with it
    with vmnetd(state_dir, config=cfg):
        g = boot_run(ns, state_dir, cfg, image, "vr", f"{NET}.2/24")
        qemu = holder_pid(ns, state_dir, "vr")
        os.kill(g.proc.pid, signal.SIGKILL)
        os.kill(qemu, signal.SIGKILL)
        LATENCY["reap"].append(within(gone(ns, state_dir, "vr", "vr-0"), WITHIN, "reap"))
        g.kill()
    # started before the daemon (in-process): the watcher finds it and reaps it (an
    # idle VM keeps the namespace's records, and so the watcher's notes, for `status`)
    vmnet(ns, state_dir, "up", "anchor", config=cfg, check=True)
    g = boot_run(ns, state_dir, cfg, image, "vw", f"{NET}.3/24")
    try:
        with vmnetd(state_dir, config=cfg) as d:
            time.sleep(0.3)  # it has found the namespace by its records
            qemu = holder_pid(ns, state_dir, "vw")
            os.kill(g.proc.pid, signal.SIGKILL)
            os.kill(qemu, signal.SIGKILL)
            LATENCY["reap"].append(within(gone(ns, state_dir, "vw", "vw-0"), WITHIN,
                                          "reap by the watcher"))
            st = status_json(ns, state_dir)
            assert any("reaped vw" in str(h["text"]) for h in st["watcher"]), st["watcher"]
            assert [v["vm"] for v in st["vms"]] == ["anchor"]
            vmnet(ns, state_dir, "down", "anchor", config=cfg, check=True)
            assert "vmw0" not in ns.links()
    finally:
        g.kill()
    assert d.proc.returncode == 0


@pytest.mark.qemu
def test_a_hook_vm_whose_qemu_died_while_libvirtd_was_down_is_reaped(
        ns: Netns, state_dir: str, cfg: str, image: GuestImage) -> None:  # noqa: F811
    """The hook brought the VM up (prepare), libvirt's QEMU (`-uuid`, the tap by name) ran
    it and the hook recorded it (`started`); libvirtd is not running (its URI goes
    nowhere), QEMU dies: the watcher reaps."""
    from tests.test_hook import domain_xml, run_hook
    from vmnet.config import Overrides

    env = {"VMNET_LIBVIRT_URI": "qemu+unix:///system?socket=/nonexistent/libvirt-sock"}
    with vmnetd(state_dir, config=cfg, extra_env=env):
        xml = domain_xml("dom1", UUID, [("hk", Overrides())], cfg)
        res = run_hook(ns, state_dir, cfg, "dom1", "prepare", "begin", xml)
        assert res.returncode == 0, res.stderr
        mac = status_json(ns, state_dir, "hk")["vms"][0]["nics"][0]["mac"]
        qemu = guest_argv(["-uuid", UUID, "-netdev",
                           "tap,id=n0,ifname=hk-0,script=no,downscript=no,vnet_hdr=on",
                           "-device", f"virtio-net-pci,netdev=n0,mac={mac}"],
                          ip=f"{NET}.4/24", image=image)
        proc = subprocess.Popen(["ip", "netns", "exec", ns.name, *qemu],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        with Guest(proc, name="hk") as g:
            # as libvirtd would, once QEMU runs (and then libvirtd goes away)
            res = run_hook(ns, state_dir, cfg, "dom1", "started", "begin", xml)
            assert res.returncode == 0, res.stderr
            assert (record(ns, state_dir, "hk") or {}).get("holder") is not None
            g.wait_ready(BOOT_TIMEOUT)
            assert ping_from_ns(ns.name, f"{NET}.4", timeout=60)
            # not a reason: the tap set down (as ifdown does) while QEMU holds it
            ns.ip("link", "set", "hk-0", "down")
            time.sleep(1.0)
            assert record(ns, state_dir, "hk") is not None and "hk-0" in ns.links()
            ns.ip("link", "set", "hk-0", "up")
            proc.send_signal(signal.SIGKILL)
            LATENCY["reap"].append(within(gone(ns, state_dir, "hk", "hk-0"), WITHIN,
                                          "reap of the hook VM"))


def test_a_tap_up_made_for_later_is_never_reaped(ns: Netns, state_dir: str, cfg: str) -> None:
    seconds = float(os.environ.get("VMNET_WATCH_IDLE_SECONDS", "10"))
    with vmnetd(state_dir, config=cfg):
        vmnet(ns, state_dir, "up", "idle", config=cfg, check=True)
        with hold_tap(ns, "idle-0"):  # held, then let go: its carrier drops 1 -> 0
            time.sleep(0.2)
        time.sleep(seconds)
        assert record(ns, state_dir, "idle") is not None
        assert ns.link("idle-0")["master"] == "vmw0"  # type: ignore[index]
        st = status_json(ns, state_dir)
        assert not any("reaped" in str(h["text"]) for h in st["watcher"])
        vmnet(ns, state_dir, "down", "idle", config=cfg, check=True)


@pytest.mark.qemu
def test_taps_go_back_on_a_bridge_recreated_under_two_guests(
        ns: Netns, state_dir: str, cfg: str, image: GuestImage) -> None:  # noqa: F811
    with vmnetd(state_dir, config=cfg):
        a = boot_run(ns, state_dir, cfg, image, "ga", f"{NET}.2/24")
        b = boot_run(ns, state_dir, cfg, image, "gb", f"{NET}.3/24", ping=f"{NET}.2")
        try:
            b.wait_for(rf"VMNET-PING-OK {NET}\.2", timeout=60)
            mark = b.mark()
            ns.ip("link", "del", "vmw0")  # a network restart: the bridge goes ...
            b.wait_for(rf"VMNET-PING-LOST {NET}\.2", timeout=30, since=mark)
            mark = b.mark()
            ns.ip("link", "add", "vmw0", "type", "bridge")  # ... and comes back, bare
            ns.ip("link", "set", "vmw0", "up")
            t0 = time.monotonic()

            def attached() -> bool:
                links = ns.links()
                return all(links.get(t, {}).get("master") == "vmw0" for t in ("ga-0", "gb-0"))

            LATENCY["reattach"].append(within(attached, WITHIN, "re-attach"))
            b.wait_for(rf"VMNET-PING-OK {NET}\.2", timeout=30, since=mark)
            LATENCY["ping-again"].append(time.monotonic() - t0)
            for tap in ("ga-0", "gb-0"):  # the MTU and MAC vmnet set
                lk = ns.link(tap)
                assert lk is not None and lk["mtu"] == 1500 and lk["address"].startswith("fe:")
            rows = status_json(ns, state_dir)
            assert any("vmw0 re-created" in str(h["text"]) for h in rows["watcher"])
            brec = json.loads((Path(state_dir) / f"ns-{ns.inode}" / "bridges" /
                               "vmw0.json").read_text())
            assert brec["created"] is False  # unmarked: the admin's from now on
        finally:
            a.stop(grace=30)
            b.stop(grace=30)
    assert "vmw0" in ns.links()  # never deleted: it is not vmnet's any more
    assert LATENCY["ping-again"][-1] < WITHIN + 1.5  # the guests ping once a second


def test_a_restarted_daemon_converges(ns: Netns, state_dir: str, cfg: str,
                                      tmp_path: Path) -> None:
    """vmnetd SIGKILLed; meanwhile the bridge is re-created and a run VM's QEMU dies;
    a new vmnetd re-attaches the taps and reaps the dead VM within 2 s."""
    holder = tmp_path / "holder"
    holder.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(600)\n")
    holder.chmod(0o755)
    d = Vmnetd(state_dir, config=cfg)
    run = None
    try:
        vmnet(ns, state_dir, "up", "s1", "s2", config=cfg, check=True)
        run = subprocess.Popen([sys.executable, "-m", "vmnet", "--state-dir", state_dir,
                                "--config", cfg, "--netns", ns.name, "run", "sr", "--",
                                str(holder)], stderr=subprocess.DEVNULL)
        within(lambda: (record(ns, state_dir, "sr") or {}).get("holder") is not None, 10,
               "run started")
        time.sleep(0.2)  # the watcher stored the bridge's ifindex
        qemu = holder_pid(ns, state_dir, "sr")
        d.kill(signal.SIGKILL)
        os.kill(qemu, signal.SIGKILL)
        run.wait(30)
        ns.ip("link", "del", "vmw0")
        ns.ip("link", "add", "vmw0", "type", "bridge")
        ns.ip("link", "set", "vmw0", "up")
        assert ns.link("s1-0").get("master") is None  # type: ignore[union-attr]
        os.unlink(os.path.join(state_dir, "vmnetd.sock"))
        with vmnetd(state_dir, config=cfg):
            t = within(lambda: all(ns.link(t).get("master") == "vmw0"  # type: ignore[union-attr]
                                   for t in ("s1-0", "s2-0")), WITHIN, "converged re-attach")
            LATENCY["reattach"].append(t)
            LATENCY["reap"].append(within(gone(ns, state_dir, "sr", "sr-0"), WITHIN,
                                          "converged reap"))
            vmnet(ns, state_dir, "down", "s1", "s2", config=cfg, check=True)
    finally:
        d.kill()
        if run is not None and run.poll() is None:
            run.kill()


def test_an_uplink_that_now_carries_traffic_stays_off_and_status_says_why(
        ns: Netns, state_dir: str, tmp_path: Path) -> None:
    ns.ip("link", "add", "up0", "type", "veth", "peer", "name", "up0p")
    cfg = tmp_path / "uplink.toml"
    cfg.write_text('[networks.u]\nbridge = "vmu0"\nuplink = "up0"\n[defaults]\nnetwork = "u"\n')
    with vmnetd(state_dir, config=str(cfg)):
        vmnet(ns, state_dir, "up", "u1", config=str(cfg), check=True)
        assert ns.link("up0")["master"] == "vmu0"  # type: ignore[index]
        ns.ip("link", "del", "vmu0")
        ns.ip("addr", "add", "192.0.2.7/24", "dev", "up0")  # the host uses it now
        ns.ip("link", "add", "vmu0", "type", "bridge")
        within(lambda: ns.link("u1-0").get("master") == "vmu0", WITHIN,  # type: ignore[union-attr]
               "tap re-attached")
        assert ns.link("up0").get("master") is None  # type: ignore[union-attr]
        text = vmnet(ns, state_dir, "status", config=str(cfg), check=True).stdout
        assert "uplink up0 not re-attached to vmu0" in text and "host's traffic" in text
        vmnet(ns, state_dir, "down", "u1", config=str(cfg), check=True)


def test_a_tap_someone_detached_is_not_forced_back(ns: Netns, state_dir: str,
                                                   cfg: str) -> None:
    with vmnetd(state_dir, config=cfg):
        vmnet(ns, state_dir, "up", "d1", config=cfg, check=True)
        ns.ip("link", "set", "d1-0", "nomaster")
        time.sleep(1.0)
        assert ns.link("d1-0").get("master") is None  # type: ignore[union-attr]
        st = status_json(ns, state_dir, "d1")["vms"][0]["nics"][0]
        assert st["state"] != "ok", st  # drift, shown
        vmnet(ns, state_dir, "down", "d1", config=cfg, check=True)


def test_a_bridge_recreated_with_vmnets_mark_gets_its_settings_back(
        ns: Netns, state_dir: str, cfg: str) -> None:
    with vmnetd(state_dir, config=cfg):
        vmnet(ns, state_dir, "up", "m1", config=cfg, check=True)
        ns.ip("link", "del", "vmw0")
        ns.ip("link", "add", "vmw0", "type", "bridge")  # down, no address, but vmnet's mark
        ns.ip("link", "set", "vmw0", "alias", "vmnet:bridge:vmw0")

        def restored() -> bool:
            lk = ns.link("vmw0") or {}
            addrs = [(a["ifname"], i["local"]) for a in ns.addrs()
                     for i in a.get("addr_info", [])]
            return ns.link("m1-0").get("master") == "vmw0" and "UP" in lk.get(  # type: ignore[union-attr]
                "flags", []) and ("vmw0", f"{NET}.1") in addrs

        within(restored, WITHIN, "re-attach with the bridge's settings")
        vmnet(ns, state_dir, "down", "m1", config=cfg, check=True)
        assert "vmw0" not in ns.links()  # still vmnet's: released with its last VM


@needs_root
def test_a_deleted_namespace_is_let_go(state_dir: str, cfg: str) -> None:
    """Watching holds a namespace's fd: once nobody else can reach it (deleted, no process
    in it), the watcher lets it go, or its links would live on with the daemon."""
    import uuid as uuidmod

    name = f"vmwg-{uuidmod.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    inode = os.stat(f"/run/netns/{name}").st_ino
    try:
        argv = [sys.executable, "-m", "vmnet.daemon.main", "--foreground", "--state-dir",
                state_dir, "--config", cfg, "--sweep", "0.3"]
        with vmnetd(state_dir, config=cfg, argv=argv) as d:
            ns = Netns(name)
            vmnet(ns, state_dir, "up", "g1", config=cfg, check=True)

            def holds() -> bool:
                fd_dir = f"/proc/{d.pid}/fd"
                return any(os.readlink(f"{fd_dir}/{f}") == f"net:[{inode}]"
                           for f in os.listdir(fd_dir))

            assert holds()
            subprocess.run(["ip", "netns", "del", name], check=True)
            within(lambda: not holds(), 3.0, "namespace let go")
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_a_bridge_missing_when_the_daemon_starts_is_repaired_when_it_comes_back(
        ns: Netns, state_dir: str, cfg: str) -> None:
    d = Vmnetd(state_dir, config=cfg)
    try:
        vmnet(ns, state_dir, "up", "b1", config=cfg, check=True)
        time.sleep(0.2)  # the watcher stored the bridge's ifindex
    finally:
        d.kill(signal.SIGKILL)
    ns.ip("link", "del", "vmw0")
    os.unlink(os.path.join(state_dir, "vmnetd.sock"))
    with vmnetd(state_dir, config=cfg):
        time.sleep(0.3)  # it found the namespace; the bridge is not there
        ns.ip("link", "add", "vmw0", "type", "bridge")
        LATENCY["reattach"].append(within(
            lambda: ns.link("b1-0").get("master") == "vmw0",  # type: ignore[union-attr]
            WITHIN, "re-attach to a bridge that came back"))
        vmnet(ns, state_dir, "down", "b1", config=cfg, check=True)
