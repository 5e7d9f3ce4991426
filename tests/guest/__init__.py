"""A tiny Linux guest (Debian cloud kernel + busybox initramfs) booted under
QEMU TCG, for tests that need a real VM on the other end of a tap."""

from tests.guest.build import GuestBuildError, GuestImage, ensure_guest
from tests.guest.qemu import (
    Guest,
    GuestConsole,
    GuestDied,
    GuestError,
    GuestTimeout,
    NicInfo,
    Qmp,
    QmpError,
    boot_guest,
    guest_argv,
    http_get_from_ns,
    ping_from_ns,
    qemu_available,
    qmp_args,
)

__all__ = [
    "Guest",
    "GuestBuildError",
    "GuestConsole",
    "GuestDied",
    "GuestError",
    "GuestImage",
    "GuestTimeout",
    "NicInfo",
    "Qmp",
    "QmpError",
    "boot_guest",
    "ensure_guest",
    "guest_argv",
    "http_get_from_ns",
    "ping_from_ns",
    "qemu_available",
    "qmp_args",
]
