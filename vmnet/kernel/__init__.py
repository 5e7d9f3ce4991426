"""The one seam between vmnet and the kernel.

Everything that talks netlink or ioctls lives in this package.  Callers use
the `Kernel` protocol (see `vmnet.kernel.base`); `open_kernel()` picks the
implementation.  Nothing outside this package imports pyroute2.
"""

from __future__ import annotations

from vmnet.kernel.base import Kernel, LinkInfo, TapSpec, TunInfo

__all__ = ["Kernel", "LinkInfo", "TapSpec", "TunInfo", "open_kernel"]


def open_kernel() -> Kernel:
    """The full netlink implementation (pyroute2)."""
    from vmnet.kernel.netlink import NetlinkKernel

    return NetlinkKernel()
