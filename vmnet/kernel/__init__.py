"""The one seam between vmnet and the kernel.

Everything that talks netlink or ioctls lives in this package.  Callers use
the `Kernel` protocol (`vmnet.kernel.protocol`, for type checking only); `open_kernel()` picks the
implementation.  Nothing outside this package imports pyroute2.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from vmnet.kernel.protocol import Kernel as Kernel

# Types live in vmnet.kernel.base: importing this package stays free of
# dataclasses, for the hot path (vmnet.hot) that uses rtnl/tun/netns.
__all__ = ["open_kernel"]


def open_kernel() -> Kernel:
    """The default implementation (hand-packed rtnetlink), or pyroute2's with
    VMNET_KERNEL=pyroute2 (the test suite runs against both)."""
    import os

    if os.environ.get("VMNET_KERNEL") == "pyroute2":
        from vmnet.kernel.netlink import NetlinkKernel

        return NetlinkKernel()
    from vmnet.kernel.lean import LeanKernel

    return LeanKernel()
