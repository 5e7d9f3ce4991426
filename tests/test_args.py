"""vmnet.cli.args, the one argument parser: over a sample table shaped like vmnet's own.

Pure (no kernel): parse, errors, help, completion candidates, the generated shell
scripts (`bash -n`, `zsh -n`, `fish --no-execute`, and one real bash round trip), and
the import cost (a fresh interpreter must not import typing, re, click, ...).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmnet.cli.args import (
    DIRS,
    FILES,
    HELP_NAMES,
    SHELLS,
    VERSION_NAME,
    Arg,
    Command,
    Opt,
    Parsed,
    Program,
    UsageError,
    complete,
    complete_command,
    completion_script,
    help_text,
    parse,
)
from vmnet.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def whole_number(text: str, what: str) -> object:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{what}: {text!r} is not a whole number") from None


def seconds(text: str, what: str) -> object:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{what}: {text!r} is not a number of seconds") from None


VM_ALL = Arg("VM", dest="vms", nargs="*", complete="vm", help="A VM of the config file.")
GLOBALS = (
    Opt("--netns", kind="value", metavar="NAME",
        help="Work inside this named network namespace."),
    Opt("--state-dir", kind="value", metavar="DIR", default="/run/vmnet", env="VMNET_STATE_DIR",
        complete="dir", help="Where vmnet keeps its records."),
    Opt("--config", kind="value", metavar="PATH", env="VMNET_CONFIG", complete="file",
        help="TOML config (default /etc/vmnet/vmnet.toml)."),
    Opt("--lock-timeout", kind="value", metavar="SECONDS", parse=seconds, default=30.0,
        help="Seconds to wait for another vmnet command in this namespace."),
    Opt("-v", "--verbose", help="Log each kernel change as `ip` would."),
)
UP_HELP = """Create VM's taps (and its bridge if missing), owned by its user.

    Each NIC of the VM gets a tap on its network's bridge; an existing
    record makes this a no-op, so it is safe to repeat from a unit file or a
    provisioning script that runs at every boot of the host.

    Example:
      vmnet up vm1 --mtu 9000
"""
COMMANDS = (
    Command("up", UP_HELP, args=(VM_ALL,), target="vmnet.cli.commands:up", opts=(
        Opt("--all", dest="all_vms", help="Every VM in the config file."),
        Opt("--dry-run", help="Print the planned steps as `ip` commands."),
        Opt("--bridge", kind="value", metavar="NAME", complete="network",
            help="Bridge for every NIC."),
        Opt("--mac", dest="macs", kind="multi", metavar="MAC",
            help="Guest MAC (repeat for NIC 1, 2, ...)."),
        Opt("--mtu", kind="value", parse=whole_number, help="MTU of the taps."),
        Opt("--queues", kind="value", metavar="Q", parse=whole_number,
            help="Queues per NIC (1..256)."))),
    Command("down", "Remove VM's taps, and bridges vmnet made that nothing uses any more.",
            args=(VM_ALL,), target="vmnet.cli.commands:down", opts=(
                Opt("--all", dest="all_vms", help="Every VM vmnet has a record of."),
                Opt("--force", help="Remove taps even while a process holds them."),
                Opt("--dry-run", help="Print the planned steps as `ip` commands."))),
    Command("status", "Show what vmnet made, and whether the kernel still agrees.",
            args=(Arg("VM", nargs="?", complete="vm"),), target="vmnet.cli.status:status",
            opts=(Opt("--json", dest="as_json", help="Machine-readable output."),)),
    Command("run", "Run QEMU on VM's network.\n\nBrings the network up, starts QEMU with the "
            "taps' fds and removes the network when QEMU exits.",
            args=(Arg("VM", complete="vm"),), passthrough=True,
            usage_tail="-- QEMU_COMMAND [ARGS]...", target="vmnet.cli.qemu:run",
            opts=(Opt("--netdev-only", help="Append only -netdev; write your own -device."),
                  Opt("--mtu", kind="value", parse=whole_number, help="MTU of the taps."))),
    Command("qemu-args", "Print the QEMU network options for VM, as shell words.",
            args=(Arg("VM", complete="vm"),), target="vmnet.cli.qemu:qemu_args", opts=(
                Opt("--mode", kind="value", choices=("ifname", "script"), default="ifname",
                    help="ifname: QEMU opens the tap `vmnet up` made; script: QEMU runs "
                         "vmnet's ifup/ifdown scripts."),
                Opt("--json", dest="as_json", help="Machine-readable output."))),
    Command("hook", "The libvirt hook: vmnet brings taps up when a domain starts."),
    Command("hook install", "Install the hook as HOOKS_DIR/qemu.d/vmnet.",
            target="vmnet.cli.libvirt:hook_install", opts=(
                Opt("--hooks-dir", kind="value", metavar="DIR", default="/etc/libvirt/hooks",
                    complete="dir", help="libvirt's hooks directory."),)),
    Command("hook uninstall", "Remove vmnet's hook (only the file vmnet wrote).",
            target="vmnet.cli.libvirt:hook_uninstall"),
    # no Command("libvirt"): a group nobody declares still works
    Command("libvirt attach", "Bring VM's taps up and hot-plug them into running DOMAIN.",
            args=(Arg("VM", complete="vm"), Arg("DOMAIN")),
            target="vmnet.cli.libvirt:attach", opts=(
                Opt("--config", dest="persistent",
                    help="Also add them to the domain's persistent definition."),
                Opt("-c", "--connect", dest="uri", kind="value", metavar="URI",
                    default="qemu:///system", env="VMNET_LIBVIRT_URI", help="libvirt URI."))),
    complete_command("vmnet.cli.complete:main"),
)
EXIT_CODES = """0  success
1  an operation failed (the kernel refused, a device is busy, ...)
2  bad input: usage, a flag's value, the config file
4  missing privilege: vmnet needs root or CAP_NET_ADMIN"""
PROG = Program("vmnet", "Give QEMU/KVM virtual machines their network: user-owned taps on "
               "Linux bridges.", globals=GLOBALS, commands=COMMANDS, version="0.1.0",
               exit_codes_help=EXIT_CODES)
PROVIDERS = {"vm": lambda: ["web2", "vm2", "vm1", "db"], "network": lambda: ["lan", "default"]}
DEFAULT_GLOBALS: dict[str, object] = {"netns": None, "state_dir": "/run/vmnet", "config": None,
                   "lock_timeout": 30.0, "verbose": False}


def check_table(prog: Program) -> None:
    """Raise ValueError for a table `parse` would misread (parse trusts its table, so the
    table's test calls this): bad, reserved or duplicate names, a group with options
    or a target, an optional or list positional before a required one..."""
    reserved = {*HELP_NAMES, VERSION_NAME}

    def opts_ok(where: str, opts: tuple[Opt, ...], taken: set[str]) -> None:
        seen: set[str] = set()
        for opt in opts:
            for name in opt.names:
                short = len(name) == 2 and name[0] == "-" and name[1] != "-"
                if not (short or (name[:2] == "--" and len(name) > 3)) or "=" in name:
                    raise ValueError(f"{where}: bad option name {name!r}")
                if name in reserved or name in seen:
                    raise ValueError(f"{where}: option {name} is reserved or declared twice")
                seen.add(name)
            if opt.dest in taken:
                raise ValueError(f"{where}: two values named {opt.dest!r}")
            taken.add(opt.dest)

    opts_ok(prog.name, prog.globals, set())
    paths = [c.path for c in prog.commands]
    for cmd in prog.commands:
        where = " ".join((prog.name, *cmd.path))
        if not cmd.path or any(w[:1] == "-" or not w for w in cmd.path):
            raise ValueError(f"{where}: bad command path {cmd.path!r}")
        if paths.count(cmd.path) > 1:
            raise ValueError(f"{where}: declared twice")
        group = any(p[:len(cmd.path)] == cmd.path and p != cmd.path for p in paths)
        if group and (cmd.target or cmd.opts or cmd.args or cmd.passthrough):
            raise ValueError(f"{where}: a group has only help (no target, options, arguments)")
        if not group and ":" not in cmd.target:
            raise ValueError(f"{where}: target must be 'module:function'")
        taken = {"passthrough"} if cmd.passthrough else set()
        for k, a in enumerate(cmd.args):
            later = cmd.args[k + 1:]
            if (a.nargs in ("*", "+") and later) or (a.nargs == "?" and
                                                      any(b.nargs == 1 for b in later)):
                raise ValueError(f"{where}: {a.metavar} ({a.nargs}) must come last")
            if a.dest in taken:
                raise ValueError(f"{where}: two values named {a.dest!r}")
            taken.add(a.dest)
        opts_ok(where, cmd.opts, taken)


def run(*argv: str, env: dict[str, str] | None = None) -> Parsed:
    return parse(PROG, argv, env or {})


# -- parse: what a good command line gives ----------------------------------------------
GOOD: list[tuple[str, list[str], dict[str, str], tuple[str, ...], dict[str, object],
                 dict[str, object]]] = [
    # id, argv, env, command path, expected values (subset), expected globals (subset)
    ("globals-before", ["--state-dir", "D", "up", "vm1"], {}, ("up",),
     {"vms": ["vm1"]}, {"state_dir": "D"}),
    ("globals-after", ["up", "vm1", "--state-dir", "D"], {}, ("up",),
     {"vms": ["vm1"]}, {"state_dir": "D"}),
    ("equals-form", ["up", "vm1", "--state-dir=D", "--mtu=1400"], {}, ("up",),
     {"mtu": 1400}, {"state_dir": "D"}),
    ("short-before", ["-v", "up", "vm1"], {}, ("up",), {}, {"verbose": True}),
    ("short-after", ["up", "vm1", "-v"], {}, ("up",), {}, {"verbose": True}),
    ("defaults", ["up", "vm1"], {}, ("up",),
     {"vms": ["vm1"], "all_vms": False, "dry_run": False, "bridge": None, "macs": [],
      "mtu": None, "queues": None}, DEFAULT_GLOBALS),
    ("multi-in-order", ["up", "vm1", "--mac", "52:54:00:00:00:02", "--mac=52:54:00:00:00:01"],
     {}, ("up",), {"macs": ["52:54:00:00:00:02", "52:54:00:00:00:01"]}, {}),
    ("int-parser", ["up", "vm1", "--mtu", "9000", "--queues", "4"], {}, ("up",),
     {"mtu": 9000, "queues": 4}, {}),
    ("negative-number-is-a-value", ["--lock-timeout", "-1", "up", "vm1"], {}, ("up",), {},
     {"lock_timeout": -1.0}),
    ("value-starting-with-dash-via-equals", ["--netns=-odd", "up", "vm1"], {}, ("up",), {},
     {"netns": "-odd"}),
    ("several-vms", ["up", "vm1", "vm2", "--dry-run", "vm3"], {}, ("up",),
     {"vms": ["vm1", "vm2", "vm3"], "dry_run": True}, {}),
    ("all-without-vms", ["up", "--all"], {}, ("up",), {"vms": [], "all_vms": True}, {}),
    ("env-fallback", ["up", "vm1"], {"VMNET_STATE_DIR": "/e", "VMNET_CONFIG": "/c.toml"},
     ("up",), {}, {"state_dir": "/e", "config": "/c.toml"}),
    ("flag-beats-env", ["up", "vm1", "--state-dir", "/f"], {"VMNET_STATE_DIR": "/e"}, ("up",),
     {}, {"state_dir": "/f"}),
    ("empty-env-is-unset", ["up", "vm1"], {"VMNET_STATE_DIR": "", "VMNET_CONFIG": ""},
     ("up",), {}, {"state_dir": "/run/vmnet", "config": None}),
    ("own-option-wins-after-command", ["libvirt", "attach", "vm1", "dom", "--config"], {},
     ("libvirt", "attach"), {"vm": "vm1", "domain": "dom", "persistent": True},
     {"config": None}),
    ("global-before-command", ["--config", "F", "libvirt", "attach", "vm1", "dom"], {},
     ("libvirt", "attach"), {"persistent": False}, {"config": "F"}),
    ("both-configs", ["--config", "F", "libvirt", "attach", "vm1", "dom", "--config"], {},
     ("libvirt", "attach"), {"persistent": True}, {"config": "F"}),
    ("short-value-option", ["libvirt", "attach", "vm1", "dom", "-c", "qemu:///session"], {},
     ("libvirt", "attach"), {"uri": "qemu:///session"}, {}),
    ("command-env-fallback", ["libvirt", "attach", "vm1", "dom"],
     {"VMNET_LIBVIRT_URI": "test:///default"}, ("libvirt", "attach"),
     {"uri": "test:///default"}, {}),
    ("command-default", ["libvirt", "attach", "vm1", "dom"], {}, ("libvirt", "attach"),
     {"uri": "qemu:///system"}, {}),
    ("dashdash-ends-options", ["down", "--dry-run", "--", "-odd", "--force"], {}, ("down",),
     {"vms": ["-odd", "--force"], "dry_run": True, "force": False}, {}),
    ("dash-alone-is-positional", ["status", "-"], {}, ("status",), {"vm": "-"}, {}),
    ("optional-positional-absent", ["status", "--json"], {}, ("status",),
     {"vm": None, "as_json": True}, {}),
    ("optional-positional-given", ["status", "vm1"], {}, ("status",),
     {"vm": "vm1", "as_json": False}, {}),
    ("choices-ok", ["qemu-args", "vm1", "--mode", "script"], {}, ("qemu-args",),
     {"vm": "vm1", "mode": "script"}, {}),
    ("choices-default", ["qemu-args", "vm1"], {}, ("qemu-args",), {"mode": "ifname"}, {}),
    ("passthrough-untouched", ["run", "vm1", "--mtu", "1400", "--", "qemu", "-m", "1G", "--",
                               "-h", "--mtu=1"], {}, ("run",),
     {"vm": "vm1", "mtu": 1400, "passthrough": ["qemu", "-m", "1G", "--", "-h", "--mtu=1"]},
     {}),
    ("passthrough-options-after-vm", ["run", "vm1", "-v", "--netdev-only", "--", "q"], {},
     ("run",), {"netdev_only": True, "passthrough": ["q"]}, {"verbose": True}),
    ("passthrough-empty", ["run", "vm1", "--"], {}, ("run",), {"passthrough": []}, {}),
    ("group-leaf", ["hook", "install", "--hooks-dir", "/h"], {}, ("hook", "install"),
     {"hooks_dir": "/h"}, {}),
    ("group-leaf-default", ["hook", "install"], {}, ("hook", "install"),
     {"hooks_dir": "/etc/libvirt/hooks"}, {}),
    ("hidden-complete", ["__complete", "bash", "--", "vmnet", "up", ""], {}, ("__complete",),
     {"shell": "bash", "passthrough": ["vmnet", "up", ""]}, {}),
]


@pytest.mark.parametrize(("argv", "env", "path", "values", "globs"),
                         [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_parse(argv: list[str], env: dict[str, str], path: tuple[str, ...],
               values: dict[str, object], globs: dict[str, object]) -> None:
    p = run(*argv, env=env)
    assert p.help is None and p.command is not None and p.command.path == path
    assert {k: p.values[k] for k in values} == values
    assert {k: p.globals[k] for k in globs} == globs


def minimal_argv(cmd: Command) -> list[str]:
    argv = [*cmd.path, *("x" for a in cmd.args if a.nargs in (1, "+"))]
    return [*argv, "--"] if cmd.passthrough else argv


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.target],
                         ids=lambda c: " ".join(c.path))
def test_every_dest_is_filled(cmd: Command) -> None:
    p = run(*minimal_argv(cmd))
    want = {o.dest for o in cmd.opts} | {a.dest for a in cmd.args}
    assert set(p.values) == want | ({"passthrough"} if cmd.passthrough else set())
    assert set(p.globals) == {g.dest for g in GLOBALS}


@pytest.mark.parametrize(("argv", "dest", "want"), [
    (["up", "vm1", "--mtu", "1", "--mtu=2"], "mtu", 2),
    (["up", "vm1", "--dry-run", "--dry-run"], "dry_run", True),
], ids=["value-twice", "flag-twice"])
def test_given_twice_the_last_wins(argv: list[str], dest: str, want: object) -> None:
    """As with click and getopt: a wrapper may append a flag to override an earlier one."""
    assert parse(PROG, argv, {}).values[dest] == want


def test_global_given_twice_the_last_wins() -> None:
    p = parse(PROG, ["--state-dir", "A", "up", "vm1", "--state-dir", "B", "-v", "--verbose"],
              {})
    assert p.globals["state_dir"] == "B" and p.globals["verbose"] is True


def test_multi_default_is_fresh() -> None:
    first = run("up", "vm1").values["macs"]
    assert isinstance(first, list)
    first.append("changed")
    assert run("up", "vm1").values["macs"] == []


# -- parse: what a bad command line gives -------------------------------------------------
BAD: list[tuple[str, list[str], list[str], list[str]]] = [
    # id, argv, fragments the one line must have, fragments it must not have
    ("unknown-option-close", ["up", "vm1", "--mut", "9000"],
     ["unknown option --mut", "did you mean --mtu?", "`vmnet up --help`"], []),
    ("unknown-option-far", ["up", "vm1", "--zzzzzz"], ["unknown option --zzzzzz"],
     ["did you mean"]),
    ("unknown-option-with-value", ["up", "vm1", "--mut=9000"], ["unknown option --mut;"],
     ["9000"]),
    ("unknown-global", ["--stat-dir", "D", "up", "vm1"],
     ["unknown option --stat-dir", "did you mean --state-dir?", "`vmnet --help`"], []),
    ("single-dash-long-option", ["up", "vm1", "-dry-run"], ["did you mean --dry-run?"],
     ["names may not"]),
    ("vm-name-with-dash", ["up", "-vm1"],
     ["unknown option -vm1", "VM names may not start with '-'"], ["did you mean"]),
    ("domain-name-with-dash", ["libvirt", "attach", "vm1", "-dom"],
     ["unknown option -dom", "DOMAIN names may not start with '-'"], []),
    ("command-option-before-command", ["--dry-run", "up", "vm1"],
     ["unknown option --dry-run", "option of vmnet up, vmnet down", "after the command"], []),
    ("option-of-another-command", ["status", "--dry-run"], ["unknown option --dry-run"],
     ["after the command"]),
    ("unknown-command-close", ["sttaus"],
     ["unknown command 'sttaus'", "did you mean 'status'?", "commands: up, down, status"], []),
    ("unknown-command-far", ["frobnicate"], ["unknown command 'frobnicate'"],
     ["did you mean"]),
    ("hidden-command-not-suggested", ["__complet"], ["unknown command"], ["__complete"]),
    ("missing-command", [],
     ["missing command", "vmnet commands: up, down, status, run, qemu-args, hook, libvirt",
      "`vmnet --help`"], ["__complete"]),
    ("missing-command-after-globals", ["--state-dir", "D", "-v"], ["missing command"], []),
    ("group-alone", ["hook"], ["vmnet hook needs a command: install, uninstall",
                               "`vmnet hook --help`"], []),
    ("undeclared-group-alone", ["libvirt"], ["vmnet libvirt needs a command: attach"], []),
    ("group-unknown", ["hook", "instal"],
     ["unknown command 'hook instal'", "did you mean 'hook install'?"], []),
    ("flag-with-value", ["up", "vm1", "--dry-run=yes"], ["--dry-run takes no value"], []),
    ("value-at-end", ["up", "vm1", "--mtu"], ["--mtu needs a value"], []),
    ("value-then-option", ["up", "--mtu", "--dry-run", "vm1"],
     ["--mtu needs a value", "--mtu=VALUE"], []),
    ("global-value-at-end", ["up", "vm1", "--state-dir"], ["--state-dir needs a value"], []),
    ("missing-positional", ["qemu-args"],
     ["missing VM (usage: vmnet qemu-args [OPTIONS] VM)"], []),
    ("missing-second-positional", ["libvirt", "attach", "vm1"],
     ["missing DOMAIN (usage: vmnet libvirt attach [OPTIONS] VM DOMAIN)"], []),
    ("too-many-positionals", ["status", "vm1", "vm2"],
     ["unexpected argument 'vm2' (usage: vmnet status [OPTIONS] [VM])"], []),
    ("choices", ["qemu-args", "vm1", "--mode", "tap"],
     ["--mode must be one of ifname, script (got 'tap')"], []),
    ("choices-empty-value", ["qemu-args", "vm1", "--mode="], ["(got '')"], []),
    ("passthrough-needs-dashdash", ["run", "vm1", "qemu-system-x86_64"],
     ["vmnet run needs `--` before QEMU_COMMAND: "
      "vmnet run [OPTIONS] VM -- QEMU_COMMAND [ARGS]..."], []),
    ("passthrough-nothing", ["run", "vm1"], ["needs `--`"], []),
    ("passthrough-missing-vm", ["run", "--", "qemu"], ["missing VM"], []),
    ("dashdash-before-command", ["--", "up", "vm1"], ["`--` before the command"], []),
    ("version-typo-after-command", ["up", "vm1", "--versoin"],
     ["unknown option --versoin; did you mean --version?"], []),
]


@pytest.mark.parametrize(("argv", "has", "lacks"), [c[1:] for c in BAD],
                         ids=[c[0] for c in BAD])
def test_usage_errors(argv: list[str], has: list[str], lacks: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        run(*argv)
    e = info.value
    line = e.one_line()
    assert isinstance(e, InputError) and e.exit_code == 2
    assert line.startswith("usage error: ") and "\n" not in line and "(hint: " in line
    assert "--help`" in line and "None" not in line
    for frag in has:
        assert frag in line
    for frag in lacks:
        assert frag not in line


def test_parse_errors_propagate_unchanged() -> None:
    with pytest.raises(InputError) as info:
        run("up", "vm1", "--mtu", "big")
    assert type(info.value) is InputError
    assert info.value.message == "--mtu: 'big' is not a whole number"


def test_parse_error_from_env_names_the_variable() -> None:
    prog = Program("p", globals=(Opt("--wait", kind="value", parse=seconds, env="P_WAIT"),),
                   commands=(Command("go", target="m:f"),))
    with pytest.raises(InputError, match=r"^\$P_WAIT: 'soon' is not a number of seconds$"):
        parse(prog, ["go"], {"P_WAIT": "soon"})
    assert parse(prog, ["go"], {"P_WAIT": "2"}).globals["wait"] == 2.0


@given(st.lists(st.sampled_from(
    ["up", "down", "status", "run", "qemu-args", "hook", "install", "libvirt", "attach",
     "vm1", "-vm1", "--", "-", "", "--mtu", "--mtu=9", "9", "x", "--mac", "--mode", "script",
     "--state-dir", "--state-dir=", "-v", "--verbose", "--config", "--all", "--json",
     "--dry-run=1", "-c", "--zzz", "__complete", "bash"]), max_size=8))
def test_any_argv_parses_or_fails_in_one_line(argv: list[str]) -> None:
    try:
        p = run(*argv)
    except InputError as e:
        assert "\n" not in e.one_line() and "None" not in e.one_line()
    else:
        assert p.command is not None or p.help is not None


# -- help ---------------------------------------------------------------------------------
HELP_REQUESTS: list[tuple[str, list[str], str]] = [
    # id, argv, first line of the help it gives
    ("short", ["-h"], "usage: vmnet [OPTIONS] COMMAND [ARGS]..."),
    ("long", ["--help"], "usage: vmnet [OPTIONS] COMMAND [ARGS]..."),
    ("before-command-is-program-help", ["-h", "up", "vm1"],
     "usage: vmnet [OPTIONS] COMMAND [ARGS]..."),
    ("command", ["up", "--help"], "usage: vmnet up [OPTIONS] [VM]..."),
    ("command-after-args", ["up", "vm1", "--mtu", "9000", "-h"],
     "usage: vmnet up [OPTIONS] [VM]..."),
    ("wins-over-a-mistake", ["up", "--bogus", "--mtu", "big", "-h"],
     "usage: vmnet up [OPTIONS] [VM]..."),
    ("after-globals", ["--state-dir", "D", "status", "-h"], "usage: vmnet status [OPTIONS] [VM]"),
    ("group", ["hook", "--help"], "usage: vmnet hook [OPTIONS] COMMAND [ARGS]..."),
    ("undeclared-group", ["libvirt", "-h"], "usage: vmnet libvirt [OPTIONS] COMMAND [ARGS]..."),
    ("group-leaf", ["hook", "install", "-h"], "usage: vmnet hook install [OPTIONS]"),
    ("unknown-command-stops-there", ["hook", "nope", "-h"],
     "usage: vmnet hook [OPTIONS] COMMAND [ARGS]..."),
    ("passthrough-before-dashdash", ["run", "vm1", "-h", "--", "qemu"],
     "usage: vmnet run [OPTIONS] VM -- QEMU_COMMAND [ARGS]..."),
    ("version", ["--version"], "vmnet 0.1.0"),
    ("version-after-command", ["up", "vm1", "--version"], "vmnet 0.1.0"),
]


@pytest.mark.parametrize(("argv", "first"), [c[1:] for c in HELP_REQUESTS],
                         ids=[c[0] for c in HELP_REQUESTS])
def test_help_requests(argv: list[str], first: str) -> None:
    p = run(*argv)
    assert p.help is not None and p.help.splitlines()[0] == first
    assert p.values == {} and p.globals == {}


def test_help_after_dashdash_goes_to_qemu() -> None:
    p = run("run", "vm1", "--", "qemu", "-h", "--version")
    assert p.help is None and p.values["passthrough"] == ["qemu", "-h", "--version"]


def test_no_version_no_version_option() -> None:
    prog = Program("p", commands=(Command("go", target="m:f"),))
    with pytest.raises(UsageError, match="unknown option --version"):
        parse(prog, ["go", "--version"], {})


HELP_TEXTS: list[tuple[str, tuple[str, ...], list[str], list[str]]] = [
    # id, path, fragments the help must have, fragments it must not have
    ("program", (), [
        "Give QEMU/KVM virtual machines their network",
        "Commands:", "  up ", "Create VM's taps", "  hook install ", "  libvirt attach ",
        "Options:", "--netns NAME", "--state-dir DIR", "[default: /run/vmnet; env:",
        "VMNET_STATE_DIR]", "--config PATH", "[env: VMNET_CONFIG]", "--lock-timeout SECONDS",
        "[default: 30.0]", "-v, --verbose", "-h, --help", "--version",
        "Exit codes:", "  0 ", "  1 ", "  2 ", "  4 ", "CAP_NET_ADMIN",
        "also work after the command"], ["__complete", "Print completion"]),
    ("up", ("up",), [
        "usage: vmnet up [OPTIONS] [VM]...", "Create VM's taps", "safe to repeat",
        "Example:\n  vmnet up vm1 --mtu 9000\n",  # an indented block keeps its lines
        "Arguments:", "A VM of the config file.", "--mac MAC", "[repeatable]", "--mtu MTU",
        "--queues Q", "--bridge NAME", "-h, --help",
        "Global options, before or after the command: --netns NAME, --state-dir DIR"], []),
    ("choices", ("qemu-args",), ["--mode ifname|script", "[default: ifname]"], []),
    ("passthrough", ("run",), ["usage: vmnet run [OPTIONS] VM -- QEMU_COMMAND [ARGS]...",
                               "removes the network when QEMU exits"], []),
    ("shadowed-global", ("libvirt", "attach"), [
        "usage: vmnet libvirt attach [OPTIONS] VM DOMAIN", "-c, --connect URI",
        "[default: qemu:///system; env: VMNET_LIBVIRT_URI]",
        "global --config only before the command"], ["--config PATH"]),
    ("group", ("hook",), ["The libvirt hook", "Commands:", "  install ", "  uninstall ",
                          "`vmnet hook COMMAND --help`"], ["hook install"]),
    ("undeclared-group", ("libvirt",), ["Commands:", "  attach "], []),
]


@pytest.mark.parametrize(("path", "has", "lacks"), [c[1:] for c in HELP_TEXTS],
                         ids=[c[0] for c in HELP_TEXTS])
def test_help_text(path: tuple[str, ...], has: list[str], lacks: list[str]) -> None:
    text = help_text(PROG, path)
    flat = " ".join(text.split())  # prose is wrapped: look for it across line breaks
    for frag in has:
        assert frag in text or frag in flat
    for frag in lacks:
        assert frag not in flat


ALL_PATHS = [(), ("libvirt",)] + [c.path for c in COMMANDS]


@pytest.mark.parametrize("path", ALL_PATHS, ids=lambda p: " ".join(p) or "program")
def test_help_is_tidy(path: tuple[str, ...]) -> None:
    text = help_text(PROG, path)
    assert text == help_text(PROG, path)  # deterministic
    assert text.endswith("\n") and "None" not in text and "\n\n\n" not in text
    assert all(len(line) <= 79 and line == line.rstrip() for line in text.splitlines())


def test_help_for_unknown_path() -> None:
    with pytest.raises(UsageError, match="unknown command 'hook nope'"):
        help_text(PROG, ("hook", "nope"))


# -- completion ---------------------------------------------------------------------------
COMPLETIONS: list[tuple[str, list[str], list[str]]] = [
    # id, words (words[0] is the program, the last the word being completed), candidates
    ("commands", ["vmnet", ""],
     ["up", "down", "status", "run", "qemu-args", "hook", "libvirt"]),
    ("partial-command", ["vmnet", "s"], ["status"]),
    ("partial-command-after-global", ["vmnet", "--state-dir", "D", "-v", "qe"], ["qemu-args"]),
    ("group-commands", ["vmnet", "hook", ""], ["install", "uninstall"]),
    ("unknown-command", ["vmnet", "sttaus", ""], []),
    ("options-after-command", ["vmnet", "up", "vm1", "--d"], ["--dry-run"]),
    ("own-then-globals", ["vmnet", "libvirt", "attach", "vm1", "dom", "--c"],
     ["--config", "--connect"]),
    ("globals-before-command", ["vmnet", "--"],
     ["--netns", "--state-dir", "--config", "--lock-timeout", "--verbose", "--version",
      "--help"]),
    ("given-options-left-out", ["vmnet", "-v", "up", "--dry-run", "--mac", "m", "--"],
     ["--all", "--bridge", "--mac", "--mtu", "--queues", "--netns", "--state-dir", "--config",
      "--lock-timeout", "--help"]),
    ("short-options", ["vmnet", "up", "-"],
     ["--all", "--dry-run", "--bridge", "--mac", "--mtu", "--queues", "--netns",
      "--state-dir", "--config", "--lock-timeout", "-v", "--verbose", "-h", "--help"]),
    ("choices", ["vmnet", "qemu-args", "vm1", "--mode", ""], ["ifname", "script"]),
    ("partial-choice", ["vmnet", "qemu-args", "vm1", "--mode", "s"], ["script"]),
    ("choice-after-equals", ["vmnet", "qemu-args", "vm1", "--mode=i"], ["--mode=ifname"]),
    ("vm-names-sorted", ["vmnet", "up", ""], ["db", "vm1", "vm2", "web2"]),
    ("partial-vm-name", ["vmnet", "up", "vm1", "v"], ["vm1", "vm2"]),
    ("vm-after-global-value", ["vmnet", "--state-dir", "/s", "status", "w"], ["web2"]),
    ("networks", ["vmnet", "up", "vm1", "--bridge", ""], ["default", "lan"]),
    ("dir-value", ["vmnet", "--state-dir", ""], [DIRS]),
    ("file-value-after-equals", ["vmnet", "up", "--config=/et"], [FILES]),
    ("free-value", ["vmnet", "up", "vm1", "--mtu", ""], []),
    ("free-positional", ["vmnet", "libvirt", "attach", "vm1", ""], []),
    ("no-positional-left-offers-options", ["vmnet", "status", "vm1", ""],
     ["--json", "--netns", "--state-dir", "--config", "--lock-timeout", "-v", "--verbose",
      "-h", "--help"]),
    ("after-dashdash-a-name", ["vmnet", "down", "--", "-"], []),  # no VM starts with '-'
    ("after-dashdash-names", ["vmnet", "down", "--", ""], ["db", "vm1", "vm2", "web2"]),
    ("passthrough-is-the-shell's", ["vmnet", "run", "vm1", "--", "qemu", "-m"], [FILES]),
    ("flag-after-equals", ["vmnet", "up", "--all="], []),
]


@pytest.mark.parametrize(("words", "want"), [c[1:] for c in COMPLETIONS],
                         ids=[c[0] for c in COMPLETIONS])
def test_complete(words: list[str], want: list[str]) -> None:
    assert complete(PROG, words, PROVIDERS) == want


def test_complete_survives_a_failing_provider() -> None:
    def broken() -> list[str]:
        raise OSError(2, "No such file or directory")

    assert complete(PROG, ["vmnet", "up", ""], {"vm": broken}) == []
    assert complete(PROG, ["vmnet", "up", ""], {}) == []


# -- the shell scripts --------------------------------------------------------------------
def check_syntax(shell: str, argv: list[str], tmp_path: Path) -> None:
    exe = shutil.which(argv[0])
    if exe is None:
        pytest.skip(f"{argv[0]} is not installed here (tests install nothing)")
    script = tmp_path / f"vmnet.{shell}"
    script.write_text(completion_script(PROG, shell))
    r = subprocess.run([exe, *argv[1:], str(script)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0 and not r.stderr, r.stderr


@pytest.mark.parametrize(("shell", "argv"), [
    ("bash", ["bash", "-n"]), ("zsh", ["zsh", "-n"]), ("fish", ["fish", "--no-execute"])],
    ids=SHELLS)
def test_script_syntax(shell: str, argv: list[str], tmp_path: Path) -> None:
    check_syntax(shell, argv, tmp_path)


@pytest.mark.parametrize("shell", SHELLS)
def test_script_calls_back(shell: str) -> None:
    text = completion_script(PROG, shell)
    assert f"vmnet __complete {shell} --" in text and "None" not in text
    assert FILES in text and DIRS in text


def test_unknown_shell() -> None:
    with pytest.raises(UsageError, match="one of: bash, zsh, fish"):
        completion_script(PROG, "tcsh")


def complete_main() -> None:
    """`vmnet` for the bash round trip: parse, then answer the hidden command."""
    p = parse(PROG, sys.argv[1:], {})
    assert p.command is not None and p.command.path == ("__complete",)
    words = p.values["passthrough"]
    assert isinstance(words, list)
    sys.stdout.write("".join(w + "\n" for w in complete(PROG, words, PROVIDERS)))


@pytest.mark.parametrize(("words", "cword", "want"), [
    (["vmnet", "qemu-args", "vm1", "--mode", "="], 4, ["ifname", "script"]),
    (["vmnet", "qemu-args", "vm1", "--mode", "=", "s"], 5, ["script"]),
    (["vmnet", "up", "vm1", "v"], 3, ["vm1", "vm2"]),
    (["vmnet", "hook", ""], 2, ["install", "uninstall"]),
], ids=["after-equals", "partial-after-equals", "vm-names", "group"])
def test_bash_round_trip(words: list[str], cword: int, want: list[str], tmp_path: Path) -> None:
    """The bash script, sourced into a real bash, with `vmnet` answering as the CLI would."""
    script = tmp_path / "vmnet.bash"
    script.write_text(completion_script(PROG, "bash"))
    quoted = " ".join("'" + w + "'" for w in words)
    prog = "from tests.test_args import complete_main; complete_main()"
    driver = (f'vmnet() {{ "{sys.executable}" -c "{prog}" "$@"; }}\n'
              f"source '{script}'\n"
              f"COMP_WORDS=({quoted}); COMP_CWORD={cword}\n"
              "_vmnet_complete\n"
              "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    r = subprocess.run(["bash", "--norc", "--noprofile", "-c", driver], capture_output=True,
                       text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == want


# -- import cost --------------------------------------------------------------------------
HEAVY = ("typing", "re", "dataclasses", "shlex", "enum", "collections", "click", "argparse",
         "textwrap", "difflib")


def test_import_is_light() -> None:
    """A fresh interpreter importing vmnet.cli.args loads only builtin modules besides
    vmnet's own (and __future__, which vmnet.errors needs anyway)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); before = set(sys.modules); "
            "import vmnet.cli.args; print(' '.join(sorted(set(sys.modules) - before)))")
    r = subprocess.run([sys.executable, "-IS", "-X", "importtime", "-c", code, str(ROOT)],
                       capture_output=True, text=True, timeout=60, env={})
    assert r.returncode == 0, r.stderr
    new = set(r.stdout.split())
    timed = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    assert "vmnet.cli.args" in new and "vmnet.cli.args" in timed
    assert not (new | timed) & set(HEAVY), sorted((new | timed) & set(HEAVY))
    foreign = {m for m in new if not m.startswith("vmnet") and m != "__future__"
               and m not in sys.builtin_module_names}
    assert not foreign, sorted(foreign)


# -- the table itself ---------------------------------------------------------------------
def test_sample_table_is_sound() -> None:
    check_table(PROG)


@pytest.mark.parametrize("commands", [
    (Command("go", target="m:f", opts=(Opt("-h"),)),),
    (Command("go", target="m:f", opts=(Opt("--all"), Opt("--all", dest="every"))),),
    (Command("go", target="m:f", opts=(Opt("--x-y"), Opt("--x_y"))),),
    (Command("go", target="m:f", opts=(Opt("all"),)),),
    (Command("go", target="m:f"), Command("go", target="m:g")),
    (Command("g", target="m:f"), Command("g x", target="m:f")),
    (Command("g x"),),
    (Command("go", target="m:f", args=(Arg("A", nargs="*"), Arg("B"))),),
    (Command("go", target="m:f", args=(Arg("A", nargs="?"), Arg("B"))),),
    (Command("go", target="m:f", passthrough=True, args=(Arg("PASSTHROUGH"),)),),
], ids=["reserved", "duplicate-name", "duplicate-dest", "no-dashes", "duplicate-command",
        "group-with-target", "leaf-without-target", "star-not-last", "optional-first",
        "passthrough-dest"])
def test_table_mistakes_are_caught(commands: tuple[Command, ...]) -> None:
    with pytest.raises(ValueError):
        check_table(Program("p", commands=commands))


def test_opt_refuses_env_on_a_flag() -> None:
    with pytest.raises(ValueError):
        Opt("--verbose", env="P_VERBOSE")
