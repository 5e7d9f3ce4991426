"""The hot path (vmnet.hot) against the full path, on real namespaces.

Each scenario is run twice from the same starting host, in two namespaces:
once with the hot path off (VMNET_HOT=0) and once with it on.  Everything a
user or the kernel can see must be the same: exit status, output, the
records, and every attribute the kernel reports of every link.  Each
scenario also says which path served it (seen in `-X importtime`: the full
path imports vmnet.ops / vmnet.ifup, the hot path does not), so a hot path
that silently declined everything would fail here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.nsutil import Netns, netns
from tests.vmnetcli import empty_config, vmnet, vmnet_argv

pytestmark = pytest.mark.kernel

FULL = {"VMNET_HOT": "0"}

TWO_NETS = """
[networks.lab]
bridge = "br-lab"
mtu = 9000

[networks.mgmt]
bridge = "br-mgmt"

[vms.warm]
[[vms.warm.nics]]
network = "lab"
[[vms.warm.nics]]
network = "mgmt"

[vms.big]
user = "nobody"
group = "nogroup"
[[vms.big.nics]]
network = "lab"
queues = 4
mac = "52:54:00:00:00:b1"
tap = "big-data"
[[vms.big.nics]]
network = "mgmt"
mtu = 1400
vnet_hdr = false
model = "e1000"
"""

ADMIN = """
[networks.adm]
bridge = "br-adm"

[defaults]
network = "adm"

[vms.low]
[[vms.low.nics]]
mtu = 1300
"""

UPLINK = """
[networks.up]
bridge = "br-up"
uplink = "veth-up"

[defaults]
network = "up"
"""


def _norm_link(link: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in link.items()
           if k not in ("ifindex", "stats", "stats64", "link_index", "link")}
    info = dict(out.get("linkinfo", {}))
    for key in ("info_data", "info_slave_data"):
        if key in info:
            info[key] = {k: v for k, v in info[key].items() if "timer" not in k}
    out["linkinfo"] = info
    return out


def _view(ns: Netns) -> dict[str, Any]:
    view: dict[str, Any] = {n: _norm_link(lk) for n, lk in ns.links().items()}
    out = ns.run("sh", "-c", "for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; "
                 "do echo \"$f $(cat $f)\"; done").stdout
    for line in out.splitlines():
        path, value = line.split()
        name = path.split("/")[-2]
        if name in view:
            view[name]["disable_ipv6"] = value
    return view


def kernel_view(ns: Netns) -> dict[str, Any]:
    """Every link as the kernel reports it, once it has settled.

    Carrier and operational state follow a change asynchronously (linkwatch runs
    up to a second later, later still on a loaded machine): compare the settled
    host, not a moment of it.
    """
    time.sleep(1.0)
    last = _view(ns)
    for _ in range(20):
        time.sleep(0.25)
        now = _view(ns)
        if now == last:
            return now
        last = now
    return last


def records(state_dir: str) -> dict[str, Any]:
    """Every record file, minus what names the writing process or the moment."""
    out = {}
    for root, _dirs, files in os.walk(state_dir):
        rel = os.path.relpath(root, state_dir)
        if rel == "config-cache":
            continue
        for f in files:
            if f.endswith(".json"):
                data = json.loads(Path(root, f).read_text())
                data.pop("writer", None)
                data.pop("created_at", None)
                out[os.path.join(rel.split(os.sep, 1)[-1], f)] = data
    return out


def served_by(stderr: str) -> tuple[str, str]:
    """('hot'|'full', the stderr without -X importtime's lines)."""
    lines = stderr.splitlines()
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in lines if ln.startswith("import time:")}
    rest = "\n".join(ln for ln in lines if not ln.startswith("import time:"))
    full = {"vmnet.ops", "vmnet.ifup"} & imported
    return ("full" if full else "hot" if "vmnet.hot" in imported else "neither"), rest


def run_up(ns: Netns, state_dir: str, config: str, vm: str,
           env: dict[str, str]) -> tuple[int, str, str, str]:
    argv = vmnet_argv(ns, state_dir, "up", vm, config=config)
    argv[1:1] = ["-X", "importtime"]
    e = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER", "VMNET_FAULT")}
    r = subprocess.run(argv, text=True, capture_output=True, env={**e, **env}, timeout=60)
    path, err = served_by(r.stderr)
    return r.returncode, r.stdout, err, path


def twice(setup: Callable[[Netns, str], None], act: Callable[[Netns, str, dict[str, str]],
                                                             tuple[Any, ...]]
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Set up two identical hosts; act with the hot path off, then on; what each shows."""
    seen = {}
    for mode, env in (("full", FULL), ("hot", {})):
        with netns("vmhot") as ns:
            state = f"/dev/shm/vmnet-test-hot-{os.getpid()}-{mode}"
            os.makedirs(state, exist_ok=False)
            try:
                setup(ns, state)
                result = act(ns, state, env)
                seen[mode] = {"result": result, "kernel": kernel_view(ns),
                              "records": records(state)}
            finally:
                subprocess.run(["rm", "-rf", state], check=False)
    return seen["full"], seen["hot"]


def config_file(tmp_path: Path, text: str) -> str:
    p = tmp_path / "vmnet.toml"
    p.write_text(text)
    return str(p)


def _warm(config: str, *vms: str) -> Callable[[Netns, str], None]:
    def setup(ns: Netns, state: str) -> None:
        for vm in vms:  # the full path: makes the bridges and stores the compiled config
            vmnet(ns, state, "up", vm, config=config, env=FULL, check=True)
    return setup


UP_CASES: dict[str, tuple[str | None, list[str], str, str]] = {
    # name: (config, VMs brought up first, VM under test, path expected with the hot path on)
    "default network": (None, ["warm"], "vm1", "hot"),
    "two networks, queues, owner, custom tap/mac/mtu/model": (TWO_NETS, ["warm"], "big",
                                                               "hot"),
    "unconfigured VM on the default network of a config": (TWO_NETS, ["warm", "vm0"], "vm9",
                                                            "hot"),
    "re-up of a VM that is up (declined)": (None, ["vm1"], "vm1", "full"),
    "first VM: the bridge is created (declined)": (None, [], "vm1", "full"),
}


@pytest.mark.parametrize("case", list(UP_CASES), ids=list(UP_CASES))
def test_up_same_as_full_path(case: str, tmp_path: Path) -> None:
    text, warm, vm, expect = UP_CASES[case]
    cfg = config_file(tmp_path, text) if text else empty_config()

    def act(ns: Netns, state: str, env: dict[str, str]) -> tuple[Any, ...]:
        return run_up(ns, state, cfg, vm, env)

    full, hot = twice(_warm(cfg, *warm), act)
    assert full["result"][3] == "full"
    assert hot["result"][3] == expect, hot["result"]
    assert full["result"][0] == 0, full["result"]
    assert hot["result"][:3] == full["result"][:3]
    assert hot["records"] == full["records"]
    assert hot["kernel"] == full["kernel"]


def test_up_refusals_are_the_full_paths(tmp_path: Path) -> None:
    """A NIC MTU that would lower an admin's bridge: the hot path declines, the full
    path refuses with its message; the host is the same either way."""
    cfg = config_file(tmp_path, ADMIN)

    def setup(ns: Netns, state: str) -> None:
        ns.ip("link", "add", "br-adm", "type", "bridge")
        ns.ip("link", "set", "br-adm", "mtu", "1500", "up")
        _warm(cfg, "warm")(ns, state)  # adopts br-adm: a bridge record, created=false

    def act(ns: Netns, state: str, env: dict[str, str]) -> tuple[Any, ...]:
        return run_up(ns, state, cfg, "low", env)

    full, hot = twice(setup, act)
    assert full["result"][0] != 0 and "would lower the MTU" in full["result"][2]
    assert hot["result"][:3] == full["result"][:3]
    assert hot["result"][3] == "full"
    assert hot["records"] == full["records"] and hot["kernel"] == full["kernel"]


def test_up_with_attached_uplink(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, UPLINK)

    def setup(ns: Netns, state: str) -> None:
        ns.ip("link", "add", "veth-up", "address", "02:00:00:00:01:01", "type", "veth",
              "peer", "name", "veth-peer", "address", "02:00:00:00:01:02")
        _warm(cfg, "warm")(ns, state)  # attaches the uplink

    def act(ns: Netns, state: str, env: dict[str, str]) -> tuple[Any, ...]:
        return run_up(ns, state, cfg, "vm2", env)

    full, hot = twice(setup, act)
    assert hot["result"][3] == "hot"
    assert hot["result"][:3] == full["result"][:3]
    assert hot["records"] == full["records"] and hot["kernel"] == full["kernel"]
    assert hot["kernel"]["veth-up"]["master"] == "br-up"


def test_edited_config_is_never_read_stale(ns: Netns, state_dir: str, tmp_path: Path) -> None:
    """The compiled config is named by the file's hash: an edit means a new entry."""
    p = tmp_path / "vmnet.toml"
    p.write_text('[networks.n]\nbridge = "br-n"\nmtu = 1500\n[defaults]\nnetwork = "n"\n')
    vmnet(ns, state_dir, "up", "a", config=str(p), check=True)
    p.write_text('[networks.n]\nbridge = "br-n"\nmtu = 1400\n[defaults]\nnetwork = "n"\n')
    rc, _out, err, path = run_up(ns, state_dir, str(p), "b", {})
    assert rc == 0, err
    assert path == "full"  # no entry for the new text yet
    assert ns.link("b-0")["mtu"] == 1400
    rc, _out, err, path = run_up(ns, state_dir, str(p), "c", {})
    assert (rc, path) == (0, "hot")
    assert ns.link("c-0")["mtu"] == 1400
    assert len(os.listdir(os.path.join(state_dir, "config-cache"))) == 2


def test_untrusted_cache_is_not_read(ns: Netns, state_dir: str, tmp_path: Path) -> None:
    cfg = empty_config()
    vmnet(ns, state_dir, "up", "a", config=cfg, check=True)
    os.chmod(os.path.join(state_dir, "config-cache"), 0o777)
    try:
        rc, _out, err, path = run_up(ns, state_dir, cfg, "b", {})
        assert (rc, path) == (0, "full"), err
    finally:
        os.chmod(os.path.join(state_dir, "config-cache"), 0o700)


ROLLBACK = r"""
import os, sys
from vmnet import entry, hot
from vmnet.kernel import tun
real = tun.create_persistent_tap
calls = []
def failing(name, **kw):
    calls.append(name)
    if len(calls) == 2:
        raise OSError(5, "injected")
    return real(name, **kw)
tun.create_persistent_tap = failing
req = entry.parse_lean(sys.argv[1:])
print("served" if hot.up(req, os.environ) is not None else "declined", calls)
"""


def test_failed_step_is_undone_before_declining(ns: Netns, state_dir: str,
                                                tmp_path: Path) -> None:
    """A kernel step that fails half-way: the hot path removes what it made and its
    record, then declines; the host is as before."""
    cfg = config_file(tmp_path, TWO_NETS)
    vmnet(ns, state_dir, "up", "warm", config=cfg, check=True)
    before = (kernel_view(ns), records(state_dir))
    argv = [sys.executable, "-c", ROLLBACK,
            *vmnet_argv(ns, state_dir, "up", "big", config=cfg)[3:]]
    r = subprocess.run(argv, text=True, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "declined ['big-data', 'big-1']"
    assert (kernel_view(ns), records(state_dir)) == before


IFUP_CASES: dict[str, tuple[str, str, str]] = {
    # name: (config, tap QEMU created, path expected)
    "configured VM's tap": (TWO_NETS, "big-data", "hot"),
    "default-named tap of an unconfigured VM": (TWO_NETS, "vm7-1", "hot"),
    "unknown tap: the default network": (TWO_NETS, "qemu-tap", "hot"),
}


@pytest.mark.parametrize("case", list(IFUP_CASES), ids=list(IFUP_CASES))
def test_ifup_same_as_full_path(case: str, tmp_path: Path) -> None:
    from vmnet.ifup import script_paths

    text, tap, expect = IFUP_CASES[case]
    cfg = config_file(tmp_path, text)
    ifup = script_paths()[0]

    def setup(ns: Netns, state: str) -> None:
        _warm(cfg, "warm")(ns, state)
        vmnet(ns, state, "up", "vm0", config=cfg, env=FULL, check=True)  # default network
        ns.ip("tuntap", "add", "dev", tap, "mode", "tap")
        ns.ip("link", "set", tap, "address", "02:00:00:00:00:77")  # not a random one

    def act(ns: Netns, state: str, env: dict[str, str]) -> tuple[Any, ...]:
        e = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER", "VMNET_FAULT")}
        e.update({"VMNET_STATE_DIR": state, "VMNET_CONFIG": cfg, **env})
        r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-X", "importtime",
                            ifup, tap], text=True, capture_output=True, env=e, timeout=60)
        path, err = served_by(r.stderr)
        return r.returncode, r.stdout, err, path

    full, hot = twice(setup, act)
    assert full["result"][:3] == (0, "", ""), full["result"]
    assert full["result"][3] == "full"
    assert hot["result"] == (*full["result"][:3], expect)
    assert hot["records"] == full["records"] and hot["kernel"] == full["kernel"]
    assert hot["kernel"][tap]["master"] is not None
