"""The `vmnet` command line: parse (vmnet.cli.args over vmnet.cli.table), call one
operation, print.  Thin on purpose; no click (29 ms to import: three times the
rest of a VM start).
"""

from __future__ import annotations

import sys

from vmnet.errors import VmnetError

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Mapping

    from vmnet.cli.args import Parsed
    from vmnet.config import Config, Overrides
    from vmnet.daemon.policy import Policy
    from vmnet.engine.context import Context


class Globals:
    """The global options of one command line, and what they give access to."""

    __slots__ = ("_config", "config", "env", "lock_timeout", "netns", "peer", "state_dir",
                 "verbose")

    def __init__(self, netns: str | None, state_dir: str, config: str | None,
                 lock_timeout: float, verbose: bool = False,
                 env: Mapping[str, str] | None = None) -> None:
        self.netns = netns
        self.state_dir = state_dir
        self.config = config
        self.lock_timeout = lock_timeout
        self.verbose = verbose
        if env is None:
            import os

            env = os.environ
        self.env = env
        self._config: Config | None = None
        self.peer: Policy | None = None  # a user without root, served by vmnetd

    def context(self) -> Context:
        from vmnet.engine.context import Context

        ctx = Context(state_dir=self.state_dir, lock_timeout=self.lock_timeout,
                      netns=self.netns)
        return ctx if self._config is None else ctx.use_config(self._config)

    def load_config(self) -> Config:
        from vmnet.config import load_config

        self._config = load_config(self.config, self.env, cache_dir=self.state_dir)
        return self._config

    def done(self) -> None:
        """The command succeeded: keep the config's parse for the next one."""
        if self._config is not None and self._config.digest is not None:
            from vmnet.config import cache

            cache.save(self.state_dir, self._config)


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def err(line: str) -> None:
    sys.stderr.write(line + "\n")


def emit_json(data: object) -> None:
    import json

    out(json.dumps(data, indent=2, sort_keys=True))


def overrides(values: Mapping[str, object]) -> Overrides:
    """The override flags of `up`, `run`, `qemu-args`, ... as an Overrides value."""
    from vmnet.config import Overrides

    def s(key: str) -> str | None:
        got = values.get(key)
        return None if got is None else str(got)

    def n(key: str) -> int | None:
        got = values.get(key)
        return got if isinstance(got, int) else None

    macs = values.get("macs")
    ips = values.get("ips")
    return Overrides(bridge=s("bridge"), uplink=s("uplink"), user=s("user"), group=s("group"),
                     nics=n("nics"), queues=n("queues"),
                     macs=tuple(str(m) for m in macs) if isinstance(macs, list) else (),
                     mtu=n("mtu"), vnet_hdr=False if values.get("no_vnet_hdr") else None,
                     model=s("model"), network=s("network"),
                     ips=tuple(str(a) for a in ips) if isinstance(ips, list) else (),
                     mac_filter=True if values.get("mac_filter") else None,
                     ip_filter=True if values.get("ip_filter") else None,
                     no_guard=True if values.get("no_guard") else None,
                     port_isolation=True if values.get("port_isolation") else None,
                     rate_to_vm=s("rate_to_vm"), rate_from_vm=s("rate_from_vm"),
                     vlan=n("vlan"))


def setup(argv: list[str], env: Mapping[str, str], policy: Policy | None = None
          ) -> tuple[Globals, Parsed]:
    """Parse one command line into its global options and command (policy admitted)."""
    from vmnet.cli.args import parse
    from vmnet.cli.table import PROGRAM

    parsed: Parsed = parse(PROGRAM, argv, env)
    gl = parsed.globals
    netns = gl.get("netns")
    from vmnet.consts import DEFAULT_LOCK_TIMEOUT, DEFAULT_STATE_DIR

    # (--help and --version stop the parse before the globals' defaults are filled in)
    g = Globals(netns=str(netns) if netns else None,
                state_dir=str(gl.get("state_dir") or DEFAULT_STATE_DIR),
                config=str(gl["config"]) if gl.get("config") else None,
                lock_timeout=float(gl.get("lock_timeout", DEFAULT_LOCK_TIMEOUT)),  # type: ignore[arg-type]
                verbose=bool(gl.get("verbose")), env=env)
    if parsed.help is None:
        cmd = parsed.command
        assert cmd is not None and cmd.target  # args.parse refuses a group or nothing
        if policy is not None:
            policy.admit(" ".join(cmd.path), g, parsed.values)
    return g, parsed


def run(argv: list[str], env: Mapping[str, str], policy: Policy | None = None) -> int:
    """Parse and run one command line; returns the exit status.  Raises VmnetError.

    vmnetd passes the `policy` of the peer it serves (vmnet.daemon.policy)."""
    g, parsed = setup(argv, env, policy)
    if parsed.help is not None:
        sys.stdout.write(parsed.help if parsed.help.endswith("\n") else parsed.help + "\n")
        return 0
    if g.verbose:
        from vmnet import log

        log.set_verbose(True)
    cmd = parsed.command
    assert cmd is not None and cmd.target
    if g.netns and cmd.path[0] != "hook":
        from vmnet.kernel.netns import enter

        enter(g.netns)
    module, _, func = cmd.target.partition(":")
    __import__(module)  # (importlib.import_module would import importlib and warnings)
    target = getattr(sys.modules[module], func)
    rc = target(g, parsed.values)
    g.done()
    return 0 if rc is None else int(rc)


def execute(argv: list[str], env: Mapping[str, str] | None,
            policy: Policy | None = None) -> int:
    """Run one command line here, errors as their one line on stderr; the exit status.
    `env` None: this process's (os.environ)."""
    try:
        if env is None:
            import os

            env = os.environ
        rc = run(argv, env, policy)
        sys.stdout.flush()
    except VmnetError as e:
        try:  # noqa: SIM105 - contextlib costs an import on every command
            sys.stdout.flush()
        except OSError:
            pass
        err(f"vmnet: error: {e.one_line()}")
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    return rc


def main() -> None:
    """`vmnet`'s process entry point: vmnetd first (vmnet.daemon.client.main)."""
    from vmnet.daemon.client import main as door

    door()
