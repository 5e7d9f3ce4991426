"""The calling process: its network namespace (identity, entry through setns; Python 3.11
has no os.setns) and its capabilities (read from /proc, no imports of note)."""

from __future__ import annotations

import errno
import os

from vmnet.errors import NotFoundError, PrivilegeError, kernel_error

CLONE_NEWNET = 0x40000000
SO_NETNS_COOKIE = 71
NETNS_RUN_DIR = "/run/netns"
CAP_NET_ADMIN = 12


def has_net_admin(pid: int | str = "self", unknown: bool = True) -> bool:
    """CAP_NET_ADMIN in a process's effective set (`unknown` when it cannot be told: for
    ourselves the kernel decides anyway)."""
    try:  # (bytes, not a text file: vmnetd asks twice a request, decoding cost the most)
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 16384)
        finally:
            os.close(fd)
        i = data.index(b"\nCapEff:") + 8
        return bool(int(data[i:data.index(b"\n", i)], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        return unknown



def current_inode() -> int:
    """Identity of the calling process's network namespace (its nsfs inode)."""
    return os.stat("/proc/self/ns/net").st_ino


def current_cookie() -> int | None:
    """The namespace's cookie (SO_NETNS_COOKIE, Linux 5.14+), None where unsupported.

    Unlike its inode, a namespace's cookie is never reused within a boot, so it
    tells a namespace apart from a dead one whose inode number came back.
    """
    import _socket

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    try:
        return int.from_bytes(s.getsockopt(_socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
    except OSError:
        return None
    finally:
        s.close()


def enter(name: str) -> None:
    """Move this process into the named namespace (as `ip netns exec` does for netns)."""
    if "/" in name or name in (".", "..") or not name:
        raise NotFoundError(f"network namespace {name!r} is not a valid name")
    path = os.path.join(NETNS_RUN_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFoundError(f"network namespace {name!r} does not exist",
                            hint=f"`ip netns list` shows the namespaces; {path} is missing") \
            from None
    except OSError as e:  # e.g. a name too long for a path
        raise NotFoundError(f"network namespace {name[:40]!r}: {e.strerror}",
                            hint="`ip netns list` shows the namespaces") from None
    try:
        enter_fd(fd, f"network namespace {name!r}")
    finally:
        os.close(fd)


def enter_fd(fd: int, what: str = "the network namespace passed") -> None:
    """Move this process into the network namespace `fd` refers to (`enter`; vmnetd: a
    root client's own namespace, and back home after the request)."""
    if _fast_setns(fd, CLONE_NEWNET) == 0:
        return
    import ctypes  # only to learn why: it costs milliseconds to import

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise PrivilegeError(f"cannot enter {what}: EPERM",
                                 hint="entering a namespace needs root (CAP_SYS_ADMIN)")
        raise kernel_error("setns", what, err)


def _fast_setns(fd: int, nstype: int) -> int:
    """setns(2) through _ctypes' raw call (ctypes itself costs ~1.5 ms to import).

    Returns libc's result; -1 (errno unknown here) sends the caller to ctypes,
    which calls again and reads errno.
    """
    try:
        import _ctypes

        handle = _ctypes.dlopen(None, 2)  # type: ignore[arg-type]  # RTLD_NOW: our own libc
        return int(_ctypes.call_function(_ctypes.dlsym(handle, "setns"), (fd, nstype)))
    except (ImportError, AttributeError, OSError):
        return -1
