"""vmnet tried as a new user would: flags where people put them, messages that send them the
right way, help that covers every setting, completion that knows their VMs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.nsutil import Netns
from tests.vmnetcli import cli, empty_config, vmnet


@pytest.mark.kernel
def test_global_flags_work_after_the_command(ns: Netns, tmp_path: Path) -> None:
    state = str(tmp_path / "s")
    r = subprocess.run(["ip", "netns", "exec", ns.name, *cli_argv(), "up", "vm1",
                        "--state-dir", state, "--config", empty_config()],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = cli(["status", "--json", "--netns", ns.name, "--state-dir", state, "--config",
             empty_config()])
    assert r.exit_code == 0 and json.loads(r.stdout)["vms"][0]["vm"] == "vm1"


def cli_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "vmnet"]


@pytest.mark.parametrize(("args", "code", "has", "lacks"), [
    (["up", "--", "-vm1"], 2, "starts with '-'", "Traceback"),
    (["up", "-vm1"], 2, "VM names may not start with '-'", "Traceback"),
    (["--state-dir", "/etc/passwd", "up", "vm1"], 1, "/etc/passwd is not a directory",
     "remove"),
    (["--state-dir", "/nonexistent-vmnet/x", "up", "vm1"], 1,
     "its parent /nonexistent-vmnet does not exist", "Traceback"),
    (["--state-dir", "/etc/passwd/x", "up", "vm1"], 1, "Not a directory", "parent"),
    (["up", "vm1", "--user", "²"], 1, "unknown user '²'", "Traceback"),
    (["up", "vm1", "--user", "١٢٣"], 1, "unknown user", "uid 123"),
    (["--lock-timeout", "nan", "up", "vm1"], 2, "--lock-timeout", "Traceback"),
    (["--lock-timeout", "1e9", "up", "vm1"], 2, "ASCII decimal", "Traceback"),
], ids=["dash-after-dashdash", "dash-as-option", "state-dir-a-file", "state-dir-no-parent",
        "state-dir-under-a-file", "superscript-uid", "arabic-digits-uid", "timeout-nan",
        "timeout-exponent"])
def test_messages_send_people_the_right_way(args: list[str], code: int, has: str,
                                            lacks: str) -> None:
    r = cli(args, env={"VMNET_CONFIG": "", "SUDO_USER": None})
    assert r.exit_code == code, r.output
    assert has in r.stderr and lacks not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "None" not in r.stderr


def test_help_gives_exit_codes_and_every_command() -> None:
    r = cli(["--help"])
    assert r.exit_code == 0
    for word in ("exit status:", "bad input: a flag, the config file", "missing privilege",
                 "up", "down", "completion", "config"):
        assert word in r.stdout


def test_the_example_config_parses_and_covers_every_setting() -> None:
    from vmnet.config import _NETWORK_KEYS, _NIC_KEYS, _VM_KEYS, parse_config

    text = cli(["config", "example"]).stdout
    cfg = parse_config(text, "example")
    assert set(cfg.networks) == {"default", "bare", "lan", "lab", "cloud"}
    assert set(cfg.vms) == {"web"}
    keys = {line.split("=")[0].strip() for line in text.splitlines()
            if "=" in line and not line.lstrip().startswith("#")}
    assert (_NETWORK_KEYS | _VM_KEYS - {"nics"} | _NIC_KEYS | {"network", "data_dir"}) <= keys


@pytest.mark.kernel
def test_completion_knows_commands_options_and_vms(ns: Netns, tmp_path: Path) -> None:
    state = str(tmp_path / "s")
    vmnet(ns, state, "up", "webby", check=True)
    script = cli(["completion", "bash"]).stdout
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    base = ["--netns", ns.name, "--state-dir", state, "--config", "/dev/null",
            "__complete", "bash", "--"]
    r = cli([*base, "vmnet", "sta"])
    assert r.stdout.split() == ["status"]
    r = cli([*base, "vmnet", "status", "we"])
    assert r.stdout.split() == ["webby"]
    r = cli([*base, "vmnet", "qemu-args", "webby", "--mode", ""])
    assert r.stdout.split() == ["ifname", "script"]
