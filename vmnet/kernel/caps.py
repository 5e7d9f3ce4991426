"""Capabilities of the running process (read from /proc, no imports of note)."""

from __future__ import annotations

CAP_NET_ADMIN = 12


def has_net_admin() -> bool:
    """CAP_NET_ADMIN in the effective set (True when it cannot be told: the kernel decides)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return True
