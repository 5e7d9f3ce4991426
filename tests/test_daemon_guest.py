"""Real unprivileged guests on vmnetd's taps: QEMU as a numeric uid (setpriv), in a mount
namespace where /dev/net/tun is masked (it could not open a tap itself), one through
`vmnet run` (two queues, fds from the daemon) and one through vmnet-bridge-helper
(`-netdev bridge,helper=...`), reaching each other and the host's namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import vmnetd
from tests.guest import Guest, GuestImage, guest_argv, ping_from_ns
from tests.nsutil import Netns, netns
from tests.test_run import BOOT_TIMEOUT, image, proc_ids  # noqa: F401 - the guest fixture
from tests.vmnetcli import status_json, vmnet

pytestmark = [pytest.mark.kernel, pytest.mark.qemu]

UA, UB = 23101, 23102
NET = "10.77.9"
CONFIG = f"""
[networks.lab]
bridge = "vmlab0"
address = "{NET}.1/24"
allow_users = [{UA}, {UB}]
"""
HELPER = str(Path(sys.executable).parent / "vmnet-bridge-helper")


def as_user(uid: int, argv: list[str]) -> list[str]:
    """`argv` as `uid`, with /dev/net/tun masked in a mount namespace of its own."""
    inner = " ".join(["exec", "setpriv", "--reuid", str(uid), "--regid", str(uid),
                      "--clear-groups", *(f"'{a}'" for a in argv)])
    return ["unshare", "-m", "sh", "-c", f"mount --bind /dev/null /dev/net/tun && {inner}"]


@pytest.fixture
def site() -> Iterator[tuple[Netns, str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, vmnetd, setpriv and a private mount namespace")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 missing (install with scripts/install-deps --test)")
    state = tempfile.mkdtemp(prefix="vmnet-guest-state-", dir="/tmp")
    os.chmod(state, 0o711)
    cfgdir = tempfile.mkdtemp(prefix="vmnet-guest-cfg-")
    cfg = os.path.join(cfgdir, "vmnet.toml")
    Path(cfg).write_text(CONFIG)
    try:
        with netns() as ns, vmnetd(state, config=cfg, ns=ns):
            try:
                yield ns, state
            finally:
                vmnet(ns, state, "down", "--all", "--force", config=cfg)
    finally:
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(cfgdir, ignore_errors=True)


def test_unprivileged_guests_through_run_and_the_bridge_helper(
        site: tuple[Netns, str], image: GuestImage) -> None:  # noqa: F811
    ns, state = site
    env = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}
    env["VMNET_STATE_DIR"] = state
    qa = guest_argv([], ip=f"{NET}.2/24", smp=2, image=image)
    a_proc = subprocess.Popen(
        as_user(UA, [sys.executable, "-m", "vmnet", "--state-dir", state, "run", "ga",
                     "--bridge", "vmlab0", "--queues", "2", "--", *qa]),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    with Guest(a_proc, name="ga") as a:
        a.wait_ready(BOOT_TIMEOUT)
        [nic] = a.nics()
        assert (nic["rxq"], nic["txq"]) == (2, 2)
        tap = ns.link("ga-0")
        assert tap is not None and tap["master"] == "vmlab0"
        data = tap["linkinfo"]["info_data"]
        assert data["multi_queue"] is True and data["persist"] is False
        assert int(data["user"]) == UA
        st = status_json(ns, state, "ga")["vms"][0]
        assert st["mode"] == "run" and st["holder_alive"] is True
        rec = json.loads((Path(state) / f"ns-{ns.inode}" / "vms" / "ga.json").read_text())
        qemu_pid = rec["holder"]["pid"]
        assert proc_ids(qemu_pid)["Uid"] == [UA] * 4
        qb = guest_argv(["-netdev", f"bridge,id=n0,br=vmlab0,helper={HELPER}",
                         "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:77:09:03"],
                        ip=f"{NET}.3/24", ping=f"{NET}.2", image=image)
        b_proc = subprocess.Popen(as_user(UB, qb), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        with Guest(b_proc, name="gb") as b:
            b.wait_ready(BOOT_TIMEOUT)
            b.wait_for(rf"VMNET-PING-OK {NET}\.2", timeout=90)  # B reaches A
            assert ping_from_ns(ns.name, f"{NET}.3", timeout=60)
            assert ping_from_ns(ns.name, f"{NET}.2", timeout=60)
            helper_taps = [n for n in ns.links() if n.startswith("vmh")]
            assert len(helper_taps) == 1
            ht = ns.link(helper_taps[0])
            assert ht is not None and ht["master"] == "vmlab0"
            assert int(ht["linkinfo"]["info_data"]["user"]) == UB
            assert proc_ids(b_proc.pid)["Uid"] == [UB] * 4  # unshare, sh, setpriv exec QEMU
            assert b.stop(grace=30) == 0
        assert not [n for n in ns.links() if n.startswith("vmh")]  # gone with its QEMU
        assert a.stop(grace=30) == 0
    assert "ga-0" not in ns.links()
    # the helper's record went stale with its QEMU: the daemon's watcher reaps it
    vms = Path(state) / f"ns-{ns.inode}" / "vms"
    deadline = time.monotonic() + 2
    while vms.exists() and any(p.name.startswith("helper-") for p in vms.iterdir()):
        assert time.monotonic() < deadline, "the helper's record was not reaped"
        time.sleep(0.01)
    assert "nothing to do" in vmnet(ns, state, "gc", check=True).stdout
    assert set(ns.links()) == {"lo"}
