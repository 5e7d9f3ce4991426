"""ioctls on /dev/net/tun: create persistent taps and open queues on them.

Reference: drivers/net/tun.c, QEMU net/tap-linux.c, libvirt virnetdevtap.c.
The `ioctl` and `opener` parameters exist so tests can inject faults.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from vmnet.errors import NotFoundError, VmnetError, kernel_error

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Ioctl = Callable[[int, int, Any], Any]

    from vmnet.kernel.rtnl import Rtnl

TUN_PATH = "/dev/net/tun"

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
TUNGETIFF = 0x800454D2

IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_PERSIST = 0x0800
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000  # TUNSETIFF fails with EBUSY if the name exists

_IFREQ = "16sH22x"  # struct ifreq: name + flags, padded to 40 bytes



def _ifreq(name: str, flags: int) -> bytes:
    return struct.pack(_IFREQ, name.encode(), flags)


def _open_tun(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFoundError(f"{path} does not exist",
                            hint="load the tun module (modprobe tun) or create the node: "
                                 "mknod /dev/net/tun c 10 200") from None
    except OSError as e:
        raise kernel_error(f"open {path}", None, e.errno or errno.EIO) from None


SIOCETHTOOL = 0x8946
ETHTOOL_GLINK = 0x0000000A


def settle_operstate(sock_fd: int, name: str, ioctl: Ioctl = fcntl.ioctl) -> None:
    """Make the kernel apply a new tap's pending link events now.

    A tap's carrier goes on and off while it is created; the kernel applies
    that to the operational state up to a second later (linkwatch).  A port
    enslaved meanwhile counts as up, so the bridge would forward to it and
    take carrier (and an IPv6 link-local address) for nothing.  ETHTOOL_GLINK
    on a running device runs linkwatch_sync_dev() for it.
    """
    buf = bytearray(struct.pack("II", ETHTOOL_GLINK, 0))
    ifr = struct.pack("16sP", name.encode(), _address(buf))
    try:  # noqa: SIM105 - contextlib costs an import on the hot path
        ioctl(sock_fd, SIOCETHTOOL, ifr)
    except OSError:
        pass  # best effort: only the operstate's timing is at stake


_U8: Any = None


def _address(buf: bytearray) -> int:
    """The address of a bytearray's buffer, for a pointer inside an ioctl argument.

    Through _ctypes (ctypes costs ~1.5 ms to import, array's buffer_info ~2 ms
    because `array` imports collections); the buffer stays alive with `buf`.
    """
    global _U8
    import _ctypes

    if _U8 is None:
        class U8(_ctypes._SimpleCData):  # type: ignore[type-arg]
            _type_ = "B"

        _U8 = U8
    return int(_ctypes.addressof((_U8 * len(buf)).from_buffer(buf)))


def tap_flags(*, multi_queue: bool, vnet_hdr: bool) -> int:
    flags = IFF_TAP | IFF_NO_PI
    if multi_queue:
        flags |= IFF_MULTI_QUEUE
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    return flags


def create_persistent_tap(name: str, *, owner: int | None, group: int | None,
                          multi_queue: bool, path: str = TUN_PATH,
                          ioctl: Ioctl = fcntl.ioctl,
                          configure: Callable[[], None] | None = None) -> None:
    """Create a new persistent tap; fail if any interface of that name exists.

    IFF_TUN_EXCL makes the kernel refuse an existing name (EBUSY) instead of
    attaching to it, so vmnet never adopts or re-owns a foreign tap.
    `configure` (mark, MAC, MTU, ...) runs while our fd still holds the tap and
    before persist: if vmnet dies before persist, closing the fd deletes the
    tap, so no unmarked tap (one gc cannot prove vmnet's) is ever left behind.
    """
    fd = _open_tun(path)
    step = "create tap"
    try:
        ioctl(fd, TUNSETIFF, _ifreq(name, tap_flags(multi_queue=multi_queue, vnet_hdr=False)
                                    | IFF_TUN_EXCL))
        if owner is not None:
            step = "set tap owner"
            ioctl(fd, TUNSETOWNER, owner)
        if group is not None:
            step = "set tap group"
            ioctl(fd, TUNSETGROUP, group)
        if configure is not None:
            configure()
        step = "make tap persistent"
        ioctl(fd, TUNSETPERSIST, 1)
    except OSError as e:
        err = e.errno or errno.EIO
        if step == "create tap" and err == errno.EBUSY:
            raise kernel_error(step, name, errno.EEXIST) from None
        raise kernel_error(step, name, err) from None
    finally:
        # Closing before persist is set deletes the half-made tap.
        os.close(fd)


def create_configured_tap(nl: Rtnl, name: str, *, owner: int | None, group: int | None,
                          multi_queue: bool, mac: str, alias: str, mtu: int | None,
                          path: str = TUN_PATH, ioctl: Ioctl = fcntl.ioctl) -> None:
    """A new persistent tap, IPv6 off, with its MAC, mark and MTU, up, settled.

    Everything but the settle happens before persist (see create_persistent_tap);
    the settle applies the carrier flap to the operstate before anyone enslaves
    the tap (vmnet.kernel.rtnl.Rtnl.settle).
    """
    from vmnet.kernel import rtnl

    body = rtnl.tap_config(name, mac=mac, alias=alias, mtu=mtu)

    def configure() -> None:
        # IPv6 off before the tap goes up, so it never gets a link-local address.
        disable_ipv6(name)
        try:
            nl.call(rtnl.RTM_SETLINK, 0, body)
        except rtnl.NetlinkError as e:
            raise kernel_error("configure tap", name, rtnl.errno_of(e), e.strerror or "") \
                from None

    create_persistent_tap(name, owner=owner, group=group, multi_queue=multi_queue, path=path,
                          ioctl=ioctl, configure=configure)
    nl.settle(name)


def open_queues(name: str, queues: int, *, vnet_hdr: bool, path: str = TUN_PATH,
                ioctl: Ioctl = fcntl.ioctl, unpersist: bool = False) -> list[int]:
    """Open one fd per queue on an existing persistent tap.

    TUNSETIFF on a missing name silently creates a temporary tap, so the
    result is checked with TUNGETIFF: the tap must report IFF_PERSIST.  With
    `unpersist`, persist is cleared on the attached fd so the kernel deletes the
    tap when the last fd closes (the holder dies => the tap goes with it).
    """
    flags = tap_flags(multi_queue=queues > 1, vnet_hdr=vnet_hdr)
    fds: list[int] = []
    try:
        for _ in range(queues):
            fd = _open_tun(path)
            fds.append(fd)
            try:
                ioctl(fd, TUNSETIFF, _ifreq(name, flags))
            except OSError as e:
                raise kernel_error("attach to tap", name, e.errno or errno.EIO) from None
        buf = bytearray(40)
        ioctl(fds[0], TUNGETIFF, buf)
        _, got = struct.unpack(_IFREQ, bytes(buf))
        if not got & IFF_PERSIST:
            raise NotFoundError(f"tap {name} does not exist (the kernel made a temporary one, "
                                "now closed)", ifname=name, hint="run `vmnet up` first")
        if unpersist:
            ioctl(fds[0], TUNSETPERSIST, 0)
        return fds
    except VmnetError:
        for fd in fds:
            os.close(fd)
        raise
    except OSError as e:
        for fd in fds:
            os.close(fd)
        raise kernel_error("attach to tap", name, e.errno or errno.EIO) from None


def disable_ipv6(name: str) -> None:
    """IPv6 off on an interface (a sysctl of the caller's network namespace: /proc/sys/net
    is per namespace): no link-local address, no router solicitations."""
    try:
        fd = os.open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6",
                     os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"1")
        finally:
            os.close(fd)
    except FileNotFoundError:
        if os.path.exists("/proc/sys/net/ipv6"):
            raise kernel_error("disable IPv6", name, errno.ENOENT) from None
        # IPv6 is off in this kernel: nothing to disable
    except OSError as e:
        raise kernel_error("disable IPv6", name, e.errno or errno.EIO) from None
