"""Where an operation works: state directory, namespace, kernel, lock patience.

Light on purpose (the qemu scripts use it without the planner).
"""

from __future__ import annotations

from vmnet.consts import DEFAULT_DATA_DIR, DEFAULT_LOCK_TIMEOUT, DEFAULT_STATE_DIR
from vmnet.kernel import tun as tunmod
from vmnet.kernel.netns import current_cookie, current_inode
from vmnet.state.store import StateStore

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Callable

    from vmnet.config import Config
    from vmnet.kernel.protocol import Kernel
    from vmnet.kinds.site import Site

__all__ = ["Context"]


def _open_kernel() -> Kernel:
    from vmnet.kernel import open_kernel

    return open_kernel()


class Context:
    """Where vmnet works: state directory, namespace, kernel, lock patience."""

    __slots__ = ("_kernel", "_store", "data_dir", "fix", "kernel_factory", "lock_timeout",
                 "netns", "state_dir", "tun_path")

    def __init__(self, state_dir: str = DEFAULT_STATE_DIR,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                 kernel_factory: Callable[[], Kernel] = _open_kernel,
                 tun_path: str = tunmod.TUN_PATH, netns: str | None = None) -> None:
        self.state_dir = state_dir
        self.lock_timeout = lock_timeout
        self.kernel_factory = kernel_factory
        self.tun_path = tun_path
        self.netns = netns  # the named namespace vmnet entered (printed commands say so)
        self.data_dir = DEFAULT_DATA_DIR  # the config's: where chosen subnets are kept
        self.fix: tuple[str, ...] = ()  # the config's networks with firewall_fix
        self._kernel: Kernel | None = None
        self._store: StateStore | None = None

    def store(self) -> StateStore:
        if self._store is None:
            self._store = StateStore(self.state_dir, current_inode(), current_cookie())
        return self._store

    def use_config(self, cfg: Config) -> Context:
        """Take what nat/isolated networks need from the config (data_dir, firewall_fix)."""
        self.data_dir = cfg.data_dir
        self.fix = cfg.firewall_fix
        return self

    def site(self) -> Site:
        from vmnet.kinds.site import Site

        return Site(self.store().dir, self.data_dir, self.fix)

    def kernel(self) -> Kernel:
        if self._kernel is None:
            self._kernel = self.kernel_factory()
        return self._kernel

    def close(self) -> None:
        if self._kernel is not None:
            self._kernel.close()
            self._kernel = None
