"""A real vmnetd for tests: started by PID, on a test's state directory, stopped (and
killed if need be) when the test ends, whatever happened.

Modules that set BOTH_WAYS = True run every test twice (tests/conftest.py):
once in-process, once with a vmnetd listening on the state directory, which
the CLI, the scripts and the hook then use (how users choose: a daemon runs or
it does not).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.nsutil import Netns
from tests.vmnetcli import empty_config
from vmnet.daemon.client import wait_listening as wait_listening_on

# vmnetd runs as root; tests that start one (or switch uids with setpriv) need root too.
needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root: vmnetd, namespaces and setpriv")


def wait_listening(path: str, proc: subprocess.Popen[str] | None, timeout: float = 15) -> None:
    """vmnetd listens on `path` (its state directory's socket), or fail saying why."""
    if wait_listening_on(os.path.dirname(path), timeout,
                         None if proc is None else lambda: proc.poll() is None):
        return
    if proc is not None and proc.poll() is not None:
        raise AssertionError(f"vmnetd exited with {proc.returncode}: "
                             f"{proc.stderr.read() if proc.stderr else ''}")
    raise AssertionError(f"vmnetd did not listen on {path} within {timeout} s")


class Vmnetd:
    """One vmnetd process (by PID), its log on a pipe."""

    def __init__(self, state_dir: str, config: str | None = None, ns: Netns | None = None,
                 extra_env: dict[str, str] | None = None,
                 pass_fds: tuple[int, ...] = (), argv: list[str] | None = None) -> None:
        self.state_dir = state_dir
        self.socket = os.path.join(state_dir, "vmnetd.sock")
        cmd = argv or [sys.executable, "-m", "vmnet.daemon.main", "--foreground",
                       "--state-dir", state_dir, "--config", config or empty_config()]
        if ns is not None:
            cmd = ["ip", "netns", "exec", ns.name, *cmd]
        env = dict(os.environ)
        env.pop("VMNET_STATE_DIR", None)
        env.update(extra_env or {})
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=env, pass_fds=pass_fds)
        try:
            wait_listening(self.socket, self.proc)
        except BaseException:
            self.kill()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def stop(self) -> str:
        """SIGTERM, wait; its log."""
        self.kill(signal.SIGTERM)
        return self.proc.stderr.read() if self.proc.stderr else ""


@contextlib.contextmanager
def vmnetd(state_dir: str, **kw: object) -> Iterator[Vmnetd]:
    d = Vmnetd(state_dir, **kw)  # type: ignore[arg-type]
    try:
        yield d
    finally:
        log = d.stop()
        if "Traceback" in log:
            raise AssertionError(f"vmnetd logged a traceback:\n{log}")


def leftovers(state_dir: str) -> list[str]:
    """What is in a state directory besides a running vmnetd's socket."""
    try:
        return sorted(n for n in os.listdir(state_dir) if n != "vmnetd.sock")
    except FileNotFoundError:
        return []
