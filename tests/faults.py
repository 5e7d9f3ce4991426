"""Test-only fault injection: run a vmnet entry point with kill (or fail) points wrapped in.

    python tests/faults.py [--trace=FILE] MODULE [ARGS...]   # e.g. vmnet, or the hook module

Nothing of this is in vmnet itself: the points are wrappers this launcher puts
around vmnet's own functions before it runs MODULE as __main__:

- ``step:<Step class>``: before each step runs (vmnet.engine.steps, vmnet.kinds.l3,
  vmnet.kinds.firewall and vmnet.kinds.ovn: kernel changes, sysctls, nft, dnsmasq, host
  files, OVN's databases);
- ``up:recorded`` / ``down:recorded``: records written, before the kernel steps;
- ``up:applied`` / ``down:applied``: kernel steps done, before the records settle;
- ``record:<put_vm|drop_vm|put_bridge|drop_bridge|begin>``: after each record write
  (so a sweep also kills while a bulk `up` marks its records ready);
- ``run:up`` / ``run:attached``: `vmnet run` before and after it opens the taps.

VMNET_FAULT=NAME makes the NAMEd point misbehave the VMNET_FAULT_AT-th time it is
reached (default 1; NAME ``*`` matches every point).  VMNET_FAULT_ACTION is
``kill`` (SIGKILL, the default) or ``fail`` (raise a KernelError as a refusing
kernel would).  --trace=FILE (or VMNET_FAULT_TRACE=FILE) instead records, in
order, every point a complete run passes (JSON), so a sweep enumerates the
points without a list here.
"""

from __future__ import annotations

import functools
import json
import os
import runpy
import signal
import sys
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_name = os.environ.get("VMNET_FAULT")
_trace = os.environ.get("VMNET_FAULT_TRACE")
_count = 0
seen: list[str] = []


def point(name: str) -> None:
    global _count
    if _trace is not None:
        seen.append(name)
        return
    if _name is None or _name not in (name, "*"):
        return
    _count += 1
    if _count != int(os.environ.get("VMNET_FAULT_AT", "1")):
        return
    if os.environ.get("VMNET_FAULT_ACTION", "kill") == "fail":
        from vmnet.errors import KernelError

        raise KernelError(f"injected failure at {name}", op=name)
    os.kill(os.getpid(), signal.SIGKILL)


def _before(name: str | Callable[..., str], f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(*args: Any, **kw: Any) -> Any:
        point(name(*args) if callable(name) else name)
        return f(*args, **kw)
    return wrapper


def _after(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def wrapper(*args: Any, **kw: Any) -> Any:
        out = f(*args, **kw)
        point(name)
        return out
    return wrapper


def install() -> None:
    from vmnet.engine import apply, steps
    from vmnet.integrations.qemu import run
    from vmnet.kinds import firewall, l3, ovn
    from vmnet.state import store

    for module in (steps, l3, firewall, ovn):  # every module that defines steps
        for cls in vars(module).values():
            if isinstance(cls, type) and issubclass(cls, steps.Step) and "run" in vars(cls) \
                    and cls.__module__ == module.__name__:
                cls.run = _before(f"step:{cls.__name__}", cls.run)  # type: ignore[method-assign]

    original = apply.Transaction.run

    def txn_run(self: apply.Transaction, todo: list[Any], progress: Any = None) -> None:
        op = "down" if sys._getframe(1).f_code.co_name == "_teardown" else "up"
        if todo:
            point(f"{op}:recorded")
        original(self, todo, progress)
        if todo:
            point(f"{op}:applied")

    apply.Transaction.run = txn_run  # type: ignore[method-assign]
    # (Not `end`: removing the journal is the commit; a kill after it is no crash of `up`.)
    for meth in ("put_vm", "drop_vm", "put_bridge", "drop_bridge", "begin"):
        setattr(store.StateStore, meth, _after(f"record:{meth}",
                                               getattr(store.StateStore, meth)))
    attach = run.attach

    def attach_wrapped(*args: Any, **kw: Any) -> Any:
        point("run:up")
        out = attach(*args, **kw)
        point("run:attached")
        return out

    run.attach = attach_wrapped  # type: ignore[assignment]


def main() -> None:
    global _trace
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    args = sys.argv[1:]
    if args and args[0].startswith("--trace="):
        _trace = args.pop(0).partition("=")[2]
    module, *argv = args
    install()
    sys.argv = [module, *argv]
    code: Any = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
    if _trace is not None:
        with open(_trace, "w") as f:
            json.dump(seen, f)
    sys.exit(code)


if __name__ == "__main__":
    main()
