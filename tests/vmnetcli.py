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


# The tests of taps, bridges, records and doors run on vmnet0 as a plain bridge (the
# built-in default before it became NAT); the nat/isolated tests give their own config.
BRIDGE_DEFAULT = '[networks.default]\nbridge = "vmnet0"\n'


def empty_config() -> str:
    """The tests' config file (so they never read the host's /etc/vmnet/vmnet.toml): the
    `default` network is the plain bridge vmnet0."""
    global _EMPTY_CONFIG
    if _EMPTY_CONFIG is None:
        fd, path = tempfile.mkstemp(prefix="vmnet-test-", suffix=".toml")
        os.write(fd, BRIDGE_DEFAULT.encode())
        os.close(fd)
        os.chmod(path, 0o644)  # readable by the non-root uids some tests run as
        atexit.register(os.unlink, path)
        _EMPTY_CONFIG = path
    return _EMPTY_CONFIG


FAULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "faults.py")


def vmnet_argv(ns: Netns | None, state_dir: str, *args: str,
               config: str | None = None, faults: bool = False) -> list[str]:
    """`python -m vmnet ...`; with `faults`, through tests/faults.py (same argv length)."""
    head = [sys.executable, FAULTS, "vmnet"] if faults else [sys.executable, "-m", "vmnet"]
    argv = [*head, "--state-dir", state_dir, "--config", config or empty_config()]
    if ns is not None:
        argv += ["--netns", ns.name]
    return argv + list(args)


def vmnet(ns: Netns | None, state_dir: str, *args: str, env: dict[str, str] | None = None,
          check: bool = False, input: str | None = None, config: str | None = None,
          prefix: list[str] | None = None,
          timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `vmnet ARGS` in a fresh process; `prefix` wraps it (unshare, setpriv, ...)."""
    e = dict(os.environ)
    e.pop("SUDO_USER", None)
    e.pop("VMNET_FAULT", None)
    e.update(env or {})
    faults = "VMNET_FAULT" in e or "VMNET_FAULT_TRACE" in e
    argv = [*(prefix or []), *vmnet_argv(ns, state_dir, *args, config=config, faults=faults)]
    r = subprocess.run(argv, text=True, capture_output=True, env=e, input=input,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"vmnet {' '.join(args)} failed ({r.returncode}):\n"
                             f"{r.stdout}\n{r.stderr}")
    return r


def replace_file(path: str | os.PathLike[str], text: str) -> None:
    """Put a state file in place the way vmnet writes its own (a new file renamed over
    the old), for tests that tamper with records: with a vmnetd serving, its watcher
    runs gc after a namespace's first request, and gc removes a record it catches
    half-written (truncated by an in-place write) as corrupt."""
    tmp = f"{os.fspath(path)}.test-tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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
            # parsed-config/: the config file's parse (vmnet.config.cache), kept while
            # VMs come and go, like a .pyc.
            if n in ("lock", "vmnetd.sock", "watch.json") or \
                    os.path.relpath(root, state_dir) == "parsed-config":
                continue
            if os.path.islink(p):  # the state index: VM names as symlink targets
                files.append((os.path.relpath(p, state_dir), b"-> " + os.fsencode(
                    os.readlink(p))))
                continue
            with open(p, "rb") as f:
                files.append((os.path.relpath(p, state_dir), f.read()))
    return {"links": links, "addrs": sorted(addrs), "state": sorted(files)}


class CliResult:
    """A finished `vmnet` process: exit code, stdout, stderr, and both together."""

    def __init__(self, r: subprocess.CompletedProcess[str]) -> None:
        self.exit_code = r.returncode
        self.stdout = r.stdout
        self.stderr = r.stderr
        self.output = r.stdout + r.stderr


def cli(args: list[str], *, input: str | None = None,
        env: dict[str, str | None] | None = None) -> CliResult:
    """`python -m vmnet ARGS` in a fresh process (the real entry point, no test runner)."""
    e = dict(os.environ)
    for k, val in (env or {}).items():
        if val is None:
            e.pop(k, None)
        else:
            e[k] = val
    return CliResult(subprocess.run([sys.executable, "-m", "vmnet", *args], text=True,
                                    capture_output=True, env=e, input=input, timeout=120))
