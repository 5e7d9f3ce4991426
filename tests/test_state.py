"""The record store without a kernel: the index, the journal, formats, full disks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.vmnetcli import empty_config
from vmnet.errors import StateError
from vmnet.state.records import NicRecord, Proc, UnknownFormat, VmRecord, vm_from_json
from vmnet.state.store import StateStore


def nic(tap: str, bridge: str = "br0", mac: str = "52:54:00:00:00:01", index: int = 0
        ) -> NicRecord:
    return NicRecord(index=index, tap=tap, bridge=bridge, network="n", mac=mac,
                     tap_mac="fe" + mac[2:], mtu=None, queues=1, vnet_hdr=True, owner=0,
                     group=None)


def rec(vm: str, *nics: NicRecord, phase: str = "ready") -> VmRecord:
    return VmRecord(vm=vm, mode="up", phase=phase, writer=Proc.me(),  # type: ignore[arg-type]
                    nics=list(nics))


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    root = tmp_path / "state"
    root.mkdir(mode=0o700)
    return StateStore(str(root), 4242, 7)


def test_index_answers_from_one_entry_and_only_if_the_record_agrees(store: StateStore) -> None:
    with store.locked(1):
        store.put_vm(rec("a", nic("a-0", mac="52:54:00:00:00:0a")))
        store.put_vm(rec("b", nic("b-0", bridge="br1", mac="52:54:00:00:00:0b")))
        assert store.tap_owner("a-0") == "a" and store.tap_owner("b-0") == "b"
        assert store.mac_owner("br0", "52:54:00:00:00:0a") == "a"
        assert store.mac_owner("br1", "52:54:00:00:00:0a") is None  # another bridge
        assert store.bridge_users("br0") == "a" and store.bridge_users("br0", {"a"}) is None
        # A stale entry (a killed writer's, or a record rewritten with other NICs) is void.
        store.put_vm(rec("a", nic("a-9", mac="52:54:00:00:00:0c")))
        assert store.tap_owner("a-0") is None
        assert store.mac_owner("br0", "52:54:00:00:00:0a") is None
        os.symlink("ghost", os.path.join(store.dir, "taps", "g-0"))
        assert store.tap_owner("g-0") is None
        removed = store.prune_index()
        assert sorted(os.path.basename(p) for p in removed) == ["52540000000a", "a-0", "g-0"]
        assert sorted(os.listdir(os.path.join(store.dir, "taps"))) == ["a-9", "b-0"]
        store.drop_vm("a", store.get_vm("a"))
        store.drop_vm("b", store.get_vm("b"))
        assert store.bridge_users("br1") is None
        store.cleanup_dir()
    assert not os.path.exists(store.dir)


def test_lookups_read_no_other_record(store: StateStore, tmp_path: Path) -> None:
    """A lookup opens the index entry and the one record it names, whatever the count."""
    with store.locked(1):
        for i in range(50):
            store.put_vm(rec(f"v{i}", nic(f"v{i}-0", mac=f"52:54:00:00:01:{i:02x}")))
    code = (
        "import sys, builtins\n"
        f"sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})\n"
        "from vmnet.state.store import StateStore\n"
        f"s = StateStore({store.root!r}, 4242, 7)\n"
        "import os\n"
        "opened = []\n"
        "real = os.open\n"
        "os.open = lambda p, *a, **k: (opened.append(p), real(p, *a, **k))[1]\n"
        "assert s.tap_owner('v7-0') == 'v7'\n"
        "assert s.mac_owner('br0', '52:54:00:00:01:07') == 'v7'\n"
        "print(sorted({os.path.basename(p) for p in opened}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['cookie', 'v7.json']"


def test_unknown_format_is_refused_and_kept(store: StateStore) -> None:
    with store.locked(1):
        store.put_vm(rec("a", nic("a-0")))
    path = os.path.join(store.dir, "vms", "a.json")
    data = json.loads(Path(path).read_text())
    data["format"] = 3
    Path(path).write_text(json.dumps(data))
    with pytest.raises(UnknownFormat, match=r"format 3.*will not act on it"):
        store.get_vm("a")
    corrupt, unknown = store.problems()
    assert corrupt == [] and len(unknown) == 1
    assert "a" not in store.vms()


def test_format_1_is_read_and_rewritten_as_2(store: StateStore) -> None:
    old = {"format": 1, "vm": "a", "mode": "up", "phase": "ready",
           "writer": {"pid": 1, "start": 2}, "holder": None, "domain_uuid": None,
           "created_at": 1.0,
           "nics": [{"index": 0, "tap": "a-0", "bridge": "br0", "network": "n",
                     "mac": "52:54:00:00:00:01", "tap_mac": "fe:54:00:00:00:01", "mtu": None,
                     "queues": 1, "vnet_hdr": True, "owner": 0, "group": None,
                     "created": True}]}
    r = vm_from_json(old)
    assert r.nics[0].model == "virtio-net-pci"
    with store.locked(1):
        store.put_vm(r)
    assert json.loads(Path(store.dir, "vms", "a.json").read_text())["format"] == 2


def test_journal_names_the_vms_in_flight(store: StateStore) -> None:
    with store.locked(1):
        path = store.begin(["a", "b"], Proc(1, 99))
        (j,) = store.journals()
        assert j == (path, Proc(1, 99), ["a", "b"]) and not j[1].alive()
        store.end(path)
        assert store.journals() == []


def test_a_full_disk_fails_the_write_and_leaves_no_record(tmp_path: Path) -> None:
    """tmpfs of 64 KiB, filled: the write fails naming the directory and ENOSPC, and no
    truncated record (or temp file) is left where a reader would find it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    code = f"""
import os, subprocess, sys
sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})
subprocess.run(["mount", "-n", "-t", "tmpfs", "-o", "size=64k,mode=700", "x", {str(mnt)!r}],
               check=True)
from vmnet.state.store import StateStore
from vmnet.state.records import NicRecord, Proc, VmRecord
from vmnet.errors import StateError
s = StateStore({str(mnt)!r}, 1, 1)
with s.locked(1):
    s._ensure_dirs()
    s._stamp()
    with open(os.path.join({str(mnt)!r}, "filler"), "wb") as f:
        try:
            f.write(b"x" * (1 << 20))
        except OSError:
            pass
    n = NicRecord(0, "a-0", "br0", "n", "52:54:00:00:00:01", "fe:54:00:00:00:01", None,
                  1, True, 0, None)
    big = VmRecord("a", "up", "ready", Proc.me(), [n] * 200)
    try:
        s.put_vm(big)
    except StateError as e:
        print("ERR", e.one_line())
    print(sorted(os.listdir(os.path.join(s.dir, "vms"))))
"""
    r = subprocess.run(["unshare", "-m", sys.executable, "-c", code], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ERR cannot write vmnet's record a.json in ") and \
        "ENOSPC" in lines[0] and "free space there" in lines[0], lines
    assert lines[1] == "[]"


def test_state_error_is_a_vmnet_error() -> None:
    assert issubclass(StateError, Exception) and StateError("x").exit_code == 1


def test_down_and_gc_work_on_a_full_state_directory(tmp_path: Path) -> None:
    """Freeing space must not need free space: with the state directory's file system
    full, `down` removes the VM (tap and records) and `gc` runs; both say one line."""
    if os.geteuid() != 0:
        pytest.skip("namespaces and a small tmpfs need root")
    import uuid

    ns = f"vmt-full-{uuid.uuid4().hex[:8]}"
    mnt = tmp_path / "state"
    mnt.mkdir()
    script = f"""
set -e
mount -n -t tmpfs -o size=128k,mode=700 x {mnt}
V="{sys.executable} -m vmnet --state-dir {mnt} --config {empty_config()} --netns {ns}"
$V up vm1 >/dev/null
$V up vm2 >/dev/null
dd if=/dev/zero of={mnt}/filler bs=4k 2>/dev/null || true
$V down vm1
$V gc
ip -n {ns} -o link show | grep -c vm1-0 || true
ls {mnt}/ns-*/vms
if $V up vm3 2>{mnt}/../up3.err; then echo "up3 succeeded"; fi
ip -n {ns} -o link show | grep -c vm3-0 || true
"""
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True,
                           text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    finally:
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split():
            os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert "vm1: removed vm1-0" in out[0] and out[-3:] == ["0", "vm2.json", "0"], r.stdout
    assert "without marking it first" in r.stderr and "ENOSPC" in r.stderr
    # and a new `up` on the full disk fails before any kernel change, in one line
    err = (tmp_path / "up3.err").read_text()
    assert err.count("\n") == 1 and "ENOSPC" in err and str(mnt) in err, err
