"""The qemu ifup/ifdown scripts against real taps and bridges, one namespace per test.

They are run as QEMU runs them: a separate process with one argument, in the
namespace, with the environment (VMNET_STATE_DIR, VMNET_CONFIG) inherited.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.daemon import leftovers
from tests.nsutil import Netns
from tests.tapholder import hold_tap
from tests.vmnetcli import empty_config, host_snapshot, vmnet
from vmnet.integrations.qemu.ifup import script_paths
from vmnet.model import default_mac, tap_mac

BOTH_WAYS = True  # every test in-process and through vmnetd (tests/conftest.py)

pytestmark = pytest.mark.kernel

IFUP, IFDOWN = script_paths()
CHECKOUT = Path(__file__).resolve().parent.parent
SETPRIV_NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]

LAB = """
[networks.lab]
bridge = "br-lab"
mtu = 9000

[vms.vm1]
[[vms.vm1.nics]]
network = "lab"
mac = "52:54:00:00:00:aa"

[vms.small]
[[vms.small.nics]]
network = "lab"
tap = "small-tap"
mtu = 1400
"""


def script(ns: Netns, prog: str, *args: str, state_dir: str, config: str | None = None,
           prefix: list[str] | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER", "VMNET_FAULT")}
    e.update({"VMNET_STATE_DIR": state_dir, "VMNET_CONFIG": config or empty_config()})
    e.update(env or {})
    return subprocess.run(["ip", "netns", "exec", ns.name, *(prefix or []), prog, *args],
                          text=True, capture_output=True, env=e, timeout=60)


def sysctl(ns: Netns, tap: str) -> str:
    return ns.run("cat", f"/proc/sys/net/ipv6/conf/{tap}/disable_ipv6").stdout.strip()


@pytest.fixture
def lab(ns: Netns, tmp_path: Path) -> str:
    """A bridge vmnet did not create (MTU 9000) and a config that puts VMs on it."""
    ns.ip("link", "add", "br-lab", "address", "02:00:00:00:00:01", "type", "bridge")
    # MTU set after creation: only then does the bridge keep it when ports come and go.
    ns.ip("link", "set", "br-lab", "mtu", "9000", "up")
    cfg = tmp_path / "lab.toml"
    cfg.write_text(LAB)
    return str(cfg)


def test_qemu_created_tap_found_in_config(ns: Netns, state_dir: str, lab: str) -> None:
    bridge_before = ns.link("br-lab")
    with hold_tap(ns, "vm1-0"):  # what QEMU does with ifname= when the tap is missing
        tap = ns.link("vm1-0")
        assert tap is not None and tap["linkinfo"]["info_data"]["persist"] is False
        r = script(ns, IFUP, "vm1-0", state_dir=state_dir, config=lab)
        assert r.returncode == 0, r.stderr
        assert r.stdout == r.stderr == ""
        tap = ns.link("vm1-0")
        assert tap is not None
        assert tap["master"] == "br-lab"
        assert "UP" in tap["flags"] and "LOWER_UP" in tap["flags"]
        assert tap["mtu"] == 9000  # the network's MTU (the NIC has none)
        assert tap["address"] == "fe:54:00:00:00:aa"  # the guest's MAC with first byte fe
        assert sysctl(ns, "vm1-0") == "1"

        r = script(ns, IFDOWN, "vm1-0", state_dir=state_dir, config=lab)
        assert r.returncode == 0, r.stderr
        tap = ns.link("vm1-0")
        assert tap is not None, "ifdown deletes nothing"
        assert "master" not in tap and "UP" not in tap["flags"]
    assert ns.link("vm1-0") is None  # QEMU's tap vanished with its last fd
    bridge_after = ns.link("br-lab")
    assert bridge_after is not None and bridge_before is not None
    for key in ("mtu", "address", "ifalias", "master"):
        assert bridge_after.get(key) == bridge_before.get(key)
    assert "UP" in bridge_after["flags"]  # (carrier differs: the kernel's doing)
    # The scripts record nothing (and leave no directory behind).
    assert leftovers(state_dir) == []


def test_vmnet_tap_found_in_records(ns: Netns, state_dir: str) -> None:
    vmnet(ns, state_dir, "up", "vm2", "--bridge", "brv", "--mtu", "1400", "--mac",
          "52:54:00:00:00:02", check=True)
    r = script(ns, IFDOWN, "vm2-0", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    tap = ns.link("vm2-0")
    assert tap is not None and "master" not in tap and "UP" not in tap["flags"]
    assert tap["linkinfo"]["info_data"]["persist"] is True  # a vmnet tap stays
    # the record knows --bridge/--mtu; the (empty) config does not
    r = script(ns, IFUP, "vm2-0", state_dir=state_dir)
    assert r.returncode == 0, r.stderr
    tap = ns.link("vm2-0")
    assert tap is not None
    assert (tap["master"], tap["mtu"], tap["address"]) == ("brv", 1400, "fe:54:00:00:00:02")
    assert "UP" in tap["flags"]
    vmnet(ns, state_dir, "down", "vm2", check=True)
    assert set(ns.links()) == {"lo"}


def test_default_tap_name_without_config(ns: Netns, state_dir: str) -> None:
    vmnet(ns, state_dir, "up", "anchor", check=True)  # makes the default bridge vmnet0
    with hold_tap(ns, "vm7-1"):
        r = script(ns, IFUP, "vm7-1", state_dir=state_dir)
        assert r.returncode == 0, r.stderr
        tap = ns.link("vm7-1")
        assert tap is not None and tap["master"] == "vmnet0"
        # vmnet's default naming is reversible: VM vm7, NIC 1, its default MAC
        assert tap["address"] == tap_mac(default_mac("vm7", 1))
    with hold_tap(ns, "qtap0"):  # a name vmnet never gives: default bridge, MAC left
        mac = ns.link("qtap0")["address"]
        r = script(ns, IFUP, "qtap0", state_dir=state_dir)
        assert r.returncode == 0, r.stderr
        tap = ns.link("qtap0")
        assert tap is not None and tap["master"] == "vmnet0" and tap["address"] == mac
    vmnet(ns, state_dir, "down", "anchor", check=True)


def test_multiqueue_tap(ns: Netns, state_dir: str, lab: str) -> None:
    with hold_tap(ns, "vm1-0", queues=2):
        r = script(ns, IFUP, "vm1-0", state_dir=state_dir, config=lab)
        assert r.returncode == 0, r.stderr
        tap = ns.link("vm1-0")
        assert tap is not None and tap["master"] == "br-lab"
        assert tap["linkinfo"]["info_data"]["multi_queue"] is True


def check_refused(r: subprocess.CompletedProcess[str], prog: str, culprit: str,
                  code: int | None = None) -> None:
    assert r.returncode != 0 and (code is None or r.returncode == code), r
    err = r.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith(f"{os.path.basename(prog)}: error: "), err
    assert culprit in err, err


BAD_ARGS = [
    ("no-argument", [], "exactly one argument", 2),
    ("two-arguments", ["a", "b"], "exactly one argument", 2),
    ("slash", ["a/b"], "'a/b'", 2),
    ("too-long", ["x" * 16], "longer than 15", 2),
    ("space", ["a b"], "'a b'", 2),
    ("newline", ["a\nb"], "'a\\nb'", 2),
    ("shell-ish-but-valid-name", ["$(id)"], "$(id) does not exist", 1),
]


@pytest.mark.parametrize("prog", [IFUP, IFDOWN], ids=["ifup", "ifdown"])
@pytest.mark.parametrize(("name", "args", "culprit", "code"), BAD_ARGS,
                         ids=[c[0] for c in BAD_ARGS])
def test_bad_arguments(ns: Netns, state_dir: str, prog: str, name: str, args: list[str],
                       culprit: str, code: int) -> None:
    ns.ip("link", "add", "vmnet0", "type", "bridge")
    before = host_snapshot(ns, state_dir)
    r = script(ns, prog, *args, state_dir=state_dir)
    if prog == IFDOWN and code == 1:
        assert r.returncode == 0  # ifdown of a missing interface: nothing to undo
    else:
        check_refused(r, prog, culprit, code)
    assert host_snapshot(ns, state_dir) == before


def test_refusals_change_nothing(ns: Netns, state_dir: str, lab: str) -> None:
    ns.ip("link", "add", "dum0", "type", "veth", "peer", "name", "dum1")
    before = host_snapshot(ns, state_dir)
    # not a tap
    for prog in (IFUP, IFDOWN):
        check_refused(script(ns, prog, "dum0", state_dir=state_dir, config=lab), prog,
                      "dum0 is not a tap", 1)
    # no bridge: the scripts never create one
    with hold_tap(ns, "qtap0"):
        inner = host_snapshot(ns, state_dir)
        r = script(ns, IFUP, "qtap0", state_dir=state_dir, config=lab)
        check_refused(r, IFUP, "bridge vmnet0", 1)
        assert "never create bridges" in r.stderr
        assert host_snapshot(ns, state_dir) == inner
    # the NIC's own MTU would lower a bridge vmnet did not create
    with hold_tap(ns, "small-tap"):
        inner = host_snapshot(ns, state_dir)
        r = script(ns, IFUP, "small-tap", state_dir=state_dir, config=lab)
        check_refused(r, IFUP, "would lower the MTU of bridge br-lab", 1)
        assert host_snapshot(ns, state_dir) == inner
    # the interface is gone (QEMU failed in between)
    check_refused(script(ns, IFUP, "vm1-0", state_dir=state_dir, config=lab), IFUP,
                  "vm1-0 does not exist", 1)
    assert host_snapshot(ns, state_dir) == before


@pytest.mark.parametrize("prog", [IFUP, IFDOWN], ids=["ifup", "ifdown"])
def test_without_cap_net_admin_points_to_vmnet_run(ns: Netns, state_dir: str, lab: str,
                                                   prog: str) -> None:
    """An unprivileged QEMU runs the script as its own uid: one line, pointing at `vmnet run`."""
    os.chmod(lab, 0o644)
    with hold_tap(ns, "vm1-0"):
        before = host_snapshot(ns, state_dir)
        for prefix in (SETPRIV_NOBODY, ["setpriv", "--bounding-set=-net_admin",
                                        "--inh-caps=-net_admin"]):
            r = script(ns, prog, "vm1-0", state_dir=state_dir, config=lab, prefix=prefix)
            check_refused(r, prog, "CAP_NET_ADMIN", 4)
            assert "vmnet run" in r.stderr
        assert host_snapshot(ns, state_dir) == before


def test_checkout_shims(ns: Netns, state_dir: str, lab: str) -> None:
    """scripts/qemu-ifup and -ifdown work from a checkout, as QEMU's script= would run them."""
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    with hold_tap(ns, "vm1-0"):
        r = script(ns, str(CHECKOUT / "scripts" / "qemu-ifup"), "vm1-0", state_dir=state_dir,
                   config=lab, env=env)
        assert r.returncode == 0, r.stderr
        assert ns.link("vm1-0")["master"] == "br-lab"
        r = script(ns, str(CHECKOUT / "scripts" / "qemu-ifdown"), "vm1-0",
                   state_dir=state_dir, config=lab, env=env)
        assert r.returncode == 0, r.stderr
        assert "master" not in ns.link("vm1-0")


def test_ifup_imports_stay_light(ns: Netns, state_dir: str, lab: str) -> None:
    """A whole ifup run loads no click, jinja2, pyroute2 or planner (QEMU waits on it)."""
    code = ("import posix, sys\n"
            "def _exit(code):\n    raise SystemExit(code)\n"
            "posix._exit = _exit  # through vmnetd the door ends with _exit: look after it\n"
            "from vmnet.integrations.qemu.ifup import main_ifup\n"
            "try:\n    main_ifup(['vm1-0'])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "heavy = ('click', 'jinja2', 'vmnet.engine.ops', 'vmnet.engine.plan')\n"
            "import os\n"
            "heavy += ('pyroute2',)\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n")
    with hold_tap(ns, "vm1-0"):
        r = script(ns, sys.executable, "-c", code, state_dir=state_dir, config=lab)
        assert r.returncode == 0, r.stderr
        assert ns.link("vm1-0")["master"] == "br-lab"
    assert r.stdout.strip() == "[]"


def _time(argvs: list[list[str]], reset: list[str], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        subprocess.run(reset, check=True, capture_output=True)
        t = time.perf_counter()
        for argv in argvs:
            subprocess.run(argv, check=True, capture_output=True)
        out.append((time.perf_counter() - t) * 1000)
    return out


def test_ifup_cost_against_three_ip_commands(ns: Netns, state_dir: str, lab: str) -> None:
    """Whole-process time, measured from inside the namespace (no `ip netns exec` per call)."""
    bench = f"""
import os, statistics, subprocess, sys, time
sys.path.insert(0, {str(CHECKOUT)!r})
from tests.test_ifup import _time

os.environ.update(VMNET_STATE_DIR={state_dir!r}, VMNET_CONFIG={lab!r})
reset = ["ip", "link", "set", "vm1-0", "nomaster", "down", "mtu", "1500"]
ip3 = [["ip", "link", "set", "vm1-0", "mtu", "9000"],
       ["ip", "link", "set", "vm1-0", "master", "br-lab"],
       ["ip", "link", "set", "vm1-0", "up"]]
a = _time(ip3, reset, 15)
b = _time([[{IFUP!r}, "vm1-0"]], reset, 15)
print(statistics.median(a), statistics.median(b))
"""
    with hold_tap(ns, "vm1-0"):
        r = ns.run(sys.executable, "-c", bench)
    ip3, ifup = map(float, r.stdout.split())
    print(f"\nwhole-process ms (median of 15): three `ip link set`: {ip3:.1f}; "
          f"vmnet-qemu-ifup: {ifup:.1f}")
    assert 0 < ifup < 2000  # a sanity bound only: the machine is shared


def test_ifdown_leaves_a_tap_someone_moved_to_another_master(ns: Netns, state_dir: str,
                                                            lab: str) -> None:
    """ifdown detaches only from the bridge ifup chose; a tap now on another bridge
    (an admin's move) stays there, up, and ifdown says so in one line."""
    ns.ip("tuntap", "add", "dev", "vm1-0", "mode", "tap")
    r = script(ns, IFUP, "vm1-0", state_dir=state_dir, config=lab)
    assert r.returncode == 0, r.stderr
    ns.ip("link", "add", "brother", "type", "bridge")
    ns.ip("link", "set", "vm1-0", "master", "brother")
    r = script(ns, IFDOWN, "vm1-0", state_dir=state_dir, config=lab)
    assert r.returncode == 0 and "port of brother, not of br-lab: left as it is" in r.stderr
    link = ns.link("vm1-0")
    assert link is not None and link["master"] == "brother" and "UP" in link["flags"]
    ns.ip("link", "set", "vm1-0", "master", "br-lab")
    r = script(ns, IFDOWN, "vm1-0", state_dir=state_dir, config=lab)
    assert r.returncode == 0 and r.stderr == ""
    link = ns.link("vm1-0")
    assert link is not None and "master" not in link and "UP" not in link["flags"]


def test_ifup_refuses_a_tap_of_another_master(ns: Netns, state_dir: str, lab: str) -> None:
    ns.ip("tuntap", "add", "dev", "vm1-0", "mode", "tap")
    ns.ip("link", "add", "brother", "type", "bridge")
    ns.ip("link", "set", "vm1-0", "master", "brother")
    r = script(ns, IFUP, "vm1-0", state_dir=state_dir, config=lab)
    assert r.returncode == 1 and "already a port of brother, not of br-lab" in r.stderr
    assert ns.link("vm1-0")["master"] == "brother"


def test_ifup_racing_down_never_leaves_a_tap_without_its_bridge(ns: Netns,
                                                                state_dir: str) -> None:
    """ifup takes the namespace lock: racing the `down` of the last VM on a vmnet bridge,
    either ifup comes first (the bridge keeps the QEMU tap: `down` leaves a bridge with a
    port that is not vmnet's) or `down` does (ifup then says the bridge is gone).  Never
    does ifup succeed onto a bridge deleted under it (0.1: about one run in three)."""
    import concurrent.futures as cf

    from tests.vmnetcli import vmnet

    outcomes = set()
    for i in range(12):
        vmnet(ns, state_dir, "up", "keeper", "--bridge", "brr", check=True)
        tap = f"race{i}"
        ns.ip("tuntap", "add", "dev", tap, "mode", "tap")
        cfg = os.path.join(state_dir, "race.toml")
        with open(cfg, "w") as f:
            f.write('[networks.r]\nbridge = "brr"\n[defaults]\nnetwork = "r"\n')
        with cf.ThreadPoolExecutor(2) as pool:
            f_up = pool.submit(script, ns, IFUP, tap, state_dir=state_dir, config=cfg)
            f_down = pool.submit(vmnet, ns, state_dir, "down", "keeper")
            up, down = f_up.result(), f_down.result()
        assert down.returncode == 0, down.stderr
        link = ns.link(tap)
        assert link is not None
        if up.returncode == 0:
            assert link.get("master") == "brr" and ns.link("brr") is not None, (up, link)
            outcomes.add("ifup first")
        else:
            assert "does not exist" in up.stderr and ns.link("brr") is None, up.stderr
            outcomes.add("down first")
        ns.ip("link", "del", tap)
        if ns.link("brr") is not None:
            ns.ip("link", "del", "brr")
    assert outcomes  # (which order won is up to the scheduler)
