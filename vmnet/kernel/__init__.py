"""The one seam between vmnet and the kernel.

Everything that talks netlink or ioctls lives in this package; callers use the
`Kernel` protocol (vmnet.kernel.protocol, for type checking only) and get the
one implementation from `open_kernel()`.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from vmnet.kernel.protocol import Kernel as Kernel

__all__ = ["open_kernel"]


def open_kernel() -> Kernel:
    """vmnet's kernel seam in the caller's network namespace (vmnet.kernel.linux)."""
    from vmnet.kernel.linux import LinuxKernel

    return LinuxKernel()
