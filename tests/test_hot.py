"""The hot path (vmnet.hot) against the full path, on real namespaces.

Each scenario is run twice from the same starting host, in two namespaces:
once with the hot path off (VMNET_HOT=0) and once with it on.  Everything a
user or the kernel can see must be the same: exit status, output, the
records, and every attribute the kernel reports of every link.  Each
scenario also says which path served it (seen in `-X importtime`: the full
path imports vmnet.engine.ops / vmnet.integrations.qemu.ifup, the hot path does not), so a hot path
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
    full = {"vmnet.engine.ops", "vmnet.integrations.qemu.ifup"} & imported
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


def test_up_through_sudo_gives_the_tap_to_the_invoking_user(tmp_path: Path) -> None:
    """No user configured: the owner is $SUDO_USER, on both paths."""
    cfg = empty_config()

    def act(ns: Netns, state: str, env: dict[str, str]) -> tuple[Any, ...]:
        return run_up(ns, state, cfg, "vm2", {**env, "SUDO_USER": "nobody"})

    full, hot = twice(_warm(cfg, "warm"), act)
    assert hot["result"][3] == "hot"
    assert hot["result"][:3] == full["result"][:3]
    assert "(owner nobody," in hot["result"][1]
    assert hot["records"] == full["records"] and hot["kernel"] == full["kernel"]
    assert hot["kernel"]["vm2-0"]["linkinfo"]["info_data"]["user"] == "nobody"


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
from vmnet import hot
from vmnet.cli import entry
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
    from vmnet.integrations.qemu.ifup import script_paths

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


# -- the libvirt hook at `prepare begin` ------------------------------------------------
UUID = "3f2c1a9e-5b7d-4c1e-9a0b-2d4e6f8a0b1c"
DOMAIN = ("<domain type='qemu'><name>d1</name><uuid>" + UUID + "</uuid>"
          "<memory>131072</memory><os><type arch='x86_64'>hvm</type></os></domain>")


def rendered_domain(tmp_path: Path, cfg: str, vm: str) -> bytes:
    """A domain with `vmnet libvirt-xml VM --domain FILE`'s interfaces and metadata."""
    base = tmp_path / "base.xml"
    base.write_text(DOMAIN)
    with netns("vmhotx") as ns:
        state = str(tmp_path / "render-state")
        r = vmnet(ns, state, "libvirt-xml", vm, "--domain", str(base), config=cfg, check=True)
    return r.stdout.encode()


def run_hook(ns: Netns, state: str, cfg: str, xml: bytes,
             env: dict[str, str]) -> tuple[int, str, str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER", "VMNET_FAULT")}
    r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-X", "importtime",
                        "-m", "vmnet.integrations.libvirt.hook", f"--state-dir={state}", f"--config={cfg}", "d1",
                        "prepare", "begin", "-"], input=xml, capture_output=True,
                       env={**e, **env}, timeout=60)
    path, err = served_by(r.stderr.decode())
    return r.returncode, r.stdout.decode(), err, path


HOOK_CASES: dict[str, tuple[str, str, str]] = {
    # name: (config, VM the domain names, path expected)
    "configured VM, two networks": (TWO_NETS, "big", "hot"),
    "unconfigured VM": (TWO_NETS, "vm5", "hot"),
}


@pytest.mark.parametrize("case", list(HOOK_CASES), ids=list(HOOK_CASES))
def test_hook_prepare_same_as_full_path(case: str, tmp_path: Path) -> None:
    text, vm, expect = HOOK_CASES[case]
    cfg = config_file(tmp_path, text)
    xml = rendered_domain(tmp_path, cfg, vm)

    def setup(ns: Netns, state: str) -> None:
        _warm(cfg, "warm", "vm0")(ns, state)

    def act(ns: Netns, state: str, env: dict[str, str]) -> tuple[Any, ...]:
        return run_hook(ns, state, cfg, xml, env)

    full, hot = twice(setup, act)
    assert full["result"] == (0, "", "", "full"), full["result"]
    assert hot["result"] == (0, "", "", expect)
    assert hot["records"] == full["records"] and hot["kernel"] == full["kernel"]
    [rec] = [r for k, r in hot["records"].items() if k == f"vms/{vm}.json"]
    assert (rec["mode"], rec["domain_uuid"]) == ("hook", UUID)


def test_hook_declines_a_stale_domain(tmp_path: Path) -> None:
    """XML rendered from another config (the MAC changed since): the full path's refusal."""
    cfg = config_file(tmp_path, TWO_NETS)
    xml = rendered_domain(tmp_path, cfg, "big").replace(b"52:54:00:00:00:b1",
                                                        b"52:54:00:00:00:b2")

    def act(ns: Netns, state: str, env: dict[str, str]) -> tuple[Any, ...]:
        return run_hook(ns, state, cfg, xml, env)

    full, hot = twice(_warm(cfg, "warm"), act)
    assert full["result"][0] == 1 and "does not match vmnet's config" in full["result"][2]
    assert hot["result"] == (*full["result"][:3], "full")
    assert hot["records"] == full["records"] and hot["kernel"] == full["kernel"]


META = "<metadata><v:vmnet xmlns:v='urn:vmnet:libvirt:1'>{}</v:vmnet></metadata>"
IFACE = ("<interface type='{}'><mac address='{}'/><target dev='{}'/><source bridge='{}'/>"
         "<alias name='{}'/></interface>")
XMLS = {
    "plain": DOMAIN,
    "vmnet VM": DOMAIN.replace("</domain>", META.format("<v:vm name='vm1'/>") + "</domain>"),
    "interfaces": DOMAIN.replace("</domain>", "<devices>" + IFACE.format(
        "ethernet", "52:54:00:AA:bb:01", "vm1-0", "", "ua-vmnet-vm1-0") + IFACE.format(
        "bridge", "52:54:00:00:00:02", "x", "br0", "ua-other") + "</devices><devices>"
        + IFACE.format("bridge", "52:54:00:00:00:03", "y", "br1", "ua-vmnet-y") + "</devices>"
        + "</domain>"),
    "name with a child": DOMAIN.replace("<name>d1</name>", "<name> d1 <b/>tail</name>"),
    "two names, two metadata": DOMAIN.replace(
        "<name>d1</name>", "<name>d1</name><name>d2</name>" + META.format(
            "<v:vm name='a'/>") + "<metadata>" + META.format("<v:vm name='b'/>") + "</metadata>"),
    "vmnet element in no namespace": DOMAIN.replace(
        "</domain>", "<metadata><vmnet><vm name='a'/></vmnet></metadata></domain>"),
    "comment and PI": DOMAIN.replace("<name>", "<!-- c --><?pi x?><name>"),
    "interface children twice": DOMAIN.replace("</domain>", "<devices><interface type='e'>"
                                               "<target dev='a'/><target dev='b'/></interface>"
                                               "</devices></domain>"),
    "no uuid": DOMAIN.replace(f"<uuid>{UUID}</uuid>", ""),
    "latin-1": ("<?xml version='1.0' encoding='ISO-8859-1'?>" + DOMAIN.replace(
        "d1", "d\xe9")).encode("latin-1"),
}


@pytest.mark.parametrize("name", list(XMLS), ids=list(XMLS))
def test_hot_xml_reader_reads_what_domainxml_reads(name: str) -> None:
    """The hook's hot path reads a domain with expat alone; wherever it does not decline,
    it must see exactly what vmnet.integrations.libvirt.domainxml (ElementTree + defusedxml) sees."""
    from vmnet import hot
    from vmnet.integrations.libvirt import domainxml

    data = XMLS[name]
    raw = data.encode() if isinstance(data, str) else data
    ref = domainxml.read_domain(raw)
    try:
        got = hot.read_domain(raw)
    except hot.Decline:
        pytest.fail("declined a document the full path reads without trouble")
    assert got.name == ref.name and got.uuid == ref.uuid
    assert got.vms == [e.name for e in ref.vms]
    assert [(i.type, i.alias, i.mac, i.target_dev, i.bridge) for i in got.interfaces] == \
        [(i.type, i.alias, i.mac, i.target_dev, i.bridge) for i in ref.interfaces]


@pytest.mark.parametrize("data", [
    DOMAIN.replace("<domain", "<!DOCTYPE domain [<!ENTITY x 'y'>]><domain"),
    DOMAIN.replace("</domain>", META.format("<v:vm name='a'><v:mtu>9000</v:mtu></v:vm>")
                   + "</domain>"),
    DOMAIN.replace(UUID, UUID.upper()),
    DOMAIN[:-5],
    "<network/>",
], ids=["dtd", "overrides", "uuid upper case", "truncated", "not a domain"])
def test_hot_xml_reader_declines(data: str) -> None:
    from vmnet import hot

    with pytest.raises(hot.Decline):
        hot.read_domain(data.encode())


def test_launchers_serve_every_command(ns: Netns, state_dir: str, tmp_path: Path) -> None:
    """The commands as scripts/install installs them (vmnet.cli.launchers: python -IS)."""
    from vmnet.cli import launchers

    bindir = tmp_path / "bin"
    bindir.mkdir()
    paths = launchers.write(str(bindir))
    assert sorted(os.path.basename(p) for p in paths) == sorted(launchers.COMMANDS)
    for p in paths:
        assert Path(p).read_text().startswith(f"#!{os.path.abspath(sys.executable)} -IS\n")
        assert os.access(p, os.X_OK)
    cfg = empty_config()
    e = {k: v for k, v in os.environ.items() if k not in ("SUDO_USER", "VMNET_FAULT")}
    e["PYTHONPATH"] = "/nonexistent"  # -I: ignored
    base = [str(bindir / "vmnet"), "--netns", ns.name, "--state-dir", state_dir,
            "--config", cfg]
    for vm in ("a", "b"):  # a: the full path (no compiled config yet); b: the hot path
        r = subprocess.run([*base, "up", vm], capture_output=True, text=True, env=e)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(f"{vm}: tap {vm}-0 on bridge vmnet0")
        assert ns.link(f"{vm}-0")["master"] == "vmnet0"
    r = subprocess.run([str(bindir / "vmnet"), "--help"], capture_output=True, text=True,
                       env=e)
    assert r.returncode == 0 and "Usage:" in r.stdout  # click, through the same launcher
    ns.ip("tuntap", "add", "dev", "qt0", "mode", "tap")
    r = subprocess.run(["ip", "netns", "exec", ns.name, str(bindir / "vmnet-qemu-ifup"), "qt0"],
                       capture_output=True, text=True,
                       env={**e, "VMNET_STATE_DIR": state_dir, "VMNET_CONFIG": cfg})
    assert r.returncode == 0, r.stderr
    assert ns.link("qt0")["master"] == "vmnet0"
    r = subprocess.run(["ip", "netns", "exec", ns.name, str(bindir / "vmnet-qemu-ifdown"),
                        "qt0"], capture_output=True, text=True, env=e)
    assert r.returncode == 0, r.stderr
    assert "master" not in ns.link("qt0")
    r = subprocess.run([str(bindir / "vmnet-libvirt-hook"), "d", "started", "begin", "-"],
                       input="<domain/>", capture_output=True, text=True, env=e)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    r = subprocess.run([*base, "down", "a", "b"], capture_output=True, text=True, env=e)
    assert r.returncode == 0, r.stderr
    assert set(ns.links()) == {"lo", "qt0"}


KILLED = r"""
import os, signal, sys
from vmnet import hot
from vmnet.cli import entry
from vmnet.kernel import tun
real = tun.create_persistent_tap
calls = []
def dying(name, **kw):
    calls.append(name)
    if len(calls) == 2:  # the record says "applying", the first tap is made and attached
        os.kill(os.getpid(), signal.SIGKILL)
    return real(name, **kw)
tun.create_persistent_tap = dying
hot.up(entry.parse_lean(sys.argv[1:]), os.environ)
"""


def test_killed_mid_way_leaves_what_gc_rolls_back(ns: Netns, state_dir: str,
                                                  tmp_path: Path) -> None:
    """SIGKILL inside the hot path, between two taps: as for the full path, the record
    written first lets `gc` roll the half-made VM back; nothing else is touched."""
    cfg = config_file(tmp_path, TWO_NETS)
    vmnet(ns, state_dir, "up", "warm", config=cfg, check=True)
    before = (kernel_view(ns), records(state_dir))
    argv = [sys.executable, "-c", KILLED,
            *vmnet_argv(ns, state_dir, "up", "big", config=cfg)[3:]]
    r = subprocess.run(argv, text=True, capture_output=True, timeout=60)
    assert r.returncode == -9, r.stderr
    assert ns.link("big-data") is not None  # made, persistent, on its bridge
    assert records(state_dir)["vms/big.json"]["phase"] == "applying"
    r = vmnet(ns, state_dir, "gc", config=cfg, check=True)
    assert "big: rolled back" in r.stdout
    assert (kernel_view(ns), records(state_dir)) == before


def test_hook_alone_compiles_the_config(ns: Netns, state_dir: str, tmp_path: Path) -> None:
    """A host that only ever runs the hook (no `vmnet up`, no ifup): its first `prepare`
    parses the config and stores it compiled, so the next domain's is served hot."""
    cfg = config_file(tmp_path, TWO_NETS)
    ns.ip("link", "add", "vmnet0", "type", "bridge")  # an admin's bridge: the first
    first = rendered_domain(tmp_path, cfg, "vm5")     # prepare adopts it (full path)
    second = rendered_domain(tmp_path, cfg, "vm6").replace(UUID.encode(),
                                                            UUID.replace("3f", "4f").encode())
    assert run_hook(ns, state_dir, cfg, first, {})[::3] == (0, "full")
    assert os.listdir(os.path.join(state_dir, "config-cache"))
    rc, _out, err, path = run_hook(ns, state_dir, cfg, second, {})
    assert (rc, path) == (0, "hot"), err
    assert ns.link("vm6-0")["master"] == "vmnet0"
    rec = records(state_dir)["vms/vm6.json"]
    assert (rec["mode"], rec["domain_uuid"]) == ("hook", UUID.replace("3f", "4f"))
