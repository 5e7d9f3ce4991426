"""Rendering of QEMU options: golden argv, QEMU's ',,' escaping, `vmnet qemu-args`.

No kernel, no root: everything here is pure rendering and CLI parsing.
Set VMNET_UPDATE_GOLDEN=1 to rewrite the golden files after a deliberate change.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vmnetcli import cli as run_cli
from vmnet.config import Overrides, parse_config, resolve_vm
from vmnet.integrations.qemu import run as engine
from vmnet.integrations.qemu.ifup import script_paths
from vmnet.model import Vm
from vmnet.render.qemu import escape, netdev, split_opts

GOLDEN = Path(__file__).parent / "golden" / "qemu"
ENV = {"PATH": os.environ.get("PATH", "")}  # no SUDO_USER: the invoking user owns taps

CONFIG = """
[networks.lab]
bridge = "br-lab"
mtu = 9000

[vms.comma]
[[vms.comma.nics]]
network = "lab"
tap = "t,x"
mac = "52:54:00:00:00:aa"
model = "e1000"
"""


def golden(name: str, args: list[str]) -> None:
    """Compare `args` (one per line) with tests/golden/qemu/NAME.args."""
    path = GOLDEN / f"{name}.args"
    text = "".join(f"{a}\n" for a in args)
    if os.environ.get("VMNET_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text, f"{path} differs; VMNET_UPDATE_GOLDEN=1 rewrites it"


@pytest.fixture
def cfg_path(tmp_path: Path) -> str:
    p = tmp_path / "vmnet.toml"
    p.write_text(CONFIG)
    return str(p)


def cli(cfg_path: str, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    r = run_cli(["--state-dir", str(tmp_path / "state"), "--config", cfg_path, *args],
                env={"SUDO_USER": None})
    return r.exit_code, r.stdout, r.stderr


def vm(name: str = "vm1", **ov: object) -> Vm:
    return resolve_vm(parse_config(CONFIG), name, Overrides(**ov), env=ENV)


# -- golden argv of `vmnet qemu-args` -------------------------------------
QEMU_ARGS_CASES = [
    ("ifname-default", []),
    ("ifname-2nics-4queues-mac", ["--nics", "2", "--queues", "4", "--mac", "52:54:00:aa:00:01"]),
    ("ifname-no-vnet-hdr-e1000", ["--no-vnet-hdr", "--model", "e1000"]),
    ("ifname-netdev-only", ["--netdev-only", "--nics", "2"]),
    ("ifname-comma-tap", ["--vm", "comma"]),
    ("script-2queues", ["--mode", "script", "--queues", "2"]),
]


@pytest.mark.parametrize(("name", "flags"), QEMU_ARGS_CASES, ids=[c[0] for c in QEMU_ARGS_CASES])
def test_qemu_args_golden(name: str, flags: list[str], cfg_path: str, tmp_path: Path) -> None:
    vm_name = "vm1"
    if flags[:1] == ["--vm"]:
        vm_name, flags = flags[1], flags[2:]
    code, out, err = cli(cfg_path, tmp_path, "qemu-args", vm_name, *flags)
    assert code == 0, err
    words = shlex.split(out)
    code, js, err = cli(cfg_path, tmp_path, "qemu-args", vm_name, *flags, "--json")
    assert code == 0, err
    data = json.loads(js)
    assert data["args"] == words  # the shell words and --json say the same
    ifup, ifdown = script_paths()
    golden(f"qemu-args-{name}",
           [w.replace(ifup, "@IFUP@").replace(ifdown, "@IFDOWN@") for w in words])
    assert not (tmp_path / "state").exists()  # qemu-args changes nothing


def test_qemu_args_json_describes_nics(cfg_path: str, tmp_path: Path) -> None:
    code, out, _ = cli(cfg_path, tmp_path, "qemu-args", "comma", "--json", "--mode", "script")
    assert code == 0
    data = json.loads(out)
    ifup, ifdown = script_paths()
    assert (data["vm"], data["mode"], data["script"], data["downscript"]) == (
        "comma", "script", ifup, ifdown)
    assert data["nics"] == [{"index": 0, "netdev": "net0", "tap": "t,x",
                             "mac": "52:54:00:00:00:aa", "queues": 1, "bridge": "br-lab",
                             "model": "e1000"}]
    opts = dict(split_opts(data["args"][1]))
    assert opts["ifname"] == "t,x"
    assert opts["script"] == ifup and opts["downscript"] == ifdown


def test_script_paths_are_absolute_executables() -> None:
    for p in script_paths():
        assert os.path.isabs(p) and os.access(p, os.X_OK)


@pytest.mark.parametrize("flag", [["--bridge", "br9"], ["--mtu", "1400"], ["--user", "0"],
                                  ["--group", "0"], ["--uplink", "eth9"],
                                  ["--mac", "52:54:00:00:00:01"]],
                         ids=["bridge", "mtu", "user", "group", "uplink", "mac"])
def test_script_mode_refuses_flags_the_script_cannot_see(flag: list[str], cfg_path: str,
                                                         tmp_path: Path) -> None:
    code, out, err = cli(cfg_path, tmp_path, "qemu-args", "vm1", "--mode", "script", *flag)
    assert code == 2 and out == ""
    assert f"{flag[0]} cannot reach the ifup script" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("args", [["qemu-args", "vm/1"], ["qemu-args", "vm1", "--queues", "0"],
                                  ["qemu-args", "vm1", "--mac", "01:00:00:00:00:01"]],
                         ids=["bad-vm-name", "queues-0", "multicast-mac"])
def test_qemu_args_bad_input(args: list[str], cfg_path: str, tmp_path: Path) -> None:
    code, out, err = cli(cfg_path, tmp_path, *args)
    assert code == 2 and out == "" and err.startswith("vmnet: error: ")


# -- golden argv of `vmnet run` (the fd form) -------------------------------
RUN_CASES = [
    ("fd", {}, {0: [5]}, {}, False),
    ("fds-2queues", {"queues": 2}, {0: [5, 6]}, {}, False),
    ("fd-vhost", {}, {0: [5]}, {0: [9]}, False),
    ("fds-vhostfds-2nics", {"queues": 2, "nics": 2}, {0: [5, 6], 1: [7, 8]},
     {0: [9, 10], 1: [11, 12]}, False),
    ("netdev-only-no-vnet-hdr", {"nics": 2, "vnet_hdr": False}, {0: [5], 1: [6]}, {}, True),
]


@pytest.mark.parametrize(("name", "ov", "fds", "vhost", "netdev_only"), RUN_CASES,
                         ids=[c[0] for c in RUN_CASES])
def test_run_argv_golden(name: str, ov: dict[str, object], fds: dict[int, list[int]],
                         vhost: dict[int, list[int]], netdev_only: bool) -> None:
    user = ["qemu-system-x86_64", "-accel", "tcg", "-m", "128"]
    argv = engine.qemu_argv(vm(**ov), user, fds, vhost, netdev_only=netdev_only)
    assert argv[:len(user)] == user  # the user's command comes first, untouched
    golden(f"run-{name}", argv[len(user):])
    for word in argv[len(user):]:
        if word.startswith("tap,"):
            keys = [k for k, _ in split_opts(word)]
            # QEMU rejects these with fd=/fds= ("invalid with fd="); vhost only with fds
            assert not {"vnet_hdr", "ifname", "script", "queues"} & set(keys)
            assert ("vhost" in keys) == bool(vhost)


# -- escaping ------------------------------------------------------------
@given(st.text())
def test_escape_round_trip(value: str) -> None:
    assert split_opts(f"tap,k={escape(value)},z=1") == [("tap", ""), ("k", value), ("z", "1")]


@pytest.mark.parametrize(("value", "escaped"), [("a,b", "a,,b"), (",", ",,"), ("a,,", "a,,,,"),
                                                ("plain", "plain"), ("", "")],
                         ids=["inner", "only", "trailing-double", "plain", "empty"])
def test_escape_table(value: str, escaped: str) -> None:
    assert escape(value) == escaped


def test_netdev_round_trip_of_comma_values() -> None:
    nic = vm("comma").nics[0]
    [flag, opt] = netdev(nic, script="/opt/a,b/ifup", downscript="/opt/a,b/ifdown")
    assert flag == "-netdev"
    assert dict(split_opts(opt)) == {"tap": "", "id": "net0", "ifname": "t,x",
                                     "script": "/opt/a,b/ifup", "downscript": "/opt/a,b/ifdown",
                                     "vnet_hdr": "on"}


# -- pieces of the run engine that need no kernel ----------------------------
@pytest.mark.parametrize(("rc", "status"), [(0, 0), (3, 3), (-9, 137), (-15, 143)],
                         ids=["ok", "error", "sigkill", "sigterm"])
def test_exit_status(rc: int, status: int) -> None:
    assert engine.exit_status(rc) == status


IDENTITY_CASES = [
    ("root-vm-stays-root", {"user": "0"}, {}, None),
    ("nobody", {"user": "nobody"}, {}, engine.Identity(65534, 65534, (65534,))),
    ("unknown-uid-gets-nogroup", {"user": "4711"}, {}, engine.Identity(4711, 65534, (65534,))),
    ("group-added", {"user": "nobody", "group": "4242"}, {},
     engine.Identity(65534, 4242, (4242,))),
    ("group-only-runs-as-nobody", {"group": "4242"}, {}, engine.Identity(65534, 4242, (4242,))),
    ("group-only-sudo-user", {"group": "4242"}, {"SUDO_USER": "nobody"},
     engine.Identity(65534, 4242, (4242,))),
]


@pytest.mark.parametrize(("name", "ov", "env", "want"), IDENTITY_CASES,
                         ids=[c[0] for c in IDENTITY_CASES])
def test_qemu_identity(name: str, ov: dict[str, str], env: dict[str, str],
                       want: engine.Identity | None) -> None:
    model = resolve_vm(parse_config(""), "vm1", Overrides(**ov), env={**ENV, **env})
    assert engine.qemu_identity(model, {**ENV, **env}, euid=0) == want
    assert engine.qemu_identity(model, {**ENV, **env}, euid=1000) is None  # cannot switch


def test_open_vhost_only_when_the_device_exists(tmp_path: Path) -> None:
    assert engine.open_vhost(str(tmp_path / "vhost-net"), 2) == []
    fds = engine.open_vhost("/dev/null", 3)  # any openable node stands in for the device
    try:
        assert len(fds) == 3 and len(set(fds)) == 3
    finally:
        engine.close_fds(fds)


def test_find_binary(tmp_path: Path) -> None:
    assert engine.find_binary("sh", {"PATH": "/usr/bin:/bin"}).endswith("/sh")
    with pytest.raises(engine.NotFoundError, match="not found in PATH"):
        engine.find_binary("qemu-system-nonexistent", {"PATH": str(tmp_path)})
    f = tmp_path / "qemu"
    f.write_text("")
    with pytest.raises(engine.NotFoundError, match="not executable"):
        engine.find_binary(str(f), {})
