"""Fault injection for the crash tests: VMNET_FAULT=NAME[:N] SIGKILLs vmnet itself
at the Nth time the named point is reached (N defaults to 1); VMNET_FAULT=*:N
kills at the Nth point of any name.  Costs one dict lookup when unset.
"""

from __future__ import annotations

import os
import signal

_spec = os.environ.get("VMNET_FAULT")
_counts: dict[str, int] = {}


def point(name: str) -> None:
    if _spec is None:
        return
    want, _, n = _spec.partition(":")
    if want not in (name, "*"):
        return
    key = want
    _counts[key] = _counts.get(key, 0) + 1
    if _counts[key] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
