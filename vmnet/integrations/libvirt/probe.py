"""Is a libvirt domain still alive (`gc`, vmnetd's watcher), and which process is its
QEMU (the hook at `started`: libvirt starts every domain's QEMU with `-uuid UUID`)?

The hook never calls back into libvirtd (a deadlock): it reads /proc.  When libvirt
cannot tell (libvirtd stopped), the QEMU the hook recorded as the holder can.
"""

from __future__ import annotations

import os


def domain_alive(uuid: str) -> bool | None:
    """True/False when libvirt can tell, None when it cannot (no libvirt, no daemon)."""
    try:
        import libvirt
    except ImportError:
        return None
    uri = os.environ.get("VMNET_LIBVIRT_URI", "qemu:///system")
    try:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError:
        return None
    try:
        try:
            dom = conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError:
            return False
        return bool(dom.isActive())
    finally:
        conn.close()


def qemu_with_uuid(uuid: str) -> int | None:
    """The pid of a process started with `-uuid UUID` (libvirt's QEMU), if one runs."""
    want = uuid.lower().encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        for i, a in enumerate(args[:-1]):
            if a == b"-uuid" and args[i + 1].lower() == want:
                return int(pid)
    return None
