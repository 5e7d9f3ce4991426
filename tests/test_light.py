"""The one path stays light: starting a VM loads none of the heavy modules.

Each door that starts a VM (`vmnet up VM`, the qemu ifup script, the libvirt
hook at `prepare begin`) runs here as a whole process doing real work in a
throwaway namespace, and reports the modules it loaded.  These cost
milliseconds each on a path whose whole budget is ~15 ms, so none may appear:
typing, re, shlex, dataclasses, enum, inspect, json (its decoder imports re),
xml.etree, click, jinja2, pyroute2, tomllib (the parsed config is cached),
importlib, contextlib.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nsutil import Netns

pytestmark = pytest.mark.kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("typing", "re", "shlex", "dataclasses", "enum", "inspect", "json", "xml.etree",
         "click", "jinja2", "pyroute2", "tomllib", "importlib", "contextlib", "ctypes",
         "ipaddress", "logging", "subprocess", "uuid")

# Runs MODULE:FUNC as __main__ would, then reports the heavy modules it loaded.
PROBE = r"""
import sys
sys.path.insert(0, {root!r})
module, func, *argv = sys.argv[1:]
sys.argv = [module, *argv]
heavy = {heavy!r}
__import__(module)
code = 0
try:
    getattr(sys.modules[module], func)()
except SystemExit as e:
    code = e.code or 0
loaded = sorted(m for m in sys.modules if m in heavy or m.split(".")[0] in heavy)
sys.stderr.write("\nLOADED " + repr([code, loaded]) + "\n")
"""


def probe(ns: Netns, module: str, func: str, *argv: str, stdin: bytes | None = None,
          env: dict[str, str] | None = None) -> list[str]:
    code = PROBE.format(root=ROOT, heavy=HEAVY)
    r = subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-IS", "-c", code,
                        module, func, *argv], input=stdin, capture_output=True,
                       env={**os.environ, **(env or {})})
    last = r.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("LOADED "), r.stderr.decode()
    rc, loaded = eval(last[len("LOADED "):])  # our own repr of [int, list[str]]
    assert rc == 0, r.stderr.decode()
    return list(loaded)


@pytest.fixture
def public() -> Iterator[Path]:
    """A state directory dnsmasq can reach (the default network is NAT)."""
    from tests.world import public_tmpdir

    with public_tmpdir("vmnet-light-") as d:
        yield d


def test_vm_starts_load_nothing_heavy(ns: Netns, tmp_path: Path, public: Path) -> None:
    """Measured: a VM on a plain bridge (lan, --bridge), on the default NAT network once it
    is up (vm2: its address derived, its host files written, dnsmasq checked), through
    the ifup script and the hook."""
    state = str(public / "state")
    cfg = tmp_path / "vmnet.toml"
    cfg.write_text(f'[defaults]\ndata_dir = "{tmp_path}/data"\n'
                   '[networks.lan]\nbridge = "brl"\n[vms.web]\n[[vms.web.nics]]\n'
                   'network = "lan"\n')
    main = ("vmnet.cli.main", "main")
    # First runs may parse the config (tomllib) and make the bridge: not measured.
    probe(ns, *main, "--state-dir", state, "--config", str(cfg), "up", "warm")
    probe(ns, *main, "--state-dir", state, "--config", str(cfg), "up", "web")
    assert probe(ns, *main, "--state-dir", state, "--config", str(cfg), "up", "vm2") == []
    assert probe(ns, *main, "--state-dir", state, "--config", str(cfg), "up", "vm3",
                 "--bridge", "brl") == []
    # ifup: a tap QEMU made, found through the config
    ns.ip("tuntap", "add", "dev", "web2-0", "mode", "tap")
    ns.ip("tuntap", "add", "dev", "q1", "mode", "tap")
    assert probe(ns, "vmnet.integrations.qemu.ifup", "main_ifup", "q1",
                 env={"VMNET_STATE_DIR": state, "VMNET_CONFIG": str(cfg)}) == []
    assert ns.links()["q1"]["master"] == "vmnet0"
    # the hook at prepare begin, a domain that names one new VM
    xml = (b"<domain type='qemu'><name>d1</name>"
           b"<uuid>6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b</uuid><metadata>"
           b"<vmnet:vmnet xmlns:vmnet='urn:vmnet:libvirt:1'><vmnet:vm name='k1'/>"
           b"</vmnet:vmnet></metadata></domain>")
    assert probe(ns, "vmnet.daemon.libvirt_hook", "main", f"--state-dir={state}",
                 f"--config={cfg}", "d1", "prepare", "begin", "-", stdin=xml) == []
    assert "k1-0" in ns.links()
    st = json.loads(subprocess.run(
        ["ip", "netns", "exec", ns.name, sys.executable, "-m", "vmnet", "--state-dir", state,
         "--config", str(cfg), "status", "--json"], capture_output=True, check=True).stdout)
    assert {v["vm"] for v in st["vms"]} == {"warm", "web", "vm2", "vm3", "k1"}
    assert {n["ip"] is not None for v in st["vms"] if v["vm"] in ("warm", "vm2")
            for n in v["nics"]} == {True}
    subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-m", "vmnet",
                    "--state-dir", state, "--config", str(cfg), "down", "--all"],
                   capture_output=True, check=True)


def test_every_module_imports_on_its_own() -> None:
    """No import cycle at import time: each module of vmnet, first in a fresh interpreter."""
    mods = []
    for path in sorted(Path(ROOT, "vmnet").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts[-1] != "__main__":  # (runs the CLI)
            mods.append(".".join(parts))
    code = ("import sys, subprocess\n"
            "bad = []\n"
            "for m in sys.argv[1:]:\n"
            "    r = subprocess.run([sys.executable, '-c', f'import {m}'], capture_output=True)\n"
            "    if r.returncode: bad.append((m, r.stderr.decode()[-300:]))\n"
            "print(bad)\n")
    r = subprocess.run([sys.executable, "-c", code, *mods], capture_output=True, text=True,
                       check=True, cwd=ROOT)
    assert r.stdout.strip() == "[]", r.stdout
