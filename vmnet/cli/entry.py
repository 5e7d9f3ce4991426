"""Console entry points.

`vmnet up VM` and `vmnet-qemu-ifup TAP` try the hot path (vmnet.hot) first.

`vmnet up VM...|--all` and `vmnet down VM...|--all` with only the global options are
served here without importing click (about 30 ms): they call the same
functions as the click commands (vmnet.cli.commands), print the same lines and
fail the same way.  Anything else goes to the click CLI.
"""

from __future__ import annotations

import os
import sys

_GLOBAL_VALUE = {"--netns", "--state-dir", "--config", "--lock-timeout"}
_FLAGS = {"up": {"--dry-run", "--all"}, "down": {"--dry-run", "--force", "--all"}}


class Request:
    """An `up`/`down` request the lean path serves."""

    __slots__ = ("all", "cmd", "config", "dry_run", "force", "lock_timeout", "names", "netns",
                 "state_dir")

    def __init__(self, cmd: str, names: list[str], flags: set[str], opts: dict[str, str]) -> None:
        self.cmd = cmd
        self.names = names
        self.dry_run = "--dry-run" in flags
        self.force = "--force" in flags
        self.all = "--all" in flags
        self.netns = opts.get("--netns") or None
        self.state_dir = opts.get("--state-dir") or os.environ.get("VMNET_STATE_DIR") \
            or "/run/vmnet"
        self.config = opts.get("--config") or os.environ.get("VMNET_CONFIG") or None
        self.lock_timeout = float(opts.get("--lock-timeout", "30"))


def parse_lean(argv: list[str]) -> Request | None:
    """The request if the lean path can serve it exactly as click would, else None."""
    opts: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i].startswith("--"):
        key, eq, val = argv[i].partition("=")
        if key not in _GLOBAL_VALUE:
            return None
        if not eq:
            i += 1
            if i >= len(argv):
                return None
            val = argv[i]
        opts[key] = val
        i += 1
    if i >= len(argv) or argv[i] not in _FLAGS:
        return None
    cmd = argv[i]
    flags: set[str] = set()
    names: list[str] = []
    for a in argv[i + 1:]:
        if a in _FLAGS[cmd]:
            flags.add(a)
        elif a.startswith("-") or not a:
            return None
        else:
            names.append(a)
    if not names and "--all" not in flags:
        return None  # click words the usage error
    if ("--all" in flags or len(names) >= 20) and sys.stderr.isatty():
        return None  # a person at a terminal gets click's progress bar
    try:
        return Request(cmd, names, flags, opts)
    except ValueError:  # a bad --lock-timeout: let click word the error
        return None


def main() -> None:
    # VMNET_LEAN=0 sends everything through click (the test suite runs both ways).
    req = None if os.environ.get("VMNET_LEAN") == "0" else parse_lean(sys.argv[1:])
    if req is not None and req.cmd == "up" and len(req.names) == 1 and not req.all:
        from vmnet import hot

        if hot.enabled(os.environ):
            lines = hot.up(req, os.environ)
            if lines is not None:
                sys.stdout.write("".join(line + "\n" for line in lines))
                _done()
    if req is None:
        from vmnet.cli.main import main as cli_main

        cli_main()
        return
    from vmnet.errors import VmnetError

    try:
        _run(req)
    except VmnetError as e:
        sys.stderr.write(f"vmnet: error: {e.one_line()}\n")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def main_ifup() -> None:
    """`vmnet-qemu-ifup TAP`: the hot path (vmnet.hot) if it can, else vmnet.integrations.qemu.ifup."""
    from vmnet import hot

    if hot.enabled(os.environ) and hot.ifup(sys.argv[1:], os.environ):
        _done()
    from vmnet.integrations.qemu.ifup import main_ifup as full

    full()


def _done() -> None:
    """Exit 0 once the output is out, skipping the interpreter's teardown (~1 ms
    of a 10 ms hot path); nothing of ours is left to flush or close."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")


def _run(req: Request) -> None:
    from vmnet.cli import commands
    from vmnet.config import Overrides, load_config
    from vmnet.engine.ops import Context

    if req.netns:
        from vmnet.kernel.netns import enter

        enter(req.netns)
    ctx = Context(state_dir=req.state_dir, lock_timeout=req.lock_timeout)
    if req.cmd == "up":
        commands.up(ctx, load_config(req.config), req.names, req.all, Overrides(), req.dry_run,
                    _out)
    else:
        commands.down(ctx, req.names, req.all, req.force, req.dry_run, _out, _err)
    sys.stdout.flush()
