"""Is a libvirt domain still alive?  Used by `gc` only (never by the hook)."""

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
