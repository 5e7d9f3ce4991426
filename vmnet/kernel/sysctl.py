"""Per-namespace sysctls under /proc/sys/net (the forwarding switches of nat networks).

/proc/sys/net shows the network namespace of the task that opens the file, so
the calling thread's namespace (vmnetd enters a client's with setns) is the
one read and written.
"""

from __future__ import annotations

from vmnet.errors import KernelError, NotFoundError, PrivilegeError


def forwarding_path(ifname: str) -> str:
    """IPv4 forwarding of one interface (the input device's switch decides whether a
    packet that arrived on it may be forwarded: ip_route_input_slow in the kernel)."""
    return f"/proc/sys/net/ipv4/conf/{ifname}/forwarding"


def read(path: str) -> str | None:
    """The value (stripped), None if the key does not exist (e.g. the interface is gone)."""
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise KernelError(f"cannot read {path}: {e.strerror}", errno=e.errno) from None


def write(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except FileNotFoundError:
        raise NotFoundError(f"sysctl {path} does not exist",
                            hint="the interface it belongs to is gone") from None
    except PermissionError:
        raise PrivilegeError(f"cannot write {path}",
                             hint="vmnet needs root (CAP_NET_ADMIN) to change sysctls") from None
    except OSError as e:
        raise KernelError(f"cannot write {value!r} to {path}: {e.strerror}",
                          errno=e.errno) from None
