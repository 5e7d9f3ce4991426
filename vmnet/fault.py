"""Fault injection for the crash and rollback tests.

VMNET_FAULT=NAME makes the NAMEd point misbehave the VMNET_FAULT_AT-th time
it is reached (default 1; NAME `*` matches every point).  VMNET_FAULT_ACTION
is `kill` (SIGKILL vmnet itself, the default) or `fail` (raise a KernelError
as a refusing kernel would).  Costs one check when unset.
"""

from __future__ import annotations

import os
import signal

_name = os.environ.get("VMNET_FAULT")
_count = 0


def point(name: str) -> None:
    global _count
    if _name is None or _name not in (name, "*"):
        return
    _count += 1
    if _count != int(os.environ.get("VMNET_FAULT_AT", "1")):
        return
    if os.environ.get("VMNET_FAULT_ACTION", "kill") == "fail":
        from vmnet.errors import KernelError

        raise KernelError(f"injected failure at {name}", op=name)
    os.kill(os.getpid(), signal.SIGKILL)
