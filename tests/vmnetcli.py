"""Run the vmnet CLI as a separate process, against a test namespace and state dir."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from tests.nsutil import Netns

_EMPTY_CONFIG: str | None = None


def empty_config() -> str:
    """An empty config file, so tests never read the host's /etc/vmnet/vmnet.toml."""
    global _EMPTY_CONFIG
    if _EMPTY_CONFIG is None:
        fd, path = tempfile.mkstemp(prefix="vmnet-test-", suffix=".toml")
        os.close(fd)
        os.chmod(path, 0o644)  # readable by the non-root uids some tests run as
        atexit.register(os.unlink, path)
        _EMPTY_CONFIG = path
    return _EMPTY_CONFIG


def vmnet_argv(ns: Netns | None, state_dir: str, *args: str,
               config: str | None = None) -> list[str]:
    argv = [sys.executable, "-m", "vmnet", "--state-dir", state_dir,
            "--config", config or empty_config()]
    if ns is not None:
        argv += ["--netns", ns.name]
    return argv + list(args)


def vmnet(ns: Netns | None, state_dir: str, *args: str, env: dict[str, str] | None = None,
          check: bool = False, input: str | None = None, config: str | None = None,
          prefix: list[str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `vmnet ARGS` in a fresh process; `prefix` wraps it (unshare, setpriv, ...)."""
    argv = [*(prefix or []), *vmnet_argv(ns, state_dir, *args, config=config)]
    e = dict(os.environ)
    e.pop("SUDO_USER", None)
    e.pop("VMNET_FAULT", None)
    e.update(env or {})
    r = subprocess.run(argv, text=True, capture_output=True, env=e, input=input,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"vmnet {' '.join(args)} failed ({r.returncode}):\n"
                             f"{r.stdout}\n{r.stderr}")
    return r


def status_json(ns: Netns, state_dir: str, *args: str) -> dict[str, Any]:
    r = vmnet(ns, state_dir, "status", "--json", *args, check=True)
    return dict(json.loads(r.stdout))


def host_snapshot(ns: Netns, state_dir: str) -> dict[str, Any]:
    """Links (minus counters and timers), addresses and the state files of a namespace."""
    links = {}
    for name, link in ns.links().items():
        keep = {k: v for k, v in link.items() if k not in ("stats64", "stats", "linkinfo")}
        info = link.get("linkinfo", {})
        keep["kind"] = info.get("info_kind")
        data = dict(info.get("info_data", {}))
        for k in list(data):
            if "timer" in k:
                data.pop(k)
        keep["info_data"] = data
        links[name] = keep
    addrs = [(a["ifname"], [(i["local"], i["prefixlen"]) for i in a.get("addr_info", [])])
             for a in ns.addrs()]
    files = []
    for root, _dirs, names in os.walk(state_dir):
        for n in names:
            p = os.path.join(root, n)
            # config-cache/: the full path's compiled config for the hot path
            # (vmnet.confcache), kept while VMs come and go, like a .pyc.
            if n == "lock" or os.path.relpath(root, state_dir) == "config-cache":
                continue
            with open(p, "rb") as f:
                files.append((os.path.relpath(p, state_dir), f.read()))
    return {"links": links, "addrs": sorted(addrs), "state": sorted(files)}
