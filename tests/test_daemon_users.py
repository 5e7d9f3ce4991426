"""Users without root through vmnetd: two real uids (setpriv), the daemon in a throwaway
namespace.  Each may use the networks the config grants them, within its limits; neither
can see, change, take down or borrow the other's VM, nor take its name, tap or MAC."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import needs_root, vmnetd
from tests.nsutil import Netns, netns
from tests.vmnetcli import vmnet

pytestmark = pytest.mark.kernel

UA, UB, GPRIV = 23001, 23002, 23555
MAC_A = "52:54:00:a1:00:01"
CONFIG = f"""
[defaults]
user_max_nics = 3
user_max_queues = 2

[networks.lab]
bridge = "vmlab0"
allow_users = [{UA}, "{UB}"]

[networks.priv]
bridge = "vmpriv0"
allow_groups = [{GPRIV}]

[networks.rootonly]
bridge = "vmroot0"

[vms.bobs]
user = {UB}
[[vms.bobs.nics]]
network = "lab"

[vms.clash]
user = {UB}
[[vms.clash.nics]]
network = "lab"
tap = "avm-0"
"""


class Site:
    """A namespace with vmnetd in it, a state directory every uid can reach, a config."""

    def __init__(self, ns: Netns, state_dir: str, config: Path) -> None:
        self.ns = ns
        self.state_dir = state_dir
        self.config = config

    def user(self, uid: int, *args: str, groups: tuple[int, ...] = (),
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        ids = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
        return vmnet(None, self.state_dir, *args, env=env,
                     prefix=["setpriv", "--reuid", str(uid), "--regid", str(uid), *ids])

    def root(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return vmnet(self.ns, self.state_dir, *args, config=str(self.config), check=check)

    def shape(self) -> dict[str, tuple[object, ...]]:
        """Each link's name, kind, master, owner and MAC (not the flags the kernel settles
        late, like a bridge's carrier)."""
        out = {}
        for name, lk in self.ns.links().items():
            info = lk.get("linkinfo", {})
            out[name] = (info.get("info_kind"), lk.get("master"), lk.get("address"),
                         info.get("info_data", {}).get("user"))
        return out

    def owner(self, tap: str) -> int | None:
        link = self.ns.link(tap)
        return None if link is None else int(link["linkinfo"]["info_data"]["user"])


@pytest.fixture
def site() -> Iterator[Site]:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces, setpriv)")
    state = tempfile.mkdtemp(prefix="vmnet-users-", dir="/tmp")
    os.chmod(state, 0o711)
    cfg = Path(tempfile.mkdtemp(prefix="vmnet-users-cfg-")) / "vmnet.toml"
    cfg.write_text(CONFIG)
    try:
        with netns() as ns, vmnetd(state, config=str(cfg), ns=ns):
            s = Site(ns, state, cfg)
            try:
                yield s
            finally:
                s.root("down", "--all", check=False)
    finally:
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(cfg.parent, ignore_errors=True)


def refused(r: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("vmnet: error: "), r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_a_user_brings_their_vm_up_and_down(site: Site) -> None:
    r = site.user(UA, "up", "avm", "--bridge", "vmlab0", "--mac", MAC_A)
    assert r.returncode == 0, r.stderr
    assert f"owner uid {UA}" in r.stdout
    assert site.owner("avm-0") == UA
    assert site.ns.link("avm-0")["master"] == "vmlab0"  # type: ignore[index]
    st = json.loads(site.user(UA, "status", "--json").stdout)
    assert [v["vm"] for v in st["vms"]] == ["avm"]
    lst = site.user(UA, "list").stdout
    assert "avm" in lst
    args = site.user(UA, "qemu-args", "avm")
    assert args.returncode == 0 and "ifname=avm-0" in args.stdout
    r = site.user(UA, "down", "avm")
    assert r.returncode == 0 and "removed avm-0" in r.stdout
    assert "avm-0" not in site.ns.links() and "vmlab0" not in site.ns.links()


def test_a_user_may_tighten_a_nics_policy(site: Site) -> None:
    r = site.user(UA, "up", "tvm", "--bridge", "vmlab0", "--mac-filter", "--port-isolation",
                  "--rate-from-vm", "10mbit")
    assert r.returncode == 0, r.stderr
    table = site.ns.run("nft", "list", "table", "bridge", "vmnet").stdout
    assert "chain p_tvm-0" in table and "limit rate over 1250000 bytes/second" in table
    assert site.ns.links()["tvm-0"]["linkinfo"]["info_slave_data"]["isolated"] is True
    st = json.loads(site.user(UA, "status", "--json").stdout)
    assert st["vms"][0]["nics"][0]["state"] == "ok"
    assert site.user(UA, "down", "tvm").returncode == 0
    assert "bridge vmnet" not in site.ns.run("nft", "list", "ruleset").stdout


def test_a_user_may_not_loosen_a_configured_rate(site: Site) -> None:
    site.config.write_text(CONFIG + f'\n[vms.slow]\nuser = {UA}\n[[vms.slow.nics]]\n'
                                    'network = "lab"\nrate = {{ from_vm = "10mbit" }}\n'
                           .replace("{{", "{").replace("}}", "}"))
    before = site.shape()
    refused(site.user(UA, "up", "slow", "--rate-from-vm", "1gbit"), 4,
            "rate from_vm 1000000000 bit/s is looser", "vms.slow.nics[0].rate")
    assert site.shape() == before
    r = site.user(UA, "up", "slow", "--rate-from-vm", "5mbit")  # tighter: fine
    assert r.returncode == 0, r.stderr
    assert site.user(UA, "down", "slow").returncode == 0
    site.config.write_text(CONFIG)


def test_another_users_vm_is_out_of_reach(site: Site) -> None:
    assert site.user(UA, "up", "avm", "--bridge", "vmlab0", "--mac", MAC_A).returncode == 0
    before = site.shape()
    # see it: no; change it, take it down, borrow it, re-up it: no
    st = json.loads(site.user(UB, "status", "--json").stdout)
    assert st["vms"] == [] and st["unrecorded_taps"] == [] and st["bridges"] == []
    refused(site.user(UB, "down", "avm"), 4, "VM 'avm' is up as uid 23001's")
    assert site.user(UB, "down", "--all").returncode == 0  # only B's own: none
    refused(site.user(UB, "up", "avm", "--bridge", "vmlab0"), 4, "VM 'avm'")
    refused(site.user(UB, "up", "avm", "--mtu", "1400"), 4, "VM 'avm'")
    refused(site.user(UB, "qemu-args", "avm"), 4, "VM 'avm'")
    refused(site.user(UB, "run", "avm", "--", "/bin/true"), 4, "VM 'avm'")
    refused(site.user(UB, "status", "avm"), 1, "no record of VM 'avm'")
    # take its MAC on the same bridge, or its tap name (a config VM of B's naming it)
    refused(site.user(UB, "up", "bvm", "--bridge", "vmlab0", "--mac", MAC_A), 1, MAC_A)
    refused(site.user(UB, "up", "clash"), 1, "avm-0")
    assert site.shape() == before
    assert site.owner("avm-0") == UA
    # B's own configured VM: B's alone
    refused(site.user(UA, "up", "bobs"), 4, f"uid {UB}", "vms.bobs.user")
    r = site.user(UB, "up", "bobs")
    assert r.returncode == 0, r.stderr
    assert site.owner("bobs-0") == UB


def test_networks_groups_and_limits(site: Site) -> None:
    refused(site.user(UA, "up", "x1"), 4, "network 'default'", "networks.default.allow_users",
            str(site.config))
    refused(site.user(UA, "up", "x1", "--bridge", "vmroot0"), 4, "network 'rootonly'",
            "networks.rootonly.allow_users")
    refused(site.user(UA, "up", "x1", "--bridge", "vmnope0"), 4,
            "bridge vmnope0: it is no network of")
    refused(site.user(UA, "up", "x1", "--bridge", "vmpriv0"), 4, "network 'priv'")
    r = site.user(UB, "up", "g1", "--bridge", "vmpriv0", groups=(GPRIV,))
    assert r.returncode == 0, r.stderr
    refused(site.user(UA, "up", "q1", "--bridge", "vmlab0", "--queues", "3"), 2,
            "3 queues is over the 2", "defaults.user_max_queues")
    assert site.user(UA, "up", "n1", "--bridge", "vmlab0", "--nics", "2").returncode == 0
    refused(site.user(UA, "up", "n2", "--bridge", "vmlab0", "--nics", "2"), 4,
            "has 2 NIC(s) up", "defaults.user_max_nics")
    assert site.user(UA, "up", "n2", "--bridge", "vmlab0").returncode == 0  # 3 of 3
    # one command bringing up many VMs counts them all
    refused(site.user(UB, "up", "m1", "m2", "m3", "m4", "--bridge", "vmlab0"), 4,
            "defaults.user_max_nics")
    assert not [n for n in site.ns.links() if n.startswith("m")]


def test_flags_a_user_may_not_give(site: Site) -> None:
    before = site.shape()
    refused(site.user(UA, "--netns", "x", "up", "v", "--bridge", "vmlab0"), 4, "--netns")
    refused(site.user(UA, "up", "v", "--bridge", "vmlab0", "--uplink", "eth0"), 4, "--uplink")
    refused(site.user(UA, "up", "v", "--bridge", "vmlab0", "--ip", "10.77.0.9"), 4,
            "--ip: only root may choose a NIC's address")
    # a user may tighten a NIC's policy, never loosen it or pick its VLAN
    refused(site.user(UA, "up", "v", "--bridge", "vmlab0", "--mac-filter", "--no-guard"), 4,
            "--no-guard: only root may loosen")
    refused(site.user(UA, "up", "v", "--bridge", "vmlab0", "--vlan", "7"), 4, "--vlan")
    refused(site.user(UA, "up", "v", "--bridge", "vmlab0", "--user", str(UB)), 4, "--user")
    refused(site.user(UA, "up", "v", "--bridge", "vmlab0", "--user", "root"), 4, "--user")
    refused(site.user(UA, "up", "v", "--bridge", "vmlab0", "--group", str(GPRIV)), 4,
            "--group")
    refused(site.user(UA, "gc"), 4, "`vmnet gc` is root's")
    assert site.shape() == before
    # its own uid, and a --config / environment of its choosing: the daemon's config rules
    bogus = {"VMNET_CONFIG": "/nonexistent.toml", "SUDO_USER": "root"}
    r = site.user(UA, "--config", "/etc/shadow", "up", "v", "--bridge", "vmlab0", "--user",
                  str(UA), env=bogus)
    assert r.returncode == 0, r.stderr
    assert site.owner("v-0") == UA


def test_doors_only_root_may_use(site: Site) -> None:
    code = ("import os, sys\n"
            "from vmnet.daemon import client\n"
            "reply, fds = client.call(sys.argv[1], sys.argv[2], sys.argv[3:], {})\n"
            "sys.stderr.write(reply['err']); sys.exit(reply['rc'])\n")
    no_admin = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"]
    for who in (["setpriv", "--reuid", str(UA), "--regid", str(UA), "--clear-groups"],
                no_admin):  # a user, and a root that dropped CAP_NET_ADMIN
        for door, args, says in (("ifup", ["avm-0"], "needs CAP_NET_ADMIN"),
                                 ("ifdown", ["avm-0"], "needs CAP_NET_ADMIN"),
                                 ("hook", ["d1", "prepare", "begin", "-"], "root only")):
            r = subprocess.run([*who, sys.executable, "-c", code, site.state_dir, door,
                                *args], capture_output=True, text=True, timeout=30)
            assert r.returncode == 4 and says in r.stderr, (who, door, r.stderr)


def test_config_changes_are_picked_up(site: Site) -> None:
    refused(site.user(UA, "up", "c1", "--bridge", "vmnew0"), 4, "vmnew0")
    site.config.write_text(CONFIG + f'\n[networks.new]\nbridge = "vmnew0"\n'
                                    f'allow_users = [{UA}]\n')
    r = site.user(UA, "up", "c1", "--bridge", "vmnew0")
    assert r.returncode == 0, r.stderr
    site.config.write_text(CONFIG)
    refused(site.user(UA, "up", "c2", "--bridge", "vmnew0"), 4, "vmnew0")


@needs_root
def test_without_a_daemon_a_user_is_told_it_needs_root(tmp_path: Path) -> None:
    state = tempfile.mkdtemp(prefix="vmnet-users-", dir="/tmp")
    os.chmod(state, 0o711)
    try:
        r = vmnet(None, state, "up", "v1", prefix=["setpriv", "--reuid", str(UA), "--regid",
                                                   str(UA), "--clear-groups"])
        assert r.returncode == 4 and "CAP_NET_ADMIN" in r.stderr, r.stderr
    finally:
        shutil.rmtree(state, ignore_errors=True)


HELPER_CLIENT = """
import fcntl, os, socket, struct, subprocess, sys
a, b = socket.socketpair()
helper = os.path.join(os.path.dirname(sys.executable), "vmnet-bridge-helper")
p = subprocess.run([helper, "--use-vnet", f"--br={sys.argv[1]}", f"--fd={b.fileno()}"],
                   pass_fds=(b.fileno(),), capture_output=True, text=True)
sys.stderr.write(p.stderr)
if p.returncode:
    sys.exit(p.returncode)
msg, anc, _, _ = a.recvmsg(1, socket.CMSG_SPACE(4))
fd = struct.unpack("i", anc[0][2][:4])[0]
buf = bytearray(40)
fcntl.ioctl(fd, 0x800454D2, buf)  # TUNGETIFF
name, flags = struct.unpack("16sH22x", bytes(buf))
print(name.rstrip(b"\\0").decode(), flags, msg, flush=True)
sys.stdin.read()  # hold the tap until told
"""


def test_bridge_helper_for_a_user(site: Site) -> None:
    """QEMU's helper protocol without QEMU: the tap comes back over --fd=; it is the
    user's, on the bridge, not persistent; an ACL refusal names user, bridge and key."""
    env = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}
    env["VMNET_STATE_DIR"] = site.state_dir
    who = ["setpriv", "--reuid", str(UA), "--regid", str(UA), "--clear-groups"]
    r = subprocess.run([*who, sys.executable, "-c", HELPER_CLIENT, "vmroot0"],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 4, r.stderr
    assert r.stderr.startswith(f"vmnet-bridge-helper: error: user uid {UA} may not use "
                               "network 'rootonly' (bridge vmroot0)"), r.stderr
    assert "networks.rootonly.allow_users" in r.stderr and r.stderr.count("\n") == 1
    p = subprocess.Popen([*who, sys.executable, "-c", HELPER_CLIENT, "vmlab0"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    try:
        assert p.stdout is not None
        line = p.stdout.readline().split()
        assert line, p.stderr.read() if p.stderr else ""
        tap, flags = line[0], int(line[1])
        assert tap.startswith("vmh") and len(tap) == 13
        assert flags & 0x4000  # IFF_VNET_HDR: --use-vnet
        link = site.ns.link(tap)
        assert link is not None and link["master"] == "vmlab0"
        data = link["linkinfo"]["info_data"]
        assert int(data["user"]) == UA and data["persist"] is False
    finally:
        p.communicate(timeout=30)
    assert site.ns.link(tap) is None  # gone with its last fd

