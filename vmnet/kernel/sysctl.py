"""Sysctls of the caller's network namespace (/proc/sys/net is per namespace)."""

from __future__ import annotations

import errno
import os

from vmnet.errors import kernel_error


def disable_ipv6(name: str) -> None:
    """IPv6 off on an interface: no link-local address, no router solicitations."""
    if not os.path.exists("/proc/sys/net/ipv6"):
        return  # IPv6 is off in this kernel: nothing to disable
    try:
        with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
            f.write("1")
    except OSError as e:
        raise kernel_error("disable IPv6", name, e.errno or errno.EIO) from None
